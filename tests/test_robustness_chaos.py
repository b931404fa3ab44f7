"""Workers SIGKILLed while they run requests: nothing lost, nothing answered twice or to the wrong
client, and the daemon keeps serving. The small version of ``bench/chaos_workers.py``.

Four client processes send requests of the ``slow`` model (about 10 ms each, tests/conftest.py)
with unique ids and their own inputs, whose outputs a local LiteRT run gives in advance; every
0.5 s the killer asks the daemon's ``placements`` for a worker that is running a request and
SIGKILLs it, so each kill lands on a request in flight (it is answered WORKER_FAILED) with others
queued behind it (they must run on the restarted worker). Every reply is checked by its client
(``robustness.chaos``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from adaptd.daemon.launch import DaemonProcess  # noqa: E402
from robustness import chaos, expected  # noqa: E402

REQUESTS = 2000
CLIENTS = 4
KILL_EVERY_S = 0.5


@pytest.mark.slow
def test_workers_killed_mid_request_lose_duplicate_and_misroute_nothing(slow_repository, tmp_path):
    exp_path = tmp_path / "expected.npz"
    expected.build(slow_repository, "slow", "1", CLIENTS * 8, candidates=CLIENTS * 16).save(exp_path)
    daemon = DaemonProcess.start(slow_repository, tmp_path / "daemon",
                                 config={"placements": {"tensorflow": "off", "queue_limit": 16}})
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
