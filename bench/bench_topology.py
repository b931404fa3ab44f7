"""Skeletons of the request path's candidate topologies, measured before any is built.

Each skeleton serves the same variant the same way a daemon would at its floor: ZeroMQ in,
the interpreter's ``invoke``, ZeroMQ out, with none of the daemon's own work (no decoding,
choice, statistics or records). What a skeleton costs over the bare echo is what its topology
costs; the daemon built on it can only add to that. Candidates:

* ``echo``: a ROUTER that returns each request (the floor of any ZeroMQ service).
* ``echo, compiled``: the same ROUTER in C (``bench/skeletons/echo.c``, built here with the
  system's C compiler against the libzmq that pyzmq ships; left out, with the reason, where
  either is missing): the floor of a front end that is not Python.
* ``echo, ZMTP in Python``: the ZeroMQ client's echo served by a Python server that speaks ZMTP
  itself (the daemon's ipc engine, :mod:`adaptd.wire.zmtp`): no I/O thread at the server's end.
* ``echo, unix stream``, ``inline, unix stream``, ``thread, direct, unix stream`` and ``thread,
  via receiver, unix stream``: the same over a Unix stream socket (:mod:`adaptd.wire.stream`'s
  framing, the daemon's local stream) instead of ZeroMQ: one thread hop each way, where ZeroMQ
  adds its I/O thread at each end (``bench/topology_stream.py``; its thread kinds keep the
  receiver on the placement's cores, as the daemon's main thread is with one client).
* ``inline``: the receiving thread runs the interpreter itself (execution where the request is
  received; the thread is not pinned).
* ``inline, migrate``: the same, the receiving thread moving itself onto the placement's cores
  for the execution (``sched_setaffinity``) and back.
* ``thread, direct``: the receiving thread hands the request to an executor thread pinned to
  the placement's cores, which runs it and sends the reply itself on the front-end socket
  (socket access serialised by a lock; the receiver waits on the socket's file descriptor).
* ``thread, via receiver``: the executor hands the outputs back and the receiving thread sends
  the reply.
* ``process relay``: the receiving process hands the request to a worker process over a
  socketpair (today's daemon, its floor).

For each: round trip p50/p99 from one client process, its ratio to the same variant run in a
loop in one process pinned to the placement's core (``in-process``, measured in the same rounds:
the baseline of the round-trip section's ratio targets), and the CPU time the serving process
(and its worker, for the relay) spends per request less the interpreter's own invoke time.
``--resident`` sends no input: the server runs on an input it holds, as a daemon does on a
shared-memory input (the floor of the ``shm`` targets).

Usage::

    .venv/bin/python bench/bench_topology.py [--model digits|MobileNetV2] [--requests 3000] [--rounds 3]
                                             [--resident] [--skeletons 'echo, unix stream;inline, unix stream']
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import zmq

from adaptd.wire.frames import recv_frames, send_frames
from bench_overhead import latest_version
from dealers import connect
from topology_stream import RESIDENT, STREAM_KINDS, ZMTP_ECHO, cpu_s as _cpu_s, load as _load, serve_stream

ROOT = Path(__file__).resolve().parents[1]


def _serve(kind: str, endpoint: str, ready, stats_q, version_dir: str, threads: int, cores: tuple[int, ...],
           shape) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    invoke_ns = [0]
    served = [0]
    resident = np.random.default_rng(0).random(shape, dtype=np.float32)

    def run(loaded, body) -> list:
        x = resident if bytes(body[:2]) == RESIDENT else np.frombuffer(body, dtype=np.float32).reshape(shape)
        t0 = time.perf_counter_ns()
        out = loaded.run([x])
        invoke_ns[0] += time.perf_counter_ns() - t0
        return [np.ascontiguousarray(o, dtype=np.float32) for o in out]

    def report() -> None:
        stats_q.put((served[0], _cpu_s(), invoke_ns[0] / 1e9))

    if kind == "echo":
        ready.set()
        while True:
            frames = recv_frames(sock)
            if len(frames[-1].buffer) == 0:   # the client's "report" message
                report()
                continue
            send_frames(sock, frames)
            served[0] += 1

    if kind in ("inline", "inline, migrate"):
        loaded = _load(version_dir, threads) if kind == "inline" else None
        if loaded is None:   # interpreter threads inherit the placement's cores
            free = os.sched_getaffinity(0)
            os.sched_setaffinity(0, cores)
            loaded = _load(version_dir, threads)
            os.sched_setaffinity(0, free)
        free = os.sched_getaffinity(0)
        ready.set()
        while True:
            frames = recv_frames(sock)
            if len(frames[-1].buffer) == 0:
                report()
                continue
            if kind == "inline, migrate":
                os.sched_setaffinity(0, cores)
                out = run(loaded, frames[-1].buffer)
                os.sched_setaffinity(0, free)
            else:
                out = run(loaded, frames[-1].buffer)
            send_frames(sock, [*frames[:-1], *out])
            served[0] += 1

    if kind.startswith("thread"):
        direct = kind == "thread, direct"
        lock = threading.Lock()
        jobs: deque = deque()
        results: deque = deque()
        job_ready = threading.Condition(threading.Lock())
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        loaded_box: list = []
        started = threading.Event()

        def executor() -> None:
            os.sched_setaffinity(0, cores)
            loaded_box.append(_load(version_dir, threads))
            started.set()
            while True:
                with job_ready:
                    while not jobs:
                        job_ready.wait()
                    frames = jobs.popleft()
                out = run(loaded_box[0], frames[-1].buffer)
                if direct:
                    served[0] += 1   # (before the send: the client's next message may ask for the count)
                    with lock:
                        send_frames(sock, [*frames[:-1], *out])
                        pending_in = sock.getsockopt(zmq.EVENTS) & zmq.POLLIN
                    if pending_in:
                        os.write(wake_w, b"x")
                else:
                    results.append([*frames[:-1], *out])
                    os.write(wake_w, b"x")

        threading.Thread(target=executor, daemon=True).start()
        started.wait()
        fd = sock.getsockopt(zmq.FD)
        poller = __import__("select").poll()
        poller.register(fd, 1)
        poller.register(wake_r, 1)
        ready.set()
        while True:
            poller.poll()
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
            while results:
                with lock:
                    send_frames(sock, results.popleft())
                served[0] += 1
            while True:
                with lock:
                    if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        break
                    frames = recv_frames(sock, zmq.NOBLOCK)
                if len(frames[-1].buffer) == 0:
                    report()
                    continue
                with job_ready:
                    jobs.append(frames)
                    job_ready.notify()

    if kind == "process relay":
        from adaptd.daemon.channel import Channel

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.fork() == 0:
            ours.close()
            os.sched_setaffinity(0, cores)
            loaded = _load(version_dir, threads)
            ch = Channel(theirs)
            ch.send("ready", {})
            while True:
                try:
                    _v, h, bodies = ch.recv()
                except ConnectionError:
                    os._exit(0)
                if h.get("report"):
                    ch.send("report", {"cpu": _cpu_s(), "invoke": invoke_ns[0] / 1e9})
                    continue
                ch.send("done", {}, run(loaded, bodies[0]))
        theirs.close()
        ch = Channel(ours)
        ch.recv()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(ch.fileno(), zmq.POLLIN)
        waiting: deque = deque()
        ready.set()
        while True:
            for item, _ in poller.poll():
                if item is sock:
                    frames = recv_frames(sock)
                    if len(frames[-1].buffer) == 0:
                        ch.send("x", {"report": True})
                        _v, h, _ = ch.recv()
                        stats_q.put((served[0], _cpu_s() + h["cpu"], h["invoke"]))
                        continue
                    waiting.append(frames)
                    ch.send("run", {}, [frames[-1].buffer])
                else:
                    _v, _h, outs = ch.recv()
                    frames = waiting.popleft()
                    send_frames(sock, [*frames[:-1], *outs])
                    served[0] += 1


def _client(endpoint: str, shape, n: int, cores: tuple[int, ...], out, resident: bool = False) -> None:
    if cores:
        os.sched_setaffinity(0, cores)
    x = RESIDENT if resident else np.random.default_rng(0).random(shape, dtype=np.float32)
    dealer = connect(endpoint)
    send, recv = dealer.send, dealer.recv
    header = b"\x81\xa2id\xa1x"
    for _ in range(200):
        send([b"", b"ADPT01", header, x])
        recv()
    send([b"", b"ADPT01", header, b""])   # the server's counts after the warm-up (no reply)
    rtts = []
    for _ in range(n):
        t = time.perf_counter_ns()
        send([b"", b"ADPT01", header, x])
        recv()
        rtts.append(time.perf_counter_ns() - t)
    out.put(rtts)


def _inprocess(version_dir: str, cores: tuple[int, ...], shape, n: int, out) -> None:
    """The baseline: the variant run in a loop by one process pinned to the placement's core."""
    os.sched_setaffinity(0, cores)
    loaded = _load(version_dir, 1)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(20):
        loaded.run([x])
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        loaded.run([x])
        times.append(time.perf_counter_ns() - t)
    out.put(times)


