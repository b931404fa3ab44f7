"""A worker process's channel holds the job it runs and the next one (adaptd.daemon.pool): the
next starts without waiting for the daemon's main thread, a large input is not sent behind a
running job, ``queue_limit`` counts the job waiting in the channel, and a worker's death answers
only the job it was running, the one behind it going back to the head of the queue. A worker
whose channel carries bytes that are not a message, or stops in the middle of one, is killed,
and its job answered as a crash; the daemon never waits on it.

A real WorkerPool with a real worker process running LiteRT on the suite's slow model; the
worker is frozen with SIGSTOP so that what sits where is certain, not a race. A worker's faulty
bytes are written into its own end of the channel (duplicated with pidfd_getfd(2)), where a
faulty worker's would come from."""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import time

import numpy as np
import pytest

from adaptd.daemon.placements import Placement
from adaptd.daemon.jobs import Job, Outcome
from adaptd.daemon.pool import PIPELINE_MAX_BYTES, SEND_TIMEOUT_S, WorkerPool

from .conftest import SLOW_MODEL, SLOW_SHAPE

DEADLINE_S = 60.0


def make_job(repo, rid: str, batch: int) -> Job:
    x = np.random.default_rng(0).random((batch, *SLOW_SHAPE), dtype=np.float32)
    return Job(rid, str(repo / SLOW_MODEL / "1"), "float32",
               [{"dtype": "float32", "shape": list(x.shape)}], [x], time.monotonic_ns(), None)


def pump(pool: WorkerPool, want: int) -> list[Outcome]:
    """Read the pool's channels and exit descriptors as the daemon's loop does, until ``want`` outcomes."""
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(outcomes) < want:
        assert time.monotonic() < deadline, f"only {len(outcomes)} of {want} outcomes"
        channels, exit_fds = pool.channel_fds(), pool.exit_fds()
        readable, _, _ = select.select(channels + exit_fds, [], [], 0.1)
        for fd in readable:
            if fd in exit_fds:
                outcomes += pool.on_exit(fd)
            elif (outcome := pool.on_message(fd)) is not None:
                outcomes.append(outcome)
    return outcomes


def started_pool(job_timeout_s: float = 0.0):
    """A pool of one worker process on core 0, ready; stopped when the test ends."""
    placement = Placement("cpu:0", "cpu", "litert", (0,), 1, None, "core 0, one thread")
    p = WorkerPool([placement], queue_limit=3, job_timeout_s=job_timeout_s)
    p.start()
    try:
        assert p.wait_ready(DEADLINE_S) == []
        yield p
    finally:
        p.stop()


@pytest.fixture
def pool():
    yield from started_pool()


@pytest.fixture
def pool_either_kernel(kernel_pidfds):
    """A pool whose workers' deaths are seen through pidfds, or without them (tests/conftest.py)."""
    yield from started_pool()


