"""A time-slice request to Linux's fair scheduler, for the daemon's and its workers' threads.

Why: a worker woken for a job on a core that other processes keep busy waits for the running
task's slice to end before it runs. Under EEVDF (Linux 6.6 and later) the base slice is 0.75 ms
x (1 + log2 of the CPU count), 1.4 ms on the 2-core development machine, where a worker
sharing its core with two busy processes now and then waited 3-5 ms before it ran. Since
Linux 6.12 a SCHED_OTHER thread may request its own slice (``sched_attr.sched_runtime``, 0.1 to
100 ms); a woken thread with a shorter slice than the running one preempts it. The thread's
*share* of the CPU (its nice weight) is unchanged: a loaded core still runs a long execution
slower, which the selector is there to follow; only the wait before it starts shrinks.

Contract
--------
* :func:`request_slice` sets the calling thread's slice (or thread ``tid``'s) and reads it back.
  It returns True when the kernel took it, False when this kernel keeps no per-thread slice
  (before 6.12 the field is ignored for SCHED_OTHER and reads back as 0; on a board's 4.9 or
  5.10 kernel the call is then a no-op), or when the thread runs under another policy (a
  real-time ``CPUSchedulingPolicy=`` of the unit: left as it is). Other failures raise OSError.
* :func:`request_slice_all_threads` does it for every thread of this process (threads that the
  process starts later, and processes it forks or spawns, inherit the slice).
* :func:`make_idle` puts a process just started under ``SCHED_IDLE`` (its one thread; the threads
  and processes it starts later inherit it): it runs only on a core that nothing else wants.
* :class:`RealtimeFrontEnd` (``[server] rt_priority``) puts the daemon's front end, its main
  thread and ZeroMQ's I/O threads, under ``SCHED_RR`` at a low real-time priority, so that a
  request is read and answered as soon as it arrives instead of after the time slices of the
  programs sharing the core. With ``SCHED_RESET_ON_FORK``: threads and processes started later
  (worker processes' restarts) start under the fair scheduler at nice 0, whatever the daemon's
  nice (the kernel's rule for a real-time parent; a worker then takes the daemon's nice itself
  where it may: :func:`set_nice_all_threads`). ``leave``/``enter`` take the calling thread off
  the real-time policy and back (an inline run on a placement's cores, a reload); neither raises:
  a refusal leaves the thread under the fair scheduler and is reported by ``describe``.
  Main thread only.
* :func:`name_thread` gives the calling thread its name in the kernel (``comm``: what ``top
  -H``, ``ps -L``, ``pidstat -t`` and ``perf`` show), so that an operator, or a benchmark
  reading ``/proc/<pid>/task/*/schedstat``, can tell the daemon's threads apart: ``adaptd``
  (the main thread, named once the daemon has started, so that helper threads started before
  keep their own names), ``adaptd-store``, ``adaptd-metrics``, a placement's thread by the
  placement's name (``cpu:1``), and a worker process ``adaptd-<placement>``; the kernel keeps
  15 bytes. Never raises.
* Units: microseconds in, as in ``[server] sched_slice_us``; the kernel takes nanoseconds.
* Linux only (the syscall numbers of x86_64, aarch64 and 32-bit arm); elsewhere
  :func:`request_slice` returns False.
"""

from __future__ import annotations

import ctypes
import os
import threading

MIN_SLICE_US = 100          # the kernel's bounds for a requested slice
MAX_SLICE_US = 100_000

SCHED_OTHER = 0
SCHED_BATCH = 3
SCHED_FLAG_RESET_ON_FORK = 0x01
ZMQ_IO_THREAD = "ZMQbg/IO/"     # the comm of libzmq's I/O threads

# (sched_setattr, sched_getattr) by machine
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "armv7l": (380, 381), "armv8l": (380, 381)}


class _SchedAttr(ctypes.Structure):
    """``struct sched_attr`` (include/uapi/linux/sched/types.h), SCHED_ATTR_SIZE_VER1."""

    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32), ("sched_flags", ctypes.c_uint64),
                ("sched_nice", ctypes.c_int32), ("sched_priority", ctypes.c_uint32),
                ("sched_runtime", ctypes.c_uint64), ("sched_deadline", ctypes.c_uint64),
                ("sched_period", ctypes.c_uint64), ("sched_util_min", ctypes.c_uint32),
                ("sched_util_max", ctypes.c_uint32)]


