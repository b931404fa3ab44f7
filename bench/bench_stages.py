"""Where a request's round trip goes, stage by stage, in a live daemon.

    .venv/bin/python bench/bench_stages.py [--model MobileNetV2] [--input shm|inline] [--transport stream|ipc]
                                           [--rounds 2] [--requests 600] [--placement cpu:1]

One client (this process, on the cores the placement does not use) sends the model's requests,
variant and placement pinned, one after another, and stamps each send and each receipt with
``time.monotonic_ns()``. The daemon runs with ``bench/stage_trace`` first on its ``PYTHONPATH``,
whose ``sitecustomize`` wraps the functions at the request path's stage boundaries to stamp the
same clock (the daemon's code is unchanged; processes on one host share the clock). For each
request the stamps are put in time order, and each stage is the time from one stamp to the next:
the table gives each stage's median, and the round trip's, over the kept requests of each round
(the first ``--warmup`` are dropped) that took the usual path (the sequence of stamps most of
them passed; the others are counted), beside an in-process loop of the same variant on the
placement's cores run before each round.

What the stamps are: ``bench/stage_trace/sitecustomize.py``. The wrapping adds a few µs per
request in all (a dozen appends to a list), which the round trip here includes and the other
benchmarks' do not. The stages of the daemon's own Python sum to the daemon's share of the round
trip; the rest is wake-ups (a thread or process woken from sleep, on this 2-vCPU guest mostly an
idle vCPU's exit from halt) and system calls.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from adaptd.tools.launch import DaemonProcess
from adaptd.wire import protocol as proto
from bench_overhead import WARM_S, ensure_repos, latest_version, measure_inprocess
from dealers import connect, register_region, unregister_region

ROOT = Path(__file__).resolve().parents[1]
TRACER = Path(__file__).resolve().parent / "stage_trace"

# The stamps, in the order a handed-off request passes them. A stage is the time between two
# consecutive stamps of one request (a job run inline passes ``inline_in`` and ``inline_out``
# instead of ``submit_*`` and ``poll_after``; a region's input is screened by the executor).
STAMPS = {
    "client_send": "the client sends",
    "poll": "the daemon's poll returns (its first after the send)",
    "handler": "the request's handler is entered (the message read)",
    "admit_in": "admission starts (the header parsed or found memoised)",
    "admit_out": "admission ends",
    "screen_in": "the NaN screen starts (the main thread's, or the executor's for a region)",
    "screen_out": "the NaN screen ends",
    "submit_in": "the hand-off starts (the choice made, the job built)",
    "submit_out": "the hand-off ends (queued, the placement's thread notified)",
    "inline_in": "the inline run is called",
    "dispatched": "the job is taken by its runner",
    "t0": "LoadedVariant.run is called",
    "t1": "LoadedVariant.run returns (the in-process loop's span)",
    "finished": "the outcome is made (outputs, timings)",
    "inline_out": "the inline run returns",
    "poll_after": "the main thread's poll returns for the outcome",
    "outcome": "the outcome's handler is entered",
    "header_in": "the reply's header is started (energy attributed, timings)",
    "header_out": "the reply's header is made",
    "encoded": "the reply is encoded",
    "send_in": "the frontend's send is called",
    "send_out": "the frontend's send returns (sendmsg, or ZeroMQ's queue)",
    "client_recv": "the client has the reply",
}


def run_client(endpoint: str, model: str, variant: str, placement: str, x: np.ndarray, n: int, warmup: int,
               warm_s: float, shm: bool) -> tuple[list[int], list[int], int]:
    """Pinned requests one after another, ``n`` after a warm-up of ``warmup`` requests and
    ``warm_s`` seconds at least: the send and receipt times of each, and the index of the first
    after the warm-up."""
    conn = connect(endpoint)
    inputs: list[dict] | None = None
    mm = region = None
    if shm:
        mm, region = register_region(conn, x.nbytes)
        np.frombuffer(mm, x.dtype, x.size)[:] = x.reshape(-1)
        inputs = [proto.shm_tensor_header(x.dtype, x.shape, region, 0)]
    sent, received = [], []
    warm_until = time.monotonic() + warm_s
    first_kept = None
    while first_kept is None or len(sent) < first_kept + n:
        if first_kept is None and len(sent) >= warmup and time.monotonic() >= warm_until:
            first_kept = len(sent)
        if shm:
            frames = proto.encode(proto.request_header(uuid.uuid4().hex, model, [], pin_variant=variant,
                                                       pin_placement=placement, input_headers=inputs))
        else:
            frames = proto.encode(proto.request_header(uuid.uuid4().hex, model, [x], pin_variant=variant,
                                                       pin_placement=placement), [x])
        sent.append(time.monotonic_ns())
        conn.send(frames)
        reply = conn.recv()
        received.append(time.monotonic_ns())
        if len(sent) == 1:
            assert proto.decode(reply)[0]["type"] == "result", proto.decode(reply)[0]
    if shm:
        unregister_region(conn, mm, region)
    conn.close()
    return sent, received, first_kept


def paths_of(marks: list[tuple[str, int]], sent: list[int], received: list[int],
             keep: range) -> list[list[tuple[str, int]]]:
    """Per kept request, the stamps it passed in time order (``(stamp, ns)``), from the client's
    send to its receipt."""
    names = [m[0] for m in marks]
    times = [m[1] for m in marks]
    handlers = [i for i, name in enumerate(names) if name == "handler"]
    polls = [t for name, t in marks if name == "poll"]

    def first_handler(after_ns: int) -> int:   # (others came before: the start-up's ping, a registration)
        return next((i for i in handlers if times[i] >= after_ns), len(marks))

    paths = []
    for k in keep:
        start = first_handler(sent[k])
        end = first_handler(sent[k + 1]) if k + 1 < len(sent) else len(marks)
        stamps = {"client_send": sent[k], "handler": times[start]}
        woken = [t for t in polls if sent[k] <= t <= times[start]]
        if woken:   # the first poll after the send: a large message's later pieces are read after it
            stamps["poll"] = woken[0]
        for i in range(start + 1, end):
            name = names[i]
            if name.endswith("_out"):   # its last: a screen may call another, nested
                stamps[name] = times[i]
            elif name != "poll":
                stamps.setdefault(name, times[i])
        if "submit_out" in stamps and "finished" in stamps:   # handed off: the main thread woken for its outcome
            after = [t for t in polls if stamps["finished"] <= t <= stamps.get("outcome", received[k])]
            if after:
                stamps["poll_after"] = after[0]
        # In time order, but the client's receipt last: it may come before the daemon's send returns
        # (the client's core runs it while the daemon's thread is still on its way back).
        paths.append([*sorted(stamps.items(), key=lambda item: item[1]), ("client_recv", received[k])])
    return paths


def usual(paths: list[list[tuple[str, int]]]) -> tuple[dict[str, list[float]], int]:
    """The stages of the usual path (the sequence of stamps most requests passed), each
    (``"stamp -> next stamp"``) with its durations in µs over those requests, in the path's
    order, and their ``"round trip"``; and how many requests took another path (e.g. a job
    handed off whose caller was preempted until after the run began, or one the tiny model's
    prediction sent to the placement's thread), counted, not tabled. (Stages are not tabled
    across paths: a median over a different set of requests for each stage can order them
    wrongly.)"""
    signatures = [tuple(name for name, _ in path) for path in paths]
    common = collections.Counter(signatures).most_common(1)[0][0]   # (a tie: the first seen)
    chosen = [path for path, signature in zip(paths, signatures) if signature == common]
    stages: dict[str, list[float]] = {}
    for path in chosen:
        for (prev, t_prev), (name, t) in zip(path, path[1:]):
            stages.setdefault(f"{prev} -> {name}", []).append((t - t_prev) / 1e3)
    stages["round trip"] = [(path[-1][1] - path[0][1]) / 1e3 for path in chosen]
    return stages, len(paths) - len(chosen)


def trace_requests(repo: Path, workdir: Path, model: str, variant: str, placement: str, cores: tuple[int, ...],
                   x: np.ndarray, n: int, *, shm: bool = False, transport: str = "stream",
                   tracer: Path = TRACER, warmup: int = 0,
                   warm_s: float = 0.0) -> tuple[list[tuple[str, int]], list[int], list[int], int]:
    """A daemon on ``repo`` with the stage stamps on, serving ``placement``, and ``n`` requests
    after a warm-up (:func:`run_client`) from this process on the cores ``cores`` leaves free: the
    daemon's stamps, the client's send and receipt times, and the first kept request's index."""
    trace = workdir / "stages.json"
    env = {"ADAPTD_STAGE_TRACE": str(trace),
           "PYTHONPATH": os.pathsep.join(p for p in (str(tracer), os.environ.get("PYTHONPATH")) if p)}
    config = {"placements": {"include": [placement], "load": "eager"}}
    saved = os.sched_getaffinity(0)
    with DaemonProcess.start(repo, workdir / "daemon", config=config, env=env) as daemon:
        pid = daemon.proc.pid
        os.sched_setaffinity(0, saved - set(cores) or saved)
        try:
            sent, received, first_kept = run_client(daemon.local_endpoint if transport == "stream" else daemon.endpoint,
                                                    model, variant, placement, x, n, warmup, warm_s, shm)
        finally:
            os.sched_setaffinity(0, saved)
    failed = Path(f"{trace}.error")
    if failed.exists():
        raise RuntimeError(f"the stage tracer could not wrap the daemon: {failed.read_text()}")
    written = Path(f"{trace}.{pid}")   # (as the daemon exited)
    if not written.exists():
        raise RuntimeError(f"the daemon wrote no stamps: is {tracer} a stage tracer? (its log: {workdir / 'daemon'})")
    return [tuple(m) for m in json.loads(written.read_text())], sent, received, first_kept


