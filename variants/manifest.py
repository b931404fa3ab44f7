"""The model repository manifest: dataclasses, JSON load/save and schema validation.

Contract
--------
* One manifest per repository entry, at ``REPO/<model>/<version>/manifest.json``; its schema
  is ``adaptd.manifest/2`` and is documented field by field in ``docs/manifest.md``.
  Documents of ``adaptd.manifest/1`` (one input, one output, no preprocessing) still load: the
  model's ``inputs``/``outputs`` are taken from the first variant and the prediction is its
  first output. ``to_dict`` always writes the current schema.
* Every variant lists its inputs and outputs in the model's order (``Manifest.inputs`` /
  ``Manifest.outputs``), each under the tensor name its own runtime knows; the request's
  tensors are matched by position. An input's ``preprocessing`` (how a uint8 frame becomes the
  model's float input) is the model's and is repeated on every variant's input, so that a
  variant record alone says what it accepts; the two must agree (checked).
* This module imports neither TensorFlow nor LiteRT: the daemon reads manifests on its hot
  start path. Everything here is plain data; objects are immutable (frozen dataclasses) and
  therefore safe to share between threads.
* ``Manifest.from_dict`` / ``load_manifest`` validate the whole document and raise
  ``ManifestError`` (a ``ValueError``) naming the first offending field; they never return a
  partly valid object. For a current document ``to_dict`` followed by ``from_dict`` is the
  identity (tested). Constructing a ``Manifest`` in code runs the same cross-checks.
* ``save_manifest`` writes atomically: a temporary file in the same directory, fsync, rename.
* Units are in the names: ``size_bytes``, ``memory_bytes``, ``latency_ms_1thread``. Accuracy,
  precision, recall, F1 and sparsity are fractions in [0, 1].
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .fields import ManifestError, boolean, choice, integer, number, opt_string, req, string
from .tensors import FRAME_DTYPES, Preprocessing, Quantization, TensorSpec  # noqa: F401  (re-exported)

SCHEMA = "adaptd.manifest/2"
SCHEMA_V1 = "adaptd.manifest/1"
READABLE_SCHEMAS = (SCHEMA, SCHEMA_V1)
MANIFEST_FILE = "manifest.json"

RUNTIMES = ("litert", "tensorflow")
QUANTIZATIONS = ("none", "float16", "dynamic_int8", "full_int8")
SOURCE_FORMATS = ("keras", "saved_model", "tflite", "zoo", "demo")


# --- records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pruning:
    target_sparsity: float
    method: str = "magnitude"
    fine_tuned: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"target_sparsity": self.target_sparsity, "method": self.method,
                "fine_tuned": self.fine_tuned}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Pruning:
        return cls(
            target_sparsity=number(req(d, "target_sparsity", where), f"{where}.target_sparsity", 0.0, 1.0),
            method=choice(req(d, "method", where), ("magnitude",), f"{where}.method"),
            fine_tuned=boolean(req(d, "fine_tuned", where), f"{where}.fine_tuned"),
        )


@dataclass(frozen=True)
class Metrics:
    """Classification quality on the validation split (fractions; macro over classes)."""

    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "precision_macro": self.precision_macro,
                "recall_macro": self.recall_macro, "f1_macro": self.f1_macro, "n": self.n}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Metrics:
        return cls(
            accuracy=number(req(d, "accuracy", where), f"{where}.accuracy", 0.0, 1.0),
            precision_macro=number(req(d, "precision_macro", where), f"{where}.precision_macro", 0.0, 1.0),
            recall_macro=number(req(d, "recall_macro", where), f"{where}.recall_macro", 0.0, 1.0),
            f1_macro=number(req(d, "f1_macro", where), f"{where}.f1_macro", 0.0, 1.0),
            n=integer(req(d, "n", where), f"{where}.n"),
        )


@dataclass(frozen=True)
class Latency:
    """Single-threaded latency of one batch-1 inference on the build machine (ms)."""

    median: float
    p90: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "p90": self.p90, "n": self.n}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Latency:
        return cls(
            median=number(req(d, "median", where), f"{where}.median", lo=0.0),
            p90=number(req(d, "p90", where), f"{where}.p90", lo=0.0),
            n=integer(req(d, "n", where), f"{where}.n"),
        )


@dataclass(frozen=True)
class VariantRecord:
    """One built variant, as the daemon sees it. ``path`` is relative to the version dir."""

    name: str
    kind: str
    runtime: str
    path: str
    quantization: str
    pruning: Pruning | None
    sparsity: float
    size_bytes: int
    sha256: str
    memory_bytes: int
    metrics: Metrics | None
    latency_ms_1thread: Latency
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    structure: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "runtime": self.runtime,
            "path": self.path,
            "quantization": self.quantization,
            "pruning": None if self.pruning is None else self.pruning.to_dict(),
            "sparsity": self.sparsity,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "memory_bytes": self.memory_bytes,
            "metrics": None if self.metrics is None else self.metrics.to_dict(),
            "latency_ms_1thread": self.latency_ms_1thread.to_dict(),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "structure": self.structure,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "variant") -> VariantRecord:
        name = string(req(d, "name", where), f"{where}.name")
        where = f"variants[{name}]"
        path = string(req(d, "path", where), f"{where}.path")
        if os.path.isabs(path) or ".." in Path(path).parts or not path:
            raise ManifestError(f"{where}.path: must be relative and inside the version dir, got {path!r}")
        pruning = req(d, "pruning", where)
        metrics = req(d, "metrics", where)
        inputs = req(d, "inputs", where)
        outputs = req(d, "outputs", where)
        if not isinstance(inputs, list) or not inputs:
            raise ManifestError(f"{where}.inputs: expected a non-empty list")
        if not isinstance(outputs, list) or not outputs:
            raise ManifestError(f"{where}.outputs: expected a non-empty list")
        structure = req(d, "structure", where)
        if not isinstance(structure, dict):
            raise ManifestError(f"{where}.structure: expected an object")
        return cls(
            name=name,
            kind=string(req(d, "kind", where), f"{where}.kind"),
            runtime=choice(req(d, "runtime", where), RUNTIMES, f"{where}.runtime"),
            path=path,
            quantization=choice(req(d, "quantization", where), QUANTIZATIONS, f"{where}.quantization"),
            pruning=None if pruning is None else Pruning.from_dict(pruning, f"{where}.pruning"),
            sparsity=number(req(d, "sparsity", where), f"{where}.sparsity", 0.0, 1.0),
            size_bytes=integer(req(d, "size_bytes", where), f"{where}.size_bytes"),
            sha256=string(req(d, "sha256", where), f"{where}.sha256"),
            memory_bytes=integer(req(d, "memory_bytes", where), f"{where}.memory_bytes"),
            metrics=None if metrics is None else Metrics.from_dict(metrics, f"{where}.metrics"),
            latency_ms_1thread=Latency.from_dict(req(d, "latency_ms_1thread", where), f"{where}.latency_ms_1thread"),
            inputs=tuple(TensorSpec.from_dict(t, f"{where}.inputs[{i}]") for i, t in enumerate(inputs)),
            outputs=tuple(TensorSpec.from_dict(t, f"{where}.outputs[{i}]") for i, t in enumerate(outputs)),
            structure=structure,
        )


@dataclass(frozen=True)
class Source:
    path: str
    format: str
    sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Any, where: str = "source") -> Source:
        return cls(
            path=string(req(d, "path", where), f"{where}.path"),
            format=choice(req(d, "format", where), SOURCE_FORMATS, f"{where}.format"),
            sha256=opt_string(req(d, "sha256", where), f"{where}.sha256"),
        )


@dataclass(frozen=True)
class Task:
    """What the model predicts. ``prediction_output`` names the output (of ``Manifest.outputs``)
    whose argmax is the predicted class; accuracy is computed on it. None only while a
    ``Manifest`` is being constructed: it then defaults to the first output."""

    kind: str
    num_classes: int
    accuracy_known: bool
    prediction_output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_classes": self.num_classes, "accuracy_known": self.accuracy_known,
                "prediction_output": self.prediction_output}

    @classmethod
    def from_dict(cls, d: Any, where: str = "task", v1: bool = False) -> Task:
        return cls(
            kind=choice(req(d, "kind", where), ("classification",), f"{where}.kind"),
            num_classes=integer(req(d, "num_classes", where), f"{where}.num_classes", minimum=1),
            accuracy_known=boolean(req(d, "accuracy_known", where), f"{where}.accuracy_known"),
            prediction_output=None if v1 else string(req(d, "prediction_output", where),
                                                    f"{where}.prediction_output"),
        )


@dataclass(frozen=True)
class DatasetInfo:
    path: str | None
    sha256: str | None
    n_train: int
    n_val: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "n_train": self.n_train, "n_val": self.n_val}

    @classmethod
    def from_dict(cls, d: Any, where: str = "dataset") -> DatasetInfo:
        return cls(
            path=opt_string(req(d, "path", where), f"{where}.path"),
            sha256=opt_string(req(d, "sha256", where), f"{where}.sha256"),
            n_train=integer(req(d, "n_train", where), f"{where}.n_train"),
            n_val=integer(req(d, "n_val", where), f"{where}.n_val"),
        )


@dataclass(frozen=True)
class Manifest:
    """A repository entry. ``inputs``/``outputs`` (the model's, in the order every variant
    follows) default to the first variant's when not given (manifests of schema 1)."""

    model: str
    version: str
    created_at: str
    adaptd_version: str
    tools: dict[str, str]
    source: Source
    task: Task
    dataset: DatasetInfo | None
    variants: tuple[VariantRecord, ...]
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        if self.variants and not self.inputs:
            first = self.variants[0]
            object.__setattr__(self, "inputs", tuple(first.inputs))
            object.__setattr__(self, "outputs", tuple(first.outputs))
        if self.task.prediction_output is None and self.outputs:
            object.__setattr__(self, "task", replace(self.task, prediction_output=self.outputs[0].name))
        _check_signature(self)

    @property
    def prediction_index(self) -> int:
        """Position of the prediction among the outputs (of the model and of every variant)."""
        return [o.name for o in self.outputs].index(self.task.prediction_output)

    def variant(self, name: str) -> VariantRecord:
        """The variant called ``name``; ``KeyError`` if absent."""
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "model": self.model,
            "version": self.version,
            "created_at": self.created_at,
            "adaptd_version": self.adaptd_version,
            "tools": dict(self.tools),
            "source": self.source.to_dict(),
            "task": self.task.to_dict(),
            "dataset": None if self.dataset is None else self.dataset.to_dict(),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "variants": [v.to_dict() for v in self.variants],
        }

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        schema = req(d, "schema", "manifest")
        if schema not in READABLE_SCHEMAS:
            raise ManifestError(f"manifest.schema: unsupported {schema!r} (this adaptd reads "
                                f"{' and '.join(READABLE_SCHEMAS)})")
        v1 = schema == SCHEMA_V1
        version = string(req(d, "version", "manifest"), "manifest.version")
        if not version.isdigit():
            raise ManifestError(f"manifest.version: expected a decimal integer string, got {version!r}")
        tools = req(d, "tools", "manifest")
        if not isinstance(tools, dict) or not all(isinstance(v, str) for v in tools.values()):
            raise ManifestError("manifest.tools: expected an object of strings")
        variants = req(d, "variants", "manifest")
        if not isinstance(variants, list):
            raise ManifestError("manifest.variants: expected a list")
        records = tuple(VariantRecord.from_dict(v, f"variants[{i}]") for i, v in enumerate(variants))
        names = [r.name for r in records]
        if len(set(names)) != len(names):
            raise ManifestError(f"manifest.variants: duplicate names in {names}")
        signature: dict[str, tuple[TensorSpec, ...]] = {"inputs": (), "outputs": ()}
        for key in ("inputs", "outputs") if not v1 else ():
            items = req(d, key, "manifest")
            if not isinstance(items, list) or not items:
                raise ManifestError(f"manifest.{key}: expected a non-empty list")
            signature[key] = tuple(TensorSpec.from_dict(t, f"{key}[{i}]") for i, t in enumerate(items))
        dataset = req(d, "dataset", "manifest")
        return cls(
            schema=schema,
            model=string(req(d, "model", "manifest"), "manifest.model"),
            version=version,
            created_at=string(req(d, "created_at", "manifest"), "manifest.created_at"),
            adaptd_version=string(req(d, "adaptd_version", "manifest"), "manifest.adaptd_version"),
            tools=dict(tools),
            source=Source.from_dict(req(d, "source", "manifest")),
            task=Task.from_dict(req(d, "task", "manifest"), v1=v1),
            dataset=None if dataset is None else DatasetInfo.from_dict(dataset),
            variants=records,
            inputs=signature["inputs"],
            outputs=signature["outputs"],
        )