def test_the_next_small_job_waits_in_the_channel_and_a_death_requeues_it(pool_either_kernel, slow_repository):
    pool = pool_either_kernel
    worker = pool.workers["cpu:0"]
    os.kill(worker.proc.pid, signal.SIGSTOP)
    big_batch = PIPELINE_MAX_BYTES // (4 * int(np.prod(SLOW_SHAPE))) + 1
    jobs = [make_job(slow_repository, "a", 1), make_job(slow_repository, "b", 1),
            make_job(slow_repository, "big", big_batch), make_job(slow_repository, "c", 1)]
    assert all(pool.submit("cpu:0", j) for j in jobs)
    # "a" runs, "b" waits in the channel; "big" would not fit the channel's buffer: it stays queued,
    # and "c" behind it (the order is kept)
    assert [j.request_id for j in worker.sent] == ["a", "b"]
    assert [j.request_id for j in worker.queue] == ["big", "c"]
    assert worker.n_waiting() == 3 and worker.snapshot()["queued"] == 3
    assert [j.request_id for j in worker.waiting()] == ["b", "big", "c"]
    assert not pool.submit("cpu:0", make_job(slow_repository, "over", 1))   # queue_limit counts "b"
    assert pool.in_flight() and pool.latest_dispatch_ns() == worker.sent[-1].dispatched_ns   # (what the loop asks)

    dead_pid = worker.proc.pid
    os.kill(dead_pid, signal.SIGKILL)
    os.kill(dead_pid, signal.SIGCONT)
    (failed,) = pump(pool, 1)
    assert failed.job.request_id == "a" and not failed.ok and failed.header["code"] == "WORKER_FAILED"
    assert [j.request_id for j in worker.queue] == ["b", "big", "c"] and not worker.sent
    # the new worker runs the rest, each once, in order
    done = pump(pool, 3)
    assert [o.job.request_id for o in done] == ["b", "big", "c"] and all(o.ok for o in done)
    assert worker.proc.pid != dead_pid and worker.restarts == 1
    assert [o.bodies[0].nbytes for o in done] == [4 * 4, 4 * 4 * big_batch, 4 * 4]   # 4 classes, float32
    assert not pool.in_flight() and pool.latest_dispatch_ns() is None and pool.next_restart_s() is None


def test_a_job_sent_to_a_worker_that_just_died_runs_on_the_next_one(pool_either_kernel, slow_repository):
    """The death is not read yet (its exit descriptor is pending) when a job is sent: the send fails, the
    job goes back to the head of the queue, and the new worker runs it; no job failed."""
    pool = pool_either_kernel
    worker = pool.workers["cpu:0"]
    dead_pid = worker.proc.pid
    os.kill(dead_pid, signal.SIGKILL)
    # Dead, its channel closed, not reaped. (Without pidfds the exit descriptor can report the
    # exit a few microseconds before the channel closes: adaptd.daemon.procwatch; this waits for
    # the end of the exit, as a pidfd's report does.)
    os.waitid(os.P_PID, dead_pid, os.WEXITED | os.WNOWAIT)
    assert select.select([worker.exit_fd], [], [], DEADLINE_S)[0] == [worker.exit_fd]
    assert pool.submit("cpu:0", make_job(slow_repository, "a", 1))
    assert [j.request_id for j in worker.queue] == ["a"] and not worker.sent and not worker.ready
    (done,) = pump(pool, 1)
    assert done.job.request_id == "a" and done.ok and worker.proc.pid != dead_pid


def test_a_worker_lets_nothing_it_starts_inherit_the_daemons_descriptors(pool_either_kernel, kernel_pidfds):
    """The worker's channel and, without pidfds, the socket end that reports its exit are made
    non-inheritable as it starts: a process the runtime started would hold them, and the
    worker's exit would go unreported while that one lived (adaptd.daemon.procwatch)."""
    pid = pool_either_kernel.workers["cpu:0"].proc.pid
    sockets = [n for n in os.listdir(f"/proc/{pid}/fd") if os.readlink(f"/proc/{pid}/fd/{n}").startswith("socket:")]
    flags = {n: int(open(f"/proc/{pid}/fdinfo/{n}").read().split("flags:")[1].split()[0], 8) for n in sockets}
    O_CLOEXEC = 0o2000000
    assert len(sockets) == (1 if kernel_pidfds == "pidfd" else 2)   # the channel, and the exit's end
    assert all(flags[n] & O_CLOEXEC for n in sockets), flags


