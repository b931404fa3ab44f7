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
* The records go to :func:`adaptd.selector.fit.fit_calibration`, which measures the predictor's
  error on held-out arms and fits it; ``calibrate`` returns the calibration document (plain JSON
  types) with both.
* ``write_calibration`` stores it at ``REPOSITORY/calibration.json`` atomically (temporary file
  in the same directory, fsync, rename): a reader sees the old file or the new one. Reading it
  back is the selector's (:func:`adaptd.selector.fit.load_predictor`).
* The placements are the caller's (``adaptd calibrate`` passes the daemon's, :mod:`adaptd.cli`);
  :func:`default_placements` when none are given. Nothing here imports the daemon.
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
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from adaptd.selector.fit import CALIBRATION_FILE, SCHEMA, fit_calibration
from adaptd.variants.manifest import write_text_atomic


# ----------------------------------------------------------------------------- placements
def default_placements() -> list[dict]:
    """One core at a time with one thread (``cpu:<n>``), and every allowed core together
    (``cpu:all``) with as many threads."""
    cores = sorted(os.sched_getaffinity(0))
    out = [{"name": f"cpu:{c}", "kind": "cpu", "runtime": "litert", "cores": [c], "threads": 1} for c in cores]
    if len(cores) > 1:
        out.append({"name": "cpu:all", "kind": "cpu", "runtime": "litert", "cores": cores, "threads": len(cores)})
    return out


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
    predictor, holdout = fit_calibration(records, seed)
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
        "holdout": holdout,
        "records": [{k: v for k, v in r.items() if k != "structure"} for r in records],
    }


# ----------------------------------------------------------------------------- storage
def write_calibration(repository: Path, document: Mapping[str, Any]) -> Path:
    """Write ``REPOSITORY/calibration.json`` atomically; return its path."""
    text = json.dumps(document, indent=1, sort_keys=False) + "\n"
    return write_text_atomic(Path(repository) / CALIBRATION_FILE, text)
