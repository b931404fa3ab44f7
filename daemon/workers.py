"""A worker process as :class:`adaptd.daemon.pool.WorkerPool` keeps it: its process, channel,
jobs, loads and restart state.

Contract
--------
* Plain state, owned by the pool and used from the daemon's main thread only.
* ``sent`` holds the jobs in the worker's channel in order (the first runs); ``queue`` those
  waiting in the daemon; ``queue_limit`` bounds :meth:`Worker.n_waiting`.
* ``restart_at`` (``time.monotonic()`` seconds) is set while a restart is held back: after a
  crash loop, or after a start that failed (``start_error`` says why); the placement is *down*
  meanwhile. It is also 0 for a worker's first start made later than its pool's (the shadow
  worker's: :mod:`adaptd.daemon.dispatch`). :func:`next_restart_s` is when the soonest is due.
"""

from __future__ import annotations

import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from collections.abc import Iterable
from typing import Any

from adaptd.daemon.channel import Channel
from adaptd.daemon.jobs import Job
from adaptd.daemon.placements import Placement


@dataclass
class Worker:
    placement: Placement
    queue: deque[Job] = field(default_factory=deque)
    proc: subprocess.Popen | None = None
    channel: Channel | None = None
    exit_fd: int | None = None        # polls readable when it exits (adaptd.daemon.procwatch.ChildExit)
    ready: bool = False
    sent: deque[Job] = field(default_factory=deque)   # in the channel, in order; the first runs
    restarts: int = 0
    started_at: float = 0.0
    loaded: dict[tuple[str, str], int] = field(default_factory=dict)   # (dir, variant) -> memory bytes
    rss_bytes: int | None = None
    pending_loads: list[tuple[str, str]] = field(default_factory=list)
    eager: list[tuple[str, str]] = field(default_factory=list)        # loaded again after a restart
    failed_loads: set[tuple[str, str]] = field(default_factory=set)
    loading: list[tuple[str, str]] = field(default_factory=list)      # loads sent, not yet answered
    early_deaths: int = 0             # deaths in a row, each soon after its start
    restart_at: float | None = None   # time.monotonic() of a restart held back (a crash loop, a failed start)
    last_exit: str | None = None
    start_error: str | None = None    # why the latest start failed (the restart is held back meanwhile)
    condemned: str | None = None      # why this incarnation is being killed (garbled, stalled or hung)
    condemned_crash: bool = False     # and whether that counts as a crash of the variant it ran
    last_progress_ns: int = 0         # time.monotonic_ns() when it last finished a job or a load

    @property
    def inflight(self) -> Job | None:
        """The job the worker runs (or is about to start), or None."""
        return self.sent[0] if self.sent else None

    busy = property(lambda self: bool(self.sent))

    def waiting(self) -> tuple[Job, ...]:
        """The jobs not running yet, in the order they will run: sent behind the running one, then queued."""
        return (*islice(self.sent, 1, None), *self.queue)

    def n_waiting(self) -> int:
        """How many jobs wait behind the running one (what ``queue_limit`` bounds)."""
        return len(self.queue) + max(0, len(self.sent) - 1)

    def running_s(self, now_ns: int) -> float | None:
        """How long it has worked on its job in progress (None: none): since the job was sent, or
        since the job or the load before it in the channel ended, whichever is later."""
        if not self.sent:
            return None
        return (now_ns - max(self.sent[0].dispatched_ns or 0, self.last_progress_ns)) / 1e9

    def snapshot(self) -> dict[str, Any]:
        running_s = self.running_s(time.monotonic_ns())
        return {**self.placement.to_dict(), "queued": self.n_waiting(), "busy": self.busy,
                "running_s": None if running_s is None else round(running_s, 3),
                "ready": self.ready, "worker_pid": self.proc.pid if self.proc else None,
                "restarts": self.restarts,
                "restart_in_s": (None if self.restart_at is None
                                 else round(max(0.0, self.restart_at - time.monotonic()), 3)),
                "last_exit": self.last_exit, "start_error": self.start_error}


def next_restart_s(workers: Iterable[Worker]) -> float | None:
    """Seconds until the soonest held-back restart of ``workers`` is due (None: none is). The
    daemon's loop asks every round, for every pool's workers at once: a loop, not a comprehension
    (a call of its own) or a call per pool."""
    soonest = None
    for w in workers:
        at = w.restart_at
        if at is not None and (soonest is None or at < soonest):
            soonest = at
    return None if soonest is None else max(0.0, soonest - time.monotonic())
