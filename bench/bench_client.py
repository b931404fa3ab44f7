"""The synchronous client's own CPU cost per request, without sockets: building one inference
request and handling its reply, for the tiny model's shapes (one 1x16x16x1 float32 input, one
1x10 float32 output).

Two versions in one run, interleaved in blocks so that both see the same machine:

* ``before``: the client as it was before the protocol core (``clients/client.py`` at
  ``--before``, default the last commit that had it, read with ``git show`` into a temporary
  module): ``new_request_id``, ``infer_message``, then for the reply ``reply_id``, the BUSY check
  and ``result_from_reply``: what ``Client.infer`` ran around its socket calls.
* ``messages``: the same message functions as they are now (:mod:`adaptd.clients.messages`),
  without the core: ``core`` minus ``messages`` is what the state machine itself costs.
* ``core``: :class:`adaptd.clients.core.ClientCore`: ``infer`` (id and frames), ``start`` and
  ``sending``, then ``receive`` (decode, match by id, BUSY check, result): what the blocking
  shell runs around its socket calls.

Both handle the same reply: the frames a daemon sends (header and output as ``zmq.Frame``), made
for each request's id outside the timed region. Clock reads the shells make are left out of both.
Each request's cost is the sum of its two timed parts (build, handle); the figures are the
median (p50) and p90 over ``--requests`` requests per version, in microseconds. Usage::

    .venv/bin/python bench/bench_client.py [--requests 20000] [--block 500] [--before REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from time import perf_counter

import numpy as np
import zmq

from adaptd.clients import messages
from adaptd.clients.core import ClientCore, Done
from adaptd.clients.settings import ClientSettings
from adaptd.wire import protocol as p
from adaptd.wire.replies import result_header

ROOT = Path(__file__).resolve().parents[1]
# the last commit whose clients/client.py held the whole client
BEFORE_REV = "0a89ead51640dc6fd1cf460011bca666269a1189"
ENDPOINT = "ipc:///nowhere/adaptd.sock"
MODEL = "tiny"
# every keyword Client.infer passes on, as it passes them (one constraint set)
OPTIONS = {"version": None, "min_accuracy": None, "max_latency_ms": 50.0, "max_energy_mj": None,
           "objective": "latency", "on_infeasible": "reject", "variant": None, "placement": None,
           "explain": False, "latency_confidence": None}


def load_before(rev: str):
    """The old ``clients/client.py`` at ``rev``, imported as a module of its own."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:clients/client.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-client-")) / "client_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("adaptd_client_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module     # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def reply_frames(request_id: str, output: np.ndarray) -> list[zmq.Frame]:
    header = result_header(
        request_id=request_id, model=MODEL, version="1", variant="float32", placement="cpu:0-1",
        outputs=[p.tensor_header(output)], queue_ms=0.02, compute_ms=0.11, total_ms=0.31, energy_mj=0.05,
        energy_source="estimated:generic", energy_estimated=True,
        predicted={"latency_ms": 0.3, "latency_bound_ms": 0.4, "queue_ms": 0.0, "energy_mj": 0.05,
                   "energy_estimated": True, "accuracy": 0.96, "latency_confidence": 0.9},
        constraints_met={"max_latency_ms": True}, reason_code="selected", reason_text="least latency")
    return [zmq.Frame(f if isinstance(f, bytes) else f.tobytes()) for f in p.encode(header, [output])]


def before_request(old, settings, x: np.ndarray, output: np.ndarray) -> float:
    t0 = perf_counter()
    rid = old.new_request_id()
    frames = old.infer_message(rid, MODEL, x, **OPTIONS, client=settings.name,
                               regions=tuple(settings.regions.values()), outputs_to=None)
    started = perf_counter()
    t1 = perf_counter()
    reply = reply_frames(rid, output)
    t2 = perf_counter()
    got, header, bodies = old.reply_id(reply)
    assert got == rid and frames
    assert not settings._resend_busy(header, 0)
    result = old.result_from_reply(header, bodies, started, settings.regions)
    t3 = perf_counter()
    assert result.outputs[0].shape == (1, 10)
    return (t1 - t0) + (t3 - t2)


def messages_request(x: np.ndarray, output: np.ndarray) -> float:
    t0 = perf_counter()
    rid = messages.new_request_id()
    frames = messages.infer_message(rid, MODEL, x, **OPTIONS, client=None, regions=(), outputs_to=None)
    t1 = perf_counter()
    reply = reply_frames(rid, output)
    t2 = perf_counter()
    got, header, bodies = messages.reply_id(reply)
    assert got == rid and frames
    result = messages.result_from_reply(header, bodies, 1.0, {})
    t3 = perf_counter()
    assert result.outputs[0].shape == (1, 10)
    return (t1 - t0) + (t3 - t2)


def core_request(core: ClientCore, x: np.ndarray, output: np.ndarray) -> float:
    t0 = perf_counter()
    call = core.infer(MODEL, x, **OPTIONS, request_id=None, timeout_ms=None, outputs_to=None)
    rid = call.request_id
    core.start(call, 1.0)
    core.sending(rid, 1.0)
    t1 = perf_counter()
    reply = reply_frames(rid, output)
    t2 = perf_counter()
    event = core.receive(reply, 1.001)
    t3 = perf_counter()
    assert type(event) is Done and event.value.outputs[0].shape == (1, 10)
    return (t1 - t0) + (t3 - t2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="timed requests per version")
    parser.add_argument("--block", type=int, default=500, help="requests per version before switching")
    parser.add_argument("--before", default=BEFORE_REV, help="git revision of the old clients/client.py")
    args = parser.parse_args(argv)

    old = load_before(args.before)
    old_settings = old.ClientSettings(ENDPOINT, 30_000.0, 2, None)
    core = ClientCore(ClientSettings(ENDPOINT))
    x = np.random.default_rng(0).random((1, 16, 16, 1), dtype=np.float32)
    output = np.random.default_rng(1).random((1, 10), dtype=np.float32)
    runs = {"before": lambda: before_request(old, old_settings, x, output),
            "messages": lambda: messages_request(x, output),
            "core": lambda: core_request(core, x, output)}
    for run in runs.values():                 # warm up
        for _ in range(2000):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    load_start = os.getloadavg()
    while len(times["core"]) < args.requests:
        for name, run in runs.items():
            times[name].extend(run() for _ in range(args.block))
    load_end = os.getloadavg()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}, pyzmq {zmq.__version__}")
    print(f"load average (1, 5, 15 min) at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}, "
          f"at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    print(f"{len(times['core'])} requests per version, blocks of {args.block}, before = {args.before}")
    print(f"{'version':8} {'p50 us':>8} {'p90 us':>8} {'mean us':>8}")
    p50 = {}
    for name, values in times.items():
        a = np.asarray(values) * 1e6
        p50[name] = float(np.percentile(a, 50))
        print(f"{name:8} {p50[name]:8.2f} {np.percentile(a, 90):8.2f} {a.mean():8.2f}")
    print(f"core / before (p50): {p50['core'] / p50['before']:.3f}; the core's own bookkeeping "
          f"(core - messages, p50): {p50['core'] - p50['messages']:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
