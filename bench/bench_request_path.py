"""The daemon's own CPU per request, without sockets: its request path driven in-process.

A daemon is assembled (``Daemon.assemble``) on the demo repository with its real parts (the
registry, the selector, admission, replay, bookkeeping, the wire, and the placement threads that
run the interpreter, so that short jobs run inline as in the daemon), but with the sockets
replaced by a frontend that keeps replies and the store replaced by one that drops records:
what is left is the Python the daemon runs per request. Each request is one message of the
frames a client sends (the tiny model, one 1x16x16x1 float32 input, a latency bound), handed to
``RequestPath.on_request``; the deferred bookkeeping is flushed after each, as the daemon's idle
moment does (the policy's update in batches, as there). Reported: CPU time per request of the calling thread (``time.thread_time``), p50 and
p90 over the requests, with the inline execution and without it (less the CPU time it measured
around the interpreter's run); with ``--profile`` the functions that cost most (cProfile).

``--gap-us N`` runs other code for N µs between two requests (``--gap spin``: a loop of Python
reading a clock; ``sleep``: the thread sleeps, its core idles), as a daemon's main thread lives
between the requests of a caller: the same request path then runs on caches and predictors that
other code has used meanwhile (BENCHMARKS.md, "How much does the daemon add to a request's
round trip?", reads the daemon's live CPU with it). ``--sweep-mb N`` reads an array of N MB
before each request instead, as a model's run between two requests does (MobileNetV2's weights
are 14 MB): the same path on caches emptied of it, which is how it runs live. With
``--sweep-core C`` the array is read over and over by a process on core C instead, as a run on
another core does: what the caches that core shares with the loop's cost it.

Usage::

    .venv/bin/python bench/bench_request_path.py [--requests 20000] [--gap-us 500 [--gap sleep]] [--input shm]
    .venv/bin/python bench/bench_request_path.py --input shm --sweep-mb 16 [--placement cpu:0 --sweep-core 1]
    .venv/bin/python bench/bench_request_path.py --profile [--sort tottime] [--new-headers | --own-bounds]
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import zmq

from adaptd.daemon.config import Config
from adaptd.daemon.dispatch import Dispatcher
from adaptd.daemon.placements import PlacementsConfig, discover
from adaptd.daemon.power.meter import EnergyReading
from adaptd.daemon.registry import load_registry
from adaptd.daemon.server import Daemon
from adaptd.wire import protocol as proto

ROOT = Path(__file__).resolve().parents[1]


class KeepFrontend:
    sockets: list = []
    admin: set = set()
    streams = SimpleNamespace(backlogged=False)   # no local stream: nothing waits in a stream's backlog
    replies_unread_dropped = replies_to_departed = 0

    def __init__(self) -> None:
        self.sent = 0

    def send(self, route, frames) -> bool:
        self.sent += 1
        self.last = frames
        return True


class DropStore:
    def submit(self, record) -> None:
        pass

    def describe(self) -> dict:
        return {}


class NoMeter:
    def attribute(self, placement, t0_ns, t1_ns, cpu_time_s, wait=True):
        return EnergyReading(cpu_time_s * 1000.0, "estimated:generic", True)

    def predict_mj(self, placement, latency_ms):
        return latency_ms

    def runtime_energy_mj(self, cpu_s):
        return cpu_s * 1000.0, "estimated:generic"

    def describe(self) -> dict:
        return {}


def build(repo: Path, placement: str):
    with tempfile.TemporaryDirectory() as tmp:
        config = Config.from_dict({"repository": str(repo), "state_dir": tmp, "runtime_dir": tmp})
    placements = [p for p in discover(PlacementsConfig()) if p.name == placement]
    pool = Dispatcher(placements, 32)
    d = Daemon(config)
    d.assemble(registry=load_registry(repo, placements, 1), placements=placements, pool=pool, meter=NoMeter(),
               store=DropStore(), frontend=KeepFrontend())
    pool.start()
    pool.wait_ready(60)
    d.policy.energy_prior = d.meter.predict_mj
    d.policy.reset(d.registry)
    for model in d.registry.newest():
        for arm in model.arms:
            pool.preload(arm.placement.name, str(model.directory), arm.variant.name)
    pool.wait_loaded(60)
    return d, pool


PEER = b"\x01peer-identity-16"
REQUEST_NUMBERS = itertools.count()   # (on from run to run: a new header stays new)


def message(i: int, x: np.ndarray, region: str | None = None, headers: str = "repeated") -> list[zmq.Frame]:
    """Request ``i``: ``x`` inline, or named at the start of ``region`` (PROTOCOL.md §11); its
    header the same each time (``headers`` "repeated"), one the daemon has not seen ("new": a
    client name of its own) or one with a latency bound of its own ("own-bounds")."""
    shm = [proto.shm_tensor_header(x.dtype, x.shape, region, 0)] if region else None
    header = proto.request_header(f"r{i:08d}", "digits", [x],
                                  constraints={"max_latency_ms": 50.0 + (i * 1e-3 if headers == "own-bounds" else 0.0)},
                                  client=f"new-{i}" if headers == "new" else None, input_headers=shm)
    return [zmq.Frame(PEER), *(zmq.Frame(bytes(memoryview(f))) for f in proto.encode(header, [] if region else [x]))]


def shared_input(d: Daemon, x: np.ndarray) -> str:
    """A region registered through the request path as a client does, ``x`` written at its start."""
    d.path.on_request(None, [zmq.Frame(PEER), *(zmq.Frame(bytes(memoryview(f))) for f in proto.encode(
        {"type": "shm_register", "id": "reg", "size": x.nbytes, "owner_pid": os.getpid()}))])
    body = proto.decode(list(d.frontend.last))[0]["body"]
    with open(body["path"], "r+b") as fh:
        fh.write(x.tobytes())
    return body["region"]


def run(d: Daemon, n: int, x: np.ndarray, gap_s: float = 0.0, sleep: bool = False,
        region: str | None = None, sweep: np.ndarray | None = None,
        headers: str = "repeated") -> tuple[np.ndarray, np.ndarray]:
    """CPU µs per request of this thread, with the execution and without it (less the CPU time
    the execution measured around the interpreter's run); ``gap_s`` of other code before each,
    or ``sweep`` read through."""
    per, outside = [], []
    frames = [message(next(REQUEST_NUMBERS), x, region, headers) for _ in range(n)]
    for msg in frames:
        if sweep is not None:
            sweep.sum()
        elif sleep:
            time.sleep(gap_s)
        elif gap_s:
            until = time.perf_counter() + gap_s
            while time.perf_counter() < until:
                pass
        c0, e0 = time.thread_time_ns(), d.path.execution_cpu_s_all
        d.path.on_request(None, msg)
        d.books.flush(hold=True)   # as the daemon's idle moment does
        per.append(time.thread_time_ns() - c0)
        outside.append(per[-1] - (d.path.execution_cpu_s_all - e0) * 1e9)
    if d.path.errors:   # (a part the benchmark stands in for, missing something the path asks of it)
        raise SystemExit(f"the request path answered errors: {d.path.errors_by_code}")
    return np.array(per) / 1e3, np.array(outside) / 1e3


SWEEPER = """import os, numpy as np
os.sched_setaffinity(0, {%d})
a = np.ones(%d, np.float32)
a.sum()
print("ready", flush=True)
parent = os.getppid()
while os.getppid() == parent:   # (ends with the benchmark, however it ends)
    a.sum()
"""


def start_sweeper(core: int, size: int) -> subprocess.Popen:
    """A process on ``core`` reading ``size`` float32 values over and over, once it has begun."""
    sweeper = subprocess.Popen([sys.executable, "-c", SWEEPER % (core, size)], stdout=subprocess.PIPE, text=True)
    if sweeper.stdout.readline().strip() != "ready":
        sweeper.wait()
        raise SystemExit(f"the sweeping process did not start on core {core}")
    return sweeper


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=ROOT / "demo-repo")
    ap.add_argument("--placement", default=None, help="default: the last single-core placement")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--sort", default="cumulative", help="the profile's order (pstats' keys: tottime, ...)")
    ap.add_argument("--gap-us", type=float, default=0.0, help="other code run between two requests (µs)")
    ap.add_argument("--gap", choices=("spin", "sleep"), default="spin", help="what that other code is")
    ap.add_argument("--sweep-mb", type=float, default=0.0,
                    help="an array of this size read before each request (the caches a model's run leaves)")
    ap.add_argument("--sweep-core", type=int, default=None,
                    help="read that array over and over in a process on this core instead (a run on another core)")
    ap.add_argument("--input", choices=("inline", "shm"), default="inline",
                    help="the input in the message, or in a shared-memory region the request names")
    kinds = ap.add_mutually_exclusive_group()
    kinds.add_argument("--new-headers", action="store_true",
                       help="each request a header the daemon has not seen (a client name of its own)")
    kinds.add_argument("--own-bounds", action="store_true",
                       help="each request with a latency bound of its own (a deadline per frame)")
    args = ap.parse_args()
    headers = "new" if args.new_headers else "own-bounds" if args.own_bounds else "repeated"
    names = [p.name for p in discover(PlacementsConfig()) if len(p.cores) == 1]
    placement = args.placement or names[-1]
    d, pool = build(args.repository, placement)
    os.sched_setaffinity(0, next(p.cores for p in d.placements))
    x = np.random.default_rng(0).random((1, 16, 16, 1), dtype=np.float32)
    region = shared_input(d, x) if args.input == "shm" else None
    run(d, 2000, x, region=region)   # warm-up: the selector's estimates settle, caches fill
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(d, args.requests, x, region=region, headers=headers)
        prof.disable()
        pstats.Stats(prof).sort_stats(args.sort).print_stats(35)
        return 0
    if args.sweep_core is not None and not args.sweep_mb:
        ap.error("--sweep-core needs --sweep-mb")
    sweep_values = int(args.sweep_mb * 2**20) // 4   # float32s
    sweep = sweeper = None
    if args.sweep_mb and args.sweep_core is not None:   # read by another process, on its own core
        sweeper = start_sweeper(args.sweep_core, sweep_values)
    elif args.sweep_mb:
        sweep = np.ones(sweep_values, np.float32)
    try:
        per, outside = run(d, args.requests, x, args.gap_us / 1e6, args.gap == "sleep", region, sweep,
                           headers)
        if sweeper is not None and sweeper.poll() is not None:
            raise SystemExit("the sweeping process ended before the loop did")
    finally:
        if sweeper is not None:
            sweeper.kill()
            sweeper.wait()
    print(f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}"
          + f"; input {args.input}" + (f"; headers {headers}" if headers != "repeated" else "")
          + (f"; {args.gap} {args.gap_us:g} us between requests" if args.gap_us else "")
          + (f"; {args.sweep_mb:g} MB read before each request" if sweep is not None else "")
          + (f"; {args.sweep_mb:g} MB read over and over on core {args.sweep_core}" if sweeper is not None else ""))
    print(f"requests {len(per)}, replies {d.frontend.sent}; CPU us per request: inline execution included "
          f"p50 {np.percentile(per, 50):.1f}, p90 {np.percentile(per, 90):.1f}, mean {per.mean():.1f}; outside "
          f"the execution p50 {np.percentile(outside, 50):.1f}, p90 {np.percentile(outside, 90):.1f}, "
          f"mean {outside.mean():.1f}")
    pool.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
