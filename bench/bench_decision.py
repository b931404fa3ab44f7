"""Decision cost of the selector: one ``choose`` over 50 variants x 4 placements (200 arms).

Usage: python bench/bench_decision.py [--variants 50] [--placements 4] [--calls 20000] [--runs 5]
       python bench/bench_decision.py --cold [--cold-calls 400] [--cold-size 8x3]

Builds a synthetic repository-sized selector (priors drawn at random, a few hundred
measurements fed in, queues on two placements), then times ``choose`` call by call with
``time.perf_counter_ns`` for several request mixes, and ``update``. Prints p50/p90/p99/max in
microseconds per scenario, per run, and the spread of p99 over runs. Garbage collection stays
on, as in the daemon. Target (the issue): p99 <= 50 us for 50 x 4.

``--cold`` compares instead the two ways the selector applies its kernel, for a model of
``--cold-size`` variants x placements (default 8 x 3 = 24 arms, the demo's size): the loop over
Python floats compiled from the kernel (what decisions among at most ``SCALAR_MAX_ARMS``
candidates get) and numpy over the model's columns, each called hot (back to back) and cold
(before each call the caches are flushed by writing 32 MB and the thread sleeps 4 ms, as
between the daemon's requests). Calls alternate between the two, so both see the same machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from adaptd.selector import ArmSpec, QueueSnapshot, Request, Selector, SelectorConfig


def build(n_variants: int, n_placements: int, seed: int = 0) -> Selector:
    rng = np.random.default_rng(seed)
    placements = [f"cpu:{i}" for i in range(n_placements - 1)] + ["gpu:0"]
    arms = []
    for v in range(n_variants):
        acc = None if v % 10 == 9 else float(rng.uniform(0.6, 0.95))
        for p in placements:
            lat = float(rng.uniform(1.0, 30.0))
            arms.append(ArmSpec("model", f"v{v:02d}", p, acc, lat, 0.15 * lat, lat * float(rng.uniform(0.5, 3.0))))
    sel = Selector(arms, placements, SelectorConfig())
    t = 0.0
    for _ in range(20 * len(arms)):
        a = int(rng.integers(len(arms)))
        t += 0.002
        prior = arms[a].prior_latency_ms
        sel.update(a, prior * float(rng.lognormal(0, 0.1)), None, True, t)
    return sel


def scenarios(sel: Selector) -> dict:
    a = sel.arm_id("model", "v00", "cpu:0")
    b = sel.arm_id("model", "v01", "cpu:0")
    c = sel.arm_id("model", "v02", "cpu:1")
    queues = {"cpu:0": QueueSnapshot((a, b), a, 1.5), "cpu:1": QueueSnapshot((c,), None, 0.0)}
    return {
        "latency objective, no constraint, no queue": (Request("model"), None),
        "latency + 3 constraints, queues": (
            Request("model", min_accuracy=0.8, max_latency_ms=15.0, max_energy_mj=20.0), queues),
        "energy objective + 3 constraints, queues": (
            Request("model", min_accuracy=0.8, max_latency_ms=15.0, max_energy_mj=20.0, objective="energy"), queues),
        "accuracy objective + latency bound, queues": (
            Request("model", max_latency_ms=10.0, objective="accuracy"), queues),
        "infeasible, best_effort, queues": (
            Request("model", max_latency_ms=0.2, on_infeasible="best_effort"), queues),
        "pinned variant, queues": (Request("model", variant="v07", max_latency_ms=12.0), queues),
        "pinned variant and placement, queues": (
            Request("model", variant="v07", placement="cpu:1", max_latency_ms=12.0), queues),
    }


def time_calls(fn, n: int) -> np.ndarray:
    out = np.empty(n)
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        fn(i)
        out[i] = clock() - t0
    return out / 1e3  # us


def cold_compare(calls: int, n_variants: int = 8, n_placements: int = 3) -> None:
    scalar = build(n_variants, n_placements)
    masked = build(n_variants, n_placements)
    scalar.scalar_max_arms = scalar.n_arms
    masked.scalar_max_arms = 0
    q = {"cpu:0": QueueSnapshot((scalar.arm_id("model", "v00", "cpu:0"),), None, 0.0)}
    req = Request("model", max_latency_ms=15.0, objective="energy")
    junk = np.zeros(4_000_000)
    out: dict[tuple[str, str], list[float]] = {}
    clock = time.perf_counter_ns
    for temp in ("hot", "cold"):
        for i in range(calls):
            for name, sel in (("scalar loop", scalar), ("masked arrays", masked)):
                if temp == "cold":
                    junk += 1.0
                    time.sleep(0.004)
                t0 = clock()
                sel.choose(req, 1e4 + i * 1e-3, q)
                out.setdefault((name, temp), []).append((clock() - t0) / 1e3)
    print(f"{scalar.n_arms} arms, energy objective + latency bound, one queue; {calls} calls each; us")
    print("| path | hot p50 | hot p99 | cold p50 | cold p99 |\n|---|---|---|---|---|")
    for name in ("scalar loop", "masked arrays"):
        hot, cold = np.array(out[(name, "hot")]), np.array(out[(name, "cold")])
        print(f"| {name} | {np.percentile(hot, 50):.1f} | {np.percentile(hot, 99):.1f} | "
              f"{np.percentile(cold, 50):.1f} | {np.percentile(cold, 99):.1f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", type=int, default=50)
    ap.add_argument("--placements", type=int, default=4)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="scalar loop against masked arrays, hot and cold")
    ap.add_argument("--cold-calls", type=int, default=400)
    ap.add_argument("--cold-size", default="8x3", help="variants x placements of the --cold model (default 8x3)")
    args = ap.parse_args()
    if args.cold:
        n_variants, n_placements = (int(x) for x in args.cold_size.lower().split("x"))
        cold_compare(args.cold_calls, n_variants, n_placements)
        return 0
    sel = build(args.variants, args.placements)
    scen = scenarios(sel)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"selector decision cost: {args.variants} variants x {args.placements} placements = {sel.n_arms} arms; "
          f"{args.calls} calls x {args.runs} runs; {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"numpy {np.__version__}; gc on")
    p99s: dict[str, list[float]] = {}
    p50s: dict[str, list[float]] = {}
    t_now = 1e4
    load_before = os.getloadavg()[0]
    for run in range(args.runs):
        for name, (req, q) in scen.items():
            time_calls(lambda i: sel.choose(req, t_now + i * 1e-3, q), 1000)  # warm-up
            us = time_calls(lambda i: sel.choose(req, t_now + i * 1e-3, q), args.calls)
            p50, p90, p99 = np.percentile(us, [50, 90, 99])
            p50s.setdefault(name, []).append(p50)
            p99s.setdefault(name, []).append(p99)
            print(f"run {run}  {name:45s} p50 {p50:6.1f}  p90 {p90:6.1f}  p99 {p99:6.1f}  max {us.max():8.1f} us")
        hdr = {"model": "model", "constraints": {"min_accuracy": 0.8, "max_latency_ms": 15.0}, "objective": "energy"}
        name = "Request.from_dict + choose, queues"
        qq = scen["latency + 3 constraints, queues"][1]
        us = time_calls(lambda i: sel.choose(Request.from_dict(hdr), t_now + i * 1e-3, qq), args.calls)
        p50, p90, p99 = np.percentile(us, [50, 90, 99])
        p50s.setdefault(name, []).append(p50)
        p99s.setdefault(name, []).append(p99)
        print(f"run {run}  {name:45s} p50 {p50:6.1f}  p90 {p90:6.1f}  p99 {p99:6.1f}  max {us.max():8.1f} us")
        name = "explain (dry run, 200 alternatives)"
        req, q = scen["latency + 3 constraints, queues"]
        us = time_calls(lambda i: sel.explain(req, t_now, q), 500)
        p50, p90, p99 = np.percentile(us, [50, 90, 99])
        p50s.setdefault(name, []).append(p50)
        p99s.setdefault(name, []).append(p99)
        print(f"run {run}  {name:45s} p50 {p50:6.1f}  p90 {p90:6.1f}  p99 {p99:6.1f}  max {us.max():8.1f} us")
        name = "update (one measurement)"
        sel_u = build(args.variants, args.placements)  # a copy: updates must not change the scenarios
        rng = np.random.default_rng(run)
        arms = rng.integers(0, sel.n_arms, args.calls)
        lats = rng.uniform(1.0, 30.0, args.calls)
        us = time_calls(lambda i: sel_u.update(int(arms[i]), float(lats[i]), None, True, t_now + i * 1e-3), args.calls)
        p50, p90, p99 = np.percentile(us, [50, 90, 99])
        p50s.setdefault(name, []).append(p50)
        p99s.setdefault(name, []).append(p99)
        print(f"run {run}  {name:45s} p50 {p50:6.1f}  p90 {p90:6.1f}  p99 {p99:6.1f}  max {us.max():8.1f} us")
    print(f"\nload average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    print("median over runs (min-max), us:")
    print("| scenario | p50 | p99 |\n|---|---|---|")
    for name in p99s:
        a, b = p50s[name], p99s[name]
        print(f"| {name} | {np.median(a):.1f} ({min(a):.1f}-{max(a):.1f}) | "
              f"{np.median(b):.1f} ({min(b):.1f}-{max(b):.1f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
