"""What the Prometheus endpoint ([metrics]) costs the daemon, in one run:

* ``record``: :meth:`adaptd.daemon.bookkeeping.Bookkeeping.record` for an answered request (a
  selection record with timing, energy and a constraint) with and without the metrics observer
  (:class:`adaptd.daemon.metrics_records.RecordMetrics`), the two interleaved in blocks; and for a request
  rejected INFEASIBLE, whose record is made before its reply (counters only). Per call, p50
  (p90) over ``--records`` calls each, in microseconds. The submit is a deque append, as the
  store's is. Records name the demo's arms (its variants on this machine's placements).
* ``publish``: the once-a-second snapshot the daemon's loop publishes for scrapes
  (:func:`adaptd.daemon.metrics_state.snapshot`: the selector's rows through
  :class:`~adaptd.daemon.metrics_state.SelectorReader` over the demo repository's selector, every arm
  measured, and the rest of the snapshot with the pool given as its snapshot list), on the
  daemon's main thread: the first (every arm, at start-up and after a reload) and the steady
  state (``ARMS_PER_PUBLISH`` arms).
* ``scrape``: rendering one scrape (``generate_latest``) with every arm's families populated, on
  the listener's thread: the time it holds the interpreter's lock, which the main thread may
  wait for.
* ``round trip``: three real daemons on the demo repository, started afresh for each of
  ``--rounds`` rounds: metrics off, metrics on, and metrics on and scraped by another process every
  ``--scrape-interval-s`` (default 1 s, fifteen times Prometheus' usual rate). The same pinned arm
  (float32 on a placement off core 0) on each; the client and the daemons' own threads on core 0
  (``[server] cores``), or where the kernel puts them with ``--no-pin``; requests sent by the blocking client in blocks, the daemons' order
  rotating from block to block. p50 and p99 per condition in microseconds over every round, and
  the median over blocks of the paired per-block p50 difference to metrics off, with a 95%
  bootstrap interval (blocks resampled).

Usage::

    .venv/bin/python bench/bench_metrics.py [--records 20000] [--requests 3000] [--blocks 10] [--rounds 3]
                                            [--scrape-interval-s 1.0] [--no-pin] [--demo-repository DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import urllib.request
from collections import deque
from pathlib import Path
from time import perf_counter_ns
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "digits"


def arms(repo: Path) -> list[tuple[str, str]]:
    from adaptd.daemon.config import PlacementsConfig
    from adaptd.daemon.placements import discover
    from adaptd.daemon.registry import load_registry

    registry = load_registry(repo, discover(PlacementsConfig()), generation=1)
    return [(a.variant.name, a.placement.name) for m in registry.newest() for a in m.arms]


def bench_record(repo: Path, n: int, block: int = 500) -> dict[str, tuple[float, float]]:
    from adaptd.daemon.bookkeeping import Bookkeeping
    from adaptd.daemon.metrics_records import RecordMetrics
    from adaptd.wire import protocol as proto

    request = proto.parse_request(proto.request_header("r-1", MODEL, [np.zeros((1, 16, 16, 1), np.float32)],
                                                       constraints={"max_latency_ms": 5.0}))
    model = SimpleNamespace(name=MODEL, version="1")
    pairs = [SimpleNamespace(variant=SimpleNamespace(name=v), placement=SimpleNamespace(name=p)) for v, p in arms(repo)]
    predicted = {"latency_ms": 0.3, "latency_bound_ms": 0.4, "latency_confidence": 0.9, "queue_ms": 0.0,
                 "energy_mj": 0.5, "energy_estimated": True, "accuracy": 0.97}
    choice = SimpleNamespace(code="selected", text="the cheapest arm that meets the request", predicted=predicted)
    timing = {"queue_ms": 0.08, "compute_ms": 0.05, "total_ms": 0.31}
    energy = {"energy_mj": 0.42, "source": "estimated:generic", "estimated": True}
    met = {"max_latency_ms": True}
    books = {"off": Bookkeeping(deque().append, 256, 0.2), "on": Bookkeeping(deque().append, 256, 0.2)}
    books["on"].on_record = RecordMetrics().observe
    times: dict[str, list[int]] = {f"{k} {kind}": [] for k in books for kind in ("ok", "rejected")}
    for start in range(0, n, block):
        for name in (("off", "on") if (start // block) % 2 else ("on", "off")):
            b = books[name]
            ok, rej = times[f"{name} ok"], times[f"{name} rejected"]
            for i in range(start, min(n, start + block)):
                arm = pairs[i % len(pairs)]
                t0 = perf_counter_ns()
                b.record(request, model, "c1", 1.0e9, outcome="ok", error_code=None, choice=choice, arm=arm,
                         timing=timing, energy=energy, met=met)
                t1 = perf_counter_ns()
                b.record(request, model, "c1", 1.0e9, outcome="rejected", error_code="INFEASIBLE", choice=choice,
                         arm=arm)
                t2 = perf_counter_ns()
                ok.append(t1 - t0)
                rej.append(t2 - t1)
    return {k: (float(np.percentile(v, 50)) / 1e3, float(np.percentile(v, 90)) / 1e3) for k, v in times.items()}


class _Replays:
    """What the snapshot reads of the replay cache, empty."""

    bytes = 0
    hits = 0

    def __len__(self) -> int:
        return 0


def bench_publish_and_scrape(repo: Path, repeats: int = 200) -> dict[str, float]:
    from prometheus_client import CollectorRegistry, generate_latest

    from adaptd.daemon.config import Config, PlacementsConfig
    from adaptd.daemon.metrics_records import RecordMetrics
    from adaptd.daemon.metrics_state import SelectorReader, StateCollector, snapshot
    from adaptd.daemon.placements import discover
    from adaptd.daemon.power import EnergyMeter
    from adaptd.daemon.power.config import PowerConfig
    from adaptd.daemon.registry import load_registry
    from adaptd.daemon.selection import SelectorPolicy
    from adaptd.daemon.store import SelectionStore, StoreConfig
    from adaptd.selector import SelectorConfig

    placements = discover(PlacementsConfig())
    registry = load_registry(repo, placements, generation=1)
    policy = SelectorPolicy(SelectorConfig())
    policy.reset(registry)
    model = registry.newest()[0]
    for i, arm in enumerate(model.arms * 20):   # every arm measured, as after some traffic
        policy.observe(model, arm, 0.3 + 0.01 * (i % 7), 0.4, True, float(i) * 1e-3, compute_ms=0.05)
    pool = SimpleNamespace(snapshots=lambda: [{"name": p.name, "queued": 0, "busy": False, "ready": True,
                                               "restarts": 0} for p in placements])
    daemon = SimpleNamespace(pool=pool, policy=policy, replays=_Replays(),
                             config=Config(Path(repo), Path("/"), Path("/")),
                             path=SimpleNamespace(requests=0, errors=0, busy_early=0, pending={}))
    out = {}
    first, t = [], []
    for _ in range(repeats // 10):
        t0 = perf_counter_ns()
        snapshot(daemon, SelectorReader())
        first.append(perf_counter_ns() - t0)
    reader = SelectorReader()
    snap = snapshot(daemon, reader)
    for _ in range(repeats):
        t0 = perf_counter_ns()
        snap = snapshot(daemon, reader)
        t.append(perf_counter_ns() - t0)
    out["publish_first_us"] = float(np.median(first)) / 1e3
    out["publish_us"] = float(np.median(t)) / 1e3
    out["arms"] = len(model.arms)
    with tempfile.TemporaryDirectory() as tmp:
        meter = EnergyMeter.from_config(PowerConfig(source="estimated"))
        reg = CollectorRegistry()
        records = RecordMetrics()
        reg.register(records)
        for arm in model.arms:
            for code, outcome in (("", "ok"), ("INFEASIBLE", "rejected"), ("BAD_INPUT", "error")):
                records.observe({"model": MODEL, "variant": arm.variant.name, "placement": arm.placement.name,
                                 "outcome": outcome, "error_code": code or None, "total_ms": 0.3, "queue_ms": 0.05,
                                 "compute_ms": 0.05, "energy_mj": 0.4, "energy_estimated": True,
                                 "met_accuracy": None, "met_latency": True, "met_energy": None,
                                 "reason_code": "probe"})
        state = StateCollector(SelectionStore(StoreConfig(), Path(tmp) / "s.sqlite3"), meter)
        state.snapshot = snap
        reg.register(state)
        t = []
        for _ in range(repeats // 4):
            t0 = perf_counter_ns()
            text = generate_latest(reg)
            t.append(perf_counter_ns() - t0)
        meter.close()
    out["scrape_ms"] = float(np.median(t)) / 1e6
    out["scrape_lines"] = text.count(b"\n")
    out["scrape_bytes"] = len(text)
    return out


def _scraper(port: int, interval_s: float, stop) -> None:
    while not stop.wait(interval_s):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            r.read()


CONDITIONS = ("off", "on", "on, scraped")


def bench_round_trip(repo: Path, requests: int, blocks: int, rounds: int, interval_s: float,
                     pin: bool = True) -> dict[str, object]:
    """Per condition: p50 and p99 (us) over every round, and the paired per-block p50 difference to
    ``off`` (median, min, max over every block of every round)."""
    from adaptd.clients.client import Client
    from adaptd.tools.launch import DaemonProcess, _free_tcp_port

    placement = next((p for _, p in arms(repo) if p != "cpu:0"), None)   # the worker off the client's core
    x = np.random.default_rng(0).random((1, 16, 16, 1), dtype=np.float32)
    ctx = mp.get_context("spawn")
    rtts: dict[str, list[float]] = {k: [] for k in CONDITIONS}
    diffs: dict[str, list[float]] = {k: [] for k in CONDITIONS[1:]}
    every_core = os.sched_getaffinity(0)
    per_block = max(1, requests // blocks)
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            ports = {k: _free_tcp_port() for k in CONDITIONS[1:]}
            daemons = {k: DaemonProcess.start(repo, Path(tmp) / f"d{i}", config={
                **({"server": {"cores": [0]}} if pin else {}), **({"metrics": {"enabled": True, "port": ports[k]}} if k in ports else {})})
                for i, k in enumerate(CONDITIONS)}
            stop = ctx.Event()
            scraper = ctx.Process(target=_scraper, args=(ports["on, scraped"], interval_s, stop))
            scraper.start()
            if pin:   # the client beside the daemons' own threads (started on every core)
                os.sched_setaffinity(0, {0})
            try:
                clients = {k: Client(d.endpoint, timeout_ms=30_000) for k, d in daemons.items()}
                for c in clients.values():   # warm up: load the variant, settle the arm
                    for _ in range(200):
                        c.infer(MODEL, x, variant="float32", placement=placement)
                for b in range(blocks):
                    p50 = {}
                    shift = (b + r) % len(CONDITIONS)
                    for k in CONDITIONS[shift:] + CONDITIONS[:shift]:
                        c, got = clients[k], []
                        for _ in range(per_block):
                            t0 = perf_counter_ns()
                            c.infer(MODEL, x, variant="float32", placement=placement)
                            got.append((perf_counter_ns() - t0) / 1e3)
                        rtts[k].extend(got)
                        p50[k] = float(np.median(got))
                    for k in diffs:
                        diffs[k].append(p50[k] - p50["off"])
                for c in clients.values():
                    c.close()
            finally:
                os.sched_setaffinity(0, every_core)
                stop.set()
                scraper.join(timeout=10)
                for d in daemons.values():
                    d.stop()
    rng = np.random.default_rng(0)

    def ci95(v: list[float]) -> tuple[float, float]:   # of the median, resampling blocks
        boots = np.median(rng.choice(np.asarray(v), (2000, len(v))), axis=1)
        return float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))

    return {"placement": placement, "pinned": pin, "scrapes_every_s": interval_s, "requests": {k: len(v) for k, v in rtts.items()},
            "p50_us": {k: float(np.percentile(v, 50)) for k, v in rtts.items()},
            "p99_us": {k: float(np.percentile(v, 99)) for k, v in rtts.items()},
            "p999_us": {k: float(np.percentile(v, 99.9)) for k, v in rtts.items()},
            "paired_p50_diff_us": {k: (float(np.median(v)), *ci95(v)) for k, v in diffs.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-repository", type=Path, default=ROOT / "demo-repo")
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--requests", type=int, default=3000, help="per daemon and round")
    ap.add_argument("--blocks", type=int, default=10, help="per round")
    ap.add_argument("--rounds", type=int, default=3, help="each with three fresh daemons")
    ap.add_argument("--scrape-interval-s", type=float, default=1.0)
    ap.add_argument("--no-pin", action="store_true",
                    help="leave the client and the daemons unpinned (the default config) instead of on core 0")
    args = ap.parse_args()
    if not (args.demo_repository / MODEL).is_dir():
        subprocess.run([sys.executable, "-m", "adaptd", "demo", "build", "--repository", str(args.demo_repository),
                        "--no-progress"], check=True)
    print(f"load average before: {os.getloadavg()}")
    rec = bench_record(args.demo_repository, args.records)
    print("record, us per call p50 (p90):")
    for k, (p50, p90) in rec.items():
        print(f"  {k:>12}: {p50:.2f} ({p90:.2f})")
    print(f"  observer, answered: +{rec['on ok'][0] - rec['off ok'][0]:.2f} us; "
          f"rejected: +{rec['on rejected'][0] - rec['off rejected'][0]:.2f} us")
    ps = bench_publish_and_scrape(args.demo_repository)
    print(f"publish (main thread, once a second): {ps['publish_us']:.1f} us; the first, every one of "
          f"{ps['arms']} arms: {ps['publish_first_us']:.1f} us")
    print(f"scrape (listener thread): {ps['scrape_ms']:.2f} ms, {ps['scrape_lines']} lines, {ps['scrape_bytes']} bytes")
    rt = bench_round_trip(args.demo_repository, args.requests, args.blocks, args.rounds, args.scrape_interval_s,
                          pin=not args.no_pin)
    where = "client and daemons on core 0" if rt["pinned"] else "client and daemons where the kernel puts them"
    print(f"round trip on {rt['placement']} (float32 pinned; {where}), "
          f"{rt['requests']['off']} requests per daemon; scraped every {rt['scrapes_every_s']} s:")
    for k in CONDITIONS:
        diff = rt["paired_p50_diff_us"].get(k)
        extra = f"; paired p50 - off: {diff[0]:+.1f} us (95% CI {diff[1]:+.1f}..{diff[2]:+.1f})" if diff else ""
        print(f"  {k:>12}: p50 {rt['p50_us'][k]:.1f} us, p99 {rt['p99_us'][k]:.1f} us, "
              f"p99.9 {rt['p999_us'][k]:.1f} us{extra}")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
