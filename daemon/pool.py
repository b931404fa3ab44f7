"""Worker supervision: one process per placement, a bounded queue each, restart on death.

Contract
--------
* Used from the daemon's main thread only (channels have one reader and one writer); nothing here
  blocks but the start-up's waits (:mod:`adaptd.daemon.pool_startup`), before the daemon serves.
* Each placement has exactly one worker process, pinned to the placement's cores, reached over
  a :class:`~adaptd.daemon.channel.Channel` (a socketpair private to that incarnation of the
  worker; the daemon polls its file descriptor). At most ``PIPELINE_DEPTH`` (2) jobs are in a
  worker's channel: the one it runs and, when its input is small (``PIPELINE_MAX_BYTES``, inline
  bytes; a shared-memory input costs none), the next, so the worker starts that one without
  waiting for the main thread to read the first's result (which, under overload, waits behind
  intake). The rest wait in the placement's queue (bounded by ``queue_limit``:
  :meth:`WorkerPool.submit` refuses beyond it, and the daemon answers ``BUSY``).
* A worker that dies (seen through its exit descriptor, never by polling timeouts) is restarted. The
  job it was running is handed back through :meth:`WorkerPool.on_exit`, once, so the daemon
  answers it ``WORKER_FAILED`` exactly once; a job sent behind it, which never started, goes back
  to the head of the queue, and the jobs queued for it wait for the new worker. A worker that
  keeps dying soon after it starts is restarted after a growing pause (``RESTART_BACKOFF_S``);
  meanwhile its placement is *down* (:meth:`WorkerPool.down_reason`), takes no jobs, and the jobs
  queued for it are handed back too, each once. No request is silently dropped nor answered twice.
  A restart that cannot start a process (descriptors or processes exhausted) is the same: the
  placement is down and the start is tried again ``START_RETRY_S`` later; it never ends the
  daemon. The first start, at the daemon's start-up, raises instead; a worker left unstarted then
  (live fidelity's shadow worker: :mod:`adaptd.daemon.dispatch`) starts later as a restart does.
* No send to a worker raises: a channel that fails (the worker died, or stopped reading for
  ``SEND_TIMEOUT_S``) marks the worker dying (nothing more is sent to it) and kills it if it
  still runs; a job whose send failed never reached a worker that could run it, and goes back to
  the head of the queue for the new worker, which the report of the death starts.
* Reading a worker never waits while the daemon serves: a message cut in two waits for its rest
  in the channel. A worker that sends a message that does not read
  (:class:`~adaptd.daemon.channel.ChannelError`), or stops for ``SEND_TIMEOUT_S`` in the middle
  of one, or runs one job for ``job_timeout_s`` (:meth:`WorkerPool.kill_stalled`, from the
  daemon's housekeeping; each limit ten times as long for a pool under ``SCHED_IDLE``, which the
  machine's other work may starve), is killed and sent nothing more: its death, reported by its
  exit descriptor, answers its job ``WORKER_FAILED`` and restarts it. Bytes that do not read and
  a run that does not end count as a crash of the variant it ran; a stalled message, and a load that
  does not end ahead of the job, do not. A job's time runs from when it was sent or from when
  the job or load ahead of it in the channel ended, whichever is later; one whose outcome waits
  unread is not killed.
* Times are ``time.monotonic_ns()`` for jobs, ``time.monotonic()`` seconds for restarts.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from itertools import islice
from collections.abc import Callable, Iterable
from typing import Any

from adaptd.daemon.channel import Channel, ChannelError, readable_now
from adaptd.daemon.jobs import Job, Outcome
from adaptd.daemon.placements import Placement
from adaptd.daemon.pool_startup import StartupWaits
from adaptd.daemon.procwatch import ChildExit, reap
from adaptd.daemon.sched import make_idle
from adaptd.daemon.workers import Worker, next_restart_s

log = logging.getLogger("adaptd.workers")

# A worker ended by these signals was killed from outside (an operator, the OOM killer, a test): its
# death does not count against the variant it was running (a crash, SIGSEGV or SIGABRT, does).
EXTERNAL_DEATHS = frozenset({-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT})
SEND_TIMEOUT_S = 10.0     # a worker that reads nothing for this long while a message waits is killed, or
                          # that sends nothing more for this long in the middle of a message
EARLY_DEATH_S = 30.0      # a worker that dies this soon after starting counts towards a crash loop
# pause before a restart, by the number of early deaths in a row (a worker that did any work resets it)
RESTART_BACKOFF_S = (0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
START_RETRY_S = 1.0       # a worker that could not be started (no descriptor or process left) is tried again then
PIPELINE_DEPTH = 2        # jobs in a worker's channel at once: the running one and the next
# A job is sent behind a running one only when its inline input is at most this: the channel's
# kernel buffer (about 200 kB by default) must take it whole, or the send would block the main
# thread until the worker reads it, for the rest of the running job.
PIPELINE_MAX_BYTES = 64 * 1024


class WorkerPool(StartupWaits):
    def __init__(self, placements: Iterable[Placement], queue_limit: int,
                 worker_options: dict[str, Any] | None = None, job_timeout_s: float = 0.0) -> None:
        self.queue_limit = queue_limit
        self.job_timeout_s = job_timeout_s   # a worker running one job this long is killed (0: never)
        self.worker_options = dict(worker_options or {})   # passed to every worker in its spec
        self.workers: dict[str, Worker] = {p.name: Worker(p) for p in placements}
        self._by_fd: dict[int, Worker] = {}
        self._by_exit_fd: dict[int, Worker] = {}   # (adaptd.daemon.procwatch)
        self._next_job = 1
        self.on_change: Callable[[], None] | None = None   # poller registration changed
        self.on_down: Callable[[str], None] | None = None   # a placement's restart is held back
        # (placement, (dir, variant), message): a variant failed to load there (or killed its worker)
        self.on_load_failed: Callable[[str, tuple[str, str], str], None] | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        for worker in self.workers.values():
            self._spawn(worker)

    def _record_side_message(self, worker: Worker, verb: str, header: dict[str, Any]) -> tuple[str, str] | None:
        """A ``loaded`` or a load's ``fail``; returns the (dir, variant) of a failed load."""
        key = (header.get("dir"), header.get("variant"))
        worker.last_progress_ns = time.monotonic_ns()   # (a job waiting behind the load starts now)
        if key in worker.loading:
            worker.loading.remove(key)
        if verb == "loaded":
            worker.loaded[key] = int(header.get("memory_bytes", 0))
        elif verb == "fail" and header.get("job") is None and header.get("variant"):
            worker.failed_loads.add(key)
            return key
        return None

    def _spawn(self, worker: Worker) -> None:
        """Start the placement's worker process; raises OSError when it cannot (no descriptor, no
        process), leaving nothing of the try behind."""
        spec = {"cores": list(worker.placement.cores), "threads": worker.placement.threads,
                "runtime": worker.placement.runtime, "device": worker.placement.device,
                "placement": worker.placement.name, "nice": os.getpriority(os.PRIO_PROCESS, 0),   # the daemon's, as now
                **self.worker_options}
        channel, child_end = Channel.pair(SEND_TIMEOUT_S)
        proc, exit_watch = None, ChildExit()   # (it holds nothing before open)
        try:
            spec["fd"], spec["exit_fd"] = child_end.fileno(), exit_watch.open()
            proc = subprocess.Popen([sys.executable, "-m", "adaptd.daemon.worker_process", json.dumps(spec)],
                                    stdin=subprocess.DEVNULL, pass_fds=(child_end.fileno(), *exit_watch.child_fds))
            exit_fd = exit_watch.started(proc.pid)
        except BaseException:
            channel.close()
            exit_watch.close()
            if proc is not None:
                proc.kill()
                proc.wait()
            raise
        finally:
            child_end.close()
        if self.worker_options.get("sched_idle"):   # its start-up too: it took the cores from the first requests
            make_idle(proc.pid)
        worker.restart_at = worker.start_error = worker.condemned = None
        worker.proc, worker.channel, worker.exit_fd = proc, channel, exit_fd
        worker.ready, worker.started_at = False, time.time()
        worker.loaded.clear()
        worker.loading.clear()
        worker.pending_loads = list(worker.eager)
        self._by_fd[channel.fileno()] = worker
        self._by_exit_fd[exit_fd] = worker
        log.info("worker for %s started (pid %d)", worker.placement.name, proc.pid)

    def _restart(self, worker: Worker) -> bool:
        """Start the worker again while the daemon serves; a start that fails (descriptors or
        processes exhausted: a client flood, memory) is tried again ``START_RETRY_S`` later,
        the placement down meanwhile, rather than ending the daemon. Returns whether it started."""
        try:
            self._spawn(worker)
            return True
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != worker.start_error:   # (logged once while the same cause lasts)
                log.error("the worker for %s could not be started (%s); trying again every %g s",
                          worker.placement.name, error, START_RETRY_S)
            worker.proc, worker.start_error = None, error
            worker.restart_at = time.monotonic() + START_RETRY_S
            return False

    def _close(self, worker: Worker) -> None:
        if worker.channel is not None:
            self._by_fd.pop(worker.channel.fileno(), None)
            worker.channel.close()
            worker.channel = None
        if worker.exit_fd is not None:
            self._by_exit_fd.pop(worker.exit_fd, None)
            os.close(worker.exit_fd)
            worker.exit_fd = None

    def stop(self, timeout_s: float = 5.0) -> None:
        for w in self.workers.values():
            if w.proc is None or w.proc.poll() is not None:
                continue
            if w.sent:
                # Stopping with a job still running (drain timeout, second SIGTERM): its request
                # has been answered already, so the worker is not waited for.
                w.proc.kill()
            elif w.channel is not None:
                try:
                    w.channel.send("stop", {})
                except OSError:
                    pass
        deadline = time.monotonic() + timeout_s
        for w in self.workers.values():
            if w.proc is None:
                continue
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            self._close(w)

    # --- poller integration --------------------------------------------------------------
    def channel_fds(self) -> list[int]:
        return list(self._by_fd)

    def exit_fds(self) -> list[int]:
        """Descriptors that poll readable when their worker exits (:meth:`on_exit`)."""
        return list(self._by_exit_fd)

    # --- work ----------------------------------------------------------------------------
    def queue_length(self, placement: str) -> int:
        return len((w := self.workers[placement]).queue) + len(w.sent)

    def loading(self, placement: str) -> bool:
        """Whether a load waits or runs on the placement's worker (a job sent now waits behind it)."""
        return bool((w := self.workers[placement]).pending_loads or w.loading)

    def down_reason(self, placement: str) -> str | None:
        """Why ``placement`` takes no jobs now (its worker's restart is held back: a crash loop, or
        a start that failed), or None."""
        w = self.workers[placement]
        if w.restart_at is None:
            return None
        if w.start_error is not None:
            return (f"the worker for {placement} could not be started ({w.start_error}); it is tried again in "
                    f"{max(0.0, w.restart_at - time.monotonic()):.1f} s")
        return (f"the worker for {placement} died {w.early_deaths} times in a row soon after starting "
                f"({w.last_exit}); it restarts in {max(0.0, w.restart_at - time.monotonic()):.1f} s")

    def next_restart_s(self) -> float | None:
        """Seconds until the next held-back restart is due (None: none is)."""
        return next_restart_s(self.workers.values())

    def restart_due(self) -> None:
        """Start the workers whose held-back restart is due (the daemon's loop calls this)."""
        now = time.monotonic()
        started = False
        for w in self.workers.values():
            if w.restart_at is not None and now >= w.restart_at:
                started = self._restart(w) or started   # (one that fails stays down: it was already)
        if started and self.on_change:
            self.on_change()

    def latest_dispatch_ns(self) -> int | None:
        """When the most recently dispatched job still in flight was handed to its worker
        (``time.monotonic_ns()``), or None when no job is in flight."""
        return max((w.sent[-1].dispatched_ns for w in self.workers.values()
                    if w.sent and w.sent[-1].dispatched_ns is not None), default=None)

    def in_flight(self) -> bool:
        """Whether a worker holds a job (:meth:`latest_dispatch_ns` is not None), asked every
        round of the loop: a loop that stops at the first, not a generator's calls."""
        for w in self.workers.values():
            if w.sent and w.sent[-1].dispatched_ns is not None:
                return True
        return False

    def submit(self, placement: str, job: Job) -> bool:
        """Queue a job; False when the placement's queue is full (answer BUSY). The caller checks
        :meth:`down_reason` first: a placement that is down takes no jobs."""
        worker = self.workers[placement]
        if worker.n_waiting() >= self.queue_limit:
            return False
        assert worker.restart_at is None, f"{placement} is down"
        job.job_id = self._next_job
        self._next_job += 1
        worker.queue.append(job)
        self._dispatch(worker)
        return True

    def preload(self, placement: str, version_dir: str, variant: str, keep: bool = True) -> None:
        """Load a variant now (``keep``: and again after each restart), once."""
        worker, key = self.workers[placement], (version_dir, variant)
        known = key in worker.eager or key in worker.pending_loads or key in worker.loading
        if keep and key not in worker.eager:   # a background load in flight may become an eager one
            worker.eager.append(key)
        if known:
            return
        worker.pending_loads.append(key)
        self._send_loads(worker)

    def _send_loads(self, worker: Worker) -> None:
        if not worker.ready or worker.channel is None:
            return
        while worker.pending_loads:
            d, v = worker.pending_loads.pop(0)
            if self._send(worker, "load", {"dir": d, "variant": v}):
                worker.loading.append((d, v))

    def unload_except(self, dirs: set[str]) -> None:
        for worker in self.workers.values():
            for key in [k for k in worker.loaded if k[0] not in dirs]:
                del worker.loaded[key]
            worker.eager = [k for k in worker.eager if k[0] in dirs]
            if worker.ready and worker.channel is not None:
                self._send(worker, "unload_except", {"dirs": sorted(dirs)})

    def broadcast(self, verb: str, header: dict[str, Any]) -> None:
        """Send a message to every ready worker (one that is starting has nothing to forget)."""
        for worker in self.workers.values():
            if worker.ready and worker.channel is not None:
                self._send(worker, verb, header)

    def _send(self, worker: Worker, verb: str, header: dict[str, Any], bodies: Any = ()) -> bool:
        """Send on a worker's channel; False when the channel failed. Then the worker is dying
        (its exit descriptor reports the death) or wedged (it read nothing for SEND_TIMEOUT_S: it is
        killed, so that reports it too)."""
        try:
            worker.channel.send(verb, header, bodies)
            return True
        except OSError as exc:
            log.warning("worker for %s: cannot send %s (%s); it is being replaced", worker.placement.name, verb,
                        exc.strerror or type(exc).__name__)
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.kill()
            return False

    def _dispatch(self, worker: Worker) -> None:
        """Send queued jobs while the worker's channel has room (module contract)."""
        queue, sent = worker.queue, worker.sent
        while queue and worker.ready and worker.channel is not None and len(sent) < PIPELINE_DEPTH:
            job = queue[0]
            if sent and sum(memoryview(f).nbytes for f in job.input_frames) > PIPELINE_MAX_BYTES:
                return   # it waits for the running job's result
            queue.popleft()
            job.dispatched_ns = time.monotonic_ns()
            sent.append(job)
            header = {"job": job.job_id, "dir": job.version_dir, "variant": job.variant,
                      "inputs": job.input_headers}
            if job.outputs_to is not None:
                header["outputs_to"] = job.outputs_to
            if not self._send(worker, "run", header, job.input_frames):
                # It never reached a worker that could run it: it waits for the new one, first in
                # line, and nothing more is sent to this one (its death restarts it).
                sent.pop()
                queue.appendleft(job)
                worker.ready = False
                return

    def on_message(self, fd: int) -> Outcome | None:
        """Read one message from a worker's channel; returns a finished job's outcome, if any.

        A closed channel means the worker is dying; its exit descriptor reports the death (on_exit)."""
        worker = self._by_fd.get(fd)
        if worker is None or worker.channel is None:
            return None
        try:
            message = worker.channel.recv_ready()
        except ChannelError as exc:
            self._garbled(worker, exc)
            return None
        except (ConnectionError, OSError):
            self._stop_reading(fd)   # on_exit cleans up
            return None
        if message is None:   # the rest of it has not come yet
            return None
        verb, header, bodies = message
        if verb == "ready":
            worker.ready = True
            worker.rss_bytes = header.get("rss_bytes")
            self._send_loads(worker)
            self._dispatch(worker)
            return None
        if verb == "loaded":
            self._record_side_message(worker, verb, header)
            worker.rss_bytes = header.get("rss_bytes", worker.rss_bytes)
            worker.early_deaths = 0   # it came up and did real work
            return None
        job = worker.inflight
        if verb in ("done", "fail") and job is not None and header.get("job") == job.job_id:
            worker.sent.popleft()
            worker.last_progress_ns = finished_ns = time.monotonic_ns()   # (the job behind it starts now)
            if verb == "done":
                worker.early_deaths = 0
                if "memory_bytes" in header:
                    worker.loaded[(job.version_dir, job.variant)] = int(header["memory_bytes"])
            outcome = Outcome(job, header, bodies, verb == "done", finished_ns)
            self._dispatch(worker)
            return outcome
        if verb == "fail":
            failed = self._record_side_message(worker, verb, header)
            log.warning("worker %s: %s", worker.placement.name, header.get("message"))
            if failed is not None and self.on_load_failed:
                self.on_load_failed(worker.placement.name, failed, str(header.get("message")))
        return None

    def kill_stalled(self, now: float) -> None:
        """Kill the workers stopped in the middle of a message for ``SEND_TIMEOUT_S``, and those
        running one job for ``job_timeout_s`` (each limit ten times as long under
        ``SCHED_IDLE``; ``now``: ``time.monotonic()``); the daemon's housekeeping asks once a
        second."""
        slack = 10 if self.worker_options.get("sched_idle") else 1
        for worker in self.workers.values():
            if worker.condemned is not None:
                continue
            partial_at = worker.channel.partial_at if worker.channel is not None else None
            if partial_at is not None:   # (a reply half read is judged by the stall's limit alone)
                if now - partial_at > SEND_TIMEOUT_S * slack:
                    self._condemn(worker, f"stopped in the middle of a message for {now - partial_at:.0f} s",
                                  crash=False)
            elif self.job_timeout_s and worker.sent and worker.channel is not None:
                running_s = worker.running_s(int(now * 1e9))
                if running_s > self.job_timeout_s * slack and not readable_now(worker.channel.fileno()):
                    # A load ahead of the job is what hangs while one is unanswered: not the job's crash.
                    what = f"loaded {worker.loading[0][1]}" if worker.loading else "ran one job"
                    self._condemn(worker, f"{what} for {running_s:.0f} s (placements.job_timeout_s = "
                                          f"{self.job_timeout_s:g})", crash=not worker.loading)

    def _condemn(self, worker: Worker, why: str, *, crash: bool) -> None:
        """A worker whose channel cannot be trusted: it is not read again, is sent nothing more,
        and is killed; its exit descriptor reports the death (:meth:`on_exit`), a crash of the variant it
        ran when ``crash``."""
        log.error("worker for %s (pid %s) %s; killing it", worker.placement.name,
                  worker.proc.pid if worker.proc else "?", why)
        worker.condemned, worker.condemned_crash, worker.ready = why, crash, False
        if worker.channel is not None:
            self._stop_reading(worker.channel.fileno())
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.kill()

    def _garbled(self, worker: Worker, exc: ChannelError) -> None:
        self._condemn(worker, f"sent a message that does not read: {exc}", crash=True)

    def _stop_reading(self, fd: int) -> None:
        """The channel ``fd`` is not polled again (its worker died or is being killed)."""
        self._by_fd.pop(fd, None)
        if self.on_change:
            self.on_change()

    def on_exit(self, exit_fd: int) -> list[Outcome]:
        """A worker died: restart it (at once, or after a pause when it keeps dying soon after
        starting); return the job it was running and, when the restart is held back, the jobs
        queued for it, each as a failure."""
        worker = self._by_exit_fd.get(exit_fd)
        if worker is None:
            return []
        code = reap(worker.proc) if worker.proc else None
        pid = worker.proc.pid if worker.proc else "?"
        lived_s = time.time() - worker.started_at
        running, loading = worker.inflight, list(worker.loading)
        behind = list(islice(worker.sent, 1, None))   # sent, never started: they run on the new worker
        worker.sent.clear()
        worker.queue.extendleft(reversed(behind))
        worker.last_exit = (f"exit code {code} after {lived_s:.1f} s" if worker.condemned is None
                            else f"killed after {lived_s:.1f} s: it {worker.condemned}")
        self._close(worker)
        worker.ready = False
        worker.loaded.clear()   # (what the dead one held: none of it is loaded while the placement is down)
        worker.loading.clear()
        worker.restarts += 1
        worker.early_deaths = worker.early_deaths + 1 if lived_s < EARLY_DEATH_S else 0
        pause_s = RESTART_BACKOFF_S[min(max(worker.early_deaths - 1, 0), len(RESTART_BACKOFF_S) - 1)]
        log.error("worker for %s (pid %s) died with code %s after %.1f s; restarting%s",
                  worker.placement.name, pid, code, lived_s, f" in {pause_s:g} s" if pause_s else "")
        # killed from outside (an operator, a test): not the variant's doing; killed for what it sent: a crash
        crashed = code not in EXTERNAL_DEATHS if worker.condemned is None else worker.condemned_crash
        if running is None and loading and crashed and self.on_load_failed:   # it died loading a variant
            self.on_load_failed(worker.placement.name, loading[0], f"the worker died ({worker.last_exit}) "
                                "while loading it")
        # Variants the dead worker had loaded eagerly are loaded again by the new one.
        if pause_s:
            worker.restart_at = time.monotonic() + pause_s
            worker.proc = None
        down = bool(pause_s) or not self._restart(worker)   # (a failed start is tried again later)
        held = [running] if running is not None else []
        if down:   # the queue would wait out the pause: hand it back, the placement down meanwhile
            held += list(worker.queue)
            worker.queue.clear()
            if self.on_down:
                self.on_down(worker.placement.name)
        if self.on_change:
            self.on_change()
        outcomes = []
        for job in held:
            what = "while running this request" if job is running else "with this request queued for it"
            outcomes.append(Outcome(job, {"job": job.job_id, "code": "WORKER_FAILED", "died": job is running and crashed,
                                          "message": f"the worker for {worker.placement.name} died ({worker.last_exit}) "
                                                     f"{what}; it is being restarted"},
                                    [], False, time.monotonic_ns()))
        return outcomes

    def snapshots(self) -> list[dict[str, Any]]:
        """Each placement's state, as ``placements`` shows it (PROTOCOL.md §7.2)."""
        return [w.snapshot() for w in self.workers.values()]

    def loaded_bytes(self, placement: str, version_dir: str, variant: str) -> int | None:
        """The memory a loaded variant took on its placement's worker, or None when not loaded."""
        return self.workers[placement].loaded.get((version_dir, variant))

    def workers_rss_bytes(self) -> int:
        import psutil

        total = 0
        for w in self.workers.values():
            if w.proc and w.proc.poll() is None:
                try:
                    total += psutil.Process(w.proc.pid).memory_info().rss
                except psutil.Error:
                    pass
        return total
