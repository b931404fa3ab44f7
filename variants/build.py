"""``adaptd variants build``: derive every variant of a source model into a repository entry.

``build_entry`` is the pipeline (the CLI, the demo, the zoo and the tests all use it):

0. the source's signature: its inputs (with the preprocessing the build declares for them, see
   ``BuildOptions.preprocessing``), its outputs and which one is the prediction; the dataset is
   checked against it (one array per input, keyed by the model's input names);
1. stage "convert": float32 / float16 / int8 dynamic-range / full-integer int8 (representative
   inputs from the training split, else validation) LiteRT files, the float32 SavedModel for
   the TensorFlow runtime, and magnitude-pruned variants (fine-tuned with a fixed mask when
   training data is given and the source is a Keras model, one-shot otherwise), each with its
   sha256, size, achieved sparsity (counted in the file) and graph structure. A ``.tflite``
   source is itself a variant; the kinds that cannot be derived from it are skipped with one
   line each saying why (or refused, when the caller named them);
2. stage "evaluate": top-1 accuracy and macro precision/recall/F1 of every variant on the
   validation split (the prediction output), run through ``adaptd.variants.runtime`` exactly as
   the daemon runs it, with the inputs a client would send (uint8 frames stay frames);
3. stage "measure": memory after load and 1-thread latency, each variant in a fresh process
   (see ``measure.py``);
4. the manifest and the build log (``build.log``: everything TensorFlow and the converter
   printed, see ``buildlog.py``) are written last and the staging directory is renamed into
   place (``repository.staging``): a failure or interrupt at any point publishes nothing.

Errors the user can fix are raised with one line each (``ValueError`` and its kinds here, the
converter's ``SourceError``/``ConversionError``, ``OSError``); the command line
(``adaptd.cli.variants``) shows them as one line, exit 1.
Not thread-safe: it mutates the source model's weights while pruning (restoring them after),
and redirects the process's stdout/stderr to the build log while it runs.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .digest import sha256_path
from .manifest import (DatasetInfo, Latency, Manifest, Metrics, Preprocessing, Pruning, Source, Task,
                       TensorSpec, VariantRecord, save_manifest)


@dataclass(frozen=True)
class KindSpec:
    name: str
    runtime: str
    quantization: str
    sparsity: float | None
    description: str

    @property
    def path(self) -> str:
        return self.name if self.runtime == "tensorflow" else f"{self.name}.tflite"


KINDS: dict[str, KindSpec] = {k.name: k for k in (
    KindSpec("float32", "litert", "none", None, "float32 LiteRT model"),
    KindSpec("float16", "litert", "float16", None, "float16 weights, float32 compute on CPU"),
    KindSpec("int8_dynamic", "litert", "dynamic_int8", None, "int8 weights, dynamic-range activations"),
    KindSpec("int8_full", "litert", "full_int8", None, "full-integer int8, int8 input/output"),
    KindSpec("pruned50", "litert", "none", 0.50, "50% magnitude-pruned float32"),
    KindSpec("pruned75", "litert", "none", 0.75, "75% magnitude-pruned float32"),
    KindSpec("pruned90", "litert", "none", 0.90, "90% magnitude-pruned float32"),
    KindSpec("pruned75_int8", "litert", "full_int8", 0.75, "75% pruned, then full-integer int8"),
    KindSpec("float32_tf", "tensorflow", "none", None, "float32 SavedModel for the TensorFlow runtime (GPU-capable)"),
)}
ALL_KINDS = tuple(KINDS)


class PreprocessingError(ValueError):
    """A preprocessing spec that names no input of the model or does not fit its input."""


@dataclass
class BuildOptions:
    """Knobs of ``build_entry``; the defaults are the CLI's."""

    kinds: tuple[str, ...] = ALL_KINDS
    explicit_kinds: bool = False     # the caller named the kinds: one that cannot be built is an error
    epochs: int = 2                  # fine-tuning epochs per pruned variant
    batch_size: int = 64
    progress: bool = True
    latency_runs: int = 50           # timed runs per variant at most ...
    latency_max_s: float = 1.0       # ... or this long, whichever ends first
    representative_n: int = 100      # int8 calibration inputs
    eval_threads: int = 2
    measure: bool = True             # False only for internal quick paths; records zeros
    prediction_output: str | None = None   # the output that is the prediction (None: the only one)
    preprocessing: Mapping[str, Preprocessing] = field(default_factory=dict)  # input name ("" = the only) -> spec
    extra: dict[str, Any] = field(default_factory=dict)