def _check_signature(m: Manifest) -> None:
    """Every variant follows the model's inputs and outputs; preprocessing fits and agrees."""
    for key, specs in (("inputs", m.inputs), ("outputs", m.outputs)):
        names = [t.name for t in specs]
        if len(set(names)) != len(names):
            raise ManifestError(f"manifest.{key}: duplicate names in {names}")
    for i, t in enumerate(m.inputs):
        if t.preprocessing is not None:
            problem = t.preprocessing.problem(t.dtype, t.shape)
            if problem:
                raise ManifestError(f"inputs[{i}].preprocessing: {problem}")
    for i, t in enumerate(m.outputs):
        if t.preprocessing is not None:
            raise ManifestError(f"outputs[{i}].preprocessing: outputs have no preprocessing")
    if m.outputs and m.task.prediction_output not in [o.name for o in m.outputs]:
        raise ManifestError(f"task.prediction_output: {m.task.prediction_output!r} is not an output "
                            f"(outputs: {', '.join(o.name for o in m.outputs)})")
    for v in m.variants:
        for key, mine, model in (("inputs", v.inputs, m.inputs), ("outputs", v.outputs, m.outputs)):
            if len(mine) != len(model):
                raise ManifestError(f"variants[{v.name}].{key}: {len(mine)}, but the model has {len(model)}")
        for i, (mine, model) in enumerate(zip(v.inputs, m.inputs)):
            if mine.preprocessing != model.preprocessing:
                raise ManifestError(f"variants[{v.name}].inputs[{i}].preprocessing: differs from the "
                                    f"model's inputs[{i}].preprocessing")


def load_manifest(path: Path) -> Manifest:
    """Read and validate ``path`` (a manifest.json or the version directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    return Manifest.from_dict(data)


def write_text_atomic(target: Path, text: str) -> Path:
    """Write ``target`` atomically: a temporary file beside it, fsync, mode 0644, rename.

    Readers see the old file or the new one, never a part; on failure nothing is left behind."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=target.suffix, dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the daemon may run as another user
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


def save_manifest(manifest: Manifest, directory: Path) -> Path:
    """Write ``directory/manifest.json`` atomically (tmp file, fsync, rename); return its path."""
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n"
    Manifest.from_dict(json.loads(text))  # never write what we could not read back
    return write_text_atomic(Path(directory) / MANIFEST_FILE, text)
