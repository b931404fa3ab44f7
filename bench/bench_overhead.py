"""Daemon overhead: the same variant in-process versus through the daemon (ipc and tcp).

For each model (the demo's digits CNN and MobileNetV2 from the zoo) it measures, in one run:

* in-process: ``LoadedVariant.run`` in this process with the placement's thread count;
* bare echo: a ZeroMQ ROUTER echo in another process, carrying the same frames (the floor any
  ZeroMQ service pays); it and the client processes send and receive frame by frame
  (``adaptd.wire.frames``), as the daemon and the client library do;
* the daemon over ipc and over tcp, the variant and placement pinned, with 1, 2 and 4 concurrent
  client processes: round-trip p50/p99 and throughput (ipc is served by the daemon's own ZMTP
  engine by default, PROTOCOL.md §2.4, so no ``ZMQbg/IO/0`` thread of the daemon's works for
  it; tcp by libzmq's ``ROUTER``);
* relay floor: the daemon's process topology with none of its work, in Python: a ROUTER in
  another process (pinned where the daemon is) hands each request's input frame over the
  daemon's own worker channel (:mod:`adaptd.daemon.channel`) to a worker process pinned to the
  placement's cores, which runs the same interpreter on it and sends the outputs back; the relay
  replies. No decoding, validation, choice, statistics or records. ``relay floor, no execution``
  is the same with the worker returning the input unrun; ``relay floor, input resident`` sends no
  input, the worker runs on one it holds (the floor of the shared-memory rows). What the daemon costs over the bare
  echo beyond this floor is its request path's work; the floor itself is what the design (one
  worker process per placement, for crash isolation) costs in Python (with the daemon's default
  scheduler slice, ``[server] sched_slice_us``);
* the daemon over its local stream (``unix://``, PROTOCOL.md §2.3: no ZeroMQ I/O thread at either
  end), one client with inline and with shared-memory input, and four clients;
* the daemon over ipc with the input in a shared-memory region (PROTOCOL.md §11): each client
  process registers a region, and its requests name it instead of carrying the bytes. ``shm``
  keeps the input where the application made it (the in-process baseline does not copy it
  either); ``shm, copy in`` copies the input into the region before every request.

The daemon rows give its CPU time per request (all its threads and processes) twice: as
measured, and outside the execution, less the CPU time each execution measured around the
interpreter's run (``stats``: ``runtime.executions_cpu_ms``), which is the issue's measure of
what the daemon itself costs; and then split by thread (the kernel's names for them: ``adaptd``
the main thread, ``ZMQbg/IO/0``, ``adaptd-store``, a placement's name), which is where a cost
that no in-process profile sees shows up (a thread that ended during a row is missing from it).
Those are means; with one client the median request's CPU outside the execution is given too
(the issue's bar is a p50): the client reads the daemon's processes' CPU clocks before each send
(:mod:`daemon_cpu`), so each request's share holds what the daemon did until the next one
arrived, its deferred work included.

Each figure is the median over ``--rounds`` rounds (spread: min..max over rounds); ratios are to
in-process measured in the same run: each of the four one-client ratios (ipc and local stream,
inline and shared-memory input) to a loop measured right before it, the ``x in-proc`` column to
the mean of a round's first two loops. Usage::

    .venv/bin/python bench/bench_overhead.py [--rounds 3] [--requests 1500] [--json out.json] [--no-tcp]
                                             [--spin-us US] [--pin-daemon]
"""

from __future__ import annotations

import argparse
import functools
import json
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
import zmq

from adaptd.daemon.inline_rule import SOLE_CALLER_WINDOW_S
from adaptd.wire.frames import recv_frames, send_frames
from daemon_cpu import ProcessClocks, by_name, process_clock_ids, process_cpu_s, thread_cpu_s
from dealers import connect, register_region, unregister_region

# A client's warm-up lasts at least this: past the daemon's sole-caller window
# (adaptd.daemon.inline_rule), so that what is measured is a lone client's steady state.
WARM_S = SOLE_CALLER_WINDOW_S + 0.2