class KindError(ValueError):
    """An unknown variant kind was asked for (one line)."""


def parse_kinds(text: str | None) -> tuple[str, ...]:
    """``"float32,int8_full"`` -> ordered tuple; ``None``/``"all"`` -> every kind."""
    if text is None or text.strip() in ("", "all"):
        return ALL_KINDS
    asked = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in asked if k not in KINDS]
    if unknown:
        raise KindError(f"unknown variant kind(s) {', '.join(unknown)}; known: {', '.join(ALL_KINDS)}")
    return tuple(k for k in ALL_KINDS if k in asked)


def with_preprocessing(inputs: Sequence[TensorSpec], specs: Mapping[str, Preprocessing]) -> tuple[TensorSpec, ...]:
    """``inputs`` with the preprocessing ``specs`` declare (key: input name; "" for the only
    input); raises ``PreprocessingError`` for a name that is no input or a spec that does not fit."""
    names = [t.name for t in inputs]
    specs = dict(specs)
    if "" in specs:
        if len(inputs) != 1:
            raise PreprocessingError(f"the model has {len(inputs)} inputs ({', '.join(names)}): name the input "
                                     "the preprocessing is for (NAME=...)")
        specs[names[0]] = specs.pop("")
    unknown = [n for n in specs if n not in names]
    if unknown:
        raise PreprocessingError(f"preprocessing for {unknown[0]!r}, which is not an input of the model "
                                 f"(its inputs: {', '.join(names)})")
    out = []
    for t in inputs:
        pre = specs.get(t.name)
        if pre is not None:
            problem = pre.problem(t.dtype, t.shape)
            if problem:
                raise PreprocessingError(f"preprocessing for input {t.name!r} does not fit: {problem}")
        out.append(replace(t, preprocessing=pre))
    return tuple(out)


def _size_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _tools() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for key, dist in (("tensorflow", "tensorflow-cpu"), ("keras", "keras"), ("litert", "ai-edge-litert")):
        for d in ((dist, "tensorflow") if key == "tensorflow" else (dist,)):
            try:
                out[key] = version(d)
                break
            except PackageNotFoundError:
                continue
        out.setdefault(key, "unknown")
    return out


def _bar(total: int, desc: str, progress: bool, file: Any) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{desc:<9}", unit="variant", disable=not progress,
                file=file, leave=True, dynamic_ncols=True)


def _buildable(source: Any, requested: tuple[str, ...], has_rep: bool, explicit: bool,
               note: Any) -> tuple[str, ...]:
    """The requested kinds the source can give; the others are refused (named by the caller)
    or skipped with a line each."""
    reasons = {k: source.cannot_build(KINDS[k], has_rep) for k in requested}
    reasons = {k: r for k, r in reasons.items() if r}
    kinds = tuple(k for k in requested if k not in reasons)
    if reasons and (explicit or not kinds):
        k, why = next(iter(reasons.items()))
        raise ValueError(f"cannot build {k} from {Path(source.path).name}: {why}")
    for k, why in reasons.items():
        note(f"not built: {k}: {why}")
    return kinds


def _synthetic_sample(inputs: Sequence[TensorSpec]) -> list[np.ndarray]:
    """One random batch-1 input per spec, as a client would send it (frames where declared):
    something to time a variant on when there is no data."""
    rng = np.random.default_rng(0)
    out = []
    for t in inputs:
        shape = tuple(1 if d < 0 else d for d in t.shape)
        dtype = np.dtype(t.preprocessing.source_dtype if t.preprocessing is not None else t.dtype)
        if dtype.kind == "f":
            out.append(rng.random(shape, dtype=np.float32).astype(dtype))
        else:
            info = np.iinfo(dtype)
            out.append(rng.integers(max(info.min, -128), min(info.max, 255) + 1, shape).astype(dtype))
    return out


