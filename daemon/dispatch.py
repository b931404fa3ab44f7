"""Where a job runs: a placement's thread in the daemon (LiteRT, the default), or its worker process
(TensorFlow placements, and LiteRT ones with ``isolation = "process"``), behind one interface.

Contract
--------
* :class:`Dispatcher` offers the daemon one pool: ``submit``, ``run_inline``, queue lengths,
  snapshots, loads, shared-memory unmaps, the file descriptors its loop polls and what they
  deliver (:meth:`on_message` returns the outcomes that arrived, :meth:`on_exit` those of a dead
  worker process), and the lifecycle. Each call goes to the placement's host:
  :class:`~adaptd.daemon.placement_threads.ThreadPlacements` or
  :class:`~adaptd.daemon.pool.WorkerPool`. ``workers`` maps every placement to its state (the
  selector reads ``inflight`` and ``waiting()`` of each: the job running, the jobs behind it).
* A job runs inline (on the calling thread, no hand-off: :meth:`run_inline`) only on a thread
  placement, and only when that placement is idle with the variant loaded; the caller decides
  which jobs are short enough. A job for a thread placement (:meth:`in_process`) comes with its
  inline inputs screened for NaN by the caller (:mod:`adaptd.daemon.execution` says why); a
  worker process screens every input itself.
* The shadow worker (``shadow_worker=True``, live fidelity on): one more worker process, under
  ``SCHED_IDLE`` on every core the placements use, for shadow runs too long to run inline
  (:mod:`adaptd.daemon.fidelity`): it runs only on a core nothing else wants, so a reference
  that takes milliseconds never takes CPU from a request, its client or the main thread. It is
  not a placement: no selector arm, not in ``workers`` or ``snapshots``; one job at a time
  (:meth:`submit_shadow` refuses while it is busy). Its file descriptors, death and restart go
  through the same loop as the placements' workers. It starts with the first reference it is
  given (:meth:`preload_shadow`), not with the placements: a daemon whose references all run
  inline has no such process. One started at start-up is waited for by :meth:`wait_loaded`
  (which the daemon calls when it loads eagerly), at most ``SHADOW_START_WAIT_S`` and while it
  runs: its start-up, idle priority or not, delayed a fresh daemon's first requests by 1.1 to
  4.7 ms here (docs/decisions.md, "The shadow worker, started before the first request").
* The daemon's main thread only, like the two hosts it wraps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from adaptd.daemon.placement_threads import ThreadPlacements
from adaptd.daemon.placements import Placement
from adaptd.daemon.jobs import Job, Outcome
from adaptd.daemon.pool import WorkerPool
from adaptd.daemon.workers import next_restart_s

log = logging.getLogger("adaptd.dispatch")


SHADOW = "shadow"
# The longest a daemon's start waits for its shadow worker (idle priority: on a busy board it may
# take long to start); past it the daemon serves, and shadow runs are skipped until it is ready.
SHADOW_START_WAIT_S = 10.0


class Dispatcher:
    def __init__(self, placements: Iterable[Placement], queue_limit: int, *, isolation: str = "thread",
                 reject_nonfinite: bool = True, home_cores: tuple[int, ...] = (), shadow_worker: bool = False,
                 sched_slice_us: int = 0, follow_work: bool = True, job_timeout_s: float = 0.0) -> None:
        placements = list(placements)
        in_thread = [p for p in placements if p.runtime == "litert" and isolation == "thread"]
        in_process = [p for p in placements if p not in in_thread]
        self.queue_limit = queue_limit
        self.threads = ThreadPlacements(in_thread, queue_limit, reject_nonfinite=reject_nonfinite,
                                        home_cores=home_cores, follow_work=follow_work)
        # A worker asks for its scheduler slice itself: one restarted while the front end runs
        # under SCHED_RR (reset on fork) inherits neither the policy nor the slice.
        options: dict[str, Any] = {"reject_nonfinite": reject_nonfinite}
        if sched_slice_us:
            options["sched_slice_us"] = sched_slice_us
        self.processes = WorkerPool(in_process, queue_limit, worker_options=options, job_timeout_s=job_timeout_s)
        self._host: dict[str, Any] = {p.name: self.threads for p in in_thread}
        self._host.update({p.name: self.processes for p in in_process})
        self.workers: dict[str, Any] = {**self.threads.workers, **self.processes.workers}
        cores = tuple(sorted({c for p in placements if p.kind == "cpu" for c in p.cores}))
        self.shadows = WorkerPool([Placement(SHADOW, "cpu", "litert", cores, 1, None, "shadow runs, SCHED_IDLE")],
                                  queue_limit=1, worker_options={"reject_nonfinite": False, "sched_idle": True},
                                  job_timeout_s=job_timeout_s) \
            if shadow_worker and cores else None
        self._shadow_started = False
        self._pools = [self.processes] if self.shadows is None else [self.processes, self.shadows]
        # Every pool's workers, for the loop's question each round (fixed: a restart starts a new
        # process in the same Worker).
        self._process_workers = [w for pool in self._pools for w in pool.workers.values()]

    # --- callbacks the daemon sets ---------------------------------------------------------------
    @property
    def on_change(self) -> Callable[[], None] | None:
        return self.processes.on_change

    @on_change.setter
    def on_change(self, fn: Callable[[], None] | None) -> None:
        for pool in self._pools:
            pool.on_change = fn

    @property
    def on_down(self) -> Callable[[str], None] | None:
        return self.processes.on_down

    @on_down.setter
    def on_down(self, fn: Callable[[str], None] | None) -> None:
        self.processes.on_down = fn

    @property
    def on_load_failed(self) -> Callable[[str, tuple[str, str], str], None] | None:
        return self.processes.on_load_failed

    @on_load_failed.setter
    def on_load_failed(self, fn: Callable[[str, tuple[str, str], str], None] | None) -> None:
        self.processes.on_load_failed = fn
        self.threads.on_load_failed = fn

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """The placements' threads and worker processes (the shadow worker starts with its first
        reference: :meth:`preload_shadow`)."""
        self.threads.start()
        self.processes.start()

    def wait_ready(self, timeout_s: float) -> list[str]:
        return self.threads.wait_ready(timeout_s) + self.processes.wait_ready(timeout_s)

    def wait_loaded(self, timeout_s: float) -> list[str]:
        """Block until the loads sent so far are done, and a shadow worker started is ready with
        its references (at most ``SHADOW_START_WAIT_S`` for it); the placements still loading."""
        laggards = self.threads.wait_loaded(timeout_s) + self.processes.wait_loaded(timeout_s)
        wait_s = min(timeout_s, SHADOW_START_WAIT_S)
        if self._shadow_started and self.shadows.wait_loaded(wait_s):
            log.warning("the shadow worker is not ready after %g s; shadow runs are skipped until it is", wait_s)
        return laggards

    def measure_overhead_ms(self) -> dict[str, float]:
        """The hop a process placement adds to every execution (a thread placement's inline runs
        have none; its hand-offs are learnt from executions like the rest of the path)."""
        return {**{name: 0.0 for name in self.threads.workers}, **self.processes.measure_overhead_ms()}

    def stop(self, timeout_s: float = 5.0) -> None:
        self.threads.stop(timeout_s)
        for pool in self._pools:
            pool.stop(timeout_s)

    # --- work ------------------------------------------------------------------------------------
    def submit(self, placement: str, job: Job) -> bool:
        return self._host[placement].submit(placement, job)

    def submit_shadow(self, job: Job) -> bool:
        """Hand a shadow run to the shadow worker; False when there is none, or it is starting,
        restarting or busy (the run is skipped, never queued)."""
        return self.shadow_idle() and self.shadows.submit(SHADOW, job)

    def shadow_idle(self) -> bool:
        """Whether :meth:`submit_shadow` would take a run now."""
        w = None if self.shadows is None else self.shadows.workers[SHADOW]
        return w is not None and not w.busy and not w.queue and w.ready and w.channel is not None

    def in_process(self, placement: str) -> bool:
        """Whether the placement's jobs run in the daemon's process (a placement's thread, or
        inline): their inline inputs are then screened for NaN by the caller, not the executor."""
        return self._host[placement] is self.threads

    def run_inline(self, placement: str, job: Job) -> Outcome | None:
        host = self._host[placement]
        return host.run_inline(placement, job) if host is self.threads else None

    def preload(self, placement: str, version_dir: str, variant: str, keep: bool = True) -> None:
        """Load a variant now; ``keep``: also after a restart of its worker (an eager load)."""
        self._host[placement].preload(placement, version_dir, variant, keep)

    def preload_shadow(self, version_dir: str, variant: str) -> None:
        """Have the shadow worker load a reference now (and again after a restart), so that its
        first run waits for no load; the first reference starts the worker (a start that fails
        is tried again later, as a restart is); nothing without a shadow worker."""
        if self.shadows is None:
            return
        if not self._shadow_started:
            self._shadow_started = True
            self.shadows.workers[SHADOW].restart_at = 0.0   # (due now: started as a restart is,
            self.shadows.restart_due()                      # the loop's poller told)
        self.shadows.preload(SHADOW, version_dir, variant)

    def unload_except(self, dirs: set[str]) -> None:
        self.threads.unload_except(dirs)
        for pool in self._pools:
            pool.unload_except(dirs)

    def broadcast(self, verb: str, header: dict[str, Any]) -> None:
        self.threads.broadcast(verb, header)
        self.processes.broadcast(verb, header)

    # --- the loop's file descriptors -----------------------------------------------------------
    def channel_fds(self) -> list[int]:
        return [self.threads.fileno(), *(fd for pool in self._pools for fd in pool.channel_fds())]

    def exit_fds(self) -> list[int]:
        return [fd for pool in self._pools for fd in pool.exit_fds()]

    def on_message(self, fd: int) -> list[Outcome]:
        if fd == self.threads.fileno():
            return self.threads.completed()
        outcome = self.processes.on_message(fd)
        if outcome is None and self.shadows is not None:   # a pool ignores another's descriptors
            outcome = self.shadows.on_message(fd)
        return [] if outcome is None else [outcome]

    def on_exit(self, fd: int) -> list[Outcome]:
        return [o for pool in self._pools for o in pool.on_exit(fd)]

    def kill_stalled(self, now: float) -> None:
        """Worker processes stopped mid-message or past ``job_timeout_s`` are killed; a placement's
        thread past it is reported (it cannot be stopped)."""
        for pool in self._pools:
            pool.kill_stalled(now)
        if self.processes.job_timeout_s:
            self.threads.warn_stuck(now, self.processes.job_timeout_s)

    def next_restart_s(self) -> float | None:
        return next_restart_s(self._process_workers)   # (every pool's in one loop: asked every round)

    def restart_due(self) -> None:
        for pool in self._pools:
            pool.restart_due()

    # --- queries ---------------------------------------------------------------------------------
    def queue_length(self, placement: str) -> int:
        return self._host[placement].queue_length(placement)

    def down_reason(self, placement: str) -> str | None:
        host = self._host[placement]
        return host.down_reason(placement) if host is self.processes else None

    def loading(self, placement: str) -> bool:
        """Whether a load waits or runs on the placement (a job sent there now waits behind it)."""
        return self._host[placement].loading(placement)

    def is_loaded(self, placement: str, version_dir: str, variant: str) -> bool:
        return self.loaded_bytes(placement, version_dir, variant) is not None

    def running(self) -> bool:
        """Whether a job waits for or runs on a placement's thread, or is in a worker process's
        hands (its outcome will wake the loop; a job queued behind it goes after that)."""
        return self.threads.running() or self.processes.in_flight()

    def latest_dispatch_ns(self) -> int | None:
        times = [t for t in (self.threads.latest_dispatch_ns(), self.processes.latest_dispatch_ns()) if t is not None]
        return max(times) if times else None

    def snapshots(self) -> list[dict[str, Any]]:
        return self.threads.snapshots() + [{**s, "isolation": "process"} for s in self.processes.snapshots()]

    def loaded_bytes(self, placement: str, version_dir: str, variant: str) -> int | None:
        return self._host[placement].loaded_bytes(placement, version_dir, variant)

    def workers_rss_bytes(self) -> int:
        return sum(pool.workers_rss_bytes() for pool in self._pools)
