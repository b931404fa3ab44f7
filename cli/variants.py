"""The ``adaptd variants build | kinds | show | zoo`` and ``adaptd demo build`` commands: arguments
in, summary table out.

``run_build`` runs ``build.build_entry`` with everything TensorFlow and the converter print kept
in the build log (``buildlog.BuildLog``): the terminal shows the progress bars, the lines the
user must act on (kinds that cannot be built from the source), the summary table and the log's
path. Every error the user can fix is one ``UserError`` line (exit 1) and publishes nothing; a
conversion failure names the log, which is then kept in the temporary directory.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

from adaptd.cli import UserError
from adaptd.variants.build import KindError, parse_kinds
from adaptd.variants.manifest import Manifest, Preprocessing

PREPROCESS_FORM = "[NAME=]uint8:SCALE:OFFSET or [NAME=]uint8:model"


# --- presentation -----------------------------------------------------------------------


def _fmt_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _signature_lines(manifest: Manifest) -> list[str]:
    """The inputs and the prediction, when there is more to say than one float input."""
    simple = (len(manifest.inputs) == 1 and len(manifest.outputs) == 1
              and manifest.inputs[0].preprocessing is None)
    if simple:
        return []
    lines = []
    for t in manifest.inputs:
        text = f"input {t.name}: {t.dtype} {list(t.shape)}"
        p = t.preprocessing
        if p is not None:
            text += (f"; takes {p.source_dtype} frames "
                     + ("as they are (the model scales them)" if p.in_model
                        else f"(x = frame * {p.scale} + {p.offset})"))
        lines.append(text)
    if len(manifest.outputs) > 1:
        lines.append(f"prediction: output {manifest.task.prediction_output} "
                     f"(of {', '.join(o.name for o in manifest.outputs)})")
    return lines


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
    return "\n".join([title, *_signature_lines(manifest), line(head), line(tuple("-" * w for w in widths)),
                      *map(line, rows)])


# --- arguments ----------------------------------------------------------------------------


def _numbers(text: str) -> float | tuple[float, ...]:
    """``"0.5"``, ``"1/255"`` or ``"0.1,0.2,0.3"`` (one per channel)."""
    values = tuple(float(Fraction(v.strip())) for v in text.split(","))
    return values[0] if len(values) == 1 else values


def parse_preprocessing(items: list[str] | None) -> dict[str, Preprocessing]:
    """``--preprocess`` values -> {input name ("" = the only input): spec}; ``ValueError`` with
    one line for a malformed one."""
    out: dict[str, Preprocessing] = {}
    for item in items or ():
        name, _, spec = item.rpartition("=") if "=" in item else ("", "", item)
        parts = spec.split(":")
        try:
            if len(parts) == 2 and parts[1].strip() == "model":
                pre = Preprocessing(1.0, 0.0, parts[0].strip(), True)
            elif len(parts) == 3:
                pre = Preprocessing(_numbers(parts[1]), _numbers(parts[2]), parts[0].strip(), False)
            else:
                raise ValueError(spec)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"--preprocess {item!r}: expected {PREPROCESS_FORM}") from None
        bad = [v for v in ((pre.scale,) if isinstance(pre.scale, float) else pre.scale) if not v > 0]
        if bad:
            raise ValueError(f"--preprocess {item!r}: the scale must be > 0")
        if name.strip() in out:
            raise ValueError(f"--preprocess names input {name.strip() or '(the only one)'} twice")
        out[name.strip()] = pre
    return out


# --- CLI entry points -------------------------------------------------------------------


def kinds_of(text: str | None) -> tuple[str, ...]:
    try:
        return parse_kinds(text)
    except KindError as exc:
        raise UserError(str(exc)) from None


def user_error_from(exc: BaseException, log: Path | None = None) -> Exception:
    """Map a pipeline exception onto the CLI's one-line ``UserError`` (naming ``log`` if given)."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        text = f"write failed{where}: {exc.strerror or exc}"
    else:
        text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return UserError(text + (f" (build log: {log})" if log is not None else ""))