def build_entry(repo: Path, model: str, source: Any, dataset: Any | None, *,
                version: str | None = None, options: BuildOptions | None = None,
                source_sha256: str | None = None, representative: Any = None,
                log: Any = None, build_log: Any = None) -> tuple[Path, Manifest]:
    """Build ``options.kinds`` of ``source`` (a ``convert.SourceModel`` or
    ``tflite_source.TFLiteSource``) and publish them as ``repo/model/version`` (default version:
    next free). ``dataset`` (``dataset.Dataset``) gives calibration inputs, fine-tuning data and
    metrics; without it (zoo) metrics are null and ``representative`` (one float array per
    input, or one array for a single input) must be given for int8_full kinds. ``build_log``
    (a ``buildlog.BuildLog``, default: a new one) receives the converter's output and is
    published as ``build.log``. Returns (version_dir, manifest)."""
    from .buildlog import BuildLog
    from .dataset import check_against_model
    from .repository import check_model_name, check_repository, next_version, staging

    opts = options or BuildOptions()
    requested = tuple(k for k in ALL_KINDS if k in opts.kinds)
    if not requested:
        raise ValueError("no variant kinds to build")
    repo = check_repository(repo, create=True)
    check_model_name(model)
    version = str(version) if version is not None else next_version(repo, model)
    source.choose_prediction(opts.prediction_output)
    model_inputs = with_preprocessing(source.inputs, opts.preprocessing)
    if dataset is not None:
        check_against_model(dataset, model_inputs, source.num_classes)
        if representative is None:
            representative = dataset.representative(opts.representative_n)
    elif representative is not None:
        representative = [representative] if isinstance(representative, np.ndarray) else list(representative)
    blog = build_log if build_log is not None else BuildLog()
    try:
        with blog:
            kinds = _buildable(source, requested, representative is not None, opts.explicit_kinds, blog.note)
            if any(KINDS[k].quantization == "full_int8" for k in kinds) and representative is None:
                raise ValueError("full-integer kinds need a dataset or representative inputs")
            with staging(repo, model, version) as tmp:
                manifest = _build(tmp, model, version, source, dataset, model_inputs, representative, kinds,
                                  opts, source_sha256, blog)
                save_manifest(manifest, tmp)
                blog.publish(tmp)
    finally:
        if build_log is None:      # a log of our own: the published copy is the one that stays
            blog.discard()
    final = repo / model / version
    blog.published_at = final / "build.log"
    if log is not None:
        log(f"published {final}")
    return final, manifest


