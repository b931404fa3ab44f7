"""Where the daemon's main thread runs when it hands jobs to placement threads
(adaptd.daemon.placement_threads: "The main thread follows its work"). Real ThreadPlacements and
real affinity calls; the placements are not started, so every job submitted stays queued: the
first job for a placement finds it idle, the next finds it busy. Each case runs on a thread of
its own, since affinity is per thread."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pytest

from adaptd.daemon.jobs import Job
from adaptd.daemon.placement_threads import ThreadPlacements
from adaptd.daemon.placements import Placement

ALLOWED = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two cores: one for a placement, one more")
A, B = ALLOWED[-1], ALLOWED[0]


def _job(n: int) -> Job:
    return Job(f"r{n}", "/nonexistent", "float32", [], [], 0, None)


def _on_own_thread(body: Callable[[], object]) -> object:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(body()))
    thread.start()
    thread.join()
    assert out, "the case raised (see the thread's traceback above)"
    return out[0]


def _affinities(submits: list[str], *, home_cores: tuple[int, ...] = (), realtime: object = None,
                follow_work: bool = True, before: Callable[[ThreadPlacements], None] | None = None) -> list[set[int]]:
    """The calling thread's cores after each submit, to placements "a" (core A) and "b" (core B)."""
    def body() -> list[set[int]]:
        pool = ThreadPlacements([Placement("a", "cpu", "litert", (A,), 1, None, "one core"),
                                 Placement("b", "cpu", "litert", (B,), 1, None, "another")], 4,
                                home_cores=home_cores, follow_work=follow_work)
        pool.realtime = realtime
        if before is not None:
            before(pool)
        seen = []
        try:
            for n, placement in enumerate(submits):
                assert pool.submit(placement, _job(n))
                seen.append(os.sched_getaffinity(0))
        finally:
            for w in pool.workers.values():
                if w.lock.locked():
                    w.lock.release()
            pool.stop()
        return seen

    return _on_own_thread(body)


def test_the_main_thread_moves_onto_an_idle_placement_and_off_a_busy_one():
    idle, busy = _affinities(["a", "a"])
    assert idle == {A}
    assert busy == set(ALLOWED)


def test_it_leaves_any_busy_placements_cores():
    # a (idle) takes it to A, b (idle) to B; a again is busy: off B too, where b's job waits.
    assert _affinities(["a", "b", "a"]) == [{A}, {B}, set(ALLOWED)]


def test_a_placement_under_its_lock_is_busy():
    # A load or an unmap runs under the placement's lock with nothing queued or in flight.
    assert _affinities(["a"], before=lambda pool: pool.workers["a"].lock.acquire()) == [set(ALLOWED)]


def test_pinned_by_server_cores_it_stays_put():
    home = (B,)

    def pinned() -> list[set[int]]:   # [server] cores pins the whole process before the pool is made
        os.sched_setaffinity(0, home)
        return _affinities(["a", "a"], home_cores=home)

    assert _on_own_thread(pinned) == [set(home), set(home)]


def test_with_spin_us_or_a_real_time_front_end_it_stays_put():
    # spin_us: the spin would share the run's core. rt_priority: under SCHED_RR on the
    # placement's core the main thread would keep the run from it; it moves only for an inline
    # run, leaving its real-time policy for that run.
    assert _affinities(["a", "a"], follow_work=False) == [set(ALLOWED), set(ALLOWED)]
    assert _affinities(["a", "a"], realtime=object()) == [set(ALLOWED), set(ALLOWED)]


