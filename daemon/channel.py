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
  memoryviews into one freshly allocated buffer per message (safe to keep);
  :meth:`Channel.recv_ready` never waits (the daemon's end): it reads what has arrived and
  returns the message that completes, or None, keeping a message cut in two for the next call
  (:attr:`Channel.partial_at` says since when no more of it came).
* A message that does not read (a prefix announcing more than ``MAX_MESSAGE_BYTES``, a header
  that does not unpack to a map with its ``_verb`` and ``_sizes``, sizes that do not add up)
  raises :class:`ChannelError`: the peer is not speaking this channel's protocol, and what
  follows on it cannot be trusted either (a prefix too large raises again at each call).
* One reader and one writer per end at a time (the daemon's main thread on one end, the
  worker's only thread on the other). ``ConnectionError`` means the peer is gone; an end made
  with a timeout raises ``TimeoutError`` when the peer makes no progress for that long in
  :meth:`Channel.send` or :meth:`Channel.recv`.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

import msgpack

from adaptd.wire.protocol import pack

PREFIX = struct.Struct("<II")
MAX_MESSAGE_BYTES = 1 << 30   # a prefix announcing more is not one of ours: the channel is garbled


class ChannelError(ValueError):
    """A message that does not read: the peer is not speaking this channel's protocol."""


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.timeout_s: float | None = None   # set: the socket is non-blocking, waits are bounded
        self.partial_at: float | None = None  # (non-blocking end) time.monotonic() of a cut message's last bytes
        self._prefix = bytearray(PREFIX.size)
        self._body: bytearray | None = None   # the message after its prefix, once the prefix is whole
        self._header_len = 0
        self._got = 0                         # bytes of the prefix, then of the body, read so far

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
        packed = pack(header)
        buffers: list[Any] = [PREFIX.pack(len(packed), sum(len(v) for v in views)), packed, *views]
        _sendall(self.sock, buffers, self.timeout_s)

    def recv(self) -> tuple[str, dict[str, Any], list[memoryview]]:
        while True:
            message = self.recv_ready()
            if message is not None:
                return message
            _wait(self.sock, select.POLLIN, self.timeout_s)

    def recv_ready(self) -> tuple[str, dict[str, Any], list[memoryview]] | None:
        """The next message if what has arrived completes it, else None (never waits on a
        non-blocking socket; a blocking one waits for bytes, as :meth:`recv`)."""
        progressed = False   # bytes of the message came in this call (a whole one needs no clock read)
        while True:
            target = memoryview(self._prefix if self._body is None else self._body)[self._got:]
            if target.nbytes:
                try:
                    k = self.sock.recv_into(target)
                except BlockingIOError:
                    if progressed:
                        self.partial_at = time.monotonic()
                    return None
                if k == 0:
                    raise ConnectionError("the peer closed the channel")
                self._got += k
                progressed = True
                if k < target.nbytes:   # the rest has not come yet: a non-blocking end looks again at its
                    if self.timeout_s is not None:   # next POLLIN, a blocking one waits for it
                        self.partial_at = time.monotonic()
                        return None
                    continue
            if self._body is None:   # the prefix is whole: the body's size
                header_len, bodies_len = PREFIX.unpack(self._prefix)
                if header_len + bodies_len > MAX_MESSAGE_BYTES:
                    raise ChannelError(f"a message of {header_len + bodies_len} bytes announced "
                                       f"(at most {MAX_MESSAGE_BYTES})")
                self._body, self._header_len, self._got = bytearray(header_len + bodies_len), header_len, 0
                continue
            body, self._body, self._got, self.partial_at = self._body, None, 0, None
            return _parse(body, self._header_len)


def _parse(body: bytearray, header_len: int) -> tuple[str, dict[str, Any], list[memoryview]]:
    view = memoryview(body)
    try:
        header = msgpack.unpackb(view[:header_len], raw=False)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several kinds for bytes that do not unpack
        raise ChannelError(f"a header that does not unpack ({type(exc).__name__}: {exc})") from None
    if type(header) is not dict:
        raise ChannelError(f"a header that is a {type(header).__name__}, not a map")
    verb, sizes = header.pop("_verb", None), header.pop("_sizes", None)
    if type(verb) is not str:
        raise ChannelError(f"a header without its verb (_verb: {verb!r})")
    if type(sizes) is not list:
        raise ChannelError(f"a header without its bodies' sizes (_sizes: {sizes!r})")
    bodies = []
    offset = header_len
    for size in sizes:
        if type(size) is not int or size < 0 or offset + size > len(body):
            break
        bodies.append(view[offset:offset + size])
        offset += size
    if len(bodies) != len(sizes) or offset != len(body):
        raise ChannelError(f"bodies' sizes {sizes!r} that do not fit the {len(body) - header_len} bytes sent")
    return verb, header, bodies


def readable_now(fd: int) -> bool:
    """Whether ``fd`` has something to read (bytes, an end, a process's exit on a pidfd), not waiting."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


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