def test_an_idle_worker_is_idle_from_its_start_not_from_its_own_call():
    """The shadow worker (``sched_idle``) used to switch itself to SCHED_IDLE only once its
    interpreter had started and imported numpy and LiteRT: a few hundred ms at normal priority
    right after the daemon was ready, which delayed its first requests by 2-7 ms. It is put under
    SCHED_IDLE as it is spawned: checked before the child could have done so itself, and held
    once it has (its threads inherit it)."""
    placement = Placement("shadow", "cpu", "litert", (0,), 1, None, "shadow runs")
    p = WorkerPool([placement], queue_limit=1, worker_options={"sched_idle": True})
    p.start()
    try:
        pid = p.workers["shadow"].proc.pid
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE   # straight after the spawn
        assert p.wait_ready(DEADLINE_S) == []
        tids = os.listdir(f"/proc/{pid}/task")
        assert all(os.sched_getscheduler(int(tid)) == os.SCHED_IDLE for tid in tids), tids
    finally:
        p.stop()


def test_the_shadow_worker_starts_with_its_first_reference_and_is_waited_for_loaded(slow_repository,
                                                                                   tiny_repository):
    """The shadow worker used to start with the placements and was not waited for: its start-up
    ran while a fresh daemon served its first requests, and delayed some by 1.5 to 7 ms here,
    idle priority or not. It now starts only when given a reference (a daemon whose references
    all run inline has none), and ``wait_loaded``, which the daemon calls before it is ready,
    returns once it is ready with that reference loaded."""
    from adaptd.daemon.dispatch import SHADOW, Dispatcher

    d = Dispatcher([Placement("cpu:0", "cpu", "litert", (0,), 1, None, "")], 4, shadow_worker=True)
    d.start()
    try:
        assert d.wait_ready(DEADLINE_S) == []
        shadow = d.shadows.workers[SHADOW]
        assert shadow.proc is None and d.wait_loaded(DEADLINE_S) == []   # no reference, no process
        assert d.exit_fds() == [] and not d.shadow_idle()
        key = (str(slow_repository / SLOW_MODEL / "1"), "float32")
        d.preload_shadow(*key)
        assert shadow.proc is not None and os.sched_getscheduler(shadow.proc.pid) == os.SCHED_IDLE
        assert d.wait_loaded(DEADLINE_S) == []
        assert shadow.ready and key in shadow.loaded and d.shadow_idle()
        pid = shadow.proc.pid
        tiny, model, version = tiny_repository
        other = (str(tiny / model / version), "float32")
        d.preload_shadow(*other)   # a second model's reference: the same worker loads it
        assert d.wait_loaded(DEADLINE_S) == [] and shadow.proc.pid == pid and other in shadow.loaded
    finally:
        d.stop()


