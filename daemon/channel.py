"""The daemon <-> worker channel: length-prefixed messages over a Unix stream socketpair.

Why not ZeroMQ here: each ZeroMQ hop passes through an I/O thread on both sides; on the
2-core development machine one daemon->worker->daemon relay over ZeroMQ ipc cost about 150 us
more than a bare echo, over a socketpair about 20 us. Clients still speak ZeroMQ (PROTOCOL.md);
this channel is internal to the daemon and its workers.

Contract
--------
* Message: an 8-byte prefix ``<II`` (header length, bodies length), a msgpack header map, then
  the bodies back to back. :meth:`Channel.send` adds ``"_sizes"`` to the header so the receiver
  can split the bodies; the bodies are written with ``sendmsg`` scatter-gather, so tensor
  buffers are not copied in Python.
* :meth:`Channel.recv` blocks until one whole message has arrived and returns zero-copy
  memoryviews into one freshly allocated buffer per message (safe to keep).
* One reader and one writer per end at a time (the daemon's main thread on one end, the
  worker's only thread on the other). ``ConnectionError`` means the peer is gone; an end made
  with a timeout raises ``TimeoutError`` when the peer makes no progress for that long.
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Sequence
from typing import Any

import msgpack

PREFIX = struct.Struct("<II")


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.timeout_s: float | None = None   # set: the socket is non-blocking, waits are bounded

    @classmethod
    def pair(cls, timeout_s: float | None = None) -> tuple[Channel, socket.socket]:
        """A channel for this process and the raw socket to hand to the child (``pass_fds``).

        ``timeout_s``: a send or receive on this end that makes no progress for that long raises
        ``TimeoutError`` (an ``OSError``), so a peer that stops reading cannot block this
        process; the child's end stays blocking."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.set_inheritable(False)
        theirs.set_inheritable(True)
        channel = cls(ours)
        if timeout_s is not None:
            # Non-blocking, waiting only when the kernel's buffer is full or a message is cut in
            # two (a socket timeout would poll before every call: a fifth of the daemon's time).
            ours.setblocking(False)
            channel.timeout_s = timeout_s
        return channel, theirs

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        return cls(socket.socket(fileno=fd))

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(self, verb: str, header: dict[str, Any], bodies: Sequence[Any] = ()) -> None:
        views = [memoryview(b).cast("B") for b in bodies]
        header = {**header, "_verb": verb, "_sizes": [len(v) for v in views]}
        packed = msgpack.packb(header, use_bin_type=True)
        buffers: list[Any] = [PREFIX.pack(len(packed), sum(len(v) for v in views)), packed, *views]
        _sendall(self.sock, buffers, self.timeout_s)

    def recv(self) -> tuple[str, dict[str, Any], list[memoryview]]:
        prefix = _recv_exact(self.sock, PREFIX.size, self.timeout_s)
        header_len, bodies_len = PREFIX.unpack(prefix)
        buf = _recv_exact(self.sock, header_len + bodies_len, self.timeout_s)
        view = memoryview(buf)
        header = msgpack.unpackb(view[:header_len], raw=False)
        bodies = []
        offset = header_len
        for size in header.pop("_sizes", ()):
            bodies.append(view[offset:offset + size])
            offset += size
        return header.pop("_verb"), header, bodies


def _wait(sock: socket.socket, event: int, timeout_s: float | None) -> None:
    """Wait for ``event`` on a non-blocking socket; TimeoutError after ``timeout_s``."""
    poller = select.poll()
    poller.register(sock.fileno(), event)
    if not poller.poll(None if timeout_s is None else timeout_s * 1e3):
        raise TimeoutError(f"the channel's peer made no progress for {timeout_s} s")


def _sendall(sock: socket.socket, buffers: list[Any], timeout_s: float | None = None) -> None:
    views = [memoryview(b) for b in buffers if len(b)]
    while views:
        try:
            sent = sock.sendmsg(views)
        except BlockingIOError:
            _wait(sock, select.POLLOUT, timeout_s)
            continue
        while sent:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


def _recv_exact(sock: socket.socket, n: int, timeout_s: float | None = None) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:])
        except BlockingIOError:
            _wait(sock, select.POLLIN, timeout_s)
            continue
        if k == 0:
            raise ConnectionError("the peer closed the channel")
        got += k
    return buf
