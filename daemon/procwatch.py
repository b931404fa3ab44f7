"""Whether a process has exited, on any Linux kernel the daemon runs on.

Contract
--------
* ``pidfd_open(2)`` (Linux 5.3) gives a descriptor that polls readable once its process has
  exited, and that a reused pid cannot fool. The kernels NVIDIA ships for the TX2 (L4T R32:
  Linux 4.9) lack it (``ENOSYS``), and a container whose seccomp profile predates it refuses it
  (``EPERM``). :func:`pidfd_available` asks the kernel once, for this process's own pid, and
  keeps the answer; the two classes below use a pidfd where it has one and an equivalent where
  it has none, with the same meaning but for what "Where the two differ" says.
* :class:`ChildExit`, for a child the daemon spawns (a worker process): made before the spawn
  (it holds nothing yet), :meth:`~ChildExit.open` then makes what the child is to inherit (the
  descriptor the child is told of, or None) and :attr:`~ChildExit.child_fds` names it for
  ``subprocess.Popen(pass_fds=...)``; after the spawn :meth:`ChildExit.started` with the
  child's pid returns the descriptor to poll, which the caller owns from then on
  (``os.close``), and :func:`reap` gets the child's exit code once it has reported. It polls
  readable (``POLLIN``) once the child has exited, however it ended: a pidfd, or the daemon's
  end of a socket pair whose other end only the child holds (there with a hang-up too, which
  ZeroMQ's poller adds as ``POLLERR``). A socket pair and not a pipe: a pipe's read end reports
  its writer's end as ``POLLHUP`` alone, which ZeroMQ's poller reports as an error, not as
  readable. The kernel closes the child's end as the child exits, just before the parent is
  told, so ``wait()`` after the event returns within microseconds.
* Where the two differ: a pidfd reports the exit once the child's descriptors are all closed;
  the socket can report it a few microseconds before the last of them closes (an exiting
  process's files are released one by one). A job sent to the child's channel in that window is
  answered as one it was running (``WORKER_FAILED``) rather than run again by the next worker:
  when a death is seen shifts by those microseconds, not how many replies a request gets. And
  the child must not close the descriptor it inherits, nor pass it on: the worker process makes
  it non-inheritable first thing (a process it started would hold it, and the worker's exit
  would go unreported while that one lives). A child that closes it anyway is reported as
  exited while it runs: :func:`reap` kills it rather than wait for it without end.
* :class:`ProcessWatch`, for any process (a shared-memory region's owner, not the daemon's
  child): :meth:`~ProcessWatch.exited` says whether it has exited. A pidfd, or the start time
  in ``/proc/PID/stat`` compared with the one read when the watch began (a process that reuses
  the pid has another); a zombie counts as exited once its last thread has, as for a pidfd, and
  a thread's id is refused as ``pidfd_open`` refuses it (``EINVAL``). It is checked, not
  polled: the caller's sweep asks.
* Used from the daemon's main thread; not thread-safe.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess

from adaptd.daemon.channel import readable_now

log = logging.getLogger("adaptd.procwatch")

# What pidfd_open(2) answers where the kernel has no such call, or a seccomp filter refuses it.
_UNAVAILABLE = (errno.ENOSYS, errno.EPERM)
_pidfd: bool | None = None   # pidfd_available()'s answer, once asked


def pidfd_available() -> bool:
    """Whether this kernel gives pidfds (asked once)."""
    global _pidfd
    if _pidfd is None:
        opener = getattr(os, "pidfd_open", None)   # (Linux only)
        try:
            if opener is None:
                raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
            os.close(opener(os.getpid()))
            _pidfd = True
        except OSError as exc:
            if exc.errno not in _UNAVAILABLE:
                raise
            _pidfd = False
    return _pidfd


class ChildExit:
    """A descriptor that polls readable when a child exits (see the module's contract)."""

    def __init__(self) -> None:
        self._ours: int | None = None
        self._child: int | None = None

    def open(self) -> int | None:
        """Make the descriptor the child is to inherit (once), and return it (None where the
        kernel gives pidfds); raises OSError when no descriptor is left."""
        if self._child is None and not pidfd_available():
            ours, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._ours, self._child = ours.detach(), child.detach()
        return self._child

    @property
    def child_fds(self) -> tuple[int, ...]:
        """The descriptors the child is to inherit (none where the kernel gives pidfds)."""
        return () if self._child is None else (self._child,)

    def started(self, pid: int) -> int:
        """The descriptor to poll for the exit of the child ``pid``, spawned with
        :attr:`child_fds`; the caller owns it. Raises OSError where a pidfd cannot be made
        (no descriptor left), leaving nothing open."""
        if self._child is None:
            return os.pidfd_open(pid)
        os.close(self._child)   # (the child's copy is the only one left)
        self._child = None
        fd, self._ours = self._ours, None
        assert fd is not None
        return fd

    def close(self) -> None:
        """Close what :meth:`started` did not hand over (a spawn that failed)."""
        for fd in (self._ours, self._child):
            if fd is not None:
                os.close(fd)
        self._ours = self._child = None


REAP_TIMEOUT_S = 1.0   # a child whose exit was reported is reaped within microseconds


def reap(proc: subprocess.Popen) -> int:
    """The exit code of a child whose exit descriptor reported; one that still runs after
    ``REAP_TIMEOUT_S`` (it closed the descriptor itself) is killed first, and logged."""
    try:
        return proc.wait(REAP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.error("process %d closed the descriptor that reports its exit and still runs: killed", proc.pid)
        proc.kill()
        return proc.wait()


def _stat(pid: int) -> tuple[bytes, bytes]:
    """A process's state and start time (fields 3 and 22 of ``/proc/PID/stat``); raises
    ProcessLookupError where there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessLookupError(errno.ESRCH, os.strerror(errno.ESRCH)) from None
    fields = data[data.rindex(b")") + 2:].split()   # (the command's name, in brackets, may hold anything)
    return fields[0], fields[19]


def _leads_its_group(pid: int) -> bool:
    """Whether ``pid`` is a process's id (its thread group's leader), not another thread's."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            return next((int(line.split()[1]) for line in fh if line.startswith(b"Tgid:")), pid) == pid
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessLookupError(errno.ESRCH, os.strerror(errno.ESRCH)) from None


def _threads(pid: int) -> int:
    """How many threads a process has left (a zombie leader counted)."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except (FileNotFoundError, ProcessLookupError):
        return 0


class ProcessWatch:
    """Whether one process has exited (see the module's contract)."""

    def __init__(self, pid: int) -> None:
        """Raises ProcessLookupError (``ESRCH``) where no such process runs."""
        self.pid = pid
        self._fd: int | None = None
        self._started: bytes | None = None
        if pidfd_available():
            self._fd = os.pidfd_open(pid)
            return
        _, self._started = _stat(pid)   # (a zombie is watched, and has exited, as with a pidfd)
        if not _leads_its_group(pid):   # a thread's id: pidfd_open answers EINVAL (ENOENT since 6.9)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    def exited(self) -> bool:
        if self._fd is not None:
            return readable_now(self._fd)
        if self._started is None:   # (closed)
            return True
        try:
            state, started = _stat(self.pid)
        except ProcessLookupError:
            return True
        return started != self._started or state in (b"Z", b"X") and _threads(self.pid) <= 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._started = None
