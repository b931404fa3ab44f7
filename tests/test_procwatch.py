"""``adaptd.daemon.procwatch``: a process's exit seen the same way with pidfds and without.

Each test runs twice (``kernel_pidfds``, tests/conftest.py): on this kernel's pidfds, and as on
a kernel without them (Linux before 5.3, such as the TX2's L4T 4.9), where ``pidfd_open(2)``
fails with ``ENOSYS``. tests/test_daemon_without_pidfd.py has the kernel itself refuse the call
to a whole daemon. The processes, sockets and ``/proc`` files are real.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import subprocess
import sys
import time

import pytest
import zmq

from adaptd.daemon import procwatch
from adaptd.daemon.channel import readable_now
from adaptd.daemon.procwatch import ChildExit, ProcessWatch, pidfd_available, reap

from .conftest import refused_pidfd_open

WAIT_S = 60.0
# A child that runs until its stdin closes.
UNTIL_STDIN_CLOSES = "import sys; sys.stdin.read()"


def open_fds() -> set[str]:
    """This process's open descriptors (not the one that lists them, closed by then)."""
    return {n for n in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{n}")}


@contextlib.contextmanager
def child(code: str = UNTIL_STDIN_CLOSES, **popen):
    """A Python child running ``code`` with a pipe to its stdin; killed if it still runs, reaped
    and its pipes closed at the end."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def watched_child(watch: ChildExit, code: str = UNTIL_STDIN_CLOSES, **popen):
    """:func:`child` spawned with ``watch``'s descriptors: the child and its exit descriptor
    (closed at the end)."""
    watch.open()
    with child(code, pass_fds=watch.child_fds, **popen) as proc:
        fd = watch.started(proc.pid)
        try:
            yield proc, fd
        finally:
            os.close(fd)


@pytest.mark.parametrize("ending", ["exit", "SIGKILL"])
def test_a_childs_exit_descriptor_polls_readable_once_it_has_exited(kernel_pidfds, ending):
    with watched_child(ChildExit()) as (proc, fd):
        assert not readable_now(fd)   # running: nothing to read
        if ending == "exit":
            proc.stdin.close()
        else:
            proc.kill()
        assert select.select([fd], [], [], WAIT_S)[0] == [fd]
        # ZeroMQ's poller, which the daemon's loop uses, sees it as readable, not as an error
        poller = zmq.Poller()
        poller.register(fd, zmq.POLLIN)
        ((item, flags),) = poller.poll(0)
        assert item == fd and flags & zmq.POLLIN
        assert proc.wait(timeout=WAIT_S) == (0 if ending == "exit" else -9)   # reaped once seen


def test_without_pidfds_the_child_holds_the_only_other_end(kernel_pidfds):
    """Without pidfds the child inherits one end of a socket pair and the daemon keeps none of it
    (else the daemon's own copy would hold it open past the child's exit)."""
    before = open_fds()
    watch = ChildExit()
    assert open_fds() == before and watch.child_fds == ()   # nothing held before open()
    watch.open()
    assert (len(watch.child_fds), len(open_fds() - before)) == ((0, 0) if kernel_pidfds == "pidfd" else (1, 2))
    with watched_child(watch) as (proc, fd):
        assert open_fds() - before == {str(fd), str(proc.stdin.fileno())}
        if kernel_pidfds == "no pidfd":
            theirs = {os.readlink(f"/proc/{proc.pid}/fd/{n}") for n in os.listdir(f"/proc/{proc.pid}/fd")}
            assert os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
            assert sum(link.startswith("socket:") for link in theirs) == 1


def test_a_spawn_that_failed_leaves_nothing_open(kernel_pidfds):
    before = open_fds()
    watch = ChildExit()
    watch.open()
    with pytest.raises(OSError):
        subprocess.Popen(["/nonexistent/program"], pass_fds=watch.child_fds)
    watch.close()
    assert open_fds() == before


@pytest.mark.parametrize("reaped", [False, True])
def test_a_watched_process_has_exited_once_it_has_even_unreaped(kernel_pidfds, reaped):
    with child() as proc:
        watch = ProcessWatch(proc.pid)
        assert not watch.exited()
        proc.kill()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)   # dead: a zombie, not reaped
        if reaped:
            proc.wait()
        assert watch.exited()
        watch.close()


def test_a_process_with_brackets_in_its_name_is_watched_as_itself(kernel_pidfds):
    """``/proc/PID/stat`` gives the command's name in brackets, and a name may hold any: the
    fields after it are found from the last bracket."""
    code = "open('/proc/self/comm', 'w').write('a) b ( c'); print(flush=True); import sys; sys.stdin.read()"
    with child(code, stdout=subprocess.PIPE) as proc:
        proc.stdout.readline()
        assert open(f"/proc/{proc.pid}/comm").read().strip() == "a) b ( c"
        watch = ProcessWatch(proc.pid)
        assert not watch.exited()
        proc.stdin.close()
        proc.wait()
        assert watch.exited()
        watch.close()


def test_no_such_process_is_refused_as_pidfd_open_refuses_it(kernel_pidfds):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()   # (its pid is free, and not reused this soon)
    with pytest.raises(ProcessLookupError) as refused:
        ProcessWatch(proc.pid)
    assert refused.value.errno == errno.ESRCH and refused.value.strerror == "No such process"


def test_a_seccomp_refusal_counts_as_no_pidfds_and_other_errors_are_raised(monkeypatch):
    """A container whose seccomp profile predates pidfd_open answers EPERM: no pidfds there. Any
    other failure of the probe (no descriptor left, say) is not a verdict on the kernel."""
    monkeypatch.setattr(procwatch, "_pidfd", None)
    monkeypatch.setattr(os, "pidfd_open", refused_pidfd_open(errno.EPERM))
    assert not pidfd_available()
    monkeypatch.setattr(procwatch, "_pidfd", None)
    monkeypatch.setattr(os, "pidfd_open", refused_pidfd_open(errno.EMFILE))
    with pytest.raises(OSError):
        pidfd_available()
    assert procwatch._pidfd is None   # (asked again next time)


def test_a_child_that_closes_its_exit_descriptor_is_killed_not_waited_for(kernel_pidfds, caplog):
    """Without pidfds a child that closes the descriptor it inherited is reported as exited while
    it runs; :func:`reap` kills it after its timeout rather than block the daemon's loop. (With
    pidfds there is nothing to close: the report comes at the exit.)"""
    if kernel_pidfds == "pidfd":
        pytest.skip("a pidfd is the daemon's own descriptor")
    watch = ChildExit()
    child_fd = watch.open()
    code = f"import os, sys; os.close({child_fd}); print(flush=True); sys.stdin.read()"
    with watched_child(watch, code, stdout=subprocess.PIPE) as (proc, fd):
        proc.stdout.readline()
        assert select.select([fd], [], [], WAIT_S)[0] == [fd] and proc.poll() is None   # reported, running
        assert reap(proc) == -9
        assert "still runs: killed" in caplog.text


# A child whose main thread ends (pthread_exit) while another thread reads stdin: the leader is a
# zombie, the process runs on. It prints its other thread's id.
LEADER_GONE = """
import ctypes, sys, threading
def reader():
    sys.stdin.read()
    import os; os._exit(0)
t = threading.Thread(target=reader); t.start()
print(t.native_id, flush=True)
ctypes.CDLL(None).pthread_exit(None)
"""


def test_a_process_runs_until_its_last_thread_ends_and_a_threads_id_is_refused(kernel_pidfds):
    """As with a pidfd: a process whose leader is a zombie has not exited while another of its
    threads runs, and a thread's id is not a process's."""
    with child(LEADER_GONE, stdout=subprocess.PIPE) as proc:
        tid = int(proc.stdout.readline())
        with pytest.raises(OSError) as refused:
            ProcessWatch(tid)
        assert refused.value.errno in (errno.EINVAL, errno.ENOENT)   # (ENOENT from pidfd_open since Linux 6.9)
        watch = ProcessWatch(proc.pid)
        deadline = time.monotonic() + WAIT_S
        while open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the main thread did not end"
            select.select([], [], [], 0.01)   # (polling the process's state: nothing to wait on)
        assert not watch.exited()
        proc.stdin.close()
        proc.wait()
        assert watch.exited()
        watch.close()