def test_a_shadow_worker_that_dies_while_starting_is_not_waited_for(slow_repository, monkeypatch, kernel_pidfds):
    """A daemon's start waits for its shadow worker only while the worker runs: one killed before
    it was ready used to hold the start for the whole limit, since it would never answer (its
    exit seen through a pidfd, or through the socket pair a kernel without pidfds leaves)."""
    from adaptd.daemon import dispatch

    monkeypatch.setattr(dispatch, "SHADOW_START_WAIT_S", DEADLINE_S)
    d = dispatch.Dispatcher([Placement("cpu:0", "cpu", "litert", (0,), 1, None, "")], 4, shadow_worker=True)
    d.start()
    try:
        assert d.wait_ready(DEADLINE_S) == []
        d.preload_shadow(str(slow_repository / SLOW_MODEL / "1"), "float32")
        shadow = d.shadows.workers[dispatch.SHADOW]
        os.kill(shadow.proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        assert d.wait_loaded(DEADLINE_S) == []
        assert time.monotonic() - t0 < DEADLINE_S / 2 and not shadow.ready
    finally:
        d.stop()


def test_a_background_load_is_not_redone_by_a_new_worker_and_is_sent_again_when_asked(pool, slow_repository):
    """``preload(keep=False)`` (the request path's background load): the placement is loading
    until the worker answers; a new worker (after a death) does not load it again, and the
    placement is not left loading, so a later ask sends it again; ``keep=True`` (eager) is
    reloaded by every new worker."""
    worker, key = pool.workers["cpu:0"], (str(slow_repository / SLOW_MODEL / "1"), "float32")

    def until(done, what: str) -> None:
        """Read the pool's channels and exit descriptors, as the daemon's loop does, until ``done()``."""
        deadline = time.monotonic() + DEADLINE_S
        while not done():
            assert time.monotonic() < deadline, what
            exit_fds = pool.exit_fds()
            for fd in select.select(pool.channel_fds() + exit_fds, [], [], 0.1)[0]:
                pool.on_exit(fd) if fd in exit_fds else pool.on_message(fd)

    def settle(want_loaded: bool) -> None:
        until(lambda: not pool.loading("cpu:0") and (pool.loaded_bytes("cpu:0", *key) is not None) == want_loaded,
              "the load did not settle")

    def restart() -> None:
        pid = worker.proc.pid
        os.kill(pid, signal.SIGKILL)
        until(lambda: worker.proc.pid != pid and worker.ready, "no new worker")

    pool.preload("cpu:0", *key, keep=False)
    assert pool.loading("cpu:0")
    settle(want_loaded=True)
    restart()
    assert not pool.loading("cpu:0") and pool.loaded_bytes("cpu:0", *key) is None   # not redone
    pool.preload("cpu:0", *key, keep=False)   # asked again: sent again
    settle(want_loaded=True)
    pool.preload("cpu:0", *key, keep=True)    # now an eager load too: a new worker reloads it
    restart()
    settle(want_loaded=True)


# Run in a process of its own: the descriptor limit is the whole process's, and a thread of the
# test runner's (a ZeroMQ I/O thread of an earlier test) must not meet it.
NO_DESCRIPTORS = r"""
import json, os, resource, select, signal, sys, time
import numpy as np
from adaptd.daemon import pool as pool_module
from adaptd.daemon.jobs import Job
from adaptd.daemon.placements import Placement

version_dir, shape = sys.argv[1], tuple(json.loads(sys.argv[2]))
pool_module.START_RETRY_S = 0.0   # (the retry's pause is not what is tested)
pool = pool_module.WorkerPool([Placement("cpu:0", "cpu", "litert", (0,), 1, None, "core 0")], queue_limit=3)
pool.start()
assert pool.wait_ready(60) == []
worker = pool.workers["cpu:0"]

def job(rid):
    x = np.zeros((1, *shape), np.float32)
    return Job(rid, version_dir, "float32", [{"dtype": "float32", "shape": list(x.shape)}], [x], time.monotonic_ns(), None)

os.kill(worker.proc.pid, signal.SIGSTOP)
assert pool.submit("cpu:0", job("running")) and pool.submit("cpu:0", job("queued"))
dead_pid = worker.proc.pid
os.kill(dead_pid, signal.SIGKILL)
os.kill(dead_pid, signal.SIGCONT)
select.select([worker.exit_fd], [], [], 60)   # dead, its death not read yet
downs = []
pool.on_down = downs.append
open_before = len(os.listdir("/proc/self/fd"))   # the dead worker's channel and exit descriptor among them
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
fillers = []
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(map(int, os.listdir("/proc/self/fd"))) + 1, hard))
    while True:   # every slot below the limit taken: until one more is refused
        try:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    failed = pool.on_exit(worker.exit_fd)
    pool.restart_due()   # due at once, and still no descriptor: down still
    down_again = pool.down_reason("cpu:0")
finally:
    for fd in fillers:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
out = {"failed": sorted((o.job.request_id, o.ok, o.header["code"]) for o in failed), "downs": downs,
       "down_reason": pool.down_reason("cpu:0"), "down_again": down_again,
       "proc_none": worker.proc is None, "left": [len(worker.queue), len(worker.sent)],
       "closed": worker.channel is None and worker.exit_fd is None,
       "open_change": len(os.listdir("/proc/self/fd")) - open_before,
       "snapshot_error": pool.snapshots()[0]["start_error"]}
pool.restart_due()   # descriptors free again
out["restarted"] = pool.down_reason("cpu:0") is None and worker.proc is not None and worker.proc.pid != dead_pid
assert pool.submit("cpu:0", job("after"))
deadline, done = time.monotonic() + 60, None
while done is None and time.monotonic() < deadline:
    for fd in select.select(pool.channel_fds(), [], [], 0.5)[0]:
        done = pool.on_message(fd) or done
out["after"] = [done.job.request_id, done.ok] if done else None
pool.stop()
print(json.dumps(out))
"""


def test_a_worker_that_cannot_be_restarted_leaves_its_placement_down_not_the_daemon(slow_repository):
    """A worker dies while the process has no descriptor left (a client flood can do that): its
    restart fails. That used to raise out of ``on_exit`` and end the daemon. Now the running job
    and the one queued behind it are answered ``WORKER_FAILED``, each once; the placement is down
    (``on_down``) with the reason, shown in ``placements`` too; a retry that fails again changes
    nothing; nothing of the failed starts stays open; and once descriptors are free again the next
    try starts a worker that runs a job. The exhaustion is real: the process's descriptor limit is
    lowered to what it holds and every free slot below it is filled."""
    import json
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", NO_DESCRIPTORS, str(slow_repository / SLOW_MODEL / "1"),
                          json.dumps(list(SLOW_SHAPE))], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["failed"] == [["queued", False, "WORKER_FAILED"], ["running", False, "WORKER_FAILED"]]
    assert out["downs"] == ["cpu:0"] and out["proc_none"] and out["left"] == [0, 0] and out["closed"]
    assert "could not be started" in out["down_reason"] and "could not be started" in out["down_again"]
    assert "Too many open files" in out["snapshot_error"]
    assert out["open_change"] == -2   # the dead one's channel and exit descriptor closed, nothing half-made left
    assert out["restarted"] and out["after"] == ["after", True]


