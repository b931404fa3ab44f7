"""``adaptd calibrate``: profile this device to calibrate the selector's structural predictor.

Contract
--------
* ``calibrate(repository, placements, ...)`` runs every LiteRT variant of every model in the
  repository (newest version each) on every LiteRT placement with a real interpreter: the
  process is pinned with ``os.sched_setaffinity`` to the placement's cores *before* the
  interpreter (and its thread pool) is created, ``num_threads`` is the placement's; model load and
  ``warmup`` invocations are excluded; each of ``rounds`` rounds (interleaved over all arms)
  takes the median of ``repeats`` timed ``invoke()`` calls, and the least round median is the
  arm's latency (the unloaded device; the spread between rounds is recorded as a noise figure).
  The affinity is restored afterwards, also on failure.
* It then measures the predictor's error on arms held out from calibration (leave-one-model-out
  when there are at least two models, else a seeded random quarter of the arms), for the
  predictor as used (kernel-level model where the structure lists ``layers``) and, for
  comparison, for the per-op-type totals model alone (``holdout.totals_mape``); it fits the
  predictor on all arms and returns the calibration document (plain JSON types).
* ``write_calibration`` stores it at ``REPOSITORY/calibration.json`` atomically (temporary file
  in the same directory, fsync, rename): a reader sees the old file or the new one.
* ``load_predictor(repository)`` gives the fitted :class:`StructuralPredictor` or None when the
  device was never calibrated.
* Manifests are read leniently (plain JSON, ``path`` or ``file`` naming the model file) so a
  repository still being written by another version of the build pipeline can be profiled.
  Variant structure comes from the manifest's ``structure``, else from ``describe_tflite``.
* Energy: this pass records none (no power meter is involved yet), so the fitted predictor has
  no power coefficients and predicts energy None until records with ``energy_mj`` are added.
* Units: ms, mJ, seconds.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from adaptd.selector.predictor import StructuralPredictor, holdout_errors
from adaptd.variants.manifest import write_text_atomic

CALIBRATION_FILE = "calibration.json"
SCHEMA = "adaptd.calibration/1"


# ----------------------------------------------------------------------------- placements
def default_placements() -> list[dict]:
    """One core at a time with one thread (``cpu:<n>``), and every allowed core together
    (``cpu:all``) with as many threads."""
    cores = sorted(os.sched_getaffinity(0))
    out = [{"name": f"cpu:{c}", "kind": "cpu", "runtime": "litert", "cores": [c], "threads": 1} for c in cores]
    if len(cores) > 1:
        out.append({"name": "cpu:all", "kind": "cpu", "runtime": "litert", "cores": cores, "threads": len(cores)})
    return out


def placements_from_config(config_path: Path | None) -> list[dict]:
    """The daemon's LiteRT placements (its discovery, filtered by the config) when the daemon's
    modules are available; otherwise :func:`default_placements`."""
    try:
        from adaptd.daemon.config import PlacementsConfig, load_config
        from adaptd.daemon.placements import discover
    except Exception:  # the daemon is not installed / not ready: fall back
        return default_placements()
    pcfg = load_config(config_path).placements if config_path is not None else PlacementsConfig()
    return [p.to_dict() for p in discover(pcfg) if p.runtime == "litert"]


# ----------------------------------------------------------------------------- repository
def _newest_version_dir(model_dir: Path) -> Path | None:
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / "manifest.json").is_file()]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def repository_variants(repository: Path, models: Sequence[str] | None = None) -> list[dict]:
    """[{model, version, variant, path, quantization, structure}] for the LiteRT variants of the
    newest version of each model (all models, or ``models``)."""
    repository = Path(repository)
    if not repository.is_dir():
        raise FileNotFoundError(f"repository {repository} does not exist")
    out = []
    names = sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))
    if models:
        missing = [m for m in models if m not in names]
        if missing:
            raise FileNotFoundError(f"model(s) {', '.join(missing)} not in repository {repository}")
        names = [n for n in names if n in models]
    for name in names:
        vdir = _newest_version_dir(repository / name)
        if vdir is None:
            continue
        manifest = json.loads((vdir / "manifest.json").read_text(encoding="utf-8"))
        for rec in manifest.get("variants", []):
            if rec.get("runtime", "litert") != "litert":
                continue
            rel = rec.get("path") or rec.get("file") or f"{rec['name']}.tflite"
            path = vdir / rel
            structure = rec.get("structure")
            if not structure:
                from adaptd.variants.structure import describe_tflite

                structure = describe_tflite(path)
            out.append({"model": manifest.get("model", name), "version": vdir.name, "variant": rec["name"],
                        "path": str(path), "quantization": rec.get("quantization"), "structure": structure})
    return out


# ----------------------------------------------------------------------------- profiling
def _fill_inputs(it: Any, rng: np.random.Generator) -> None:
    for d in it.get_input_details():
        shape = tuple(int(s) for s in d["shape"])
        dt = np.dtype(d["dtype"])
        if dt.kind == "f":
            x = rng.random(shape).astype(dt)
        else:
            info = np.iinfo(dt)
            x = rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape).astype(dt)
        it.set_tensor(d["index"], x)


def profile_arm(model_path: str | Path, cores: Sequence[int], threads: int, repeats: int = 20,
                warmup: int = 3, seed: int = 0) -> dict:
    """Median (and p90) of ``repeats`` invocations, ms, pinned to ``cores`` with ``threads``."""
    from ai_edge_litert.interpreter import Interpreter

    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(c) for c in cores})
    try:
        it = Interpreter(model_path=str(model_path), num_threads=int(threads))
        it.allocate_tensors()
        _fill_inputs(it, np.random.default_rng(seed))
        for _ in range(warmup):
            it.invoke()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            it.invoke()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        del it
    finally:
        os.sched_setaffinity(0, previous)
    times.sort()
    return {"latency_ms": statistics.median(times),
            "latency_p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))], "n": len(times)}


def _device() -> dict:
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": cpu_model or platform.processor() or None, "machine": platform.machine(),
            "cores": sorted(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "node": platform.node()}


def calibrate(repository: Path, placements: Iterable[Mapping[str, Any]] | None = None,
              models: Sequence[str] | None = None, repeats: int = 20, warmup: int = 3,
              progress: Callable[[str], None] | None = None, seed: int = 0, rounds: int = 3) -> dict:
    """Profile, evaluate on held-out arms, fit; return the calibration document."""
    if repeats < 1 or rounds < 1:
        raise ValueError("repeats and rounds must be >= 1")
    pls = [dict(p) for p in (placements if placements is not None else default_placements())
           if p.get("runtime", "litert") == "litert"]
    if not pls:
        raise ValueError("no LiteRT placement to calibrate")
    variants = repository_variants(repository, models)
    if not variants:
        raise ValueError(f"no LiteRT variants in repository {repository}")
    records = []
    t_start = time.time()
    # Rounds are interleaved over all arms so that a burst of foreign load hits one round of an
    # arm, not all of them; the arm's latency is the least of its round medians (the structural
    # model describes the unloaded device; the online model follows load).
    rounds_ms: dict[tuple[int, int], list[dict]] = {}
    for rnd in range(rounds):
        for vi, v in enumerate(variants):
            for pi, p in enumerate(pls):
                m = profile_arm(v["path"], p["cores"], p["threads"], repeats, warmup, seed + rnd)
                rounds_ms.setdefault((vi, pi), []).append(m)
                if progress:
                    progress(f"round {rnd + 1}/{rounds} {v['model']}/{v['variant']} on {p['name']}: "
                             f"{m['latency_ms']:.3f} ms")
    for (vi, pi), ms in sorted(rounds_ms.items()):
        v, p = variants[vi], pls[pi]
        best = min(ms, key=lambda m: m["latency_ms"])
        meds = [m["latency_ms"] for m in ms]
        records.append({"model": v["model"], "version": v["version"], "variant": v["variant"],
                        "quantization": v["quantization"], "structure": v["structure"],
                        "placement": p["name"], "placement_kind": p.get("kind", "cpu"),
                        "threads": int(p["threads"]), "energy_mj": None,
                        "latency_ms": best["latency_ms"], "latency_p90_ms": best["latency_p90_ms"],
                        "n": sum(m["n"] for m in ms), "round_medians_ms": meds,
                        "round_spread": (max(meds) - min(meds)) / min(meds) if min(meds) > 0 else 0.0})
    n_models = len({r["model"] for r in records})
    if n_models >= 2:
        method = "leave-one-model-out"
        held = holdout_errors(records, "model")
        totals = holdout_errors(records, "model", kernel_model=False)
    else:
        method = "random-25%-of-arms"
        rng = np.random.default_rng(seed)
        fold = rng.random(len(records)) < 0.25
        for r, f in zip(records, fold):
            r["_fold"] = "test" if f else "train"
        held = _split_errors(records)
        totals = _split_errors(records, kernel_model=False)
        for r in records:
            r.pop("_fold", None)
    predictor = StructuralPredictor().fit(records)
    return {
        "schema": SCHEMA,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.time() - t_start, 3),
        "device": _device(),
        "placements": pls,
        "repeats": repeats,
        "rounds": rounds,
        "warmup": warmup,
        "measurement_spread": {"median": float(np.median([r["round_spread"] for r in records])),
                               "max": float(max(r["round_spread"] for r in records))},
        "predictor": predictor.to_dict(),
        "holdout": {"method": method, "mape": held["mape"], "mean_ape": held["mean_ape"], "n": held["n"],
                    "per_model": held.get("per_group", {}),
                    "totals_mape": totals["mape"], "totals_per_model": totals.get("per_group", {})},
        "records": [{k: v for k, v in r.items() if k != "structure"} for r in records],
    }


def _split_errors(records: list[dict], **params: Any) -> dict:
    train = [r for r in records if r["_fold"] == "train"]
    test = [r for r in records if r["_fold"] == "test"]
    if not train or not test:
        return {"mape": None, "mean_ape": None, "n": 0}
    p = StructuralPredictor(**params).fit(train)
    errs = []
    for r in test:
        pr = p.predict(r["structure"], r["quantization"],
                       {"name": r["placement"], "kind": r["placement_kind"], "threads": r["threads"]})
        if pr is not None:
            errs.append(abs(pr["latency_ms"] - r["latency_ms"]) / r["latency_ms"])
    return {"mape": float(np.median(errs)) if errs else None,
            "mean_ape": float(np.mean(errs)) if errs else None, "n": len(errs)}


# ----------------------------------------------------------------------------- storage
def write_calibration(repository: Path, document: Mapping[str, Any]) -> Path:
    """Write ``REPOSITORY/calibration.json`` atomically; return its path."""
    text = json.dumps(document, indent=1, sort_keys=False) + "\n"
    return write_text_atomic(Path(repository) / CALIBRATION_FILE, text)


def load_calibration(location: Path) -> dict | None:
    """The calibration document at ``location``: a repository (its ``calibration.json``) or the
    file itself; None when there is none."""
    path = Path(location)
    if path.is_dir():
        path = path / CALIBRATION_FILE
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not an {SCHEMA} document")
    return doc


def load_predictor(location: Path) -> StructuralPredictor | None:
    """The calibrated predictor at ``location`` (as :func:`load_calibration`), or None if never
    calibrated."""
    doc = load_calibration(location)
    return None if doc is None else StructuralPredictor.from_dict(doc["predictor"])


# ----------------------------------------------------------------------------- CLI
def run_calibrate(args: Any) -> int:
    from adaptd.cli import UserError

    models = [m.strip() for m in args.models.split(",") if m.strip()] if getattr(args, "models", None) else None
    try:
        placements = placements_from_config(getattr(args, "config", None))
    except Exception as exc:
        raise UserError(f"placements: {exc}") from exc
    quiet = getattr(args, "no_progress", False)
    progress = None if quiet else (lambda line: print(line, file=sys.stderr, flush=True))
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
