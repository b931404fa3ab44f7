"""A benchmark client's connection to a server, by endpoint: a ZeroMQ DEALER or the local stream.

Both send and receive a message's frames as a DEALER does (the empty delimiter first), so one
client loop measures either transport: ``unix://PATH`` is ADPT/1's local stream (PROTOCOL.md
§2.3, :mod:`adaptd.wire.stream`), anything else a ZeroMQ endpoint. Blocking; one thread. :func:`register_region` and
:func:`unregister_region`: a shared-memory region (PROTOCOL.md §11) for a client's inputs.
:func:`pinned_requests`: the tiny model's requests one after another, as the counting benchmarks
send them.
"""

from __future__ import annotations

import itertools
import mmap
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from adaptd.wire import protocol as proto
from adaptd.wire.frames import recv_frames, send_frames
from adaptd.wire.stream import MessageReader, send_message, widen_send_buffer

STREAM_SCHEME = "unix://"


class ZmqDealer:
    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, frames: list[Any]) -> None:
        send_frames(self.sock, frames)

    def recv(self) -> list[Any]:
        return recv_frames(self.sock)

    def close(self) -> None:
        self.sock.close(0)


class StreamDealer:
    def __init__(self, endpoint: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        widen_send_buffer(self.sock)   # as the client library does
        self.sock.connect(endpoint[len(STREAM_SCHEME):] if endpoint.startswith(STREAM_SCHEME) else endpoint)
        self.reader = MessageReader(1 << 30)
        self.ready: deque[list[Any]] = deque()

    def send(self, frames: list[Any]) -> None:
        send_message(self.sock, frames[1:])   # no delimiter on a stream

    def recv(self) -> list[Any]:
        while not self.ready:
            self.ready.extend([b"", *m] for m in self.reader.read_from(self.sock))
        return self.ready.popleft()

    def close(self) -> None:
        self.sock.close()


def connect(endpoint: str) -> ZmqDealer | StreamDealer:
    return StreamDealer(endpoint) if endpoint.startswith(STREAM_SCHEME) else ZmqDealer(endpoint)


def register_region(conn: ZmqDealer | StreamDealer, nbytes: int) -> tuple[mmap.mmap, str]:
    """A region of ``nbytes`` registered on ``conn`` and mapped here: its map and its name."""
    conn.send(proto.encode({"type": "shm_register", "id": "reg", "size": nbytes, "owner_pid": os.getpid()}))
    body = proto.decode(conn.recv())[0]["body"]
    fd = os.open(body["path"], os.O_RDWR)
    try:
        return mmap.mmap(fd, body["size"]), body["region"]
    finally:
        os.close(fd)


def unregister_region(conn: ZmqDealer | StreamDealer, mm: mmap.mmap, region: str) -> None:
    """The region let go on ``conn`` and unmapped here (no view of ``mm`` may be left)."""
    conn.send(proto.encode({"type": "shm_unregister", "id": "unreg", "region": region}))
    conn.recv()
    mm.close()


def pinned_requests(conn: ZmqDealer | StreamDealer, model: str, x: np.ndarray, variant: str,
                    placement: str, new_headers: bool = False, own_bounds: bool = False) -> Callable[[int], None]:
    """A function that sends ``count`` requests of ``model`` on ``x`` inline, variant and placement
    pinned, one after another, each answered before the next; it raises SystemExit on an error
    reply. ``new_headers``: each request under a client name of its own, so that the daemon sees
    every header for the first time, as it sees a client's first request. ``own_bounds``: each
    request with a latency bound of its own (far above any run), as a client setting a deadline
    per request sends them (the daemon keeps the header less its bounds)."""
    sent = itertools.count()

    def requests(count: int) -> None:
        for _ in range(count):
            n = next(sent)
            bound = {"max_latency_ms": 1000.0 + n * 1e-3} if own_bounds else None
            header = proto.request_header(uuid.uuid4().hex, model, [x], pin_variant=variant, pin_placement=placement,
                                          constraints=bound, client=f"new-{n}" if new_headers else None)
            conn.send(proto.encode(header, [x]))
            if proto.decode(conn.recv())[0].get("type") != "result":
                raise SystemExit("the daemon answered an error")
    return requests
