"""Worker supervision: one process per placement, a bounded queue each, restart on death.

Contract
--------
* Used from the daemon's main thread only (channels have one reader and one writer); nothing here
  blocks except :meth:`WorkerPool.start`'s wait for the workers' ``ready`` when asked to.
* Each placement has exactly one worker process, pinned to the placement's cores, reached over
  a :class:`~adaptd.daemon.channel.Channel` (a socketpair private to that incarnation of the
  worker; the daemon polls its file descriptor). At most one job is
  in flight per worker; the rest wait in the placement's queue (bounded by ``queue_limit``:
  :meth:`WorkerPool.submit` refuses beyond it, and the daemon answers ``BUSY``).
* A worker that dies (detected through its pidfd, never by polling timeouts) is restarted; the
  job it was running is handed back through :meth:`WorkerPool.on_exit` so the daemon can answer
  ``WORKER_FAILED``: no request is silently dropped. Queued jobs stay queued and run on the new
  worker.
* Times are ``time.monotonic_ns()``.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from adaptd.daemon.channel import Channel
from adaptd.daemon.placements import Placement

log = logging.getLogger("adaptd.workers")


@dataclass
class Job:
    """One execution: a request bound to an arm, waiting for or running on a worker."""

    request_id: str
    version_dir: str
    variant: str
    input_headers: list[dict[str, Any]]
    input_frames: list[Any]
    received_ns: int
    context: Any                      # the daemon's per-request state, returned untouched
    dispatched_ns: int | None = None
    job_id: int = 0
    outputs_to: dict[str, Any] | None = None   # {region, offset, size}: write outputs there (PROTOCOL.md §11)


@dataclass
class Outcome:
    job: Job
    header: dict[str, Any]            # the worker's ``done`` header, or ``fail`` header
    bodies: list[Any]
    ok: bool
    finished_ns: int


@dataclass
class Worker:
    placement: Placement
    queue: deque[Job] = field(default_factory=deque)
    proc: subprocess.Popen | None = None
    channel: Channel | None = None
    pidfd: int | None = None
    ready: bool = False
    inflight: Job | None = None
    restarts: int = 0
    started_at: float = 0.0
    loaded: dict[tuple[str, str], int] = field(default_factory=dict)   # (dir, variant) -> memory bytes
    rss_bytes: int | None = None
    pending_loads: list[tuple[str, str]] = field(default_factory=list)
    eager: list[tuple[str, str]] = field(default_factory=list)        # loaded again after a restart
    failed_loads: set[tuple[str, str]] = field(default_factory=set)

    @property
    def busy(self) -> bool:
        return self.inflight is not None

    def snapshot(self) -> dict[str, Any]:
        return {**self.placement.to_dict(), "queued": len(self.queue), "busy": self.busy,
                "ready": self.ready, "worker_pid": self.proc.pid if self.proc else None,
                "restarts": self.restarts}


class WorkerPool:
    def __init__(self, placements: Iterable[Placement], queue_limit: int) -> None:
        self.queue_limit = queue_limit
        self.workers: dict[str, Worker] = {p.name: Worker(p) for p in placements}
        self._by_fd: dict[int, Worker] = {}
        self._by_pidfd: dict[int, Worker] = {}
        self._next_job = 1
        self.on_change: Callable[[], None] | None = None   # poller registration changed

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        for worker in self.workers.values():
            self._spawn(worker)

    def wait_ready(self, timeout_s: float) -> list[str]:
        """Block until every worker said ``ready`` (used at start-up only); return the laggards."""
        deadline = time.monotonic() + timeout_s
        poller = select.poll()
        for fd in self._by_fd:
            poller.register(fd, select.POLLIN)
        while any(not w.ready for w in self.workers.values()):
            left_ms = (deadline - time.monotonic()) * 1e3
            if left_ms <= 0:
                break
            for fd, _ in poller.poll(left_ms):
                self.on_message(fd)
            for w in self.workers.values():
                if w.proc and w.proc.poll() is not None and not w.ready:
                    raise RuntimeError(f"worker for {w.placement.name} exited with code {w.proc.returncode} "
                                       "during start-up")
        return [w.placement.name for w in self.workers.values() if not w.ready]

    def wait_loaded(self, timeout_s: float) -> list[str]:
        """Block until every eager load sent so far is answered (start-up only); return laggards."""
        deadline = time.monotonic() + timeout_s

        def waiting() -> list[Worker]:
            return [w for w in self.workers.values()
                    if w.pending_loads or any(key not in w.loaded and key not in w.failed_loads for key in w.eager)]

        poller = select.poll()
        for fd in self._by_fd:
            poller.register(fd, select.POLLIN)
        while waiting():
            left_ms = (deadline - time.monotonic()) * 1e3
            if left_ms <= 0:
                break
            for fd, _ in poller.poll(left_ms):
                self.on_message(fd)
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
            if not w.ready or w.channel is None or w.inflight is not None or w.queue:
                continue
            rtts = []
            for i in range(rounds):
                t0 = time.perf_counter_ns()
                w.channel.send("ping", {"n": i})
                while True:   # loads answered meanwhile are recorded as usual
                    verb, header, _ = w.channel.recv()
                    if verb == "pong" and header.get("n") == i:
                        break
                    self._record_side_message(w, verb, header)
                rtts.append((time.perf_counter_ns() - t0) / 1e6)
            out[name] = min(rtts)
        return out

    def _record_side_message(self, worker: Worker, verb: str, header: dict[str, Any]) -> None:
        if verb == "loaded":
            worker.loaded[(header["dir"], header["variant"])] = int(header.get("memory_bytes", 0))
        elif verb == "fail" and header.get("job") is None and header.get("variant"):
            worker.failed_loads.add((header.get("dir"), header.get("variant")))

    def _spawn(self, worker: Worker) -> None:
        channel, child_end = Channel.pair()
        spec = {"fd": child_end.fileno(), "cores": list(worker.placement.cores),
                "threads": worker.placement.threads, "runtime": worker.placement.runtime,
                "device": worker.placement.device, "placement": worker.placement.name}
        try:
            proc = subprocess.Popen([sys.executable, "-m", "adaptd.daemon.worker", json.dumps(spec)],
                                    stdin=subprocess.DEVNULL, pass_fds=(child_end.fileno(),))
        finally:
            child_end.close()
        worker.proc, worker.channel = proc, channel
        worker.pidfd = os.pidfd_open(proc.pid)
        worker.ready = False
        worker.started_at = time.time()
        worker.loaded.clear()
        worker.pending_loads = list(worker.eager)
        self._by_fd[channel.fileno()] = worker
        self._by_pidfd[worker.pidfd] = worker
        log.info("worker for %s started (pid %d)", worker.placement.name, proc.pid)

    def _close(self, worker: Worker) -> None:
        if worker.channel is not None:
            self._by_fd.pop(worker.channel.fileno(), None)
            worker.channel.close()
            worker.channel = None
        if worker.pidfd is not None:
            self._by_pidfd.pop(worker.pidfd, None)
            os.close(worker.pidfd)
            worker.pidfd = None

    def stop(self, timeout_s: float = 5.0) -> None:
        for w in self.workers.values():
            if w.proc is None or w.proc.poll() is not None:
                continue
            if w.inflight is not None:
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

    def pidfds(self) -> list[int]:
        return list(self._by_pidfd)

    # --- work ----------------------------------------------------------------------------
    def queue_length(self, placement: str) -> int:
        w = self.workers[placement]
        return len(w.queue) + (1 if w.inflight else 0)

    def latest_dispatch_ns(self) -> int | None:
        """When the most recently dispatched job still in flight was handed to its worker
        (``time.monotonic_ns()``), or None when no job is in flight."""
        latest = None
        for w in self.workers.values():
            job = w.inflight
            if job is not None and job.dispatched_ns is not None and (latest is None or job.dispatched_ns > latest):
                latest = job.dispatched_ns
        return latest

    def submit(self, placement: str, job: Job) -> bool:
        """Queue a job; False when the placement's queue is full (answer BUSY)."""
        worker = self.workers[placement]
        if len(worker.queue) >= self.queue_limit:
            return False
        job.job_id = self._next_job
        self._next_job += 1
        worker.queue.append(job)
        self._dispatch(worker)
        return True

    def preload(self, placement: str, version_dir: str, variant: str) -> None:
        worker = self.workers[placement]
        if (version_dir, variant) in worker.eager:
            return
        worker.eager.append((version_dir, variant))
        worker.pending_loads.append((version_dir, variant))
        self._send_loads(worker)

    def _send_loads(self, worker: Worker) -> None:
        if not worker.ready or worker.channel is None:
            return
        while worker.pending_loads:
            d, v = worker.pending_loads.pop(0)
            worker.channel.send("load", {"dir": d, "variant": v})

    def unload_except(self, dirs: set[str]) -> None:
        for worker in self.workers.values():
            for key in [k for k in worker.loaded if k[0] not in dirs]:
                del worker.loaded[key]
            worker.eager = [k for k in worker.eager if k[0] in dirs]
            if worker.ready and worker.channel is not None:
                worker.channel.send("unload_except", {"dirs": sorted(dirs)})

    def broadcast(self, verb: str, header: dict[str, Any]) -> None:
        """Send a message to every ready worker (one that is starting has nothing to forget)."""
        for worker in self.workers.values():
            if worker.ready and worker.channel is not None:
                try:
                    worker.channel.send(verb, header)
                except OSError:   # dying: its pidfd reports it
                    pass

    def _dispatch(self, worker: Worker) -> None:
        if worker.inflight is not None or not worker.ready or not worker.queue or worker.channel is None:
            return
        job = worker.queue.popleft()
        job.dispatched_ns = time.monotonic_ns()
        worker.inflight = job
        header = {"job": job.job_id, "dir": job.version_dir, "variant": job.variant,
                  "inputs": job.input_headers}
        if job.outputs_to is not None:
            header["outputs_to"] = job.outputs_to
        worker.channel.send("run", header, job.input_frames)

    def on_message(self, fd: int) -> Outcome | None:
        """Read one message from a worker's channel; returns a finished job's outcome, if any.

        A closed channel means the worker is dying; its pidfd reports the death (on_exit)."""
        worker = self._by_fd.get(fd)
        if worker is None or worker.channel is None:
            return None
        try:
            verb, header, bodies = worker.channel.recv()
        except (ConnectionError, OSError):
            self._by_fd.pop(fd, None)   # stop polling it; on_exit cleans up
            if self.on_change:
                self.on_change()
            return None
        if verb == "ready":
            worker.ready = True
            worker.rss_bytes = header.get("rss_bytes")
            self._send_loads(worker)
            self._dispatch(worker)
            return None
        if verb == "loaded":
            self._record_side_message(worker, verb, header)
            worker.rss_bytes = header.get("rss_bytes", worker.rss_bytes)
            return None
        job = worker.inflight
        if verb in ("done", "fail") and job is not None and header.get("job") == job.job_id:
            worker.inflight = None
            if verb == "done" and "memory_bytes" in header:
                worker.loaded[(job.version_dir, job.variant)] = int(header["memory_bytes"])
            outcome = Outcome(job, header, bodies, verb == "done", time.monotonic_ns())
            self._dispatch(worker)
            return outcome
        if verb == "fail":
            self._record_side_message(worker, verb, header)
            log.warning("worker %s: %s", worker.placement.name, header.get("message"))
        return None

    def on_exit(self, pidfd: int) -> Outcome | None:
        """A worker died: restart it; return its in-flight job as a failure."""
        worker = self._by_pidfd.get(pidfd)
        if worker is None:
            return None
        code = worker.proc.wait() if worker.proc else None
        job, worker.inflight = worker.inflight, None
        log.error("worker for %s (pid %s) died with code %s; restarting",
                  worker.placement.name, worker.proc.pid if worker.proc else "?", code)
        self._close(worker)
        worker.restarts += 1
        # Variants the dead worker had loaded eagerly are loaded again by the new one.
        self._spawn(worker)
        if self.on_change:
            self.on_change()
        if job is None:
            return None
        return Outcome(job, {"job": job.job_id, "code": "WORKER_FAILED",
                             "message": f"the worker for {worker.placement.name} died (exit code {code}) "
                                        "while running this request; it has been restarted"},
                       [], False, time.monotonic_ns())

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