def test_a_run_that_raises_leaves_the_placement_serving(tiny_repository, monkeypatch):
    """A run that raises outside the interpreter's own guard (here run_job itself, patched to
    fail) is a failed job, not a dead placement: inline, the caller gets a WORKER_FAILED outcome
    and the placement is idle again (it stayed busy for good, so nothing ran inline there
    again); on the placement's thread, the job comes back WORKER_FAILED and the thread serves the
    next one (it used to end). Real threads, a real interpreter, the real eventfd."""
    import select

    import numpy as np

    from adaptd.daemon import placement_threads
    from adaptd.wire import protocol as proto

    repo, model, version = tiny_repository
    version_dir = str(repo / model / version)
    x = np.zeros((1, 8, 8, 1), np.float32)

    def job(n: int) -> Job:
        return Job(f"r{n}", version_dir, "float32", [proto.tensor_header(x)], [memoryview(x)], 0, None)

    def broken(*args, **kwargs):
        raise RuntimeError("run bug")

    def body() -> list[object]:
        pool = ThreadPlacements([Placement("a", "cpu", "litert", (A,), 1, None, "one core")], 4)
        pool.start()
        try:
            assert pool.wait_ready(30) == []
            pool.preload("a", version_dir, "float32")
            assert pool.wait_loaded(30) == []
            real = placement_threads.run_job
            monkeypatch.setattr(placement_threads, "run_job", broken)
            inline_failed = pool.run_inline("a", job(0))
            idle_after_inline = pool.workers["a"].idle
            assert pool.submit("a", job(1))
            assert select.select([pool.fileno()], [], [], 30)[0], "the failed job never came back"
            (failed,) = pool.completed()
            monkeypatch.setattr(placement_threads, "run_job", real)
            assert pool.submit("a", job(2))
            assert select.select([pool.fileno()], [], [], 30)[0], "the thread stopped serving"
            (served,) = pool.completed()
            inline = pool.run_inline("a", job(3))
            return [inline_failed, idle_after_inline, failed, served, inline]
        finally:
            pool.stop()

    inline_failed, idle_after_inline, failed, served, inline = _on_own_thread(body)
    assert inline_failed.ok is False and inline_failed.header["code"] == "WORKER_FAILED"
    assert inline_failed.header["died"] is False and failed.header["died"] is False   # not the arm's health
    assert idle_after_inline is True
    assert failed.ok is False and failed.header["code"] == "WORKER_FAILED" and "run bug" in failed.header["message"]
    assert served.ok is True and served.job.request_id == "r2"
    assert inline is not None and inline.ok is True


def test_a_run_past_job_timeout_s_on_a_placements_thread_shows_and_is_reported_once(
        tiny_repository, monkeypatch, caplog):
    """A placement's thread cannot be stopped (LiteRT's Python API has no cancel): a run that goes
    on past ``job_timeout_s`` shows in the placement's ``running_s`` and is logged, once per run.
    The hung run is a stand-in for what this machine cannot produce (a wedged driver): the real
    ``run_job`` behind an event the test sets."""
    import select

    import numpy as np

    from adaptd.daemon import placement_threads
    from adaptd.wire import protocol as proto

    repo, model, version = tiny_repository
    version_dir = str(repo / model / version)
    x = np.zeros((1, 8, 8, 1), np.float32)
    entered, release = threading.Event(), threading.Event()
    real = placement_threads.run_job

    def hung(*args, **kwargs):
        entered.set()
        release.wait(60)
        return real(*args, **kwargs)

    def body() -> tuple[object, ...]:
        pool = ThreadPlacements([Placement("a", "cpu", "litert", (A,), 1, None, "one core")], 4)
        pool.start()
        try:
            assert pool.wait_ready(30) == []
            idle = pool.workers["a"].snapshot()["running_s"]
            monkeypatch.setattr(placement_threads, "run_job", hung)
            assert pool.submit("a", Job("r0", version_dir, "float32", [proto.tensor_header(x)], [memoryview(x)],
                                        0, None))
            assert entered.wait(30)
            running = pool.workers["a"].snapshot()["running_s"]
            started_s = pool.workers["a"].inflight.dispatched_ns / 1e9
            warned = []
            for now in (started_s + 5, started_s + 11, started_s + 12):
                pool.warn_stuck(now, 10.0)
                warned.append(sum("has run one job" in r.getMessage() for r in caplog.records))
            release.set()
            assert select.select([pool.fileno()], [], [], 30)[0], "the run never came back"
            (done,) = pool.completed()
            return idle, running, warned, done, pool.workers["a"].snapshot()["running_s"]
        finally:
            release.set()
            pool.stop()

    idle, running, warned, done, after = _on_own_thread(body)
    assert idle is None and running is not None and running >= 0 and after is None
    assert warned == [0, 1, 1]
    assert done.ok
