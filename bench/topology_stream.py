"""The Unix-stream skeletons of ``bench/bench_topology.py``, and what its skeletons share.

Each server process serves one skeleton over a Unix stream socket (:mod:`adaptd.wire.stream`'s
framing, the daemon's local stream): one receiving thread polls the listener and its
connections. Kinds (``STREAM_KINDS``):

* ``echo, unix stream``: each request returned unrun.
* ``echo, ZMTP in Python``: the same, the server speaking ZMTP (:mod:`adaptd.wire.zmtp`, the
  daemon's own ipc engine) to a libzmq ``DEALER`` on an ``ipc://`` path: ZeroMQ's I/O thread at
  the client's end only.
* ``inline, unix stream``: the receiving thread runs the interpreter itself.
* ``thread, via receiver, unix stream``: the daemon's topology. The receiver hands the job to a
  placement's thread (a condition, as ``adaptd.daemon.placement_threads`` does), which runs it
  and hands the outputs back through a pipe; the receiver replies. The receiver sits on the
  placement's cores, where the daemon's main thread goes while one client's jobs go to an idle
  placement ("the front end follows its work").
* ``thread, direct, unix stream``: the same, but the placement's thread sends the reply itself
  (the "direct return" candidate). In either kind one thread alone sends replies.

A request whose input frame is ``RESIDENT`` is run on an input the server holds (``--resident``:
the floor of shared-memory input). An empty input frame asks for the server's counts, put on
``stats_q`` as (served, process CPU s, interpreter's own run s).
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from adaptd.wire import zmtp
from adaptd.wire.stream import MessageReader, send_message

RESIDENT = b"r"   # a request's input frame meaning "run on the input you hold" (--resident)
THREAD_DIRECT, THREAD_VIA_RECEIVER = "thread, direct, unix stream", "thread, via receiver, unix stream"
ZMTP_ECHO = "echo, ZMTP in Python"
STREAM_KINDS = ("echo, unix stream", ZMTP_ECHO, "inline, unix stream", THREAD_DIRECT, THREAD_VIA_RECEIVER)


def load(version_dir: str, threads: int):
    """The version's float32 variant, loaded (LiteRT)."""
    from adaptd.variants.manifest import load_manifest
    from adaptd.variants.runtime import load_variant

    record = next(v for v in load_manifest(Path(version_dir)).variants if v.name == "float32")
    return load_variant(Path(version_dir), record, num_threads=threads)


def cpu_s() -> float:
    return time.process_time()


class Runner:
    """One variant run on a request's input frame, its interpreter time summed."""

    def __init__(self, version_dir: str, threads: int, shape) -> None:
        self.loaded = load(version_dir, threads)
        self.shape = shape
        self.resident = np.random.default_rng(0).random(shape, dtype=np.float32)
        self.invoke_ns = 0

    def reply(self, frames: list) -> list:
        body = frames[-1]
        x = self.resident if bytes(body[:2]) == RESIDENT else np.frombuffer(body, np.float32).reshape(self.shape)
        t0 = time.perf_counter_ns()
        outs = self.loaded.run([x])
        self.invoke_ns += time.perf_counter_ns() - t0
        return [*frames[:-1], *(np.ascontiguousarray(o, np.float32) for o in outs)]


class PlacementThread:
    """A placement's thread: jobs handed over under a condition, the replies sent by the thread
    itself (``direct``) or handed back through a pipe for :meth:`reply_results`."""

    def __init__(self, runner: Runner, direct: bool) -> None:
        self.runner, self.direct = runner, direct
        self.jobs: deque = deque()
        self.results: deque = deque()
        self.job_ready = threading.Condition(threading.Lock())
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.served = 0   # replies sent by this thread (direct)
        threading.Thread(target=self._serve, daemon=True).start()

    def submit(self, conn: socket.socket, frames: list) -> None:
        with self.job_ready:
            self.jobs.append((conn, frames))
            self.job_ready.notify()

    def reply_results(self) -> int:
        """The receiver's side: send the replies handed back; returns how many."""
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass
        n = 0
        while self.results:
            conn, reply = self.results.popleft()
            send_message(conn, reply)
            n += 1
        return n

    def _serve(self) -> None:
        while True:
            with self.job_ready:
                while not self.jobs:
                    self.job_ready.wait()
                conn, frames = self.jobs.popleft()
            reply = self.runner.reply(frames)
            if self.direct:
                self.served += 1   # (before the send: the client's next message may ask for the count)
                send_message(conn, reply)   # (the only thread that sends, in this mode)
            else:
                self.results.append((conn, reply))
                os.write(self.wake_w, b"x")


def serve_stream(kind: str, path: str, ready, stats_q, version_dir: str, threads: int, shape,
                 cores: tuple[int, ...]) -> None:
    """Serve one of ``STREAM_KINDS`` on ``path`` until killed (see the module's docstring)."""
    placement = None
    if kind in (THREAD_DIRECT, THREAD_VIA_RECEIVER):
        os.sched_setaffinity(0, cores)   # (the placement's thread and its interpreter inherit them)
        placement = PlacementThread(Runner(version_dir, threads, shape), kind == THREAD_DIRECT)
    runner = Runner(version_dir, threads, shape) if kind.startswith("inline") else None
    served = 0
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    if placement is not None:
        poller.register(placement.wake_r, select.POLLIN)
    conns: dict[int, tuple[socket.socket, MessageReader | zmtp.ZmtpReader]] = {}
    ready.set()
    while True:
        for fd, _ in poller.poll():
            if placement is not None and fd == placement.wake_r:
                served += placement.reply_results()
                continue
            if fd == listener.fileno():
                conn, _ = listener.accept()
                if kind == ZMTP_ECHO:
                    conn.sendall(zmtp.handshake())
                conns[conn.fileno()] = (conn, zmtp.ZmtpReader(1 << 30) if kind == ZMTP_ECHO else MessageReader(1 << 30))
                poller.register(conn, select.POLLIN)
                continue
            conn, reader = conns[fd]
            try:
                messages = reader.read_from(conn)
            except ConnectionError:
                poller.unregister(fd)
                del conns[fd]
                conn.close()
                continue
            for frames in messages:
                if len(frames[-1]) == 0:   # the client's "report" message
                    busy = placement.runner if placement is not None else runner
                    stats_q.put((served + (placement.served if placement is not None else 0), cpu_s(),
                                 busy.invoke_ns / 1e9 if busy is not None else 0.0))
                elif placement is not None:
                    placement.submit(conn, frames)
                elif kind == ZMTP_ECHO:
                    conn.sendmsg(zmtp.framed(frames)[0])
                    served += 1
                else:
                    send_message(conn, runner.reply(frames) if runner is not None else frames)
                    served += 1