SYS_PIDFD_GETFD = 438   # the same number on every architecture


def worker_end(worker) -> socket.socket:
    """The worker's own end of its channel, duplicated into this process (pidfd_getfd(2)): what is
    written to it reaches the daemon's end exactly as the worker's own writes do. The descriptor's
    number is in the worker's command line (its spec)."""
    with open(f"/proc/{worker.proc.pid}/cmdline", "rb") as fh:
        spec = json.loads(fh.read().split(b"\0")[-2])
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(worker.proc.pid)
    try:
        fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, spec["fd"], 0)
    finally:
        os.close(pidfd)
    if fd < 0:
        pytest.skip(f"pidfd_getfd(2) is not allowed here: {os.strerror(ctypes.get_errno())}")
    return socket.socket(fileno=fd)


def pump_after_submit(pool: WorkerPool, job: Job) -> list[Outcome]:
    assert pool.submit("cpu:0", job)
    return pump(pool, 1)


def test_a_worker_that_sends_a_message_that_does_not_read_is_killed_and_its_job_failed_as_a_crash(
        pool, slow_repository):
    worker = pool.workers["cpu:0"]
    os.kill(worker.proc.pid, signal.SIGSTOP)
    assert pool.submit("cpu:0", make_job(slow_repository, "a", 1))
    first_pid = worker.proc.pid
    with worker_end(worker) as end:
        end.sendall(b"\x05\x00\x00\x00\x00\x00\x00\x00\xc1\xc1\xc1\xc1\xc1")   # a prefix, then no msgpack
        (failed,) = pump(pool, 1)
    assert failed.job.request_id == "a" and not failed.ok and failed.header["code"] == "WORKER_FAILED"
    assert failed.header["died"] is True   # counted against the variant, unlike a kill from outside
    assert "does not read" in failed.header["message"] and "does not read" in worker.last_exit
    (done,) = pump_after_submit(pool, make_job(slow_repository, "b", 1))
    assert done.ok and worker.proc.pid != first_pid and worker.restarts == 1