_libc = None


def _syscall(number: int, *args) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.syscall(number, *args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _get_attr(tid: int) -> _SchedAttr | None:
    """The thread's ``sched_attr`` (sched_getattr); None off Linux."""
    calls = _SYSCALLS.get(os.uname().machine)
    if calls is None:
        return None
    attr = _SchedAttr()
    _syscall(calls[1], tid, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    return attr


def current_slice_us(tid: int = 0) -> int | None:
    """The thread's slice as the kernel reports it (0 where it keeps none); None off Linux."""
    attr = _get_attr(tid)
    return None if attr is None else attr.sched_runtime // 1000


def request_slice(slice_us: int, tid: int = 0) -> bool:
    """Ask for a ``slice_us`` slice for thread ``tid`` (0: the calling thread); see the contract."""
    if not MIN_SLICE_US <= slice_us <= MAX_SLICE_US:
        raise ValueError(f"a slice must be {MIN_SLICE_US}..{MAX_SLICE_US} us, got {slice_us}")
    attr = _get_attr(tid)
    if attr is None or attr.sched_policy not in (SCHED_OTHER, SCHED_BATCH):
        return False
    attr.size = ctypes.sizeof(attr)
    attr.sched_flags = 0
    attr.sched_runtime = slice_us * 1000
    _syscall(_SYSCALLS[os.uname().machine][0], tid, ctypes.byref(attr), 0)   # nice and policy as read
    return current_slice_us(tid) == slice_us


def request_slice_all_threads(slice_us: int) -> bool:
    """:func:`request_slice` for every thread of this process; True when it took for all."""
    took = True
    for tid in os.listdir("/proc/self/task"):
        try:
            took = request_slice(slice_us, int(tid)) and took
        except ProcessLookupError:   # a thread that ended meanwhile
            pass
    return took


def set_nice_all_threads(nice: int) -> bool:
    """Every thread of this process to ``nice`` (Linux nice is per thread); True when it took for
    all. Best effort: lowering a nice needs CAP_SYS_NICE or an RLIMIT_NICE, and a refused thread
    keeps its own."""
    took = True
    for tid in os.listdir("/proc/self/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)
        except OSError:   # refused, or a thread that ended meanwhile
            took = False
    return took


def make_idle(pid: int) -> bool:
    """``SCHED_IDLE`` for process ``pid``, as the daemon starts it (the shadow worker); False when
    it could not be set (it has exited already: its death is read as any worker's; or the system
    refused: the process sets the policy itself once started, as before)."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except OSError:
        return False
    return True


class RealtimeFrontEnd:
    """``SCHED_RR`` at ``priority`` for the daemon's main thread and ZeroMQ's I/O threads.

    Why: under overload a BUSY answer waited for the main thread's turn on a core shared with
    the callers (p99 1.3-2.5 ms on a 2-vCPU machine, where 1 ms was the target); a real-time
    thread runs as soon as it is woken. What it costs the others is bounded by what the front
    end does (decoding, choosing, replying: tens of microseconds per request) and by the
    kernel's real-time throttling (``sched_rt_runtime_us``, 95% of each second by default).
    Executions do not run at that priority: placement threads and workers keep the fair
    scheduler, and an inline run on the main thread happens between :meth:`leave` and
    :meth:`enter`, so a placement's core is shared as it would be without the setting.
    """

    def __init__(self, priority: int) -> None:
        if not 1 <= priority <= 99:
            raise ValueError(f"a real-time priority is 1..99, got {priority}")
        self.priority = priority
        self.threads: list[str] = []      # what apply() set, "tid name"
        self.refused = ""                 # why the system refused a later switch (then: fair scheduler)
        self._fair: _SchedAttr | None = None
        self._rr: _SchedAttr | None = None
        self._setattr = _SYSCALLS.get(os.uname().machine, (None,))[0]

    def apply(self) -> list[str]:
        """Set the policy on the calling thread and on every ZeroMQ I/O thread of this process;
        returns them as "tid name". Raises OSError, PermissionError where the system refuses
        (without CAP_SYS_NICE or an RLIMIT_RTPRIO of at least the priority: systemd's
        ``LimitRTPRIO=``, refused under ``RestrictRealtime=yes``), leaving every thread as it
        was and :attr:`refused` saying why."""
        done: list[int] = []
        before: dict[int, _SchedAttr | None] = {}
        try:
            tids = [(int(t), _comm(t)) for t in os.listdir("/proc/self/task")]
            io = [(tid, name) for tid, name in tids if name.startswith(ZMQ_IO_THREAD)]
            before = {tid: _get_attr(tid) for tid in (0, *(tid for tid, _ in io))}
            for tid in before:
                os.sched_setscheduler(tid, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(self.priority))
                done.append(tid)
        except OSError as exc:
            for tid in done:   # all or nothing
                _restore(tid, before[tid])
            self.refused = f"{exc.strerror or exc} at start"
            raise
        fair, rr = before[0], _get_attr(0)
        if fair is not None and rr is not None:
            for attr in (fair, rr):
                attr.size = ctypes.sizeof(attr)
                attr.sched_flags = SCHED_FLAG_RESET_ON_FORK
            fair.sched_policy, fair.sched_priority = SCHED_OTHER, 0   # even under a unit's CPUSchedulingPolicy=
            self._fair, self._rr = fair, rr
        self.threads = [f"{threading.get_native_id()} main", *(f"{tid} {name}" for tid, name in io)]
        return self.threads

    def leave(self) -> bool:
        """The calling thread back under the fair scheduler, with its nice value (as it is now:
        a renice after start holds) and the slice it had before :meth:`apply`; True when it is
        under the fair scheduler. Never raises: should the system refuse, the thread stays as it
        is, :attr:`refused` says why and later calls do nothing (the caller then keeps the work
        off this thread)."""
        if self.refused:
            return not self._realtime_now()
        try:
            if self._fair is not None:
                self._fair.sched_nice = os.getpriority(os.PRIO_PROCESS, 0)   # this thread's, kept under RR
                _syscall(self._setattr, 0, ctypes.byref(self._fair), 0)
            else:   # keeps the nice; a reset-on-fork flag kept needs no privilege
                os.sched_setscheduler(0, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, os.sched_param(0))
            return True
        except OSError as exc:
            self.refused = f"leaving it: {exc.strerror or exc}"
            return not self._realtime_now()

    def enter(self) -> None:
        """The calling thread under ``SCHED_RR`` again (one system call). Never raises: should the
        system refuse it (the process's RLIMIT_RTPRIO lowered meanwhile), the thread stays under
        the fair scheduler, :attr:`refused` says why and later calls do nothing."""
        if self.refused:
            return
        try:
            if self._rr is not None:
                _syscall(self._setattr, 0, ctypes.byref(self._rr), 0)
            else:
                os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(self.priority))
        except OSError as exc:
            self.refused = f"{exc.strerror or exc}"

    @staticmethod
    def _realtime_now() -> bool:
        return (os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK) in (os.SCHED_RR, os.SCHED_FIFO)

    def describe(self) -> str:
        """For ``health``: "SCHED_RR <priority>", or why the main thread is under the fair scheduler."""
        if not self.refused:
            return f"SCHED_RR {self.priority}"
        if self._realtime_now():
            return f"SCHED_RR {self.priority} (the fair scheduler refused, {self.refused})"
        return f"fair (SCHED_RR refused: {self.refused})"


def _restore(tid: int, attr: _SchedAttr | None) -> None:
    """A thread's scheduling as ``attr`` (from sched_getattr) had it, but with reset-on-fork kept
    (clearing it needs CAP_SYS_NICE); best effort."""
    try:
        if attr is None:
            os.sched_setscheduler(tid, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, os.sched_param(0))
        else:
            attr.size = ctypes.sizeof(attr)
            attr.sched_flags = SCHED_FLAG_RESET_ON_FORK
            _syscall(_SYSCALLS[os.uname().machine][0], tid, ctypes.byref(attr), 0)
    except OSError:
        pass


COMM_BYTES = 15   # the kernel keeps a thread's name to 15 bytes


def name_thread(name: str) -> None:
    """Set the calling thread's kernel name (``/proc/self/task/<tid>/comm``), cut to
    ``COMM_BYTES``; best effort (a /proc mounted read-only leaves the name as it was)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "wb") as f:
            f.write(name.encode(errors="replace")[:COMM_BYTES])
    except (OSError, ValueError):
        pass


def _comm(tid: str) -> str:
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:   # a thread that ended meanwhile
        return ""
