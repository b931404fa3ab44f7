"""adaptd.daemon.sched: the fair scheduler's per-thread slice, set and read back through the
real syscalls (each case in a thread of its own, so the test process keeps its slice)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from adaptd.daemon import sched


def in_thread(fn):
    out: dict = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc
    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def proc_slice_ns(tid: int) -> int | None:
    for line in Path(f"/proc/self/task/{tid}/sched").read_text().splitlines():
        if line.startswith("se.slice"):
            return int(line.split(":")[1])
    return None


def test_a_slice_outside_the_kernels_bounds_is_refused_before_any_syscall():
    for bad in (0, sched.MIN_SLICE_US - 1, sched.MAX_SLICE_US + 1):
        with pytest.raises(ValueError, match="slice"):
            sched.request_slice(bad)


def test_a_requested_slice_is_the_threads_own_and_reads_back_where_the_kernel_keeps_one():
    main_before = sched.current_slice_us()

    def set_and_read():
        took = sched.request_slice(400)
        return took, sched.current_slice_us(), proc_slice_ns(threading.get_native_id())
    took, read_back, proc_ns = in_thread(set_and_read)
    if not took:
        assert read_back != 400   # the kernel ignored it: said so, not claimed
        pytest.skip("this kernel keeps no per-thread slice (Linux < 6.12)")
    assert read_back == 400
    assert proc_ns == 400_000                      # the kernel's own view agrees
    assert sched.current_slice_us() == main_before  # other threads keep theirs


def test_a_thread_started_after_the_request_inherits_the_slice():
    def parent():
        if not sched.request_slice(800):
            return None
        return in_thread(sched.current_slice_us)
    child = in_thread(parent)
    if child is None:
        pytest.skip("this kernel keeps no per-thread slice (Linux < 6.12)")
    assert child == 800


def test_another_threads_slice_can_be_set_by_its_id():
    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def idle():
        tid.append(threading.get_native_id())
        ready.set()
        done.wait(30)
    t = threading.Thread(target=idle)
    t.start()
    try:
        ready.wait(30)
        took = sched.request_slice(1500, tid[0])
        if not took:
            pytest.skip("this kernel keeps no per-thread slice (Linux < 6.12)")
        assert sched.current_slice_us(tid[0]) == 1500
        assert proc_slice_ns(tid[0]) == 1_500_000
    finally:
        done.set()
        t.join()


def test_a_thread_that_is_gone_is_a_process_lookup_error():
    t = threading.Thread(target=lambda: None)
    t.start()
    gone = t.native_id
    t.join()
    if os.path.exists(f"/proc/self/task/{gone}"):
        pytest.skip("the thread id is still listed")
    with pytest.raises(ProcessLookupError):
        sched.request_slice(500, gone)


# --- the front end under SCHED_RR ([server] rt_priority) -------------------------------------------
# Each case runs in a child process: the policy is set on the calling thread and on every ZeroMQ
# I/O thread of the process, which in this one would outlive the test.

_FRONT_END = r"""
import json, os, sys, threading, time
import zmq
from adaptd.daemon import sched

def policy(tid=0):
    return os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK

ctx = zmq.Context()
sock = ctx.socket(zmq.PAIR)   # the context's I/O thread starts with its first socket, and names itself
deadline = time.monotonic() + 30
while not any(open(f"/proc/self/task/{t}/comm").read().startswith("ZMQbg/IO/") for t in os.listdir("/proc/self/task")):
    assert time.monotonic() < deadline, "no ZeroMQ I/O thread"
    time.sleep(0.001)
sched.request_slice(300)
before = {"policy": policy(), "slice_us": sched.current_slice_us(), "nice": os.getpriority(os.PRIO_PROCESS, 0)}
front = sched.RealtimeFrontEnd(int(sys.argv[1]))
try:
    threads = front.apply()
except PermissionError:
    print(json.dumps({"refused": True, "main": policy(), "io": [policy(int(t)) for t in os.listdir("/proc/self/task")
                      if open(f"/proc/self/task/{t}/comm").read().startswith("ZMQbg/IO/")],
                      "slice_us": sched.current_slice_us(), "before": before}))
    raise SystemExit(0)
out = {"refused": False, "before": before, "threads": threads, "main": policy(),
       "priority": os.sched_getparam(0).sched_priority, "io": [policy(int(t.split()[0])) for t in threads[1:]],
       "reset_on_fork": bool(os.sched_getscheduler(0) & os.SCHED_RESET_ON_FORK)}