ROOT = Path(__file__).resolve().parents[1]
THREAD_PREFIX = "cpu_us_thread:"   # a daemon row's CPU per request of the threads of one kernel name


def _echo_server(endpoint: str, ready) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    ready.set()
    while True:
        send_frames(sock, recv_frames(sock))


def _relay_worker(sock, cores: tuple[int, ...], version_dir: str, variant: str, threads: int,
                  shape, execute: bool) -> None:
    """The floor's worker: pinned before the interpreter loads (as the daemon's workers are),
    then one execution per message on the channel, outputs back."""
    from adaptd.daemon.channel import Channel

    if cores:
        os.sched_setaffinity(0, cores)
    from adaptd.variants.manifest import load_manifest
    from adaptd.variants.runtime import load_variant

    record = next(v for v in load_manifest(Path(version_dir)).variants if v.name == variant)
    loaded = load_variant(Path(version_dir), record, num_threads=threads)
    resident = np.random.default_rng(0).random(shape, dtype=np.float32)   # input sent without a body
    channel = Channel(sock)
    channel.send("ready", {})
    while True:
        try:
            _verb, _header, bodies = channel.recv()
        except ConnectionError:
            return
        x = np.frombuffer(bodies[0], dtype=np.float32).reshape(shape) if bodies else resident
        outputs = [np.ascontiguousarray(o, dtype=np.float32) for o in loaded.run([x])] if execute else [x]
        channel.send("done", {}, outputs)


def _relay_server(endpoint: str, ready, relay_cores: tuple[int, ...], worker_cores: tuple[int, ...],
                  version_dir: str, variant: str, threads: int, shape, execute: bool) -> None:
    """The floor's relay: ROUTER -> channel -> worker -> channel -> ROUTER, polled as the
    daemon polls its front end and its workers' channels (one client, in lock step)."""
    import socket as _socket

    from adaptd.daemon.channel import Channel

    from adaptd.daemon.config import ServerConfig
    from adaptd.daemon.sched import request_slice_all_threads

    if relay_cores:
        os.sched_setaffinity(0, relay_cores)
    if ServerConfig.sched_slice_us:   # the daemon's default scheduler slice, inherited by the worker
        request_slice_all_threads(ServerConfig.sched_slice_us)
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    if os.fork() == 0:   # the worker, forked before any ZeroMQ context exists here
        ours.close()
        try:
            _relay_worker(theirs, worker_cores, version_dir, variant, threads, shape, execute)
        finally:
            os._exit(0)
    theirs.close()
    channel = Channel(ours)
    channel.recv()   # ready: the interpreter is loaded
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(endpoint)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(channel.fileno(), zmq.POLLIN)
    ready.set()
    waiting: list = []
    while True:
        for item, _ in poller.poll():
            if item is sock:
                frames = recv_frames(sock)
                waiting.append(frames)
                channel.send("run", {}, [frames[-1].buffer] if len(frames) > 4 else [])
            else:
                _verb, _header, outputs = channel.recv()
                frames = waiting.pop(0)
                send_frames(sock, [*frames[:4], *outputs])


