"""One daemon per socket and state: exclusive locks held for the daemon's whole life.

Contract
--------
* :meth:`InstanceLock.acquire` takes an exclusive, non-blocking ``flock`` on each directory that
  holds one of the daemon's ipc sockets and on the directory of its selection store. A second
  daemon on any of them fails at once with :class:`InstanceError` (one line naming the holder's
  pid, read from ``/proc/locks``), before it binds or unlinks anything, so it can neither take
  over the first one's socket nor write into its store.
* The locks are on the directories themselves: no lock file is made, so nothing is left behind.
  The kernel releases them when the process exits, however it exits (SIGKILL included). Workers
  and other children never inherit them (close-on-exec). ``flock`` is advisory and local: the
  directories must be on a local filesystem (``/run``, ``/var/lib`` and ``/tmp`` are).
* Not thread-safe; taken once at start-up, released at shutdown (:meth:`release`).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class InstanceError(RuntimeError):
    """Another daemon holds a lock: one line for the operator."""


class InstanceLock:
    def __init__(self, directories: list[Path]) -> None:
        self.paths = list(dict.fromkeys(Path(p) for p in directories))
        self._fds: list[int] = []

    def acquire(self) -> None:
        try:
            for path in self.paths:
                self._fds.append(self._lock(path))
        except BaseException:
            self.release()
            raise

    @staticmethod
    def _lock(path: Path) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_pid(os.fstat(fd))
            os.close(fd)
            raise InstanceError(f"another adaptd (pid {holder or 'unknown'}) is already using {path}: "
                                "stop it, or give this one its own runtime_dir and store") from None
        except OSError:
            os.close(fd)
            raise
        return fd

    def release(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()


def _holder_pid(st: os.stat_result) -> int | None:
    """The pid holding a flock on the file ``st`` describes, from /proc/locks (Linux)."""
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as fh:
            for line in fh:
                fields = line.split()
                if "FLOCK" in fields and device in fields:
                    return int(fields[fields.index(device) - 1])
    except (OSError, ValueError, IndexError):
        pass
    return None