def one_round(args, repo: Path, version_dir: Path, x: np.ndarray) -> dict:
    inprocess = measure_inprocess(version_dir, args.variant, 1, x.shape, 300, args.cores)
    with tempfile.TemporaryDirectory() as tmp:
        marks, sent, received, first_kept = trace_requests(
            repo, Path(tmp), args.model, args.variant, args.placement, args.cores, x, args.requests - args.warmup,
            shm=args.input == "shm", transport=args.transport, tracer=args.tracer, warmup=args.warmup,
            warm_s=WARM_S)
    stages, unusual = usual(paths_of(marks, sent, received, range(first_kept, len(sent))))
    return {"inprocess_p50_us": inprocess["p50_us"], "requests": len(stages["round trip"]),
            "stages": {name: float(np.median(values)) for name, values in stages.items()},
            "unusual_order": unusual}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="MobileNetV2", choices=("MobileNetV2", "digits"))
    ap.add_argument("--variant", default="float32")
    ap.add_argument("--input", default="shm", choices=("shm", "inline"))
    ap.add_argument("--transport", default="stream", choices=("stream", "ipc"))
    ap.add_argument("--placement", default="cpu:1")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--demo-repository", type=Path, default=ROOT / "demo-repo")
    ap.add_argument("--zoo-repository", type=Path, default=ROOT / "bench-zoo")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--tracer", type=Path, default=TRACER,
                    help="a folder whose sitecustomize.py stamps the stages (default: bench/stage_trace)")
    args = ap.parse_args()
    if not args.placement.startswith("cpu:") or not args.placement[4:].isdigit():
        ap.error("--placement: a single-core placement, cpu:N")
    args.cores = (int(args.placement[4:]),)
    ensure_repos(args.demo_repository, args.zoo_repository)
    repo = args.zoo_repository if args.model == "MobileNetV2" else args.demo_repository
    version_dir = latest_version(repo / args.model)
    shape = (1, 224, 224, 3) if args.model == "MobileNetV2" else (1, 16, 16, 1)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    rounds = [one_round(args, repo, version_dir, x) for _ in range(args.rounds)]

    print(f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.2f}; {args.model} {args.variant} on {args.placement}, {args.input} input "
          f"over the {args.transport}; {rounds[0]['requests']} requests on the usual path in round 1")
    width = max(len(name) for r in rounds for name in r["stages"]) + 2
    print(f"{'stage, µs (median request)':<{width}}" + "".join(f"{'round ' + str(i + 1):>10}" for i in range(len(rounds))))
    names = list(dict.fromkeys(name for r in rounds for name in r["stages"]))
    for name in names:
        print(f"{name:<{width}}" + "".join(f"{r['stages'][name]:10.1f}" if name in r["stages"] else f"{'-':>10}"
                                         for r in rounds))
    print(f"{'in-process loop p50':<{width}}" + "".join(f"{r['inprocess_p50_us']:10.1f}" for r in rounds))
    print(f"{'round trip / in-process':<{width}}"
          + "".join(f"{r['stages']['round trip'] / r['inprocess_p50_us']:10.3f}" for r in rounds))
    print(f"{'requests in another order':<{width}}" + "".join(f"{r['unusual_order']:10d}" for r in rounds))
    print("\nstamps:")
    for name, what in STAMPS.items():
        print(f"  {name:<12} {what}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
