"""The first request on each arm after start, against the same arm once loaded.

For each ``[placements] load`` setting named (default: ``lazy`` and ``auto``, the default), a fresh
daemon serves the demo repository; for every arm of the model (variant x placement the daemon
serves), placement by placement, one request pinned to it (the arm's first since start), one more
(its header's second sight, on which the daemon keeps it for its repeats: not judged) and then
``--repeat`` more (the arm loaded, the header repeated). The bound an arm's loaded execution meets
is taken as twice the slowest of those loaded round trips (the reply's ``timing.total_ms``, the
daemon's own measure from receiving the request to its reply), and ``--repeat`` further loaded
requests are judged on it too, as a control: on a noisy host a loaded request misses it now and
then. Once every arm has had its turn, each arm is asked again twice, in the same order and with
the same requests after it, judged on the same bound: a *revisit* (its header seen before) and a
*new header's* first request (constraints where the arm's earlier requests had none: a header
the daemon has not seen, even less its constraints): what separates a first request after
start from one on an arm that has served, the other arms run since either way. The bar: first
requests meet their arms' bounds as often as loaded requests do. Prints, per setting, over
``--trials`` fresh daemons: the first requests, the share within the bound, the new headers' and
the revisits' shares, the control's share, first / loaded p50 (median and p90 over arms), new
header / loaded and revisit / loaded (medians) and the slowest first request. Exits 1 when the
default setting (``auto``) misses the bar. With ``--stream N``, instead: each fresh daemon's first
N requests chosen by the daemon (not pinned), with a latency bound: the share that met it and how
many were served from a loaded arm while their choice loaded.

Usage::

    .venv/bin/python bench/bench_first_request.py [--repository demo-repo] [--loads lazy,auto]
                                                  [--repeat 10] [--trials 3] [--json out.json]
    .venv/bin/python bench/bench_first_request.py --stream 60 [--bound-ms 2.0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def measure(repository: Path, model: str, load: str, repeat: int) -> list[dict]:
    from adaptd.clients.client import Client
    from adaptd.tools.launch import DaemonProcess

    rows = []
    with tempfile.TemporaryDirectory() as tmp, \
            DaemonProcess.start(repository, Path(tmp) / "d", config={"placements": {"load": load}}) as d, \
            Client(d.endpoint, timeout_ms=60_000) as client:
        listed = next(m for m in client.models()["models"] if m["name"] == model)
        placements = [p["name"] for p in client.placements()["placements"] if p["runtime"] == "litert"]
        variants = [v["name"] for v in listed["variants"] if v["servable"] and v["runtime"] == "litert"]
        shape = [1, *listed["variants"][0]["inputs"][0]["shape"][1:]]
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        for placement in placements:   # placement by placement: an inline run moves the receiving thread
            for variant in variants:     # to the placement's cores, and that move is not the arm's first
                def one(variant=variant, placement=placement, **constraints):
                    return client.infer(model, [x], variant=variant, placement=placement,
                                        **constraints).selection.timing
                first = one()
                one()   # (the header's second sight, when the daemon keeps it: not a repeat yet)
                loaded = [one().total_ms for _ in range(repeat)]
                bound = 2.0 * max(loaded)
                control = [one().total_ms for _ in range(repeat)]   # loaded requests judged on the same bound
                rows.append({"variant": variant, "placement": placement, "first_ms": first.total_ms,
                             "first_queue_ms": first.queue_ms, "first_compute_ms": first.compute_ms,
                             "loaded_p50_ms": statistics.median(loaded), "bound_ms": bound,
                             "met": first.total_ms <= bound, "control_met": sum(t <= bound for t in control),
                             "control_n": len(control)})
        # Each arm again, twice, in the same order and with the same requests after it: its first
        # request since the others ran, the variant loaded; with the header seen before
        # ("revisit"), then with a header not seen before (a latency bound of its own, far above
        # any run, where the arm's earlier requests had no constraints, so that even the header
        # less its constraints is new: "new_header"), as any new client's first request.
        by_arm = {(r["placement"], r["variant"]): r for r in rows}
        for label in ("revisit", "new_header"):
            for i, (placement, variant) in enumerate((p, v) for p in placements for v in variants):
                row = by_arm[(placement, variant)]
                constraints = {"max_latency_ms": 1000.0 + i} if label == "new_header" else {}
                again = one(variant, placement, **constraints)
                row[f"{label}_ms"], row[f"{label}_queue_ms"] = again.total_ms, again.queue_ms
                row[f"{label}_compute_ms"] = again.compute_ms
                row[f"{label}_met"] = again.total_ms <= row["bound_ms"]
                for _ in range(2 * repeat):
                    one(variant, placement, **constraints)
    return rows


def stream(repository: Path, model: str, load: str, n: int, bound_ms: float) -> dict:
    """A fresh daemon's first ``n`` requests, chosen by the daemon (objective latency, energy and
    accuracy in turn, each with ``max_latency_ms = bound_ms``): how many met the bound, how many
    were served from a loaded arm while their choice loaded, and the slowest."""
    from adaptd.clients.client import Client
    from adaptd.tools.launch import DaemonProcess

    met = meanwhile = 0
    totals = []
    with tempfile.TemporaryDirectory() as tmp, \
            DaemonProcess.start(repository, Path(tmp) / "d", config={"placements": {"load": load}}) as d, \
            Client(d.endpoint, timeout_ms=60_000) as client:
        listed = next(m for m in client.models()["models"] if m["name"] == model)
        x = np.random.default_rng(0).random([1, *listed["variants"][0]["inputs"][0]["shape"][1:]], dtype=np.float32)
        for i in range(n):
            s = client.infer(model, [x], objective=("latency", "energy", "accuracy")[i % 3], max_latency_ms=bound_ms,
                             on_infeasible="best_effort").selection
            met += bool(s.constraints_met.get("max_latency_ms"))
            meanwhile += "is loading" in s.reason.text
            totals.append(s.timing.total_ms)
    return {"requests": n, "met": met, "meanwhile": meanwhile, "slowest_ms": max(totals)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=ROOT / "demo-repo")
    ap.add_argument("--model", default="digits")
    ap.add_argument("--loads", default="lazy,auto")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--trials", type=int, default=3, help="fresh daemons per load setting")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--stream", type=int, default=0, metavar="N",
                    help="instead: a fresh daemon's first N requests chosen by the daemon, per setting and trial")
    ap.add_argument("--bound-ms", type=float, default=2.0, help="with --stream: their max_latency_ms")
    args = ap.parse_args()
    if args.stream:
        print(f"{args.trials} fresh daemon(s) per setting, their first {args.stream} requests each, "
              f"max_latency_ms {args.bound_ms}, objectives latency / energy / accuracy in turn")
        print("| load | requests | met the bound | served from a loaded arm while their choice loaded | slowest ms |")
        print("|---|---|---|---|---|")
        for load in args.loads.split(","):
            runs = [stream(args.repository, args.model, load, args.stream, args.bound_ms) for _ in range(args.trials)]
            n = sum(r["requests"] for r in runs)
            print(f"| {load} | {n} | {sum(r['met'] for r in runs) / n:.1%} | {sum(r['meanwhile'] for r in runs)} | "
                  f"{max(r['slowest_ms'] for r in runs):.2f} |")
        return 0
    report, missed_default = {}, False
    print(f"{args.trials} fresh daemon(s) per setting, {args.repeat} loaded requests per arm to set its bound")
    print("| load | first requests | within the bound | a new header's first request, arm warm: within it | "
          "revisits within it | loaded requests within it | first / loaded p50, median (p90) | "
          "new header / loaded | revisit / loaded | slowest first ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for load in args.loads.split(","):
        rows = report[load] = [r for _ in range(args.trials) for r in measure(args.repository, args.model, load,
                                                                              args.repeat)]
        met = sum(r["met"] for r in rows)
        control = sum(r["control_met"] for r in rows) / sum(r["control_n"] for r in rows)
        ratios = [r["first_ms"] / r["loaded_p50_ms"] for r in rows]
        again = {label: (sum(r[f"{label}_met"] for r in rows) / len(rows),
                         statistics.median(r[f"{label}_ms"] / r["loaded_p50_ms"] for r in rows))
                 for label in ("new_header", "revisit")}
        print(f"| {load} | {len(rows)} | {met / len(rows):.1%} | {again['new_header'][0]:.1%} | "
              f"{again['revisit'][0]:.1%} | {control:.1%} | {statistics.median(ratios):.2f} "
              f"({float(np.percentile(ratios, 90)):.2f}) | {again['new_header'][1]:.2f} | {again['revisit'][1]:.2f} | "
              f"{max(r['first_ms'] for r in rows):.2f} |")
        # the bar: first requests meet the bound as often as loaded ones do (one first request of
        # the run's may land in a spell of the host's that a loaded one would have met no better)
        missed_default |= load == "auto" and met / len(rows) < control - 1.0 / len(rows)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if missed_default else 0


if __name__ == "__main__":
    raise SystemExit(main())
