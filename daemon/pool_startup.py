"""The worker pool's blocking waits, for the daemon's start-up only.

Contract
--------
* Mixed into :class:`~adaptd.daemon.pool.WorkerPool`: these block the calling thread (the
  daemon's main thread before it serves, or a test), reading the workers' channels as the
  daemon's loop does once it serves (:meth:`WorkerPool.on_message`). Not for use while serving.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable

from adaptd.daemon.channel import ChannelError
from adaptd.daemon.workers import Worker

STARTUP_POLL_MS = 100   # the longest a start-up wait goes without asking whether it is over


class StartupWaits:
    """What :class:`~adaptd.daemon.pool.WorkerPool` waits for at start-up (its ``workers``, its
    channels' ``_by_fd``, its ``on_message``, ``_record_side_message`` and ``_garbled``)."""

    workers: dict[str, Worker]
    _by_fd: dict[int, Worker]
    _by_exit_fd: dict[int, Worker]

    def wait_ready(self, timeout_s: float) -> list[str]:
        """Block until every worker said ``ready`` (used at start-up only); return the laggards."""
        def not_ready() -> list[Worker]:
            return [w for w in self.workers.values() if not w.ready]

        def check() -> None:
            for w in self.workers.values():
                if w.condemned is not None:
                    raise RuntimeError(f"worker for {w.placement.name} {w.condemned} during start-up")
                if w.proc and w.proc.poll() is not None and not w.ready:
                    raise RuntimeError(f"worker for {w.placement.name} exited with code {w.proc.returncode} "
                                       "during start-up")
        return self._wait_while(not_ready, timeout_s, check)

    def wait_loaded(self, timeout_s: float) -> list[str]:
        """Block until every eager load sent so far is answered (start-up only); return laggards.
        A worker that is not running (not started, dead, or being killed) answers nothing more:
        it is not waited for (its start or restart loads again)."""
        def waiting() -> list[Worker]:
            return [w for w in self.workers.values() if w.condemned is None and w.proc is not None
                    and w.proc.poll() is None and (w.pending_loads or any(
                        key not in w.loaded and key not in w.failed_loads for key in w.eager))]
        return self._wait_while(waiting, timeout_s)

    def _wait_while(self, waiting: Callable[[], list[Worker]], timeout_s: float,
                    check: Callable[[], None] | None = None) -> list[str]:
        """Read the channels until ``waiting()`` is empty or ``timeout_s`` passed, ``check()``
        after each wait; the placements of the workers still waiting. A channel the pool stopped
        reading (its worker died or is being killed) leaves the poller, whose bytes would
        otherwise wake it at once forever. A worker's exit wakes the wait too (its death is
        handled by the loop later), and ``waiting()`` is asked at least every ``STARTUP_POLL_MS``:
        without pidfds the exit can be reported a moment before ``waitpid`` sees it."""
        deadline = time.monotonic() + timeout_s
        poller = select.poll()
        for fd in self._by_fd:
            poller.register(fd, select.POLLIN)
        exit_fds = set(self._by_exit_fd)
        for fd in exit_fds:
            poller.register(fd, select.POLLIN)
        while waiting():
            left_ms = (deadline - time.monotonic()) * 1e3
            if left_ms <= 0:
                break
            for fd, _ in poller.poll(min(left_ms, STARTUP_POLL_MS)):
                if fd in exit_fds:
                    exit_fds.discard(fd)
                    poller.unregister(fd)
                    continue
                self.on_message(fd)
                if fd not in self._by_fd:
                    poller.unregister(fd)
            if check is not None:
                check()
        return [w.placement.name for w in waiting()]

    def measure_overhead_ms(self, rounds: int = 20) -> dict[str, float]:
        """Fastest round trip of an empty message to each idle, ready worker (start-up only):
        the cost of the hop itself, which a variant's own latency does not include. The fastest,
        not the median: on a shared host a start-up spell made the median of 20 pings 1.5 ms on
        one placement (64 us in the next start), and every prior there carried it until that
        placement's own executions taught the selector its path (adaptd.daemon.selection),
        which adds whatever the hop costs beyond this."""
        out: dict[str, float] = {}
        for name, w in self.workers.items():
            if not w.ready or w.channel is None or w.sent or w.queue:
                continue
            rtts = []
            try:
                for i in range(rounds):
                    t0 = time.perf_counter_ns()
                    w.channel.send("ping", {"n": i})
                    while True:   # loads answered meanwhile are recorded as usual
                        verb, header, _ = w.channel.recv()
                        if verb == "pong" and header.get("n") == i:
                            break
                        self._record_side_message(w, verb, header)
                    rtts.append((time.perf_counter_ns() - t0) / 1e6)
            except OSError:   # it died meanwhile: its exit descriptor reports it
                continue
            except ChannelError as exc:
                self._garbled(w, exc)
                continue
            out[name] = min(rtts)
        return out