child = {}
t = threading.Thread(target=lambda: child.update(policy=policy(), nice=os.getpriority(os.PRIO_PROCESS, 0)))
t.start(); t.join()
out["new_thread"] = child
front.leave()
out["left"] = {"policy": policy(), "slice_us": sched.current_slice_us(), "nice": os.getpriority(os.PRIO_PROCESS, 0)}
front.enter()
out["entered"] = policy()
out["describe"] = front.describe()
print(json.dumps(out))
"""


def _run(script: str, *args: str, prefix: tuple[str, ...] = (), timeout_s: float = 60) -> dict:
    """Run ``script`` in a child Python (after ``prefix``, e.g. setpriv); its last line of output, as JSON."""
    done = subprocess.run([*prefix, sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _front_end(priority: int, prefix: tuple[str, ...] = ()) -> dict:
    return _run(_FRONT_END, str(priority), prefix=prefix)


def test_the_front_end_runs_under_sched_rr_and_what_it_starts_later_does_not():
    """The calling thread and the ZeroMQ I/O thread under SCHED_RR at the priority, with
    reset-on-fork: a thread started afterwards is back under the fair scheduler. ``leave`` (an
    inline run) restores the fair policy with the slice it had; ``enter`` returns to SCHED_RR."""
    out = _front_end(3)
    if out["refused"]:
        pytest.skip("this process may not use SCHED_RR (no CAP_SYS_NICE, RLIMIT_RTPRIO 0)")
    assert out["main"] == os.SCHED_RR and out["priority"] == 3 and out["reset_on_fork"]
    assert out["io"] and set(out["io"]) == {os.SCHED_RR}, out["threads"]
    assert out["new_thread"]["policy"] == os.SCHED_OTHER
    assert out["left"]["policy"] == os.SCHED_OTHER
    assert out["left"]["slice_us"] == out["before"]["slice_us"]   # its slice (or 0 before Linux 6.12) kept
    assert out["left"]["nice"] == out["before"]["nice"]
    assert out["entered"] == os.SCHED_RR
    assert out["describe"] == "SCHED_RR 3"


def test_a_front_end_the_system_refuses_is_left_as_it_was():
    """Without CAP_SYS_NICE and with RLIMIT_RTPRIO 0 (a hardened unit's RestrictRealtime=yes is
    the same refusal) ``apply`` raises PermissionError and no thread changed policy."""
    import shutil

    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, and no setpriv to drop CAP_SYS_NICE")
        prefix = (setpriv, "--inh-caps=-sys_nice", "--bounding-set=-sys_nice")
    import resource

    if resource.getrlimit(resource.RLIMIT_RTPRIO)[0] not in (0,):
        pytest.skip("this process's RLIMIT_RTPRIO allows SCHED_RR")
    out = _front_end(1, prefix)
    assert out["refused"]
    assert out["main"] == os.SCHED_OTHER and out["io"] and set(out["io"]) == {os.SCHED_OTHER}
    assert out["slice_us"] == out["before"]["slice_us"]
    # the daemon's start-up step: one warning line naming what it needs, and no policy object
    probe = ("import logging; logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
             "from adaptd.daemon.startup import realtime_front_end\nprint(realtime_front_end(5).describe())")
    done = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("fair (SCHED_RR refused: Operation not permitted at start)"), done.stdout
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "server.rt_priority = 5 not applied" in warnings[0]
    assert "LimitRTPRIO" in warnings[0] and "Traceback" not in done.stderr


def test_a_real_time_priority_outside_1_to_99_is_refused_before_any_syscall():
    for bad in (0, 100, -1):
        with pytest.raises(ValueError, match="1..99"):
            sched.RealtimeFrontEnd(bad)


_INLINE = r"""
import json, os, sys, threading, time
import numpy as np
from adaptd.daemon import sched
from adaptd.daemon.jobs import Job
from adaptd.daemon.placement_threads import ThreadPlacements
from adaptd.daemon.placements import Placement

version_dir, shape = sys.argv[1], tuple(json.loads(sys.argv[2]))
core = max(os.sched_getaffinity(0))
pool = ThreadPlacements([Placement("cpu:t", "cpu", "litert", (core,), 1, None, "one core")], 4)
pool.start()
assert pool.wait_ready(60) == []
pool.preload("cpu:t", version_dir, "float32")
assert pool.wait_loaded(60) == []
front = sched.RealtimeFrontEnd(1)
try:
    front.apply()
