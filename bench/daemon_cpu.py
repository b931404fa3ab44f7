"""A daemon's CPU time as a benchmark reads it from outside: per thread, and per request.

* :func:`process_cpu_s`: CPU time (user + system) of a process and its children so far (psutil).
* :func:`thread_cpu_s` / :func:`by_name`: each thread's on-CPU time from
  ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds), summed by the thread's kernel name.
* :class:`ProcessClocks`: the summed CPU time of the daemon's processes, read in about half a
  microsecond each (their CPU-time clocks), so a client can read it between its requests and
  give the daemon's CPU *per request*, whose median is the issue's measure (a mean also carries
  the work done every n-th request: the policy's batched update, the store's transactions).

Linux only (``/proc``, process CPU-time clocks). A thread started after a reading began is not
in :func:`thread_cpu_s`'s; a process started after the clocks were listed is not in
:class:`ProcessClocks`'.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def process_cpu_s(pid: int) -> float:
    """CPU time (user + system) of a process and its children so far: the daemon's threads, and
    its worker processes with process isolation."""
    import psutil

    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def _pids(pid: int) -> list[int]:
    """``pid`` and its child processes (the daemon's workers with process isolation)."""
    import psutil

    return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]


def _tasks(pid: int) -> list[tuple[int, int]]:
    """(pid, tid) of every thread of ``pid`` and of its child processes."""
    out = []
    for p in _pids(pid):
        try:
            out += [(p, int(tid)) for tid in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
    return out


def thread_cpu_s(pid: int) -> dict[tuple[int, int], tuple[str, float]]:
    """CPU time so far of each thread of the daemon and of its worker processes, by (pid, tid),
    with the thread's kernel name (``adaptd``, ``ZMQbg/IO/0``, ``adaptd-store``, a placement's
    name: ``adaptd.daemon.sched.name_thread``)."""
    out: dict[tuple[int, int], tuple[str, float]] = {}
    for p, tid in _tasks(pid):
        try:
            name = Path(f"/proc/{p}/task/{tid}/comm").read_text().strip()
            ns = int(Path(f"/proc/{p}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):   # a thread that ended meanwhile
            continue
        out[(p, tid)] = (name, ns / 1e9)
    return out


def by_name(before: dict[tuple[int, int], tuple[str, float]],
            after: dict[tuple[int, int], tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two readings, summed by thread name (a thread started meanwhile,
    a restarted worker's for one, counts from 0; one that ended meanwhile is missing)."""
    out: dict[str, float] = {}
    for key, (name, seconds) in after.items():
        out[name] = out.get(name, 0.0) + seconds - before.get(key, (name, 0.0))[1]
    return out


def process_clock_ids(pid: int) -> list[int]:
    """The CPU-time clocks (``clock_gettime``) of ``pid`` and of its child processes now, for
    :class:`ProcessClocks`, which may read them from another process. Each is the whole process's
    clock, as glibc's ``clock_getcpuclockid`` makes it (``CPUCLOCK_SCHED`` of the process)."""
    return [((~p) << 3) | _CPUCLOCK_SCHED for p in _pids(pid)]


_CPUCLOCK_SCHED = 2


class ProcessClocks:
    """The summed CPU time, in ns, of the processes whose clocks are given
    (:func:`process_clock_ids`): one ``clock_gettime`` each, about half a microsecond, and up to
    date for a thread running at that moment (a thread's ``schedstat`` is brought up to date only
    at the scheduler's next tick or switch). A process that ended reads as its last value."""

    def __init__(self, clock_ids: list[int]) -> None:
        self._ids = list(clock_ids)
        self._last = [0] * len(self._ids)

    def read_ns(self) -> int:
        for i, clock in enumerate(self._ids):
            try:
                self._last[i] = time.clock_gettime_ns(clock)
            except OSError:   # the process ended
                continue
        return sum(self._last)
