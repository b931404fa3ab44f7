"""Workers SIGKILLed while they run requests: nothing lost, nothing answered twice or to the wrong
client, and the daemon keeps serving. The small version of ``bench/chaos_workers.py``.

Four client processes send requests of the ``slow`` model (about 10 ms each, tests/conftest.py)
with unique ids and their own inputs, whose outputs a local LiteRT run gives in advance; every
0.5 s the killer asks the daemon's ``placements`` for a worker that is running a request and
SIGKILLs it, so each kill lands on a request in flight (it is answered WORKER_FAILED) with others
queued behind it (they must run on the restarted worker). Every reply is checked by its client
(``robustness.chaos``). Whether a run hits the worst moment for a kill is chance; the last test
makes one such moment certain.
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
from robustness import chaos, expected, watch  # noqa: E402

REQUESTS = 2000
CLIENTS = 4
KILL_EVERY_S = 0.5


@pytest.mark.slow
def test_workers_killed_mid_request_lose_duplicate_and_misroute_nothing(slow_repository, tmp_path):
    exp_path = tmp_path / "expected.npz"
    expected.build(slow_repository, "slow", "1", CLIENTS * 8, candidates=CLIENTS * 16).save(exp_path)
    daemon = DaemonProcess.start(slow_repository, tmp_path / "daemon",
                                 config={"placements": {"tensorflow": "off", "isolation": "process", "queue_limit": 16}})
    try:
        outcome = chaos.run(daemon, exp_path, requests=REQUESTS, clients=CLIENTS, kill_every_s=KILL_EVERY_S,
                            window=4, deadline_s=30.0, busy_only=True)
    finally:
        daemon.kill()
    print(outcome.table())
    assert outcome.failures() == {}, outcome.table()
    c = outcome.counts
    assert c.sent == REQUESTS and c.answered == REQUESTS
    assert outcome.kills >= 3
    # each kill landed on a running request: it was answered WORKER_FAILED, the rest ran
    assert 1 <= c.codes.get("WORKER_FAILED", 0) <= outcome.kills
    assert set(c.codes) <= {"WORKER_FAILED", "BUSY"}, c.codes
    assert sum(outcome.restarts.values()) == outcome.kills


# --- one kill at the worst moment, made deterministic ---------------------------------------------

LONG_BATCH = 48          # about half a second on one core


def test_a_worker_killed_between_two_jobs_loses_nothing_and_the_daemon_lives(slow_repository, tmp_path):
    """The worker finishes its jobs (the second waited in its channel) and is killed before the
    daemon has read their results: the daemon wakes to the results and the death at once. It
    is frozen (SIGSTOP) meanwhile so that this order is certain, not a race: frozen, it cannot
    read a result, send the next job or notice the death until SIGCONT. Each request must get
    exactly one reply (a result, or WORKER_FAILED), and the daemon must go on serving; a request
    sent then runs on the new worker."""
    with DaemonProcess.start(slow_repository, tmp_path, config={"placements": {"tensorflow": "off", "isolation": "process",
                                                                               "queue_limit": 4}}) as d:
        _killed_between_two_jobs(d)


def _killed_between_two_jobs(d: DaemonProcess) -> None:
    log = watch.LogWatch(d.log_path)
    placement = [p for p in watch.control(d.endpoint, "placements")["body"]["placements"] if len(p["cores"]) == 1][0]
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(d.endpoint)
    rng = np.random.default_rng(0)

    def send(rid: str, batch: int) -> None:
        x = rng.random((batch, 32, 32, 8), dtype=np.float32)
        sock.send_multipart(proto.encode(proto.request_header(rid, "slow", [x], pin_variant="float32",
                                                              pin_placement=placement["name"]), [x]))

    try:
        send("first", LONG_BATCH)
        send("queued", 1)
        pid = wait_running(d, placement["name"], queued=1)
        os.kill(d.proc.pid, signal.SIGSTOP)
        try:
            watch.wait_idle(pid)             # "first" is done and its result written; "queued" waits
            os.kill(pid, signal.SIGKILL)
            watch.wait_exited(pid)
        finally:
            os.kill(d.proc.pid, signal.SIGCONT)
        replies: dict[str, list[dict]] = {}

        def receive() -> None:
            deadline = time.monotonic() + 60
            while not sock.poll(100):
                assert d.proc.poll() is None, f"the daemon died (exit {d.proc.returncode}); replies {replies}"
                assert time.monotonic() < deadline, f"no reply within 60 s; replies {replies}"
            header, _ = proto.decode(sock.recv_multipart())
            replies.setdefault(header["id"], []).append(header)

        for _ in range(2):
            receive()
        send("after", 1)                     # the placement's queue is FIFO: this comes last
        while "after" not in replies:
            receive()
    finally:
        sock.close()
    assert d.proc.poll() is None, "the daemon died"
    assert {rid: len(v) for rid, v in replies.items()} == {"first": 1, "queued": 1, "after": 1}, replies
    for rid in ("first", "queued"):
        (h,) = replies[rid]
        assert h["type"] == "result" or h.get("code") == "WORKER_FAILED", h
    assert replies["after"][0]["type"] == "result", replies["after"]
    state = next(p for p in watch.control(d.endpoint, "placements")["body"]["placements"]
                 if p["name"] == placement["name"])
    assert state["restarts"] == 1 and state["worker_pid"] != pid
    assert log.tracebacks() == []
    assert d.stop() == 0, d.log()


def wait_running(d: DaemonProcess, name: str, queued: int) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        p = next(p for p in watch.control(d.endpoint, "placements")["body"]["placements"] if p["name"] == name)
        if p["busy"] and p["queued"] >= queued:
            return p["worker_pid"]
    raise AssertionError(f"{name} never ran with {queued} queued")