except PermissionError:
    print(json.dumps({"refused": True}))
    raise SystemExit(0)
pool.realtime = front
main = threading.get_native_id()
seen, running, stop = [], threading.Event(), threading.Event()

def watch():   # started after apply: under the fair scheduler (reset on fork)
    while not stop.is_set():
        if running.is_set():
            seen.append(os.sched_getscheduler(main) & ~os.SCHED_RESET_ON_FORK)

x = np.random.default_rng(0).random((24, *shape), dtype=np.float32)   # a run of a few hundred ms
job = Job("inline", version_dir, "float32", [{"dtype": "float32", "shape": list(x.shape)}], [x],
          time.monotonic_ns(), None)
watcher = threading.Thread(target=watch)
watcher.start()
running.set()
outcome = pool.run_inline("cpu:t", job)
running.clear()
stop.set()
watcher.join()
print(json.dumps({"refused": False, "ran": outcome is not None and outcome.ok, "during": sorted(set(seen)),
                  "after": os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK}))
pool.stop()
"""


def test_an_inline_run_leaves_the_real_time_policy_and_takes_it_back(slow_repository):
    """A job the main thread runs inline on a placement's core runs under the fair scheduler, as
    the placement's own thread would (a watcher thread reads the main thread's policy during the
    run); the main thread is under SCHED_RR again once it returns."""
    from .conftest import SLOW_MODEL, SLOW_SHAPE

    out = _run(_INLINE, str(slow_repository / SLOW_MODEL / "1"), json.dumps(SLOW_SHAPE), timeout_s=120)
    if out["refused"]:
        pytest.skip("this process may not use SCHED_RR (no CAP_SYS_NICE, RLIMIT_RTPRIO 0)")
    assert out["ran"]
    assert os.SCHED_OTHER in out["during"]   # (SCHED_RR too, in the moments before and after the run)
    assert out["after"] == os.SCHED_RR


_LATER_REFUSAL = r"""
import ctypes, json, os, resource, threading
from adaptd.daemon import sched

def policy():
    return os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK

front = sched.RealtimeFrontEnd(1)
try:
    front.apply()
except PermissionError:
    print(json.dumps({"refused_at_start": True}))
    raise SystemExit(0)
os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 5)   # an operator's renice after start
# From here on as a service without CAP_SYS_NICE (LimitRTPRIO= instead), whose limit is now 0.
resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))
libc = ctypes.CDLL(None, use_errno=True)
header = (ctypes.c_uint32 * 2)(0x20080522, 0)            # _LINUX_CAPABILITY_VERSION_3, this thread
data = (ctypes.c_uint32 * 6)()                           # {effective, permitted, inheritable} x 2
assert libc.capget(header, data) == 0
data[0] &= ~(1 << 23)                                    # CAP_SYS_NICE
assert libc.capset(header, data) == 0, ctypes.get_errno()
left = front.leave()
after_leave = {"left": left, "policy": policy(), "nice": os.getpriority(os.PRIO_PROCESS, 0)}
front.enter()
after_enter = {"policy": policy(), "describe": front.describe(), "refused": front.refused}
print(json.dumps({"refused_at_start": False, "leave": after_leave, "enter": after_enter, "leave_again": front.leave()}))
"""


def test_a_renice_after_start_holds_and_a_later_refusal_leaves_the_thread_fair():
    """``leave`` keeps the thread's nice as it is now (an operator's renice after start), with no
    privilege needed; an ``enter`` the system refuses (CAP_SYS_NICE dropped, RLIMIT_RTPRIO 0)
    raises nothing, leaves the thread under the fair scheduler and says why in ``describe``."""
    out = _run(_LATER_REFUSAL)
    if out["refused_at_start"]:
        pytest.skip("this process may not use SCHED_RR (no CAP_SYS_NICE, RLIMIT_RTPRIO 0)")
    assert out["leave"] == {"left": True, "policy": os.SCHED_OTHER, "nice": 5}
    assert out["enter"]["policy"] == os.SCHED_OTHER
    assert out["enter"]["refused"] and out["enter"]["describe"].startswith("fair (SCHED_RR refused:")
    assert out["leave_again"] is True
