"""The model repository manifest: dataclasses, JSON load/save and schema validation.

Contract
--------
* One manifest per repository entry, at ``REPO/<model>/<version>/manifest.json``; its schema
  is ``adaptd.manifest/1`` and is documented field by field in ``docs/manifest.md``.
* This module imports neither TensorFlow nor LiteRT: the daemon reads manifests on its hot
  start path. Everything here is plain data; objects are immutable (frozen dataclasses) and
  therefore safe to share between threads.
* ``Manifest.from_dict`` / ``load_manifest`` validate the whole document and raise
  ``ManifestError`` (a ``ValueError``) naming the first offending field; they never return a
  partly valid object. ``to_dict`` followed by ``from_dict`` is the identity (tested).
* ``save_manifest`` writes atomically: a temporary file in the same directory, fsync, rename.
* Units are in the names: ``size_bytes``, ``memory_bytes``, ``latency_ms_1thread``. Accuracy,
  precision, recall, F1 and sparsity are fractions in [0, 1].
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "adaptd.manifest/1"
MANIFEST_FILE = "manifest.json"

RUNTIMES = ("litert", "tensorflow")
QUANTIZATIONS = ("none", "float16", "dynamic_int8", "full_int8")
SOURCE_FORMATS = ("keras", "saved_model", "zoo", "demo")


class ManifestError(ValueError):
    """A manifest that does not follow the schema (the message names the field)."""


# --- small validation helpers -------------------------------------------------------------


def _req(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict):
        raise ManifestError(f"{where}: expected an object, got {type(d).__name__}")
    if key not in d:
        raise ManifestError(f"{where}.{key}: missing")
    return d[key]


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise ManifestError(f"{where}: expected a string, got {v!r}")
    return v


def _opt_str(v: Any, where: str) -> str | None:
    return None if v is None else _str(v, where)


def _int(v: Any, where: str, minimum: int | None = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ManifestError(f"{where}: expected an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise ManifestError(f"{where}: must be >= {minimum}, got {v}")
    return v


def _float(v: Any, where: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ManifestError(f"{where}: expected a number, got {v!r}")
    v = float(v)
    if v != v:  # NaN
        raise ManifestError(f"{where}: is NaN")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ManifestError(f"{where}: {v} outside [{lo}, {hi}]")
    return v


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ManifestError(f"{where}: expected true/false, got {v!r}")
    return v


def _choice(v: Any, choices: tuple[str, ...], where: str) -> str:
    if v not in choices:
        raise ManifestError(f"{where}: expected one of {', '.join(choices)}, got {v!r}")
    return v


# --- records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of a tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Quantization:
        return cls(
            scale=_float(_req(d, "scale", where), f"{where}.scale", lo=0.0),
            zero_point=_int(_req(d, "zero_point", where), f"{where}.zero_point", minimum=None),
        )


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a variant. ``shape`` is as recorded (batch 1 for LiteRT)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    quantization: Quantization | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "quantization": None if self.quantization is None else self.quantization.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TensorSpec:
        shape = _req(d, "shape", where)
        if not isinstance(shape, list):
            raise ManifestError(f"{where}.shape: expected a list of integers")
        q = _req(d, "quantization", where)
        return cls(
            name=_str(_req(d, "name", where), f"{where}.name"),
            dtype=_str(_req(d, "dtype", where), f"{where}.dtype"),
            shape=tuple(_int(s, f"{where}.shape[{i}]", minimum=-1) for i, s in enumerate(shape)),
            quantization=None if q is None else Quantization.from_dict(q, f"{where}.quantization"),
        )


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
            target_sparsity=_float(_req(d, "target_sparsity", where), f"{where}.target_sparsity", 0.0, 1.0),
            method=_choice(_req(d, "method", where), ("magnitude",), f"{where}.method"),
            fine_tuned=_bool(_req(d, "fine_tuned", where), f"{where}.fine_tuned"),
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
            accuracy=_float(_req(d, "accuracy", where), f"{where}.accuracy", 0.0, 1.0),
            precision_macro=_float(_req(d, "precision_macro", where), f"{where}.precision_macro", 0.0, 1.0),
            recall_macro=_float(_req(d, "recall_macro", where), f"{where}.recall_macro", 0.0, 1.0),
            f1_macro=_float(_req(d, "f1_macro", where), f"{where}.f1_macro", 0.0, 1.0),
            n=_int(_req(d, "n", where), f"{where}.n"),
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
            median=_float(_req(d, "median", where), f"{where}.median", lo=0.0),
            p90=_float(_req(d, "p90", where), f"{where}.p90", lo=0.0),
            n=_int(_req(d, "n", where), f"{where}.n"),
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
        name = _str(_req(d, "name", where), f"{where}.name")
        where = f"variants[{name}]"
        path = _str(_req(d, "path", where), f"{where}.path")
        if os.path.isabs(path) or ".." in Path(path).parts or not path:
            raise ManifestError(f"{where}.path: must be relative and inside the version dir, got {path!r}")
        pruning = _req(d, "pruning", where)
        metrics = _req(d, "metrics", where)
        inputs = _req(d, "inputs", where)
        outputs = _req(d, "outputs", where)
        if not isinstance(inputs, list) or not inputs:
            raise ManifestError(f"{where}.inputs: expected a non-empty list")
        if not isinstance(outputs, list) or not outputs:
            raise ManifestError(f"{where}.outputs: expected a non-empty list")
        structure = _req(d, "structure", where)
        if not isinstance(structure, dict):
            raise ManifestError(f"{where}.structure: expected an object")
        return cls(
            name=name,
            kind=_str(_req(d, "kind", where), f"{where}.kind"),
            runtime=_choice(_req(d, "runtime", where), RUNTIMES, f"{where}.runtime"),
            path=path,
            quantization=_choice(_req(d, "quantization", where), QUANTIZATIONS, f"{where}.quantization"),
            pruning=None if pruning is None else Pruning.from_dict(pruning, f"{where}.pruning"),
            sparsity=_float(_req(d, "sparsity", where), f"{where}.sparsity", 0.0, 1.0),
            size_bytes=_int(_req(d, "size_bytes", where), f"{where}.size_bytes"),
            sha256=_str(_req(d, "sha256", where), f"{where}.sha256"),
            memory_bytes=_int(_req(d, "memory_bytes", where), f"{where}.memory_bytes"),
            metrics=None if metrics is None else Metrics.from_dict(metrics, f"{where}.metrics"),
            latency_ms_1thread=Latency.from_dict(_req(d, "latency_ms_1thread", where), f"{where}.latency_ms_1thread"),
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
            path=_str(_req(d, "path", where), f"{where}.path"),
            format=_choice(_req(d, "format", where), SOURCE_FORMATS, f"{where}.format"),
            sha256=_opt_str(_req(d, "sha256", where), f"{where}.sha256"),
        )


@dataclass(frozen=True)
class Task:
    kind: str
    num_classes: int
    accuracy_known: bool

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_classes": self.num_classes, "accuracy_known": self.accuracy_known}

    @classmethod
    def from_dict(cls, d: Any, where: str = "task") -> Task:
        return cls(
            kind=_choice(_req(d, "kind", where), ("classification",), f"{where}.kind"),
            num_classes=_int(_req(d, "num_classes", where), f"{where}.num_classes", minimum=1),
            accuracy_known=_bool(_req(d, "accuracy_known", where), f"{where}.accuracy_known"),
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
            path=_opt_str(_req(d, "path", where), f"{where}.path"),
            sha256=_opt_str(_req(d, "sha256", where), f"{where}.sha256"),
            n_train=_int(_req(d, "n_train", where), f"{where}.n_train"),
            n_val=_int(_req(d, "n_val", where), f"{where}.n_val"),
        )


@dataclass(frozen=True)
class Manifest:
    model: str
    version: str
    created_at: str
    adaptd_version: str
    tools: dict[str, str]
    source: Source
    task: Task
    dataset: DatasetInfo | None
    variants: tuple[VariantRecord, ...]
    schema: str = SCHEMA

    def variant(self, name: str) -> VariantRecord:
        """The variant called ``name``; ``KeyError`` if absent."""
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "model": self.model,
            "version": self.version,
            "created_at": self.created_at,
            "adaptd_version": self.adaptd_version,
            "tools": dict(self.tools),
            "source": self.source.to_dict(),
            "task": self.task.to_dict(),
            "dataset": None if self.dataset is None else self.dataset.to_dict(),
            "variants": [v.to_dict() for v in self.variants],
        }

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        schema = _req(d, "schema", "manifest")
        if schema != SCHEMA:
            raise ManifestError(f"manifest.schema: unsupported {schema!r} (this adaptd reads {SCHEMA})")
        version = _str(_req(d, "version", "manifest"), "manifest.version")
        if not version.isdigit():
            raise ManifestError(f"manifest.version: expected a decimal integer string, got {version!r}")
        tools = _req(d, "tools", "manifest")
        if not isinstance(tools, dict) or not all(isinstance(v, str) for v in tools.values()):
            raise ManifestError("manifest.tools: expected an object of strings")
        variants = _req(d, "variants", "manifest")
        if not isinstance(variants, list):
            raise ManifestError("manifest.variants: expected a list")
        records = tuple(VariantRecord.from_dict(v, f"variants[{i}]") for i, v in enumerate(variants))
        names = [r.name for r in records]
        if len(set(names)) != len(names):
            raise ManifestError(f"manifest.variants: duplicate names in {names}")
        dataset = _req(d, "dataset", "manifest")
        return cls(
            schema=schema,
            model=_str(_req(d, "model", "manifest"), "manifest.model"),
            version=version,
            created_at=_str(_req(d, "created_at", "manifest"), "manifest.created_at"),
            adaptd_version=_str(_req(d, "adaptd_version", "manifest"), "manifest.adaptd_version"),
            tools=dict(tools),
            source=Source.from_dict(_req(d, "source", "manifest")),
            task=Task.from_dict(_req(d, "task", "manifest")),
            dataset=None if dataset is None else DatasetInfo.from_dict(dataset),
            variants=records,
        )


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
