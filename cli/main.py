"""The ``adaptd`` command line: argument parsing only.

Each subcommand maps its arguments onto one function, ``run(args) -> int``, in the
module that owns the work; that module is imported only when its command runs, so
``adaptd --help`` and the client commands never import TensorFlow.

Exit codes: 0 success, 1 the work failed (one clear line on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from adaptd.cli import UserError

DEFAULT_ENDPOINT_ENV = "ADAPTD_ENDPOINT"


def _target(parser: argparse.ArgumentParser, spec: str) -> None:
    parser.set_defaults(_target=spec)


def _add_endpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint",
        default=None,
        help="daemon endpoint (unix://PATH, ipc://PATH or tcp://HOST:PORT); default: $ADAPTD_ENDPOINT, "
        "else the daemon's local stream where it serves one, else its ipc socket",
    )
    p.add_argument("--timeout-ms", type=float, default=30000.0, help="reply timeout (ms)")


def _add_constraints(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-accuracy", type=float, default=None, help="minimum top-1 accuracy (0..1)")
    p.add_argument("--max-latency-ms", type=float, default=None, help="latency bound (ms)")
    p.add_argument("--latency-confidence", type=float, default=None,
                   help="how sure the daemon must be that the latency bound holds, in [0.5, 1) "
                        "(default: the daemon's [selector] confidence)")
    p.add_argument("--max-energy-mj", type=float, default=None, help="energy bound (mJ)")
    p.add_argument(
        "--objective", choices=("latency", "energy", "accuracy"), default="latency",
        help="what to minimise (latency, energy) or maximise (accuracy) among feasible choices",
    )
    p.add_argument(
        "--on-infeasible", choices=("reject", "best_effort"), default="reject",
        help="when no choice meets the constraints: reject, or run the closest one",
    )
    p.add_argument("--variant", default=None, help="pin the variant (experiments)")
    p.add_argument("--placement", default=None, help="pin the placement (experiments)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptd",
        description="On-device adaptive inference: build model variants, serve them, pick one per request.",
    )
    parser.add_argument("--version", action="version", version=f"adaptd {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # --- serving ---------------------------------------------------------------------------
    p = sub.add_parser("serve", help="run the daemon")
    p.add_argument("--config", type=Path, default=None, help="TOML config file (see systemd/adaptd.toml)")
    p.add_argument("--repository", type=Path, default=None, help="override the config's repository path")
    p.add_argument("--endpoint", action="append", default=None,
                   help="override the config's endpoints (repeatable)")
    _target(p, "adaptd.cli.serve:run_serve")

    p = sub.add_parser("keys", help="make CurveZMQ key pairs for [auth] curve")
    ksub = p.add_subparsers(dest="keys_command", metavar="SUBCOMMAND")
    ksub.required = True
    p = ksub.add_parser("new", help="write NAME.key (public) and NAME.key_secret into DIR")
    p.add_argument("directory", type=Path)
    p.add_argument("name", help="e.g. server, or a client's name")
    _target(p, "adaptd.cli.commands:run_keys_new")

    # --- variants ------------------------------------------------------------------------
    pv = sub.add_parser("variants", help="build and inspect precompressed variants")
    vsub = pv.add_subparsers(dest="variants_command", metavar="SUBCOMMAND")
    vsub.required = True
    p = vsub.add_parser("build", help="build a model's variants into a repository")
    p.add_argument("model", type=Path, help="source model: a .keras file, a SavedModel directory or a .tflite file")
    p.add_argument("--data", type=Path, default=None,
                   help=".npz with x_val/y_val (x_val/<input> per input) and optionally x_train/y_train; "
                        "required unless the model is a .tflite")
    p.add_argument("--prediction-output", default=None,
                   help="the output that is the class prediction (default: the only (N, classes) output)")
    p.add_argument("--preprocess", action="append", default=None, metavar="[NAME=]uint8:SCALE:OFFSET",
                   help="accept uint8 frames for input NAME: x = frame * SCALE + OFFSET (numbers, a/b, or one "
                        "per channel, comma-separated); [NAME=]uint8:model when the model scales its input itself")
    p.add_argument("--repository", type=Path, required=True, help="model repository root")
    p.add_argument("--name", default=None, help="model name (default: the source file's stem)")
    p.add_argument("--version", dest="model_version", default=None,
                   help="version (default: one more than the newest present)")
    p.add_argument("--kinds", default=None,
                   help="comma-separated variant kinds to build (default: all); see `adaptd variants kinds`")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per pruned variant")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _target(p, "adaptd.cli.variants:run_build")
    p = vsub.add_parser("zoo", help="build latency-only variants of a keras.applications model (random weights)")
    p.add_argument("name", help="architecture, e.g. MobileNetV2, ResNet50 (`adaptd variants zoo --list`)")
    p.add_argument("--repository", type=Path, required=False, default=None)
    p.add_argument("--kinds", default=None, help="comma-separated variant kinds (default: all)")
    p.add_argument("--input-size", type=int, default=None, help="input side in pixels (default: native)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--list", action="store_true", help="list the architectures and exit")
    _target(p, "adaptd.cli.variants:run_zoo")
    p = vsub.add_parser("kinds", help="list the variant kinds")
    _target(p, "adaptd.cli.variants:run_kinds")
    p = vsub.add_parser("show", help="print a repository entry's manifest as a table")
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("model")
    p.add_argument("--version", dest="model_version", default=None)
    _target(p, "adaptd.cli.variants:run_show")

    p = sub.add_parser("demo", help="the built-in demo model (digits CNN)")
    dsub = p.add_subparsers(dest="demo_command", metavar="SUBCOMMAND")
    dsub.required = True
    p = dsub.add_parser("build", help="train the demo CNN on scikit-learn's digits and build its variants")
    p.add_argument("--repository", type=Path, default=Path("demo-repo"))
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--kinds", default=None)
    p.add_argument("--no-progress", action="store_true")
    _target(p, "adaptd.cli.variants:run_demo_build")
    p = dsub.add_parser("run", help="build the demo (if needed), start the daemon, send requests, print the selections")
    p.add_argument("--repository", type=Path, default=Path("demo-repo"))
    p.add_argument("--workdir", type=Path, default=Path("var/demo"),
                   help="where the daemon's config, log and selection store go")
    p.add_argument("--no-progress", action="store_true")
    _target(p, "adaptd.cli.tools:run_demo")

    p = sub.add_parser("calibrate", help="profile this device to calibrate the structural cost predictor")
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--config", type=Path, default=None, help="daemon config (for the placements)")
    p.add_argument("--models", default=None, help="comma-separated models to profile (default: all)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per arm and round")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds interleaved over all arms; an arm's latency is its least round median")
    p.add_argument("--no-progress", action="store_true")
    _target(p, "adaptd.cli.calibrate:run_calibrate")

    # --- clients -------------------------------------------------------------------------
    p = sub.add_parser("infer", help="send one inference request and print the selection")
    p.add_argument("model", help="model name[:version]")
    p.add_argument("input", type=Path, help="input: .npy, .npz (first array or --key) or an image file")
    p.add_argument("--key", default=None, help="array name inside an .npz")
    p.add_argument("--index", type=int, default=None, help="take one sample of a batch (row INDEX)")
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    _add_constraints(p)
    _add_endpoint(p)
    _target(p, "adaptd.cli.commands:run_infer")

    p = sub.add_parser("explain", help="dry run: what the daemon would choose for a request, and why")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    _add_constraints(p)
    _add_endpoint(p)
    _target(p, "adaptd.cli.commands:run_explain")

    for name, help_text in (("models", "list models, variants and placements"),
                            ("stats", "per-arm live statistics"),
                            ("health", "daemon health")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true")
        _add_endpoint(p)
        _target(p, f"adaptd.cli.commands:run_{name}")

    p = sub.add_parser("reload", help="ask the daemon to reload its repository")
    _add_endpoint(p)
    _target(p, "adaptd.cli.commands:run_reload")

    pf = sub.add_parser("fidelity", help="live fidelity: the variants' agreement with the reference")
    fsub = pf.add_subparsers(dest="fidelity_command", metavar="SUBCOMMAND")
    fsub.required = True
    p = fsub.add_parser("export", help="write the inputs the variants disagreed on as an .npz for "
                                       "`adaptd variants build --data` ([fidelity] reservoir = true)")
    p.add_argument("model")
    p.add_argument("--version", default=None, help="default: the newest the daemon tracks")
    p.add_argument("--out", type=Path, required=True, help="the .npz to write")
    _add_endpoint(p)
    _target(p, "adaptd.cli.commands:run_fidelity_export")

    pl = sub.add_parser("log", help="the selection store: follow or export it")
    lsub = pl.add_subparsers(dest="log_command", metavar="SUBCOMMAND")
    lsub.required = True
    p = lsub.add_parser("tail", help="follow selections live from the daemon's PUB stream")
    p.add_argument("--model", default=None, help="only this model")
    p.add_argument("--count", type=int, default=None, help="stop after N selections")
    p.add_argument("--pub-endpoint", default=None)
    p.add_argument("--json", action="store_true")
    _target(p, "adaptd.cli.commands:run_log_tail")
    p = lsub.add_parser("export", help="export selections to CSV, Parquet or a partitioned Parquet dataset")
    p.add_argument("--store", type=Path, required=True, help="selection store (SQLite file)")
    p.add_argument("--out", type=Path, required=True,
                   help="output: a .csv or .parquet file, or a directory for a Parquet dataset partitioned "
                        "board_id=/model=/date= (whole UTC days; each export replaces the partitions it writes)")
    p.add_argument("--board-id", default=None,
                   help="the board id on every row (default: the one the daemon recorded in the store)")
    p.add_argument("--since", default=None, help="ISO time or a duration like 1h, 30m")
    p.add_argument("--model", default=None)
    _target(p, "adaptd.cli.commands:run_log_export")

    p = sub.add_parser("report", help="write an HTML report with plots of the selections")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--since", default=None, help="ISO time or a duration like 1h, 30m")
    p.add_argument("--model", default=None)
    p.add_argument("--repository", type=Path, default=None,
                   help="model repository, for accuracy on the Pareto plots")
    _target(p, "adaptd.cli.tools:run_report")

    p = sub.add_parser("load", help="drive the daemon with a LoadGen-like scenario")
    p.add_argument("model")
    p.add_argument("--scenario", choices=("single-stream", "server"), default="single-stream")
    p.add_argument("--rate", type=float, default=50.0, help="server scenario: Poisson arrival rate (req/s)")
    p.add_argument("--requests", type=int, default=200, help="number of requests")
    p.add_argument("--duration-s", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--mix", type=Path, default=None, help="TOML file with the constraint mix")
    p.add_argument("--input", type=Path, default=None, help="input file (default: zeros of the model's shape)")
    p.add_argument("--concurrency", type=int, default=64, help="server scenario: outstanding requests at most")
    p.add_argument("--json", action="store_true")
    _add_endpoint(p)
    _target(p, "adaptd.cli.tools:run_load")

    return parser


def _version() -> str:
    from adaptd import __version__

    return __version__


def _resolve(spec: str) -> Callable[[argparse.Namespace], int]:
    module_name, _, func_name = spec.partition(":")
    return getattr(importlib.import_module(module_name), func_name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = _resolve(args._target)
    try:
        return int(run(args) or 0)
    except UserError as exc:
        print(f"adaptd: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
