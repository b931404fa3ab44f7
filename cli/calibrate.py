"""``adaptd calibrate``: profile this device's placements to calibrate the selector's structural
predictor, and say how well it predicts arms it did not see.

Takes the ``argparse.Namespace`` built by :mod:`adaptd.cli.main`. The placements are the
daemon's (its discovery, filtered by ``--config``'s ``[placements]``, LiteRT ones only): this
module brings the daemon's config and discovery to :func:`adaptd.variants.calibrate.calibrate`,
which knows neither. A bad config, repository or model is one line (UserError).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adaptd.cli import UserError
from adaptd.daemon.config import PlacementsConfig, load_config
from adaptd.daemon.placements import discover
from adaptd.variants.calibrate import calibrate, write_calibration


def daemon_placements(config_path: Path | None) -> list[dict]:
    """The daemon's LiteRT placements, as ``calibrate`` takes them."""
    pcfg = load_config(config_path).placements if config_path is not None else PlacementsConfig()
    return [p.to_dict() for p in discover(pcfg) if p.runtime == "litert"]


def run_calibrate(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()] if getattr(args, "models", None) else None
    try:
        placements = daemon_placements(getattr(args, "config", None))
    except (OSError, ValueError) as exc:   # ConfigError is a ValueError
        raise UserError(f"placements: {exc}") from exc
    progress = None if getattr(args, "no_progress", False) else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        doc = calibrate(args.repository, placements, models, repeats=args.repeats, progress=progress,
                        rounds=getattr(args, "rounds", 3))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    path = write_calibration(args.repository, doc)
    h = doc["holdout"]
    mape = "n/a" if h["mape"] is None else f"{100 * h['mape']:.1f}%"
    print(f"calibrated {len(doc['records'])} arms on {', '.join(p['name'] for p in doc['placements'])} "
          f"({doc['device']['cpu_model']}) in {doc['duration_s']:.1f} s")
    sp = doc["measurement_spread"]
    print(f"measurement spread between rounds: median {100 * sp['median']:.1f}%, max {100 * sp['max']:.1f}%")
    print(f"held-out latency error ({h['method']}, {h['n']} arms): median APE {mape}"
          + ("" if h["mean_ape"] is None else f", mean APE {100 * h['mean_ape']:.1f}%"))
    for model, e in sorted((h.get("per_model") or {}).items()):
        print(f"  {model}: median APE {'n/a' if e is None else f'{100 * e:.1f}%'}")
    if h.get("totals_mape") is not None:
        print(f"  (the per-op-type totals model alone: median APE {100 * h['totals_mape']:.1f}%)")
    print(f"wrote {path}")
    return 0
