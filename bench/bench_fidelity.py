"""Live fidelity's cost to the callers: round trip with shadow runs on versus off.

Three daemons serve the same repository side by side, one with ``[fidelity] enabled = true``
(the defaults: 5 % of requests, 20 ms of CPU per second) and two with it off (the second is an
A/A control: what two identical daemons differ by on this machine, the floor under any ratio);
only one of them gets requests at any moment (the others sleep in their poll). One closed-loop client (the worst case for
a shadow: the next request arrives right after the reply that started one) sends blocks of
requests to each in turn (``--block`` requests, then the other daemon, alternating which goes
first), ``--requests`` per daemon per round, for ``--rounds`` rounds: so both see the same spells
of a noisy machine. Requests pin the served variant (not the reference: a request the reference
serves is never shadowed) and, by default, the placement (``cpu:0``): left to the selector, the
two daemons may learn different placements, which then differ more than shadowing does. Both daemons first serve a
warm-up (every request is shadowed until a variant's window holds ``min_samples`` comparisons;
the bench measures the steady state).

Per round and daemon: p50 and p99 of the round trips measured by the client. Reported: per
daemon the median over rounds of the p99 (and min..max), the ratio on/off of the medians, and
the ratio of each round's on p99 to its off p99 (median, min..max), and the same for the control. The target: p99 on <= 1.05
x off. Also the shadow runs' CPU time over the measured span against the budget, from
``stats``' ``fidelity`` section.

Usage::

    .venv/bin/python bench/bench_fidelity.py [--models digits,MobileNetV2] [--rounds 8]
        [--requests 400] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = {   # name: (repository option, input shape, served variant)
    "digits": ("demo_repository", (1, 16, 16, 1), "int8_full"),   # served variant: not the reference
    "MobileNetV2": ("zoo_repository", (1, 224, 224, 3), "int8_dynamic"),
}


def ensure_repos(demo_repo: Path, zoo_repo: Path, models: list[str]) -> None:
    adaptd = [sys.executable, "-m", "adaptd"]
    if "digits" in models and not (demo_repo / "digits").exists():
        subprocess.run([*adaptd, "demo", "build", "--repository", str(demo_repo), "--no-progress"], check=True)
    if "MobileNetV2" in models and not (zoo_repo / "MobileNetV2").exists():
        subprocess.run([*adaptd, "variants", "zoo", "MobileNetV2", "--repository", str(zoo_repo),
                        "--kinds", "float32,int8_dynamic", "--no-progress"], check=True)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def block(client, model: str, variant: str, x: np.ndarray, n: int, placement: str | None) -> np.ndarray:
    """Round trips (ms) of ``n`` closed-loop requests."""
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        result = client.infer(model, [x], variant=variant, placement=placement)
        out[i] = (time.perf_counter() - t0) * 1e3
        assert result.selection.variant == variant
    return out


def fidelity_stats(client) -> dict:
    return client.stats()["fidelity"]


def run_model(name: str, repo: Path, shape: tuple[int, ...], variant: str, args, workdir: Path) -> dict:
    from adaptd.clients.client import Client
    from adaptd.tools.launch import DaemonProcess

    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    off = {"placements": {"load": "eager"}, "fidelity": {"enabled": False}}
    daemons = {   # "off2": a second daemon with shadowing off, the A/A control (the noise floor)
        "on": DaemonProcess.start(repo, workdir / f"{name}-on", config={"placements": {"load": "eager"}}),
        "off": DaemonProcess.start(repo, workdir / f"{name}-off", config=off),
        "off2": DaemonProcess.start(repo, workdir / f"{name}-off2", config=off),
    }
    keys = list(daemons)
    try:
        clients = {k: Client(d.endpoint) for k, d in daemons.items()}
        for k in keys:   # warm-up: the window fills (every request shadowed), the selector learns
            block(clients[k], name, variant, x, args.warmup, args.placement)
        before = fidelity_stats(clients["on"])
        t0 = time.monotonic()
        p99: dict[str, list[float]] = {k: [] for k in keys}
        p50: dict[str, list[float]] = {k: [] for k in keys}
        for _ in range(args.rounds):
            rts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
            for b in range(max(1, args.requests // args.block)):
                for k in keys[b % 3:] + keys[:b % 3]:   # each daemon first in turn
                    rts[k].append(block(clients[k], name, variant, x, args.block, args.placement))
            for k, parts in rts.items():
                rt = np.concatenate(parts)
                p99[k].append(float(np.percentile(rt, 99)))
                p50[k].append(float(np.percentile(rt, 50)))
        span_s = time.monotonic() - t0
        after = fidelity_stats(clients["on"])
        for c in clients.values():
            c.close()
    finally:
        for d in daemons.values():
            d.stop()
    shadow0, shadow1 = before["shadow"], after["shadow"]
    runs = shadow1["runs"] - shadow0["runs"]
    cpu_ms = shadow1["cpu_ms_measured"] - shadow0["cpu_ms_measured"]
    ratios = [a / b for a, b in zip(p99["on"], p99["off"])]
    control = [a / b for a, b in zip(p99["off2"], p99["off"])]
    med = {k: float(np.median(v)) for k, v in p99.items()}
    return {
        "variant": variant, "placement": args.placement, "requests_per_round": args.requests, "block": args.block, "rounds": args.rounds,
        "p99_ms": {k: {"median": med[k], "min": min(v), "max": max(v)} for k, v in p99.items()},
        "p50_ms": {k: {"median": float(np.median(v)), "min": min(v), "max": max(v)} for k, v in p50.items()},
        "p99_ratio_of_medians": med["on"] / med["off"],
        "p99_ratio_per_round": {"median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios)},
        "control_ratio_of_medians": med["off2"] / med["off"],
        "control_ratio_per_round": {"median": float(np.median(control)), "min": min(control), "max": max(control)},
        "shadow_runs": runs, "shadowed_share": runs / (args.rounds * args.requests),
        "shadow_cpu_ms": cpu_ms, "span_s": span_s,
        "shadow_cpu_ms_per_s": cpu_ms / span_s, "budget_ms_per_s": shadow1["budget_ms_per_s"],
        "decisions": {k: shadow1["decisions"][k] - shadow0["decisions"][k] for k in shadow1["decisions"]},
        "target_met": med["on"] <= 1.05 * med["off"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-repository", type=Path, default=ROOT / "demo-repo")
    ap.add_argument("--zoo-repository", type=Path, default=ROOT / "bench-zoo")
    ap.add_argument("--models", default="digits,MobileNetV2")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--requests", type=int, default=400, help="per block (MobileNetV2: a fifth of it)")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--placement", default="cpu:0",
                    help="placement the requests pin (default cpu:0; 'auto': the selector's choice, which "
                         "may differ between the two daemons and so confound the comparison)")
    ap.add_argument("--block", type=int, default=50,
                    help="requests sent to one daemon before switching to the other (default 50)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.placement == "auto":
        args.placement = None
    models = args.models.split(",")
    ensure_repos(args.demo_repository, args.zoo_repository, models)
    report = {"machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
              "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            option, shape, variant = MODELS[name]
            scaled = argparse.Namespace(**{**vars(args), "requests": args.requests if name == "digits"
                                           else max(50, args.requests // 5)})
            res = run_model(name, getattr(args, option), shape, variant, scaled, Path(tmp))
            report["models"][name] = res
            print(f"{name} ({variant}): p99 on {res['p99_ms']['on']['median']:.3f} ms "
                  f"[{res['p99_ms']['on']['min']:.3f}-{res['p99_ms']['on']['max']:.3f}], off "
                  f"{res['p99_ms']['off']['median']:.3f} [{res['p99_ms']['off']['min']:.3f}-"
                  f"{res['p99_ms']['off']['max']:.3f}]; ratio of medians {res['p99_ratio_of_medians']:.3f}, "
                  f"per round {res['p99_ratio_per_round']['median']:.3f} "
                  f"[{res['p99_ratio_per_round']['min']:.3f}-{res['p99_ratio_per_round']['max']:.3f}]; "
                  f"A/A control off2/off {res['control_ratio_of_medians']:.3f} per round "
                  f"{res['control_ratio_per_round']['median']:.3f} [{res['control_ratio_per_round']['min']:.3f}-"
                  f"{res['control_ratio_per_round']['max']:.3f}]; "
                  f"p50 on {res['p50_ms']['on']['median']:.3f} off {res['p50_ms']['off']['median']:.3f}; "
                  f"{res['shadow_runs']} shadow runs ({res['shadowed_share']:.1%}), "
                  f"{res['shadow_cpu_ms_per_s']:.2f} ms CPU/s of {res['budget_ms_per_s']:g}; "
                  f"target {'met' if res['target_met'] else 'NOT met'}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