def _client(endpoint: str, model: str, variant: str | None, placement: str | None, shape, n: int,
            warmup: int, barrier, out, shm: str | None = None, cores: tuple[int, ...] = (),
            clock_ids: list[int] | None = None, warmed=None) -> None:
    """One client process: raw frames on a DEALER socket or the local stream (the thinnest client,
    :mod:`dealers`). ``shm``: None
    (inline frames), "shm" (the input lives in a registered region), "copy" (copied into the
    region before each request) or "resident" (no input sent: the relay floor's worker holds
    one, the floor of the shared-memory path). ``clock_ids``: the server's processes' CPU-time
    clocks, read before each request is sent (outside its timing): the server's CPU per request."""
    from adaptd.wire import protocol as proto

    if cores:
        os.sched_setaffinity(0, cores)

    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    conn = connect(endpoint)
    region = None
    if shm in ("shm", "copy"):
        mm, region = register_region(conn, x.nbytes)
        xs = np.frombuffer(mm, np.float32, x.size).reshape(shape)
        xs[...] = x
        inputs = [proto.shm_tensor_header(np.float32, shape, region, 0)]
    rtts = []
    clocks = ProcessClocks(clock_ids) if clock_ids else None
    cpu_ns = []
    barrier.wait()
    warm_until = time.perf_counter() + WARM_S   # (and at least ``warmup`` requests)
    t_start = 0.0
    i, measured = 0, -1
    while measured < n:
        if measured < 0 and i >= warmup and time.perf_counter() >= warm_until:
            measured = 0
            if warmed is not None:
                warmed.wait()   # (every client warmed up, the server's CPU clocks read)
            t_start = time.perf_counter()
        if clocks is not None and measured >= 0:
            cpu_ns.append(clocks.read_ns())
        if shm == "resident":
            header = proto.request_header(uuid.uuid4().hex, model, [])
            t = time.perf_counter()
            conn.send(proto.encode(header))
        elif region is None:
            header = proto.request_header(uuid.uuid4().hex, model, [x], pin_variant=variant, pin_placement=placement)
            t = time.perf_counter()
            conn.send(proto.encode(header, [x]))
        else:   # the header made before the clock starts, as for inline input
            header = proto.request_header(uuid.uuid4().hex, model, [], pin_variant=variant, pin_placement=placement,
                                          input_headers=inputs)
            t = time.perf_counter()
            if shm == "copy":
                np.copyto(xs, x)
            conn.send(proto.encode(header))
        reply = conn.recv()
        if measured >= 0:
            rtts.append(time.perf_counter() - t)
            measured += 1
        elif i == 0:
            assert proto.decode(reply)[0]["type"] != "error", proto.decode(reply)[0]   # (the echo returns the request)
        i += 1
    wall = time.perf_counter() - t_start
    if region is not None:
        del xs
        unregister_region(conn, mm, region)
    conn.close()
    out.put((rtts, wall, np.diff(cpu_ns).tolist()))   # (the server's CPU from one send to the next)


def _executions_cpu_s(daemon) -> float:
    """The CPU time of every execution the daemon answered so far (``stats``: ``runtime.executions_cpu_ms``)."""
    reply, _ = daemon.request({"type": "stats", "id": uuid.uuid4().hex})
    return reply["body"]["runtime"]["executions_cpu_ms"] / 1e3


def measure_clients(endpoint, model, variant, placement, shape, n, clients, warmup=100, shm=None, cores=(),
                    cpu_of=None):
    """Round trips from ``clients`` processes; with ``cpu_of`` (a DaemonProcess), also its CPU
    time per request (``cpu_us``: from when every client ends its warm-up to when all are done,
    so sends and receives of every measured request count) and that time less the executions' own
    (``cpu_outside_us``: the interpreter's run, as each execution measured it), both means over
    the measured requests; with one client, also the median request's (``cpu_outside_p50_us``:
    the daemon's CPU from one send to the next, less the executions' mean)."""
    # With one client, its requests come one after another: what the daemon spent from one send
    # to the next is one request's CPU, the work it deferred to its idle moment included.
    clock_ids = process_clock_ids(cpu_of.proc.pid) if cpu_of and clients == 1 else None
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(clients)
    warmed = ctx.Barrier(clients + 1)   # the clients' warm-ups over, and this process's clocks read
    q = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(endpoint, model, variant, placement, shape, n // clients,
                                              warmup, barrier, q, shm, cores, clock_ids, warmed))
             for _ in range(clients)]
    for p in procs:
        p.start()
    warmed.wait()
    cpu0 = process_cpu_s(cpu_of.proc.pid) if cpu_of else None
    exec0 = _executions_cpu_s(cpu_of) if cpu_of else None
    threads0 = thread_cpu_s(cpu_of.proc.pid) if cpu_of else {}
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    rtts = np.concatenate([r[0] for r in results]) * 1e6
    wall = max(r[1] for r in results)
    out = {"p50_us": float(np.percentile(rtts, 50)), "p99_us": float(np.percentile(rtts, 99)),
           "throughput_rps": len(rtts) / wall}
    if cpu_of:
        served = len(rtts)
        cpu_s = process_cpu_s(cpu_of.proc.pid) - cpu0
        out["cpu_us"] = cpu_s * 1e6 / served
        executions_s = _executions_cpu_s(cpu_of) - exec0
        out["cpu_outside_us"] = (cpu_s - executions_s) * 1e6 / served
        if clock_ids:   # the median request, less the executions' mean (one fixed variant: all alike)
            per_request_us = np.array(results[0][2]) / 1e3
            out["cpu_outside_p50_us"] = float(np.median(per_request_us)) - executions_s * 1e6 / served
        for name, seconds in by_name(threads0, thread_cpu_s(cpu_of.proc.pid)).items():
            out[f"{THREAD_PREFIX}{name}"] = seconds * 1e6 / served
    return out


