"""A burst far above the queue limit: every request answered exactly once, BUSY without waiting.

One placement's worker is frozen (SIGSTOP) while it runs a long request of the ``slow`` model
(tests/conftest.py), and a burst of requests pinned to it arrives on one connection: the daemon
must answer every request beyond the queue's room BUSY while the worker is still frozen (so no
BUSY answer waits for an execution), keep the ones it admitted, run them once the worker goes
on, and send nothing twice. A request sent once all are answered, on the same connection, runs
(the queue is empty again) and marks the end of what the daemon had to say about the burst.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from adaptd.wire import protocol as proto  # noqa: E402
from adaptd.tools.launch import DaemonProcess  # noqa: E402
from robustness import watch  # noqa: E402

QUEUE_LIMIT = 4
BURST = 2000
LONG_BATCH = 48          # about half a second on one core
REPLY_S = 60.0


@pytest.fixture
def daemon(slow_repository, tmp_path):
    d = DaemonProcess.start(slow_repository, tmp_path,
                            config={"placements": {"tensorflow": "off", "isolation": "process", "queue_limit": QUEUE_LIMIT}})
    yield d
    assert d.stop() == 0, d.log()


def test_a_burst_far_above_the_queue_limit_is_answered_once_each_and_busy_at_once(daemon):
    log = watch.LogWatch(daemon.log_path)
    placement = [p for p in watch.control(daemon.endpoint, "placements")["body"]["placements"]
                 if len(p["cores"]) == 1][0]["name"]
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(daemon.endpoint)
    rng = np.random.default_rng(0)
    one = rng.random((1, 32, 32, 8), dtype=np.float32)
    big = rng.random((LONG_BATCH, 32, 32, 8), dtype=np.float32)

    def send(rid: str, x: np.ndarray) -> float:
        sock.send_multipart(proto.encode(proto.request_header(rid, "slow", [x], pin_variant="float32",
                                                              pin_placement=placement), [x]))
        return time.monotonic()

    def recv() -> tuple[dict, float]:
        assert sock.poll(REPLY_S * 1e3), "no reply"
        header, _ = proto.decode(sock.recv_multipart())
        return header, time.monotonic()

    replies: dict[str, list[dict]] = {}
    busy_rtt_ms = []
    try:
        send("long", big)
        pid = watch.wait_busy(daemon.endpoint, placement, REPLY_S)
        os.kill(pid, signal.SIGSTOP)
        frozen = True
        try:
            sent_at = {}
            for i in range(BURST):
                sent_at[f"b{i}"] = send(f"b{i}", one)
            # every request beyond the queue's room is answered while the worker is frozen
            while sum(len(v) for v in replies.values()) < BURST - QUEUE_LIMIT:
                header, at = recv()
                replies.setdefault(header["id"], []).append(header)
                assert header.get("code") == "BUSY", header
                busy_rtt_ms.append((at - sent_at[header["id"]]) * 1e3)
            state = next(p for p in watch.control(daemon.endpoint, "placements")["body"]["placements"]
                         if p["name"] == placement)
            assert state["busy"] and state["queued"] == QUEUE_LIMIT, state
        finally:
            if frozen:
                os.kill(pid, signal.SIGCONT)
        while sum(len(v) for v in replies.values()) < BURST + 1:      # the long one and the queued
            header, _ = recv()
            replies.setdefault(header["id"], []).append(header)
        send("after", one)
        while "after" not in replies:
            header, _ = recv()
            replies.setdefault(header["id"], []).append(header)
        while sock.poll(0):
            header, _ = recv()
            replies.setdefault(header["id"], []).append(header)
    finally:
        sock.close()
    twice = {rid: v for rid, v in replies.items() if len(v) > 1}
    assert not twice, f"{len(twice)} ids answered more than once, e.g. {next(iter(twice.items()))}"
    assert set(replies) == {"long", "after", *(f"b{i}" for i in range(BURST))}
    results = sorted(rid for rid, (h,) in replies.items() if h["type"] == "result")
    assert len(results) == 2 + QUEUE_LIMIT, results          # the long one, the queued ones, "after"
    assert all(h["code"] == "BUSY" for rid, (h,) in replies.items() if rid not in results)
    print(f"BUSY round trip over the burst: p50 {np.percentile(busy_rtt_ms, 50):.2f} ms, "
          f"p99 {np.percentile(busy_rtt_ms, 99):.2f} ms, max {max(busy_rtt_ms):.2f} ms")
    assert log.tracebacks() == []