def test_a_worker_stopped_in_the_middle_of_a_message_is_not_waited_for_and_is_killed_after_the_limit(
        pool, slow_repository):
    worker = pool.workers["cpu:0"]
    os.kill(worker.proc.pid, signal.SIGSTOP)
    assert pool.submit("cpu:0", make_job(slow_repository, "a", 1))
    fd = worker.channel.fileno()
    with worker_end(worker) as end:
        end.sendall(b"\x40\x00\x00\x00\x00\x00\x00\x00\x82")   # 64 bytes of header announced, one sent
        select.select([fd], [], [], DEADLINE_S)
        assert pool.on_message(fd) is None   # read what came, and back: the loop goes on
        partial_at = worker.channel.partial_at
        assert partial_at is not None and fd in pool.channel_fds()
        pool.kill_stalled(partial_at + SEND_TIMEOUT_S / 2)
        assert worker.condemned is None and worker.proc.poll() is None
        pool.kill_stalled(partial_at + SEND_TIMEOUT_S + 1)
        assert fd not in pool.channel_fds()
        (failed,) = pump(pool, 1)
    assert failed.job.request_id == "a" and failed.header["code"] == "WORKER_FAILED"
    assert not failed.header["died"]   # a stall may be the machine's starving it: not the variant's crash
    assert "stopped in the middle of a message" in failed.header["message"]
    (done,) = pump_after_submit(pool, make_job(slow_repository, "b", 1))
    assert done.ok and worker.condemned is None


def test_a_worker_being_killed_is_sent_no_job_and_the_next_one_runs_it(pool, slow_repository):
    """Between the kill and its report by the exit descriptor, a job submitted waits for the new worker
    rather than being sent to the condemned one (and failed with it)."""
    worker = pool.workers["cpu:0"]
    os.kill(worker.proc.pid, signal.SIGSTOP)
    first_pid, fd = worker.proc.pid, worker.channel.fileno()
    with worker_end(worker) as end:
        end.sendall(b"\x01\x00\x00\x00\x00\x00\x00\x00\x90")   # a header that is a list
        select.select([fd], [], [], DEADLINE_S)
        assert pool.on_message(fd) is None and worker.condemned is not None and worker.condemned_crash
    assert pool.submit("cpu:0", make_job(slow_repository, "a", 1))
    assert not worker.sent and [j.request_id for j in worker.queue] == ["a"]
    (done,) = pump(pool, 1)
    assert done.job.request_id == "a" and done.ok and worker.proc.pid != first_pid


@pytest.fixture
def timed_pool(request):
    """A pool whose worker is killed past ``job_timeout_s`` (the test's parameter)."""
    yield from started_pool(request.param)


@pytest.mark.parametrize("timed_pool", [30.0], indirect=True)
def test_a_worker_that_runs_one_job_past_job_timeout_s_is_killed_and_the_job_failed_as_a_crash(
        timed_pool, slow_repository):
    pool = timed_pool
    worker = pool.workers["cpu:0"]
    os.kill(worker.proc.pid, signal.SIGSTOP)   # the run that never ends
    assert pool.submit("cpu:0", make_job(slow_repository, "a", 1))
    assert pool.submit("cpu:0", make_job(slow_repository, "b", 1))   # sent behind it: runs on the next one
    started_s = worker.sent[0].dispatched_ns / 1e9
    assert worker.snapshot()["running_s"] >= 0 and pool.snapshots()[0]["busy"]
    pool.kill_stalled(started_s + 29.0)
    assert worker.condemned is None and worker.proc.poll() is None
    pool.kill_stalled(started_s + 31.0)
    assert worker.condemned is not None
    (failed,) = pump(pool, 1)
    assert failed.job.request_id == "a" and failed.header["code"] == "WORKER_FAILED" and failed.header["died"]
    assert "job_timeout_s = 30" in failed.header["message"]
    (done,) = pump(pool, 1)
    assert done.job.request_id == "b" and done.ok and worker.snapshot()["running_s"] is None