def measure_inprocess(version_dir: Path, variant: str, threads: int, shape, n: int,
                      cores: tuple[int, ...] = ()) -> dict:
    """The baseline: this process pinned to the placement's cores, as its worker is."""
    from adaptd.variants.manifest import load_manifest
    from adaptd.variants.runtime import load_variant

    saved = os.sched_getaffinity(0)
    if cores:
        os.sched_setaffinity(0, cores)
    try:
        return _inprocess(load_manifest, load_variant, version_dir, variant, threads, shape, n)
    finally:
        os.sched_setaffinity(0, saved)


def _inprocess(load_manifest, load_variant, version_dir: Path, variant: str, threads: int, shape, n: int) -> dict:
    record = next(v for v in load_manifest(version_dir).variants if v.name == variant)
    loaded = load_variant(version_dir, record, num_threads=threads)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(50):
        loaded.run([x])
    ts = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        loaded.run([x])
        ts.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    ts = np.array(ts) * 1e6
    return {"p50_us": float(np.percentile(ts, 50)), "p99_us": float(np.percentile(ts, 99)),
            "throughput_rps": n / wall}


def ensure_repos(demo_repo: Path, zoo_repo: Path) -> None:
    adaptd = [sys.executable, "-m", "adaptd"]
    if not (demo_repo / "digits").exists():
        subprocess.run([*adaptd, "demo", "build", "--repository", str(demo_repo), "--no-progress"], check=True)
    if not (zoo_repo / "MobileNetV2").exists():
        subprocess.run([*adaptd, "variants", "zoo", "MobileNetV2", "--repository", str(zoo_repo),
                        "--kinds", "float32", "--no-progress"], check=True)


def latest_version(model_dir: Path) -> Path:
    """A model's newest version directory (the highest number)."""
    return sorted(model_dir.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)[-1]


