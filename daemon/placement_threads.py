"""LiteRT placements served in the daemon's own process: a pinned thread each, and short jobs run
inline by the thread that received them.

Contract
--------
* One :class:`ThreadPlacement` per LiteRT placement with ``isolation = "thread"``: a thread pinned
  to the placement's cores (pinned before it creates an interpreter, so the interpreter's own
  threads inherit the cores) that owns the placement's :class:`~adaptd.daemon.execution.VariantCache`
  and shared-memory maps, and runs the jobs queued for it in order, one at a time. LiteRT's
  ``invoke`` releases the GIL, so placements run in parallel with each other and with the
  daemon's main thread.
* Inline execution (:meth:`ThreadPlacements.run_inline`): the daemon's main thread runs a job
  itself, with no hand-off, when the placement is idle (nothing queued or running, its lock free)
  and the job's variant is loaded there. It moves onto the placement's cores for the run
  (``sched_setaffinity`` of the calling thread: a no-op when already there) and stays there
  (the next request most often goes the same way), or moves back to ``[server] cores`` when those
  are set. The caller decides which jobs are short enough to run inline. With ``[server]
  rt_priority`` (:attr:`ThreadPlacements.realtime`) the thread leaves its real-time policy for
  the run and takes it back after.
* The main thread follows its work (:meth:`submit`), unless ``[server] cores`` pins it,
  ``[server] spin_us`` is set (``follow_work=False``) or a real-time front end is in effect:
  handing a job to an idle placement (nothing queued, in flight or under its lock), it moves
  onto that placement's cores, which are idle while it takes the request in and later replies,
  so the caller's core stays the caller's; handing one to a busy placement, it leaves any
  placement's cores for every core it may use (the set it had when this object was made), so
  that its intake overlaps the runs rather than taking a run's core. One ``sched_setaffinity``
  per change, none while it stays put.
* Every use of a placement's interpreters and maps happens under its lock, by its thread or by
  the main thread inline: one at a time. Commands other than runs (load, unload, unmap, ping)
  go through the same queue, so they never overlap a run.
* Outcomes of jobs the threads ran are appended to a deque and the daemon's loop is woken through
  an eventfd (:meth:`fileno`); :meth:`completed` hands them over on the main thread. An inline
  run returns its outcome to its caller. Times are ``time.monotonic_ns()``; CPU time is the
  executing thread's (for an interpreter with several threads, the others are counted as busy
  for the whole run: an estimate, used by the estimated power model only).
* While placement threads exist the interpreter's switch interval is 0.1 ms (``sys.setswitchinterval``,
  process-wide), so a thread whose run ended gets the GIL back within that long.
* A crash inside the interpreter (a segfault) ends the daemon (systemd restarts it); variant
  files are checked against their manifest before they load. ``isolation = "process"`` keeps
  crash isolation at the price of a process hop per request (adaptd.daemon.pool).
* Created, started and stopped by the daemon's main thread; :meth:`submit`, :meth:`run_inline`,
  :meth:`completed` and the queries are main-thread only.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from adaptd.daemon.execution import VariantCache, run_job
from adaptd.daemon.placements import Placement
from adaptd.daemon.sched import name_thread
from adaptd.daemon.jobs import Job, Outcome
from adaptd.daemon.shm import WorkerMaps

log = logging.getLogger("adaptd.threads")


@dataclass
class ThreadPlacement:
    placement: Placement
    reject_nonfinite: bool = True
    queue: deque[Job] = field(default_factory=deque)          # runs waiting (the selector reads it)
    commands: deque[tuple[str, Any]] = field(default_factory=deque)
    inflight: Job | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    wakeup: threading.Condition = field(default_factory=threading.Condition)
    cache: VariantCache | None = None
    maps: WorkerMaps = field(default_factory=WorkerMaps)
    thread: threading.Thread | None = None
    ready: bool = False
    loading: set[tuple[str, str]] = field(default_factory=set)   # eager loads sent, not yet done
    failed_loads: set[tuple[str, str]] = field(default_factory=set)
    eager: list[tuple[str, str]] = field(default_factory=list)
    stopping: bool = False
    warned_stuck: int | None = None   # the job_id of the run already reported as past job_timeout_s

    @property
    def busy(self) -> bool:
        return self.inflight is not None

    @property
    def idle(self) -> bool:
        """Nothing queued, running or waiting as a command (a command being run holds ``lock``)."""
        return not (self.queue or self.inflight is not None or self.commands)

    def waiting(self) -> tuple[Job, ...]:
        """The runs waiting, in order: one copy of the queue (``tuple`` of a deque runs under the
        GIL, whole, while this placement's thread pops it)."""
        return tuple(self.queue)

    def running(self, now_ns: int) -> tuple[Job | None, float | None]:
        """The run in progress and how long it has run (None, None: none runs)."""
        job = self.inflight   # (read once: the thread clears it)
        if job is None or job.dispatched_ns is None:
            return None, None
        return job, (now_ns - job.dispatched_ns) / 1e9

    def snapshot(self) -> dict[str, Any]:
        running_s = self.running(time.monotonic_ns())[1]
        return {**self.placement.to_dict(), "queued": len(self.queue), "busy": self.busy, "ready": self.ready,
                "running_s": None if running_s is None else round(running_s, 3),
                "worker_pid": os.getpid(), "restarts": 0, "restart_in_s": None, "last_exit": None,
                "isolation": "thread"}


SWITCH_INTERVAL_S = 0.0001   # sys.setswitchinterval while placement threads run (see start)


class ThreadPlacements:
    def __init__(self, placements: Iterable[Placement], queue_limit: int, *, reject_nonfinite: bool = True,
                 home_cores: tuple[int, ...] = (), follow_work: bool = True) -> None:
        self.queue_limit = queue_limit
        self.workers: dict[str, ThreadPlacement] = {
            p.name: ThreadPlacement(p, reject_nonfinite) for p in placements}
        self._home = tuple(home_cores)               # [server] cores: where the main thread lives
        self._here: tuple[int, ...] | None = None    # the main thread's cores now (None: unpinned)
        self._free = tuple(sorted(os.sched_getaffinity(0)))   # unpinned: every core it may use (made on it)
        # The main thread follows its work (see the contract): not when [server] cores pins it,
        # nor with [server] spin_us, whose spin would share the run's core.
        self.follow_work = follow_work and not self._home
        self._done: deque[Outcome] = deque()
        self._failed_loads: deque[tuple[str, tuple[str, str], str]] = deque()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._next_job = 1
        self.realtime: Any = None   # [server] rt_priority: a RealtimeFrontEnd, left for inline runs
        self.on_load_failed: Callable[[str, tuple[str, str], str], None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self.workers:
            # A placement thread whose invoke returned waits for the GIL until the main thread
            # gives it up: at most the switch interval (5 ms by default) while the main thread is
            # busy with intake, i.e. up to two such waits per job under load (bench_overload.py:
            # a 3 ms model ran at 8-13 ms a job at 5 ms, 3.5-3.6 ms at 0.5 ms, 3.2-3.5 at 0.1 ms).
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        for w in self.workers.values():
            w.thread = threading.Thread(target=self._serve, args=(w,), name=f"adaptd-{w.placement.name}",
                                        daemon=True)
            w.thread.start()

    def wait_ready(self, timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        for w in self.workers.values():
            with w.wakeup:
                w.wakeup.wait_for(lambda w=w: w.ready, max(0.0, deadline - time.monotonic()))
        return [name for name, w in self.workers.items() if not w.ready]

    def stop(self, timeout_s: float = 5.0) -> None:
        for w in self.workers.values():
            with w.wakeup:
                w.stopping = True
                w.wakeup.notify()
        deadline = time.monotonic() + timeout_s
        for w in self.workers.values():
            if w.thread is not None:
                w.thread.join(max(0.0, deadline - time.monotonic()))
        os.close(self._wake)

    # --- the placements' threads ---------------------------------------------------------------
    def _serve(self, w: ThreadPlacement) -> None:
        name_thread(w.placement.name)   # the placement alone: "adaptd-" would leave 8 bytes of it
        os.sched_setaffinity(0, w.placement.cores)   # before any interpreter exists: its threads inherit it
        import ai_edge_litert.interpreter  # noqa: F401  (imported now, not on the first request)

        w.cache = VariantCache(w.placement.threads, w.placement.device)
        with w.wakeup:
            w.ready = True
            w.wakeup.notify_all()
        while True:
            idle_since_ns = time.monotonic_ns()
            with w.wakeup:
                while not (w.commands or w.queue or w.stopping):
                    w.wakeup.wait()
                if w.stopping:
                    return
                if w.commands:
                    command = w.commands.popleft()
                    job = None
                else:
                    job = w.queue.popleft()
                    job.dispatched_ns = time.monotonic_ns()
                    w.inflight = job
            if job is None:
                self._command(w, *command)
                continue
            with w.lock:
                ok, header, bodies = self._execute(w, job, idle_since_ns)
            self._done.append(Outcome(job, header, bodies, ok, time.monotonic_ns()))
            w.inflight = None
            os.eventfd_write(self._wake, 1)

    def _command(self, w: ThreadPlacement, verb: str, arg: Any) -> None:
        with w.lock:
            if verb == "load":
                try:
                    w.cache.get(*arg)
                except Exception as exc:  # noqa: BLE001 - reported; the placement serves on
                    w.failed_loads.add(arg)
                    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    log.warning("%s: cannot load %s: %s", w.placement.name, arg[1], message)
                    self._failed_loads.append((w.placement.name, arg, message))
                    os.eventfd_write(self._wake, 1)
                with w.wakeup:
                    w.loading.discard(arg)
                    w.wakeup.notify_all()
            elif verb == "unload_except":
                w.cache.unload_except(arg)
            elif verb == "unmap":
                w.maps.unmap(arg)

    def _execute(self, w: ThreadPlacement, job: Job, idle_since_ns: int) -> tuple[bool, dict[str, Any], list[Any]]:
        """Run one job (the placement's lock held). A fault outside the interpreter's own guard
        (``run_job``'s) fails the job, transiently (a retry runs again), without counting against
        the arm's health (it is the daemon's fault, not the variant's): the placement serves on."""
        try:
            return self._run(w, job, idle_since_ns)
        except Exception as exc:  # noqa: BLE001 - the job is answered WORKER_FAILED
            log.exception("%s: a run failed outside the interpreter", w.placement.name)
            return False, {"job": job.job_id, "code": "WORKER_FAILED", "died": False,   # the daemon's fault, not the arm's
                           "message": f"the run failed: {type(exc).__name__}: {exc}"}, []

    def _run(self, w: ThreadPlacement, job: Job, idle_since_ns: int) -> tuple[bool, dict[str, Any], list[Any]]:
        header = {"job": job.job_id, "dir": job.version_dir, "variant": job.variant, "inputs": job.input_headers}
        if job.outputs_to is not None:
            header["outputs_to"] = job.outputs_to
        threads = w.placement.threads
        ok, reply, bodies = run_job(w.cache, w.maps, header, job.input_frames, idle_since_ns, w.reject_nonfinite,
                                    time.thread_time, inline_screened=True)   # (by the caller: Dispatcher.in_process)
        if ok:
            reply["in_process"] = True
            reply["caller_cpu_s"] = reply["cpu_time_s"]   # the calling thread's own, measured
            if threads > 1:   # the interpreter's other threads, counted busy for the run
                reply["cpu_time_s"] += (threads - 1) * (reply["t1_ns"] - reply["t0_ns"]) / 1e9
        return ok, reply, bodies

    # --- the daemon's main thread ----------------------------------------------------------------
    def fileno(self) -> int:
        """Readable when jobs the threads ran have outcomes (:meth:`completed`)."""
        return self._wake

    def completed(self) -> list[Outcome]:
        """The outcomes of jobs the threads ran since the last call (and, through
        ``on_load_failed``, the loads that failed)."""
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass
        while self._failed_loads:
            placement, key, message = self._failed_loads.popleft()
            if self.on_load_failed:
                self.on_load_failed(placement, key, message)
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def submit(self, placement: str, job: Job) -> bool:
        """Queue a job for the placement's thread; False when its queue is full (BUSY)."""
        w = self.workers[placement]
        if len(w.queue) >= self.queue_limit:
            return False
        job.job_id = self._next_job
        self._next_job += 1
        with w.wakeup:   # (the thread pops a job and marks it in flight under this lock)
            if self.follow_work and self.realtime is None:   # moved before the thread wakes beside it
                self._follow_work(w, w.idle and not w.lock.locked())
            w.queue.append(job)
            w.wakeup.notify()
        return True

    def _follow_work(self, w: ThreadPlacement, idle: bool) -> None:
        """The main thread onto ``w``'s cores when it was idle, else off any placement's (the
        module's contract says why)."""
        self._move_to(w.placement.cores if idle else None)

    def run_inline(self, placement: str, job: Job) -> Outcome | None:
        """Run a job on the calling (main) thread now, if the placement is idle and the variant
        loaded there; else None (the caller queues it)."""
        w = self.workers[placement]
        if not w.idle or w.cache is None \
                or (job.version_dir, job.variant) not in w.cache.loaded or not w.lock.acquire(blocking=False):
            return None
        # With a real-time front end the run shares the placement's cores as the placement's
        # thread would: under the fair scheduler; where that is refused, the thread runs it.
        realtime = self.realtime
        if realtime is not None and not realtime.leave():
            w.lock.release()
            return None
        try:
            self._move_to(w.placement.cores)
            job.job_id = self._next_job
            self._next_job += 1
            job.dispatched_ns = time.monotonic_ns()
            w.inflight = job
            ok, header, bodies = self._execute(w, job, job.dispatched_ns)
        finally:
            w.inflight = None
            w.lock.release()
            if self._home:
                self._move_to(self._home)
            if realtime is not None:
                realtime.enter()
        return Outcome(job, header, bodies, ok, time.monotonic_ns())

    def go_home(self) -> None:
        """The main thread back where it started (``[server] cores``, else every core it may use)."""
        self._move_to(self._home or None)

    def _move_to(self, cores: tuple[int, ...] | None) -> None:
        """The calling (main) thread onto ``cores`` (None: every core it may use), unless it is
        there; where that is refused (cores taken away meanwhile: a cpuset) it runs where it is."""
        if self._here != cores:
            try:
                os.sched_setaffinity(0, self._free if cores is None else cores)
            except OSError as exc:
                log.debug("the main thread stays where it is: %s", exc)
                return
            self._here = cores

    def loading(self, placement: str) -> bool:
        """Whether a load waits or runs on the placement's thread (a job sent now waits behind it)."""
        return bool(self.workers[placement].loading)

    def _send(self, w: ThreadPlacement, verb: str, arg: Any) -> None:
        with w.wakeup:
            w.commands.append((verb, arg))
            w.wakeup.notify()

    def preload(self, placement: str, version_dir: str, variant: str, keep: bool = True) -> None:
        """Load a variant now on the placement's thread (``keep``: one of its eager loads)."""
        w = self.workers[placement]
        key = (version_dir, variant)
        if keep and key not in w.eager:
            w.eager.append(key)
        w.loading.add(key)
        self._send(w, "load", key)

    def wait_loaded(self, timeout_s: float) -> list[str]:
        """Block until every eager load sent so far has finished (start-up only); the laggards."""
        deadline = time.monotonic() + timeout_s
        for w in self.workers.values():
            with w.wakeup:
                w.wakeup.wait_for(lambda w=w: not w.loading, max(0.0, deadline - time.monotonic()))
        return [name for name, w in self.workers.items() if w.loading]

    def unload_except(self, dirs: set[str]) -> None:
        for w in self.workers.values():
            w.eager = [k for k in w.eager if k[0] in dirs]
            self._send(w, "unload_except", set(dirs))

    def broadcast(self, verb: str, header: dict[str, Any]) -> None:
        if verb == "shm_unmap":
            for w in self.workers.values():
                self._send(w, "unmap", list(header.get("regions", ())))

    # --- queries ---------------------------------------------------------------------------------
    def queue_length(self, placement: str) -> int:
        w = self.workers[placement]
        return len(w.queue) + (1 if w.inflight is not None else 0)

    def running(self) -> bool:
        """Whether a job waits or runs on any placement's thread."""
        for w in self.workers.values():   # (the loop asks once a request: a loop, not a generator)
            if w.queue or w.inflight is not None:
                return True
        return False

    def latest_dispatch_ns(self) -> int | None:
        times = [job.dispatched_ns for job in (w.inflight for w in self.workers.values())   # read once: the
                 if job is not None and job.dispatched_ns is not None]                      # thread clears it
        return max(times) if times else None

    def snapshots(self) -> list[dict[str, Any]]:
        return [w.snapshot() for w in self.workers.values()]

    def warn_stuck(self, now: float, limit_s: float) -> None:
        """Log, once per run, a placement's thread whose run has gone on for ``limit_s`` (``now``:
        ``time.monotonic()``): unlike a worker process it cannot be stopped."""
        for w in self.workers.values():
            job, running_s = w.running(int(now * 1e9))
            if job is not None and running_s > limit_s and job.job_id != w.warned_stuck:
                w.warned_stuck = job.job_id
                log.warning("%s has run one job for %.0f s (placements.job_timeout_s = %g); a placement's thread "
                            "cannot be interrupted: restart the daemon to free it, or run the placement in a "
                            "worker process (isolation = \"process\"), which is killed instead",
                            w.placement.name, running_s, limit_s)

    def loaded_bytes(self, placement: str, version_dir: str, variant: str) -> int | None:
        cache = self.workers[placement].cache   # (a dict read: whole under the GIL, no copy)
        return None if cache is None else cache.memory_bytes.get((version_dir, variant))
