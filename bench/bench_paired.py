"""The daemon's round trip against the in-process loop, finely interleaved: the ratio bars' paired measure.

``bench_overhead.py`` measures each one-client row in rounds of a few hundred requests, each
after its own in-process loop. On a shared host whose spells last seconds, one row's rounds
then spread by several percent (MobileNetV2 with shared memory: 1.04 to 1.13), as much as the
gap the 1.05x bar is about. Here every path runs in short blocks, each right after an
in-process block on the same core, in cycles that alternate the paths' order; a block's ratio
is its p50 over the in-process block's p50, and the figure is the median of a path's ratios
over the cycles, with their interquartile range. Paths whose blocks share a cycle also get the
median of their paired differences (``B - A``) and the share of cycles where B was lower.

Paths (``--paths``, comma-separated; all by default):

* ``stream-shm``, ``stream-inline``, ``ipc-shm``, ``ipc-inline``: the thinnest client (raw
  frames, :mod:`dealers`), as in ``bench_overhead.py``: the daemon's own cost;
* ``library-stream-shm``, ``library-stream-inline``: :class:`adaptd.clients.client.Client`,
  as an application calls it (``Client.infer`` with the variant and placement pinned): the
  daemon's cost and the client library's. For these the client's own CPU time per request is
  given beside the thin client's on the same transport and input.
* ``floor-stream-shm``, ``floor-stream-inline``: the daemon's topology over the local stream
  with none of its work (``topology_stream.py``'s ``inline, unix stream`` skeleton, as
  ``bench_topology.py`` runs it: a process on
  the placement's cores that runs the interpreter on the thread that read the request and
  writes the outputs back), on an input it holds or on the input the request carries. The thin
  client's paths get their paired difference to their floor: what the daemon's own work costs
  in the same cycles, apart from what this host's wake-ups and copies cost any server.

Each path's server CPU per request is also given: the median request's share of its server's
process clocks (the daemon's, or the floor's skeleton's), read by the client after each reply,
so a request's share holds what the server did until the next reply, its deferred work
included (the daemon's child processes too, its live fidelity's shadow worker where it has one); with
``--baseline``, its paired difference too (the execution's CPU, the same on both sides, cancels
out there).

One process does it all: the in-process loop pinned to the placement's cores, the clients
pinned to the others. Each path has a daemon of its own, with its defaults (placement threads,
live fidelity, the store), the variant loaded eagerly, unpinned, so that each path's client is
its daemon's sole caller, as one application's is (``[placements] inline_sole_caller_max_ms``);
the daemons not in use idle meanwhile.

``--baseline REV`` measures a change: each path gets a second daemon, ``PATH@REV``, running the
daemon's code of git revision ``REV`` (checked out in a temporary worktree and put first on that
daemon's ``PYTHONPATH``), in the same cycles; the figure is then also each path's paired
difference against it, with the share of cycles where the current code was lower. The clients
are this checkout's either way, so it measures a change of the daemon, not of the client library.
Usage::

    .venv/bin/python bench/bench_paired.py [--model MobileNetV2] [--cycles 24] [--block 40]
                                           [--placement cpu:1] [--paths stream-shm,library-stream-shm]
                                           [--baseline HEAD~1]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from daemon_cpu import ProcessClocks, process_clock_ids
from dealers import connect, register_region
from topology_stream import RESIDENT

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"digits": ("demo-repo", (1, 16, 16, 1)), "MobileNetV2": ("bench-zoo", (1, 224, 224, 3))}
PATHS = ("stream-shm", "library-stream-shm", "stream-inline", "library-stream-inline", "ipc-shm", "ipc-inline",
         "floor-stream-shm", "floor-stream-inline")


class ThinPath:
    """Raw frames over one connection: the request header made before the clock starts."""

    def __init__(self, endpoint: str, model: str, placement: str, x: np.ndarray, shm: bool) -> None:
        from adaptd.wire import protocol as proto

        self.proto, self.model, self.placement, self.x = proto, model, placement, x
        self.conn = connect(endpoint)
        self.inputs = None
        if shm:
            self.mm, region = register_region(self.conn, x.nbytes)
            np.frombuffer(self.mm, np.float32, x.size)[:] = x.ravel()
            self.inputs = [proto.shm_tensor_header(np.float32, x.shape, region, 0)]

    def once(self) -> float:
        proto = self.proto
        if self.inputs is not None:
            header = proto.request_header(uuid.uuid4().hex, self.model, [], pin_variant="float32",
                                          pin_placement=self.placement, input_headers=self.inputs)
            frames = proto.encode(header)
        else:
            header = proto.request_header(uuid.uuid4().hex, self.model, [self.x], pin_variant="float32",
                                          pin_placement=self.placement)
            frames = proto.encode(header, [self.x])
        t = time.perf_counter()
        self.conn.send(frames)
        reply = self.conn.recv()
        elapsed = time.perf_counter() - t
        header = proto.decode(reply)[0]   # (outside the clock: a path answered with errors measures nothing)
        if header.get("type") != "result":
            raise SystemExit(f"the daemon answered {header.get('code')}: {header.get('message')}")
        return elapsed


class LibraryPath:
    """``Client.infer`` as an application calls it (its request built inside the clock)."""

    def __init__(self, endpoint: str, model: str, placement: str, x: np.ndarray, shm: bool) -> None:
        from adaptd.clients.client import Client

        self.client, self.model, self.placement = Client(endpoint), model, placement
        self.x = x
        if shm:
            region = self.client.register_region(x.nbytes)
            self.x = region.ndarray(x.shape, np.float32)
            self.x[...] = x

    def once(self) -> float:   # (Client.infer raises on an error reply)
        t = time.perf_counter()
        self.client.infer(self.model, self.x, variant="float32", placement=self.placement)
        return time.perf_counter() - t


class FloorPath:
    """A skeleton server of the daemon's topology (see the module's docstring), in a process of
    its own pinned to the placement's cores, its interpreter on the placement's threads; its
    requests carry ``x``, or name the input it holds."""

    def __init__(self, endpoint: str, version_dir: Path, shape, placement, x: np.ndarray, resident: bool,
                 ctx) -> None:
        ready, self._reports = ctx.Event(), ctx.Queue()
        self.server = ctx.Process(target=_serve_floor, args=(endpoint, ready, self._reports, str(version_dir),
                                                             shape, tuple(placement.cores), placement.threads),
                                  daemon=True)
        self.server.start()
        if not ready.wait(60):
            raise SystemExit("the floor's skeleton server did not start")
        self.conn = connect(endpoint)
        self.frames = [b"", b"ADPT01", b"\x81\xa2id\xa1x", RESIDENT if resident else x]

    def once(self) -> float:
        t = time.perf_counter()
        self.conn.send(self.frames)
        self.conn.recv()
        return time.perf_counter() - t

    def close(self) -> None:
        self.conn.close()
        self.server.kill()
        self.server.join()


def _serve_floor(endpoint: str, ready, reports, version_dir: str, shape, cores: tuple[int, ...],
                 threads: int) -> None:
    from topology_stream import serve_stream

    os.sched_setaffinity(0, cores)   # where the daemon's main thread goes to run a sole caller's jobs
    serve_stream("inline, unix stream", endpoint[len("unix://"):], ready, reports, version_dir, threads, shape, cores)


def block(path, n: int) -> tuple[float, float, float]:
    """(p50 round trip in us, this thread's CPU time per request in us, the server's CPU time per
    request in us: the median request's share, from one reply to the next) over ``n`` requests."""
    clocks = path.server_clocks
    cpu0 = time.thread_time()
    rtts, server = [], []
    last = clocks.read_ns()
    for _ in range(n):
        rtts.append(path.once())
        now = clocks.read_ns()
        server.append(now - last)
        last = now
    return float(np.median(rtts)) * 1e6, (time.thread_time() - cpu0) / n * 1e6, float(np.median(server)) / 1e3


def inprocess_block(loaded, x: np.ndarray, n: int, cores: set[int], back: set[int]) -> float:
    os.sched_setaffinity(0, cores)
    try:
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            loaded.run([x])
            ts.append(time.perf_counter() - t)
        return float(np.median(ts)) * 1e6
    finally:
        os.sched_setaffinity(0, back)


def summary(values: list[float]) -> str:
    v = np.asarray(values)
    return f"{np.median(v):.3f} [{np.percentile(v, 25):.3f}..{np.percentile(v, 75):.3f}]"


def short_rev(rev: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True,
                          check=True).stdout.strip()


@contextlib.contextmanager
def baseline_source(rev: str, tmp: Path):
    """A folder whose ``adaptd`` is the project's code at ``rev`` (a git worktree, removed after;
    one left by a run that was killed is pruned by the next)."""
    git = ["git", "-C", str(ROOT), "worktree"]
    subprocess.run([*git, "prune"], check=False)
    tree = tmp / "baseline-tree"
    subprocess.run([*git, "add", "--detach", "-q", str(tree), rev], check=True)
    try:
        (tmp / "baseline").mkdir()
        (tmp / "baseline" / "adaptd").symlink_to(tree)
        yield tmp / "baseline"
    finally:
        if subprocess.run([*git, "remove", "--force", str(tree)], check=False).returncode != 0:
            print(f"warning: the baseline's worktree {tree} was not removed (git worktree prune)", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="MobileNetV2")
    ap.add_argument("--cycles", type=int, default=24)
    ap.add_argument("--block", type=int, default=40, help="requests per block (and in-process runs before it)")
    ap.add_argument("--placement", default="cpu:1")
    ap.add_argument("--paths", type=lambda v: tuple(p.strip() for p in v.split(",")), default=PATHS)
    ap.add_argument("--baseline", metavar="REV", help="also each path on a daemon of this git revision")
    args = ap.parse_args()
    if unknown := set(args.paths) - set(PATHS):
        ap.error(f"no such path: {', '.join(sorted(unknown))} (the paths: {', '.join(PATHS)})")

    from bench_overhead import WARM_S, ensure_repos, latest_version
    from adaptd.daemon.config import PlacementsConfig
    from adaptd.daemon.placements import discover
    from adaptd.tools.launch import DaemonProcess
    from adaptd.variants.manifest import load_manifest
    from adaptd.variants.runtime import load_variant

    ensure_repos(ROOT / "demo-repo", ROOT / "bench-zoo")
    placement = {p.name: p for p in discover(PlacementsConfig())}[args.placement]
    run_cores = set(placement.cores)
    client_cores = set(os.sched_getaffinity(0)) - run_cores or run_cores
    repo, shape = ROOT / MODELS[args.model][0], MODELS[args.model][1]
    version_dir = latest_version(repo / args.model)
    record = next(v for v in load_manifest(version_dir).variants if v.name == "float32")
    os.sched_setaffinity(0, run_cores)   # (its interpreter's threads, if any, start where its runs go)
    loaded = load_variant(version_dir, record, num_threads=placement.threads)
    os.sched_setaffinity(0, client_cores | run_cores)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as daemons_up:
        runs = [(name, name, None) for name in args.paths]   # (label, path, the daemon's PYTHONPATH)
        if args.baseline:   # each path beside its baseline, so that a pair's blocks come close in time
            baseline = daemons_up.enter_context(baseline_source(args.baseline, Path(tmp)))
            runs = [run for name in args.paths
                    for run in ((name, name, None), (f"{name}@{args.baseline}", name, str(baseline)))]
        daemons = []
        paths = {}
        for label, name, pythonpath in runs:   # a daemon each: each path's client is its daemon's sole caller
            if name.startswith("floor-"):   # (no daemon: a skeleton server)
                if pythonpath:
                    continue
                floor = FloorPath(f"unix://{tmp}/{label}.sock", version_dir, shape, placement, x,
                                  name.endswith("-shm"), mp.get_context("spawn"))
                daemons_up.callback(floor.close)
                floor.server_clocks = ProcessClocks(process_clock_ids(floor.server.pid))
                paths[label] = floor
                continue
            daemons.append(daemons_up.enter_context(DaemonProcess.start(repo, Path(tmp) / label, config={
                "placements": {"include": [placement.name], "load": "eager"}},
                env={"PYTHONPATH": pythonpath} if pythonpath else None)))
            library = name.startswith("library-")
            transport, _, input_kind = name.removeprefix("library-").partition("-")
            endpoint = daemons[-1].local_endpoint if transport == "stream" else daemons[-1].endpoint
            os.sched_setaffinity(0, client_cores)   # (after the daemon started: it keeps every core)
            paths[label] = (LibraryPath if library else ThinPath)(endpoint, args.model, placement.name, x,
                                                                 input_kind == "shm")
            paths[label].server_clocks = ProcessClocks(process_clock_ids(daemons[-1].proc.pid))
            os.sched_setaffinity(0, client_cores | run_cores)
        os.sched_setaffinity(0, client_cores)
        for path in paths.values():   # warm-up, past the sole caller's window (from its first request)
            warm_until = time.monotonic() + WARM_S
            while time.monotonic() < warm_until:
                block(path, args.block)
        inprocess_block(loaded, x, args.block, run_cores, client_cores)
        ratios = {name: [] for name in paths}
        cpu = {name: [] for name in paths}
        server_cpu = {name: [] for name in paths}
        p50s = {name: [] for name in paths}
        base_us = []
        names = list(paths)
        for cycle in range(args.cycles):
            for name in names if cycle % 2 == 0 else names[::-1]:
                base = inprocess_block(loaded, x, args.block, run_cores, client_cores)
                p50, cpu_us, server_us = block(paths[name], args.block)
                ratios[name].append(p50 / base)
                cpu[name].append(cpu_us)
                server_cpu[name].append(server_us)
                p50s[name].append(p50)
                base_us.append(base)
    commit = short_rev("HEAD") + (f", baseline {args.baseline} = {short_rev(args.baseline)}" if args.baseline else "")
    print(f"{args.model} float32 on {placement.name} ({placement.threads} thread(s)), clients on "
          f"{sorted(client_cores)}; {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"commit {commit}; load average {load0[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print(f"{args.cycles} cycles x {args.block} requests per path; in-process p50 median "
          f"{np.median(base_us):.0f} us [{min(base_us):.0f}..{max(base_us):.0f}] over the blocks")
    width = max(24, *(len(name) for name in names))
    print(f"{'path':{width}s} {'p50 us':>8s} {'p50 / in-process: median [IQR]':>32s} {'client CPU us/req':>20s} "
          f"{'server CPU us/req':>20s}")
    for name in names:
        print(f"{name:{width}s} {np.median(p50s[name]):8.0f} {summary(ratios[name]):>32s} {np.median(cpu[name]):>20.0f} "
              f"{np.median(server_cpu[name]):>20.0f}")
    for name in (n for n in args.paths if not n.startswith("floor-")) if args.baseline else ():
        diff = np.asarray(ratios[name]) - np.asarray(ratios[f"{name}@{args.baseline}"])
        cpu_diff = np.asarray(server_cpu[name]) - np.asarray(server_cpu[f"{name}@{args.baseline}"])
        print(f"{name} - {name}@{args.baseline}: paired difference {np.median(diff):+.4f} "
              f"[{np.percentile(diff, 25):+.4f}..{np.percentile(diff, 75):+.4f}], "
              f"lower in {int((diff < 0).sum())} of {len(diff)} cycles; the daemon's CPU per request "
              f"{np.median(cpu_diff):+.1f} us [{np.percentile(cpu_diff, 25):+.1f}..{np.percentile(cpu_diff, 75):+.1f}], "
              f"lower in {int((cpu_diff < 0).sum())}")
    for name in names:
        if (floor := f"floor-{name}") in ratios:
            diff = np.asarray(ratios[name]) - np.asarray(ratios[floor])
            cpu_diff = np.asarray(server_cpu[name]) - np.asarray(server_cpu[floor])
            print(f"{name} - {floor}: paired difference {np.median(diff):+.4f} "
                  f"[{np.percentile(diff, 25):+.4f}..{np.percentile(diff, 75):+.4f}], CPU per request "
                  f"{np.median(cpu_diff):+.0f} us (the daemon's own work)")
    for name in names:
        if name.startswith("library-") and (thin := name.removeprefix("library-")) in ratios:
            diff = np.asarray(ratios[name]) - np.asarray(ratios[thin])
            print(f"{name} - {thin}: paired difference {np.median(diff):+.4f} "
                  f"[{np.percentile(diff, 25):+.4f}..{np.percentile(diff, 75):+.4f}], "
                  f"client CPU +{np.median(cpu[name]) - np.median(cpu[thin]):.0f} us/req")
    return 0


if __name__ == "__main__":
    sys.exit(main())