def summarise(rounds: list[dict]) -> dict:
    keys = dict.fromkeys(k for r in rounds for k in r)   # a thread missing from a round spent nothing
    return {k: {"median": float(np.median([r.get(k, 0.0) for r in rounds])),
                "min": float(np.min([r.get(k, 0.0) for r in rounds])),
                "max": float(np.max([r.get(k, 0.0) for r in rounds]))}
            for k in keys}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-repository", type=Path, default=ROOT / "demo-repo")
    ap.add_argument("--zoo-repository", type=Path, default=ROOT / "bench-zoo")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--models", default="digits,MobileNetV2")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-tcp", action="store_true", help="skip the tcp rows (shorter run)")
    ap.add_argument("--spin-us", type=int, default=0, help="the daemon's [server] spin_us (default 0: off)")
    ap.add_argument("--pin-daemon", action="store_true",
                    help="[server] cores = the clients' cores (default: the daemon is not pinned)")
    ap.add_argument("--isolation", choices=("thread", "process"), default="thread",
                    help="the daemon's [placements] isolation (default: thread, the daemon's default)")
    ap.add_argument("--placement", default=None,
                    help="placement to serve on (default: the widest); clients are pinned to the other cores, "
                         "if any, as the daemon's clients would run beside a placement on a bigger board")
    args = ap.parse_args()

    from adaptd.tools.launch import DaemonProcess
    from adaptd.daemon.placements import discover
    from adaptd.daemon.config import PlacementsConfig

    ensure_repos(args.demo_repository, args.zoo_repository)
    found = {p.name: p for p in discover(PlacementsConfig())}
    placement = found[args.placement] if args.placement else list(found.values())[-1]   # default: the widest
    client_cores = tuple(sorted(set(os.sched_getaffinity(0)) - set(placement.cores)))
    daemon_cores = list(client_cores) if args.pin_daemon else []
    models = {"digits": (args.demo_repository, (1, 16, 16, 1)), "MobileNetV2": (args.zoo_repository, (1, 224, 224, 3))}
    report = {"machine": {"cpu": platform.processor() or _cpu_model(), "cores": os.cpu_count(),
                          "python": platform.python_version()},
              "placement": placement.name, "threads": placement.threads, "client_cores": list(client_cores),
              "spin_us": args.spin_us, "daemon_cores": daemon_cores, "isolation": args.isolation,
              "models": {}}
    ctx = mp.get_context("spawn")
    for model in args.models.split(","):
        repo, shape = models[model]
        n = args.requests if model == "digits" else max(200, args.requests // 5)
        version_dir = latest_version(repo / model)
        rows: dict[str, list[dict]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            echo_ep = f"ipc://{tmp}/echo.sock"
            ready = ctx.Event()
            echo = ctx.Process(target=_echo_server, args=(echo_ep, ready), daemon=True)
            echo.start()
            ready.wait()
            relay_eps = {}
            relays = []
            for label, execute in (("relay floor, no execution", False), ("relay floor", True)):
                relay_eps[label] = f"ipc://{tmp}/relay-{int(execute)}.sock"
                ready = ctx.Event()
                relays.append(ctx.Process(target=_relay_server, daemon=True, args=(
                    relay_eps[label], ready, tuple(daemon_cores), tuple(placement.cores), str(version_dir),
                    "float32", placement.threads, shape, execute)))
                relays[-1].start()
                ready.wait()
            daemon = DaemonProcess.start(repo, Path(tmp) / "d", tcp=True,
                                         config={"placements": {"include": [placement.name], "load": "eager",
                                                                "isolation": args.isolation},
                                                 "server": {"spin_us": args.spin_us, "cores": daemon_cores}})
            try:
                measure = functools.partial(measure_clients, model=model, variant="float32",
                                            placement=placement.name, shape=shape, n=n, cores=client_cores,
                                            cpu_of=daemon)
                for _ in range(args.rounds):
                    # Each ratio row right after its own in-process loop: the host's drift between
                    # the two then counts least (a round takes minutes).
                    for base_label, label, ep, mode in ONE_CLIENT_ROWS:
                        rows.setdefault(base_label, []).append(
                            measure_inprocess(version_dir, "float32", placement.threads, shape, n, placement.cores))
                        ep = daemon.endpoint if ep == "ipc" else daemon.local_endpoint
                        rows.setdefault(label, []).append(measure(ep, clients=1, shm=mode))
                    rows.setdefault("daemon local stream, 4 client(s)", []).append(
                        measure(daemon.local_endpoint, clients=4))
                    rows.setdefault("zmq echo (ipc)", []).append(
                        measure_clients(echo_ep, model, None, None, shape, n, 1, cores=client_cores))
                    for label, ep in relay_eps.items():
                        rows.setdefault(label, []).append(
                            measure_clients(ep, model, None, None, shape, n, 1, cores=client_cores))
                    rows.setdefault("relay floor, input resident", []).append(
                        measure_clients(relay_eps["relay floor"], model, None, None, shape, n, 1, shm="resident",
                                        cores=client_cores))
                    transports = (("ipc", daemon.endpoint),) + (() if args.no_tcp else (("tcp", daemon.tcp_endpoint),))
                    for transport, ep in transports:
                        for clients in (1, 2, 4) if transport == "tcp" else (2, 4):
                            rows.setdefault(f"daemon {transport}, {clients} client(s)", []).append(
                                measure(ep, clients=clients))
                        if transport == "ipc":
                            for label, clients, mode in (("shm", 2, "shm"), ("shm, copy in", 1, "copy")):
                                rows.setdefault(f"daemon ipc+{label}, {clients} client(s)", []).append(
                                    measure(ep, clients=clients, shm=mode))
            finally:
                daemon.stop()
                echo.kill()
                for relay in relays:
                    relay.kill()   # its worker sees the channel close and exits
        summary = {k: summarise(v) for k, v in rows.items()}
        report["models"][model] = summary
        inproc = [(a["p50_us"] + b["p50_us"]) / 2 for a, b in zip(rows["in-process"], rows["in-process, again"])]
        base = float(np.median(inproc))   # the baseline of the "x in-proc" column: both loops of each round
        echo_p50 = summary["zmq echo (ipc)"]["p50_us"]["median"]
        print(f"\n{model} (float32 on {placement.name}, {placement.threads} thread(s)), {args.rounds} rounds")
        print(f"{'path':34s} {'p50 us':>18s} {'p99 us':>18s} {'x in-proc p50':>14s} {'req/s':>9s} "
              f"{'daemon CPU us/req':>22s} {'outside execution':>22s} {'p50 outside':>20s}")
        for k, s in summary.items():
            p50, p99 = s["p50_us"], s["p99_us"]
            cpu, outside, p50_outside = s.get("cpu_us"), s.get("cpu_outside_us"), s.get("cpu_outside_p50_us")
            print(f"{k:34s} {p50['median']:8.0f} [{p50['min']:.0f}..{p50['max']:.0f}] "
                  f"{p99['median']:8.0f} [{p99['min']:.0f}..{p99['max']:.0f}] {p50['median'] / base:14.2f} "
                  f"{s['throughput_rps']['median']:9.0f} "
                  + (f"{cpu['median']:8.0f} [{cpu['min']:.0f}..{cpu['max']:.0f}] "
                     f"{outside['median']:8.0f} [{outside['min']:.0f}..{outside['max']:.0f}]" if cpu else "")
                  + (f" {p50_outside['median']:8.0f} [{p50_outside['min']:.0f}..{p50_outside['max']:.0f}]"
                     if p50_outside else ""))
        for k, s in summary.items():
            by_thread = sorted(((name[len(THREAD_PREFIX):], v) for name, v in s.items()
                                if name.startswith(THREAD_PREFIX) and v["median"] >= 1.0), key=lambda x: -x[1]["median"])
            if by_thread:
                print(f"  {k}: CPU us/req by thread: "
                      + ", ".join(f"{n} {v['median']:.0f} [{v['min']:.0f}..{v['max']:.0f}]" for n, v in by_thread))
        floor = summary["relay floor"]["p50_us"]["median"]
        print(f"relay floor p50 - zmq echo p50 = {floor - echo_p50:.0f} us (the topology in Python)")
        resident = summary["relay floor, input resident"]["p50_us"]["median"]
        print(f"relay floor, input resident / in-process = {resident / base:.3f} (the floor of daemon+shm)")
        for base_label, label, _, _ in ONE_CLIENT_ROWS:
            ratios = [r["p50_us"] / i["p50_us"] for r, i in zip(rows[label], rows[base_label])]
            print(f"{label}: p50 - zmq echo p50 = {summary[label]['p50_us']['median'] - echo_p50:.0f} us; "
                  f"/ in-process just before = {np.median(ratios):.3f} (per round: "
                  f"{', '.join(f'{r:.3f}' for r in ratios)})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


# (baseline row, daemon row, endpoint, input): each one-client daemon row right after its own loop
ONE_CLIENT_ROWS = (("in-process", "daemon ipc, 1 client(s)", "ipc", None),
                   ("in-process, again", "daemon ipc+shm, 1 client(s)", "ipc", "shm"),
                   ("in-process, local", "daemon local stream, 1 client(s)", "local", None),
                   ("in-process, local again", "daemon local stream+shm, 1 client(s)", "local", "shm"))


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
