"""Where the daemon's main thread runs when it hands jobs to placement threads
(adaptd.daemon.placement_threads: "The main thread follows its work"). Real ThreadPlacements and
real affinity calls; the placements are not started, so every job submitted stays queued: the
first finds its placement idle, the next finds it busy. Each case runs on a thread of its own,
since affinity is per thread."""

from __future__ import annotations

import os
import threading

import pytest

from adaptd.daemon.jobs import Job
from adaptd.daemon.placement_threads import ThreadPlacements
from adaptd.daemon.placements import Placement

ALLOWED = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two cores: one for the placement, one more")


def _job(n: int) -> Job:
    return Job(f"r{n}", "/nonexistent", "float32", [], [], 0, None)


def _affinities(home_cores: tuple[int, ...] = (), realtime: object = None) -> list[set[int]]:
    """The calling thread's cores after each of two submits to one single-core placement."""
    seen: list[set[int]] = []

    def body() -> None:
        pool = ThreadPlacements([Placement("cpu:t", "cpu", "litert", (ALLOWED[-1],), 1, None, "one core")], 4,
                                home_cores=home_cores)
        pool.realtime = realtime
        try:
            for n in range(2):
                assert pool.submit("cpu:t", _job(n))
                seen.append(os.sched_getaffinity(0))
        finally:
            pool.stop()

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return seen


def test_the_main_thread_moves_onto_an_idle_placement_and_off_a_busy_one():
    idle, busy = _affinities()
    assert idle == {ALLOWED[-1]}
    assert busy == set(ALLOWED)


def test_pinned_by_server_cores_it_stays_put():
    home = (ALLOWED[0],)

    def pinned() -> list[set[int]]:   # [server] cores pins the whole process before the pool is made
        os.sched_setaffinity(0, home)
        return _affinities(home_cores=home)

    out: list[list[set[int]]] = []
    thread = threading.Thread(target=lambda: out.append(pinned()))
    thread.start()
    thread.join()
    assert out[0] == [set(home), set(home)]


def test_with_a_real_time_front_end_it_stays_put():
    # rt_priority: the main thread under SCHED_RR on the placement's core would keep its run from
    # it; it moves only for an inline run, leaving its real-time policy for that run.
    assert _affinities(realtime=object()) == [set(ALLOWED), set(ALLOWED)]
