"""Worker supervision: one process per placement, a bounded queue each, restart on death.

Contract
--------
* Used from the daemon's main thread only (ZeroMQ sockets are not thread-safe); nothing here
  blocks except :meth:`WorkerPool.start`'s wait for the workers' ``ready`` when asked to.
* Each placement has exactly one worker process, pinned to the placement's cores, reached over
  a PAIR socket on an ipc endpoint private to that incarnation of the worker. At most one job is
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
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zmq

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
    sock: zmq.Socket | None = None
    pidfd: int | None = None
    endpoint: str = ""
    ready: bool = False
    inflight: Job | None = None
    restarts: int = 0
    started_at: float = 0.0
    loaded: dict[tuple[str, str], int] = field(default_factory=dict)   # (dir, variant) -> memory bytes
    rss_bytes: int | None = None
    pending_loads: list[tuple[str, str]] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return self.inflight is not None

    def snapshot(self) -> dict[str, Any]:
        return {**self.placement.to_dict(), "queued": len(self.queue), "busy": self.busy,
                "ready": self.ready, "worker_pid": self.proc.pid if self.proc else None,
                "restarts": self.restarts}


def _pack(header: dict[str, Any]) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


class WorkerPool:
    def __init__(self, placements: Iterable[Placement], context: zmq.Context, runtime_dir: Path,
                 queue_limit: int) -> None:
        self.context = context
        self.runtime_dir = runtime_dir
        self.queue_limit = queue_limit
        self.workers: dict[str, Worker] = {p.name: Worker(p) for p in placements}
        self._by_socket: dict[zmq.Socket, Worker] = {}
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
        poller = zmq.Poller()
        for w in self.workers.values():
            poller.register(w.sock, zmq.POLLIN)
        while any(not w.ready for w in self.workers.values()):
            left_ms = (deadline - time.monotonic()) * 1e3
            if left_ms <= 0:
                break
            for sock, _ in poller.poll(left_ms):
                self.on_message(sock)
            for w in self.workers.values():
                if w.proc and w.proc.poll() is not None and not w.ready:
                    raise RuntimeError(f"worker for {w.placement.name} exited with code {w.proc.returncode} "
                                       "during start-up")
        return [w.placement.name for w in self.workers.values() if not w.ready]

    def _spawn(self, worker: Worker) -> None:
        incarnation = worker.restarts
        safe = worker.placement.name.replace(":", "_").replace(",", "_")
        path = self.runtime_dir / f"worker-{os.getpid()}-{safe}-{incarnation}.sock"
        sock = self.context.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(f"ipc://{path}")
        spec = {"endpoint": f"ipc://{path}", "cores": list(worker.placement.cores),
                "threads": worker.placement.threads, "runtime": worker.placement.runtime,
                "device": worker.placement.device, "placement": worker.placement.name}
        proc = subprocess.Popen([sys.executable, "-m", "adaptd.daemon.worker", json.dumps(spec)],
                                stdin=subprocess.DEVNULL, close_fds=True)
        worker.proc, worker.sock, worker.endpoint = proc, sock, f"ipc://{path}"
        worker.pidfd = os.pidfd_open(proc.pid)
        worker.ready = False
        worker.started_at = time.time()
        worker.loaded.clear()
        self._by_socket[sock] = worker
        self._by_pidfd[worker.pidfd] = worker
        log.info("worker for %s started (pid %d)", worker.placement.name, proc.pid)

    def _close(self, worker: Worker) -> None:
        if worker.sock is not None:
            self._by_socket.pop(worker.sock, None)
            worker.sock.close(linger=0)
            worker.sock = None
            try:
                os.unlink(worker.endpoint.removeprefix("ipc://"))
            except OSError:
                pass
        if worker.pidfd is not None:
            self._by_pidfd.pop(worker.pidfd, None)
            os.close(worker.pidfd)
            worker.pidfd = None

    def stop(self, timeout_s: float = 5.0) -> None:
        for w in self.workers.values():
            if w.sock is not None and w.proc and w.proc.poll() is None:
                try:
                    w.sock.send_multipart([b"stop", _pack({})], flags=zmq.NOBLOCK)
                except zmq.ZMQError:
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
    def sockets(self) -> list[zmq.Socket]:
        return list(self._by_socket)

    def pidfds(self) -> list[int]:
        return list(self._by_pidfd)

    # --- work ----------------------------------------------------------------------------
    def queue_length(self, placement: str) -> int:
        w = self.workers[placement]
        return len(w.queue) + (1 if w.inflight else 0)

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
        worker.pending_loads.append((version_dir, variant))
        self._send_loads(worker)

    def _send_loads(self, worker: Worker) -> None:
        if not worker.ready or worker.sock is None:
            return
        while worker.pending_loads:
            d, v = worker.pending_loads.pop(0)
            worker.sock.send_multipart([b"load", _pack({"dir": d, "variant": v})])

    def unload_except(self, dirs: set[str]) -> None:
        for worker in self.workers.values():
            for key in [k for k in worker.loaded if k[0] not in dirs]:
                del worker.loaded[key]
            if worker.ready and worker.sock is not None:
                worker.sock.send_multipart([b"unload_except", _pack({"dirs": sorted(dirs)})])

    def _dispatch(self, worker: Worker) -> None:
        if worker.inflight is not None or not worker.ready or not worker.queue or worker.sock is None:
            return
        job = worker.queue.popleft()
        job.dispatched_ns = time.monotonic_ns()
        worker.inflight = job
        header = {"job": job.job_id, "dir": job.version_dir, "variant": job.variant,
                  "inputs": job.input_headers}
        worker.sock.send_multipart([b"run", _pack(header), *job.input_frames], copy=False)

    def on_message(self, sock: zmq.Socket) -> Outcome | None:
        """Handle one message from a worker; returns a finished job's outcome, if any."""
        worker = self._by_socket.get(sock)
        if worker is None:
            return None
        frames = sock.recv_multipart(copy=False)
        verb = frames[0].bytes
        header = msgpack.unpackb(frames[1].buffer, raw=False)
        if verb == b"ready":
            worker.ready = True
            worker.rss_bytes = header.get("rss_bytes")
            self._send_loads(worker)
            self._dispatch(worker)
            return None
        if verb == b"loaded":
            worker.loaded[(header["dir"], header["variant"])] = int(header.get("memory_bytes", 0))
            worker.rss_bytes = header.get("rss_bytes", worker.rss_bytes)
            return None
        job = worker.inflight
        if verb in (b"done", b"fail") and job is not None and header.get("job") == job.job_id:
            worker.inflight = None
            if verb == b"done" and "memory_bytes" in header:
                worker.loaded[(job.version_dir, job.variant)] = int(header["memory_bytes"])
            outcome = Outcome(job, header, list(frames[2:]), verb == b"done", time.monotonic_ns())
            self._dispatch(worker)
            return outcome
        if verb == b"fail":
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

    def idle(self) -> bool:
        return all(w.inflight is None and not w.queue for w in self.workers.values())

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
