"""``adaptd variants build``: derive every variant of a source model into a repository entry.

``build_entry`` is the pipeline (the CLI, the demo, the zoo and the tests all use it):

1. stage "convert": float32 / float16 / int8 dynamic-range / full-integer int8 (representative
   inputs from the training split, else validation) LiteRT files, the float32 SavedModel for
   the TensorFlow runtime, and magnitude-pruned variants (fine-tuned with a fixed mask when
   training data is given and the source is a Keras model, one-shot otherwise), each with its
   sha256, size, achieved sparsity (counted in the file) and graph structure;
2. stage "evaluate": top-1 accuracy and macro precision/recall/F1 of every variant on the
   validation split, run through ``adaptd.variants.runtime`` exactly as the daemon runs it;
3. stage "measure": memory after load and 1-thread latency, each variant in a fresh process
   (see ``measure.py``);
4. the manifest is written last and the staging directory is renamed into place
   (``repository.staging``): a failure or interrupt at any point publishes nothing.

Errors the user can fix surface as ``adaptd.cli.main.UserError`` (one line, exit 1).
Not thread-safe: it mutates the source model's weights while pruning (restoring them after).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .digest import sha256_path
from .manifest import (DatasetInfo, Latency, Manifest, Metrics, Pruning, Source, Task, TensorSpec,
                       VariantRecord, save_manifest)


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


@dataclass
class BuildOptions:
    """Knobs of ``build_entry``; the defaults are the CLI's."""

    kinds: tuple[str, ...] = ALL_KINDS
    epochs: int = 2                  # fine-tuning epochs per pruned variant
    batch_size: int = 64
    progress: bool = True
    latency_runs: int = 50           # timed runs per variant at most ...
    latency_max_s: float = 1.0       # ... or this long, whichever ends first
    representative_n: int = 100      # int8 calibration inputs
    eval_threads: int = 2
    measure: bool = True             # False only for internal quick paths; records zeros
    extra: dict[str, Any] = field(default_factory=dict)


def parse_kinds(text: str | None) -> tuple[str, ...]:
    """``"float32,int8_full"`` -> ordered tuple; ``None``/``"all"`` -> every kind."""
    from adaptd.cli import UserError

    if text is None or text.strip() in ("", "all"):
        return ALL_KINDS
    asked = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in asked if k not in KINDS]
    if unknown:
        raise UserError(f"unknown variant kind(s) {', '.join(unknown)}; known: {', '.join(ALL_KINDS)}")
    return tuple(k for k in ALL_KINDS if k in asked)


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


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{desc:<9}", unit="variant", disable=not progress,
                file=sys.stderr, leave=True, dynamic_ncols=True)


def build_entry(repo: Path, model: str, source: Any, dataset: Any | None, *,
                version: str | None = None, options: BuildOptions | None = None,
                source_sha256: str | None = None, representative: np.ndarray | None = None,
                log: Any = None) -> tuple[Path, Manifest]:
    """Build ``options.kinds`` of ``source`` (a ``convert.SourceModel``) and publish them as
    ``repo/model/version`` (default version: next free). ``dataset`` (``dataset.Dataset``)
    gives calibration inputs, fine-tuning data and metrics; without it (zoo) metrics are null
    and ``representative`` must be given for int8_full kinds. Returns (version_dir, manifest)."""
    from .convert import tensor_specs_from_saved_model, tensor_specs_from_tflite
    from .metrics import classification_metrics
    from .measure import measure_variant
    from .prune import prune_keras, prune_variables
    from .repository import check_model_name, check_repository, next_version, staging
    from .runtime import load_variant
    from .structure import describe_tflite, prunable_sparsity
    from .. import __version__

    opts = options or BuildOptions()
    kinds = tuple(k for k in ALL_KINDS if k in opts.kinds)
    if not kinds:
        raise ValueError("no variant kinds to build")
    repo = check_repository(repo, create=True)
    check_model_name(model)
    version = str(version) if version is not None else next_version(repo, model)
    if representative is None and dataset is not None:
        representative = dataset.representative(opts.representative_n)
    needs_rep = any(KINDS[k].quantization == "full_int8" for k in kinds)
    if needs_rep and representative is None:
        raise ValueError("full-integer kinds need a dataset or representative inputs")
    say = log or (lambda msg: None)

    with staging(repo, model, version) as tmp:
        work = Path(tempfile.mkdtemp(prefix=".work-", dir=tmp))  # scratch, removed before publish
        built: dict[str, dict[str, Any]] = {}
        original = source.get_weights()
        fine_tune = bool(dataset is not None and dataset.x_train is not None and source.can_fine_tune
                         and opts.epochs > 0)

        def convert(kind: KindSpec) -> None:
            path = tmp / kind.path
            data = source.to_tflite(kind.quantization, representative)
            _write_bytes(path, data)
            ins, outs = tensor_specs_from_tflite(path)
            built[kind.name] = {"inputs": ins, "outputs": outs, "structure": describe_tflite(path),
                                "sparsity": prunable_sparsity(path)[0]}

        bar = _bar(len(kinds), "convert", opts.progress)
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
                                        dataset.x_train if fine_tune else None,
                                        dataset.y_train if fine_tune else None,
                                        epochs=opts.epochs, batch_size=opts.batch_size)
                else:
                    prune_variables(source.prunable_variables(), sparsity)
                    tuned = False
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
                ins, outs = tensor_specs_from_saved_model(tmp / kind.path)
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
                inputs=tuple(TensorSpec.from_dict(t, "input") for t in b["inputs"]),
                outputs=tuple(TensorSpec.from_dict(t, "output") for t in b["outputs"]),
                structure=b["structure"])

        metrics: dict[str, Metrics] = {}
        if dataset is not None:
            bar = _bar(len(kinds), "evaluate", opts.progress)
            try:
                for name in kinds:
                    bar.set_postfix_str(name)
                    v = load_variant(tmp, record(name), num_threads=opts.eval_threads)
                    preds = []
                    for i in range(0, dataset.n_val, 64):
                        out = v.run([dataset.x_val[i:i + 64]])[0]
                        preds.append(np.argmax(out, axis=-1))
                    v.close()
                    metrics[name] = classification_metrics(dataset.y_val, np.concatenate(preds))
                    bar.update(1)
            finally:
                bar.close()

        measured: dict[str, dict[str, Any]] = {}
        if opts.measure:
            sample = (dataset.x_val[:1] if dataset is not None else np.asarray(representative[:1]))
            bar = _bar(len(kinds), "measure", opts.progress)
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
        import shutil
        shutil.rmtree(work, ignore_errors=True)
        manifest = Manifest(
            model=model, version=version,
            created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            adaptd_version=__version__, tools=_tools(),
            source=Source(path=str(source.path), format=source.format, sha256=source_sha256),
            task=Task("classification", source.num_classes, accuracy_known=dataset is not None),
            dataset=None if dataset is None else DatasetInfo(dataset.path, dataset.sha256, dataset.n_train, dataset.n_val),
            variants=tuple(records))
        save_manifest(manifest, tmp)
    final = repo / model / version
    say(f"published {final}")
    return final, manifest