def run_build(args: argparse.Namespace) -> int:
    from adaptd.variants.build import BuildOptions, build_entry, with_preprocessing
    from adaptd.variants.buildlog import BuildLog
    from adaptd.variants.convert import ConversionError, SourceError, open_source, quiet_tensorflow
    from adaptd.variants.dataset import DatasetError, check_against_model, file_sha256, load_dataset
    from adaptd.variants.measure import MeasureError
    from adaptd.variants.repository import RepositoryError, check_model_name, check_repository
    from adaptd.variants.runtime import VariantLoadError

    kinds = kinds_of(args.kinds)
    explicit = args.kinds is not None and args.kinds.strip() not in ("", "all")
    expected = (SourceError, DatasetError, RepositoryError, ConversionError, MeasureError,
                VariantLoadError, OSError, ValueError)
    keep_log_for = (ConversionError, MeasureError, VariantLoadError)
    blog = BuildLog()
    try:
        with blog:
            check_repository(args.repository, create=False) if Path(args.repository).exists() else None
            if Path(args.repository).exists() and not Path(args.repository).is_dir():
                raise RepositoryError(f"repository path {args.repository} is a file, not a directory")
            model_path = Path(args.model)
            name = check_model_name(args.name or model_path.name.removesuffix(".keras").removesuffix(".tflite"))
            if args.model_version is not None and not str(args.model_version).isdigit():
                raise RepositoryError(f"invalid version {args.model_version!r}: expected a decimal integer")
            preprocessing = parse_preprocessing(getattr(args, "preprocess", None))
            if args.data is None and model_path.suffix != ".tflite":
                raise DatasetError("--data is required for a .keras or SavedModel source "
                                   "(it measures accuracy and calibrates int8); only a .tflite may go without")
            dataset = load_dataset(args.data) if args.data is not None else None
            quiet_tensorflow()
            source = open_source(model_path)
            source.choose_prediction(getattr(args, "prediction_output", None))
            inputs = with_preprocessing(source.inputs, preprocessing)
            if dataset is not None:
                check_against_model(dataset, inputs, source.num_classes)
            sha = file_sha256(model_path) if model_path.is_file() else None
            opts = BuildOptions(kinds=kinds, explicit_kinds=explicit, epochs=args.epochs,
                                progress=not args.no_progress, preprocessing=preprocessing,
                                prediction_output=getattr(args, "prediction_output", None))
            _, manifest = build_entry(args.repository, name, source, dataset, version=args.model_version,
                                      options=opts, source_sha256=sha, build_log=blog)
    except expected as exc:
        keep = isinstance(exc, keep_log_for)
        if not keep:
            blog.discard()
        raise user_error_from(exc, blog.path if keep else None) from exc
    except BaseException:
        blog.discard()
        raise
    blog.discard()
    print(summary_table(manifest))
    print(f"build log: {blog.published_at}")
    return 0


def run_kinds(args: argparse.Namespace) -> int:
    from adaptd.variants.build import KINDS

    for k in KINDS.values():
        print(f"{k.name:<14} {k.runtime:<10} {k.description}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from adaptd.variants.manifest import ManifestError
    from adaptd.variants.repository import RepositoryError, check_repository, resolve

    try:
        check_repository(args.repository)
        _, manifest = resolve(args.repository, args.model, args.model_version)
    except (RepositoryError, ManifestError) as exc:
        raise UserError(str(exc)) from exc
    print(summary_table(manifest))
    return 0


def run_zoo(args: argparse.Namespace) -> int:
    from adaptd.variants.zoo import ARCHS, DEFAULT_REPOSITORY, build_zoo

    if args.list:
        for a in ARCHS.values():
            print(f"{a.name:<18} native {a.native_size}x{a.native_size}")
        return 0
    match = {k.lower(): k for k in ARCHS}.get(str(args.name).lower())
    if match is None:
        raise UserError(f"unknown architecture {args.name!r}; known: {', '.join(ARCHS)}")
    kinds = kinds_of(args.kinds)
    if args.input_size is not None and args.input_size < ARCHS[match].min_size:
        raise UserError(f"{match} needs --input-size >= {ARCHS[match].min_size}, got {args.input_size}")
    try:
        version_dir, manifest = build_zoo(match, args.repository or DEFAULT_REPOSITORY, args.input_size,
                                          kinds, progress=not args.no_progress)
    except (OSError, ValueError, RuntimeError) as exc:
        raise user_error_from(exc) from exc
    print(summary_table(manifest))
    print(f"build log: {version_dir / 'build.log'}")
    return 0


def run_demo_build(args: argparse.Namespace) -> int:
    from adaptd.variants.demo import build_demo

    kinds = kinds_of(args.kinds)
    try:
        version_dir, manifest = build_demo(args.repository, epochs=args.epochs, kinds=kinds,
                                           progress=not args.no_progress)
    except (OSError, ValueError, RuntimeError) as exc:
        raise user_error_from(exc) from exc
    print(summary_table(manifest))
    print(f"build log: {version_dir / 'build.log'}")
    return 0