COMPILED = "echo, compiled"
KINDS = ("echo", COMPILED, *STREAM_KINDS, "inline", "inline, migrate", "thread, direct", "thread, via receiver", "process relay")


def _compile_echo(tmp: str) -> tuple[str | None, str]:
    """``bench/skeletons/echo.c`` built against pyzmq's libzmq: (path of the binary, "") or
    (None, why not)."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None, "no C compiler (cc, gcc or $CC)"
    site = Path(zmq.__file__).resolve().parent
    libs = sorted((site.parent / "pyzmq.libs").glob("libzmq*.so*")) + sorted(site.glob("libzmq*.so*"))
    if not libs:
        return None, f"no libzmq shipped with pyzmq beside {site}"
    binary = str(Path(tmp) / "echo")
    build = subprocess.run([cc, "-O2", "-o", binary, str(ROOT / "bench" / "skeletons" / "echo.c"), str(libs[0]),
                            f"-Wl,-rpath,{libs[0].parent}"], check=False, capture_output=True, text=True)
    if build.returncode != 0:
        return None, f"{cc} failed: {build.stderr.strip().splitlines()[-1] if build.stderr.strip() else build.returncode}"
    return binary, ""


class _CompiledServer:
    """The C echo as a server process, reporting (served, CPU s, invoke s) as ``_serve`` does."""

    def __init__(self, binary: str, endpoint: str) -> None:
        self.proc = subprocess.Popen([binary, endpoint], stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the compiled echo did not start")

    def get(self) -> tuple[int, float, float]:
        served, cpu_s = self.proc.stdout.readline().split()
        return int(served), float(cpu_s), 0.0

    def kill(self) -> None:
        self.proc.kill()

    def join(self) -> None:
        self.proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits", choices=("digits", "MobileNetV2"))
    ap.add_argument("--demo-repository", type=Path, default=ROOT / "demo-repo")
    ap.add_argument("--zoo-repository", type=Path, default=ROOT / "bench-zoo")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--placement-core", type=int, default=None,
                    help="the placement's core (default: the last allowed core); the client runs elsewhere")
    ap.add_argument("--skeletons", type=lambda v: tuple(k.strip() for k in v.split(";")), default=KINDS,
                    help="the skeletons to run, separated by ';' (default: all; 'echo' is always run)")
    ap.add_argument("--resident", action="store_true",
                    help="send no input: the server runs on one it holds (the shared-memory floor)")
    args = ap.parse_args()
    if unknown := set(args.skeletons) - set(KINDS):
        ap.error(f"no such skeleton: {', '.join(sorted(unknown))} (the skeletons: {'; '.join(KINDS)})")

    repo, shape = ((args.demo_repository, (1, 16, 16, 1)) if args.model == "digits"
                   else (args.zoo_repository, (1, 224, 224, 3)))
    version_dir = latest_version(repo / args.model)
    allowed = sorted(os.sched_getaffinity(0))
    core = allowed[-1] if args.placement_core is None else args.placement_core
    cores = (core,)
    client_cores = tuple(c for c in allowed if c != core) or cores
    n = args.requests if args.model == "digits" else max(200, args.requests // 10)
    ctx = mp.get_context("spawn")
    rows: dict[str, list[tuple[float, float, float]]] = {k: [] for k in KINDS}
    baseline: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        compiled, why_not = _compile_echo(tmp)
        kinds = tuple(k for k in KINDS if k == "echo" or k in args.skeletons and (compiled or k != COMPILED))
        if not compiled and COMPILED in args.skeletons:
            print(f"{COMPILED}: left out: {why_not}")
        rows = {k: rows[k] for k in kinds}
        for r in range(args.rounds):
            out = ctx.Queue()
            proc = ctx.Process(target=_inprocess, args=(str(version_dir), cores, shape, n, out))
            proc.start()
            baseline.append(float(np.percentile(np.array(out.get()) / 1e3, 50)))
            proc.join()
            for kind in kinds:   # alternating, so a slow spell of the host spreads over all
                ep = f"ipc://{tmp}/{r}-{KINDS.index(kind)}.sock"
                out = ctx.Queue()
                if kind in STREAM_KINDS:   # (the ZMTP one's clients are libzmq's, on an ipc path)
                    ep = f"{'ipc' if kind == ZMTP_ECHO else 'unix'}://{tmp}/{r}-{KINDS.index(kind)}.sock"
                    ready, reports = ctx.Event(), ctx.Queue()
                    server = ctx.Process(target=serve_stream, args=(kind, ep.split("://", 1)[1], ready, reports,
                                                                    str(version_dir), 1, shape, cores), daemon=True)
                    server.start()
                    ready.wait()
                elif kind == COMPILED:
                    server = reports = _CompiledServer(compiled, ep)   # its reports come on its stdout
                else:
                    ready, reports = ctx.Event(), ctx.Queue()
                    server = ctx.Process(target=_serve, args=(kind, ep, ready, reports, str(version_dir), 1, cores,
                                                              shape), daemon=True)
                    server.start()
                    ready.wait()
                client = ctx.Process(target=_client, args=(ep, shape, n, client_cores, out, args.resident))
                client.start()
                rtts = np.array(out.get()) / 1e3
                client.join()
                sock = connect(ep)
                sock.send([b"", b"ADPT01", b"\x80", b""])
                warm, end = reports.get(), reports.get()   # (served, CPU s, invoke s) after the warm-up, at the end
                served, cpu_s, invoke_s = (b - a for a, b in zip(warm, end))
                sock.close()
                server.kill()
                server.join()
                cpu_us = (cpu_s - invoke_s) / max(served, 1) * 1e6
                rows[kind].append((float(np.percentile(rtts, 50)), float(np.percentile(rtts, 99)), cpu_us))
    echo = np.median([p50 for p50, _, _ in rows["echo"]])
    print(f"{args.model} float32, 1 thread on core {core}; client on {client_cores}; "
          f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.rounds} rounds x {n} requests{', input resident' if args.resident else ''}; "
          "median [min..max] over rounds; x in-process: per round, against that round's loop")
    width = max(map(len, rows)) + 1
    print(f"{'skeleton':{width}s} {'p50 us':>18s} {'x in-process':>18s} {'p99 us':>18s} {'p50 - echo':>11s} "
          f"{'CPU/req - invoke us':>20s}")
    print(f"{'in-process':{width}s} {np.median(baseline):8.0f} [{min(baseline):.0f}..{max(baseline):.0f}]")
    for kind, rs in rows.items():
        p50s, p99s, cpus = zip(*rs)
        ratios = [p / b for p, b in zip(p50s, baseline)]
        print(f"{kind:{width}s} {np.median(p50s):8.0f} [{min(p50s):.0f}..{max(p50s):.0f}] "
              f"{np.median(ratios):6.3f} [{min(ratios):.3f}..{max(ratios):.3f}] "
              f"{np.median(p99s):8.0f} [{min(p99s):.0f}..{max(p99s):.0f}] {np.median(p50s) - echo:11.0f} "
              f"{np.median(cpus):10.0f} [{min(cpus):.0f}..{max(cpus):.0f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
