"""A daemon's CPU time as a benchmark reads it from outside: per thread, and per request.

* :func:`process_cpu_s`: CPU time (user + system) of a process and its children so far (psutil).
* :func:`thread_cpu_s` / :func:`by_name`: each thread's on-CPU time from
  ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds), summed by the thread's kernel name.
* :class:`SchedClocks`: the summed on-CPU time of a fixed set of threads, read in about a
  microsecond a thread (the files are opened once and re-read with ``pread``), so a client can
  read it between its requests and give the daemon's CPU *per request*, whose median is the
  issue's measure (a mean also carries the work done every n-th request: the policy's batched
  update, the store's transactions).

Linux only (``/proc``). A thread started after a reading began is not in it; one that ended
reads as its last value.
"""

from __future__ import annotations

import os
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


def _tasks(pid: int) -> list[tuple[int, int]]:
    """(pid, tid) of every thread of ``pid`` and of its child processes."""
    import psutil

    out = []
    for p in [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]:
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


def schedstat_paths(pid: int) -> list[str]:
    """The schedstat files of every thread of ``pid`` and its children now (for :class:`SchedClocks`,
    which may live in another process)."""
    return [f"/proc/{p}/task/{tid}/schedstat" for p, tid in _tasks(pid)]


class SchedClocks:
    """The summed on-CPU nanoseconds of the threads whose schedstat files are given. One reader
    per thread of the caller; :meth:`close` when done."""

    def __init__(self, paths: list[str]) -> None:
        self._fds: list[int] = []
        for path in paths:
            try:
                self._fds.append(os.open(path, os.O_RDONLY))
            except OSError:   # a thread that ended since the paths were listed
                continue
        self._last = [0] * len(self._fds)

    def read_ns(self) -> int:
        for i, fd in enumerate(self._fds):
            try:
                self._last[i] = int(os.pread(fd, 64, 0).split(maxsplit=1)[0])
            except (OSError, ValueError, IndexError):   # the thread ended: its last reading stands
                continue
        return sum(self._last)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