def _build(tmp: Path, model: str, version: str, source: Any, dataset: Any, model_inputs: tuple[TensorSpec, ...],
           representative: Any, kinds: tuple[str, ...], opts: BuildOptions, source_sha256: str | None,
           blog: Any) -> Manifest:
    from .convert import tensor_specs_from_saved_model, tensor_specs_from_tflite
    from .measure import measure_variant
    from .metrics import classification_metrics
    from .prune import prune_keras, prune_variables
    from .runtime import load_variant
    from .structure import describe_tflite, prunable_sparsity
    from .. import __version__

    work = Path(tempfile.mkdtemp(prefix=".work-", dir=tmp))  # scratch, removed before publish
    built: dict[str, dict[str, Any]] = {}
    original = source.get_weights()
    fine_tune = bool(dataset is not None and dataset.x_train is not None and source.can_fine_tune
                     and opts.epochs > 0)
    pred = source.prediction_index

    def convert(kind: KindSpec) -> None:
        path = tmp / kind.path
        _write_bytes(path, source.to_tflite(kind.quantization, representative))
        ins, outs = tensor_specs_from_tflite(path, model_inputs, source.outputs)
        built[kind.name] = {"inputs": ins, "outputs": outs, "structure": describe_tflite(path),
                            "sparsity": prunable_sparsity(path)[0]}

    bar = _bar(len(kinds), "convert", opts.progress, blog.terminal)
    try:
        for name in kinds:
            kind = KINDS[name]
            if kind.sparsity is None and kind.runtime == "litert":
                bar.set_postfix_str(name)
                convert(kind)
                bar.update(1)
        groups: dict[float, list[KindSpec]] = {}
        for name in kinds:
            if KINDS[name].sparsity is not None:
                groups.setdefault(KINDS[name].sparsity, []).append(KINDS[name])
        for sparsity, group in groups.items():
            bar.set_postfix_str(f"pruning to {sparsity:.0%}" + (" + fine-tune" if fine_tune else ""))
            if source.keras_model is not None:
                tuned = prune_keras(source.keras_model, sparsity,
                                    dataset.float_inputs("train") if fine_tune else None,
                                    dataset.y_train if fine_tune else None,
                                    epochs=opts.epochs, batch_size=opts.batch_size, prediction_index=pred)
            else:
                prune_variables(source.prunable_variables(), sparsity)
                tuned = False
            source.weights_changed()
            try:
                for kind in group:
                    bar.set_postfix_str(kind.name)
                    convert(kind)
                    built[kind.name]["pruning"] = Pruning(sparsity, "magnitude", tuned)
                    bar.update(1)
            finally:
                source.set_weights(original)
        if "float32_tf" in kinds:
            bar.set_postfix_str("float32_tf")
            kind = KINDS["float32_tf"]
            source.export_saved_model(tmp / kind.path)
            ins, outs = tensor_specs_from_saved_model(tmp / kind.path, model_inputs, source.outputs)
            if "float32" in built:
                ref = built["float32"]
            else:
                scratch = work / "float32.tflite"
                _write_bytes(scratch, source.to_tflite("none"))
                ref = {"structure": describe_tflite(scratch), "sparsity": prunable_sparsity(scratch)[0]}
            built["float32_tf"] = {"inputs": ins, "outputs": outs, "structure": ref["structure"],
                                   "sparsity": ref["sparsity"]}
            bar.update(1)
    finally:
        bar.close()
        source.set_weights(original)

    def record(name: str, metrics: Metrics | None = None, memory: int = 0,
               latency: Latency | None = None) -> VariantRecord:
        kind, b = KINDS[name], built[name]
        path = tmp / kind.path
        return VariantRecord(
            name=name, kind=name, runtime=kind.runtime, path=kind.path,
            quantization=kind.quantization, pruning=b.get("pruning"),
            sparsity=float(b["sparsity"]), size_bytes=_size_bytes(path), sha256=sha256_path(path),
            memory_bytes=int(memory), metrics=metrics,
            latency_ms_1thread=latency or Latency(0.0, 0.0, 0),
            inputs=tuple(replace(TensorSpec.from_dict(t, "input"), preprocessing=m.preprocessing)
                         for t, m in zip(b["inputs"], model_inputs)),
            outputs=tuple(TensorSpec.from_dict(t, "output") for t in b["outputs"]),
            structure=b["structure"])

    metrics: dict[str, Metrics] = {}
    if dataset is not None:
        bar = _bar(len(kinds), "evaluate", opts.progress, blog.terminal)
        try:
            for name in kinds:
                bar.set_postfix_str(name)
                v = load_variant(tmp, record(name), num_threads=opts.eval_threads)
                preds = [np.argmax(v.run(dataset.val_inputs(i, i + 64))[pred], axis=-1)
                         for i in range(0, dataset.n_val, 64)]
                v.close()
                metrics[name] = classification_metrics(dataset.y_val, np.concatenate(preds))
                bar.update(1)
        finally:
            bar.close()

    measured: dict[str, dict[str, Any]] = {}
    if opts.measure:
        sample = (dataset.val_inputs(0, 1) if dataset is not None else
                  [np.asarray(r[:1]) for r in representative] if representative is not None else
                  _synthetic_sample(model_inputs))
        bar = _bar(len(kinds), "measure", opts.progress, blog.terminal)
        try:
            for name in kinds:
                bar.set_postfix_str(name)
                measured[name] = measure_variant(tmp, record(name).to_dict(), sample,
                                                 runs=opts.latency_runs, max_s=opts.latency_max_s)
                bar.update(1)
        finally:
            bar.close()

    records = []
    for name in kinds:
        m = measured.get(name, {"memory_bytes": 0, "latency_ms_1thread": {"median": 0.0, "p90": 0.0, "n": 0}})
        records.append(record(name, metrics.get(name), m["memory_bytes"],
                              Latency.from_dict(m["latency_ms_1thread"], "latency")))
    shutil.rmtree(work, ignore_errors=True)
    return Manifest(
        model=model, version=version,
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        adaptd_version=__version__, tools=_tools(),
        source=Source(path=str(source.path), format=source.format, sha256=source_sha256),
        task=Task("classification", source.num_classes, accuracy_known=dataset is not None,
                  prediction_output=source.outputs[pred].name),
        dataset=None if dataset is None else DatasetInfo(dataset.path, dataset.sha256, dataset.n_train, dataset.n_val),
        variants=tuple(records), inputs=model_inputs, outputs=tuple(source.outputs))