# --- presentation -----------------------------------------------------------------------


def _fmt_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def summary_table(manifest: Manifest) -> str:
    """A plain-text table: variant, size, accuracy, F1, what it keeps of float32, latency, ..."""
    ref = next((v.metrics for v in manifest.variants if v.name == "float32" and v.metrics), None)
    head = ("variant", "runtime", "size", "accuracy", "F1", "keeps", "sparsity", "latency_ms(1t)", "memory")
    rows = []
    for v in manifest.variants:
        m = v.metrics
        keeps = f"{m.accuracy / ref.accuracy:.1%}" if (m and ref and ref.accuracy) else "-"
        rows.append((v.name, v.runtime, _fmt_size(v.size_bytes),
                     f"{m.accuracy:.4f}" if m else "unknown", f"{m.f1_macro:.4f}" if m else "unknown",
                     keeps, f"{v.sparsity:.2f}",
                     f"{v.latency_ms_1thread.median:.3f}" if v.latency_ms_1thread.n else "-",
                     _fmt_size(v.memory_bytes)))
    widths = [max(len(str(r[i])) for r in (head, *rows)) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    title = f"{manifest.model} v{manifest.version}"
    if manifest.dataset:
        title += f"  (validation n={manifest.dataset.n_val})"
    return "\n".join([title, line(head), line(tuple("-" * w for w in widths)), *map(line, rows)])


# --- CLI entry points -------------------------------------------------------------------


def user_error_from(exc: BaseException) -> Exception:
    """Map a pipeline exception onto the CLI's one-line ``UserError``."""
    from adaptd.cli import UserError

    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        return UserError(f"write failed{where}: {exc.strerror or exc}")
    return UserError(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)


def run_build(args: argparse.Namespace) -> int:
    from .convert import ConversionError, SourceError, open_source, quiet_tensorflow
    from .dataset import DatasetError, check_against_model, file_sha256, load_dataset
    from .measure import MeasureError
    from .repository import RepositoryError, check_model_name, check_repository
    from .runtime import VariantLoadError

    kinds = parse_kinds(args.kinds)
    expected = (SourceError, DatasetError, RepositoryError, ConversionError, MeasureError,
                VariantLoadError, OSError, ValueError)
    try:
        check_repository(args.repository, create=False) if Path(args.repository).exists() else None
        if Path(args.repository).exists() and not Path(args.repository).is_dir():
            raise RepositoryError(f"repository path {args.repository} is a file, not a directory")
        name = check_model_name(args.name or Path(args.model).name.removesuffix(".keras"))
        if args.model_version is not None and not str(args.model_version).isdigit():
            raise RepositoryError(f"invalid version {args.model_version!r}: expected a decimal integer")
        dataset = load_dataset(args.data)
        quiet_tensorflow()
        source = open_source(args.model)
        check_against_model(dataset, source.input_shape, source.num_classes)
        sha = file_sha256(Path(args.model)) if Path(args.model).is_file() else None
        opts = BuildOptions(kinds=kinds, epochs=args.epochs, progress=not args.no_progress)
        _, manifest = build_entry(args.repository, name, source, dataset, version=args.model_version,
                                  options=opts, source_sha256=sha)
    except expected as exc:
        raise user_error_from(exc) from exc
    print(summary_table(manifest))
    return 0


def run_kinds(args: argparse.Namespace) -> int:
    for k in KINDS.values():
        print(f"{k.name:<14} {k.runtime:<10} {k.description}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from adaptd.cli import UserError
    from .manifest import ManifestError
    from .repository import RepositoryError, check_repository, resolve

    try:
        check_repository(args.repository)
        _, manifest = resolve(args.repository, args.model, args.model_version)
    except (RepositoryError, ManifestError) as exc:
        raise UserError(str(exc)) from exc
    print(summary_table(manifest))
    return 0