@pytest.mark.parametrize("timed_pool", [30.0], indirect=True)
def test_a_load_ahead_of_the_job_that_does_not_end_is_not_the_jobs_crash(timed_pool, slow_repository):
    pool = timed_pool
    worker = pool.workers["cpu:0"]
    os.kill(worker.proc.pid, signal.SIGSTOP)
    pool.preload("cpu:0", str(slow_repository / SLOW_MODEL / "1"), "float32", keep=False)
    assert pool.submit("cpu:0", make_job(slow_repository, "a", 1))
    assert worker.loading and [j.request_id for j in worker.sent] == ["a"]
    pool.kill_stalled(worker.sent[0].dispatched_ns / 1e9 + 31.0)
    assert "loaded float32 for" in worker.condemned and not worker.condemned_crash
    (failed,) = pump(pool, 1)
    assert failed.job.request_id == "a" and failed.header["code"] == "WORKER_FAILED" and not failed.header["died"]


@pytest.mark.parametrize("timed_pool", [0.001], indirect=True)
def test_a_job_whose_outcome_waits_unread_or_is_half_read_is_not_killed(timed_pool, slow_repository):
    """Past the job's limit, a worker whose outcome has come (unread by the loop yet) or is coming
    (half read) has ended its run: the job is read, not killed."""
    pool = timed_pool
    worker = pool.workers["cpu:0"]
    assert pool.submit("cpu:0", make_job(slow_repository, "a", 1))
    fd = worker.channel.fileno()
    assert select.select([fd], [], [], DEADLINE_S)[0]   # the outcome has come, unread
    pool.kill_stalled(time.monotonic() + 5.0)
    assert worker.condemned is None
    (done,) = pump(pool, 1)
    assert done.ok

    os.kill(worker.proc.pid, signal.SIGSTOP)
    assert pool.submit("cpu:0", make_job(slow_repository, "b", 1))
    with worker_end(worker) as end:
        end.sendall(b"\x40\x00\x00\x00\x00\x00\x00\x00\x82")   # an outcome's first bytes
        select.select([fd], [], [], DEADLINE_S)
        assert pool.on_message(fd) is None and worker.channel.partial_at is not None
        pool.kill_stalled(worker.channel.partial_at + 5.0)   # past the job's limit, not the stall's
        assert worker.condemned is None
        os.kill(worker.proc.pid, signal.SIGKILL)
        os.kill(worker.proc.pid, signal.SIGCONT)
        pump(pool, 1)


def test_the_loop_is_told_the_soonest_held_back_restart_of_any_pool():
    from adaptd.daemon.workers import Worker, next_restart_s

    workers = [Worker(Placement(f"cpu:{i}", "cpu", "litert", (i,), 1, None, "")) for i in range(3)]
    assert next_restart_s(workers) is None   # none held back
    now = time.monotonic()
    workers[0].restart_at, workers[2].restart_at = now + 30.0, now + 5.0
    assert 4.0 < next_restart_s(workers) <= 5.0   # the soonest, from now
    workers[2].restart_at = now - 1.0
    assert next_restart_s(workers) == 0.0   # due already: not negative
    # The dispatcher asks its worker processes' and its shadow worker's at once (nothing started)
    from adaptd.daemon.dispatch import SHADOW, Dispatcher

    d = Dispatcher([Placement(f"cpu:{i}", "cpu", "litert", (i,), 1, None, "") for i in range(2)], 4,
                   isolation="process", shadow_worker=True)
    assert d.next_restart_s() is None
    d.shadows.workers[SHADOW].restart_at = now + 30.0
    assert 29.0 < d.next_restart_s() <= 30.0
    d.processes.workers["cpu:1"].restart_at = now + 5.0
    assert 4.0 < d.next_restart_s() <= 5.0
