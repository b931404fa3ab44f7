"""How the clients move their messages: a ZeroMQ DEALER, or the daemon's local stream.

Contract
--------
* :func:`open_transport` picks by the endpoint's scheme: ``unix://PATH`` is the local stream
  (PROTOCOL.md §2.3: ADPT/1 over a Unix stream socket, no ZeroMQ I/O thread at either end),
  anything else a ZeroMQ endpoint. Both take and give a message's frames as a DEALER does, the
  empty delimiter first, so the client's core (:mod:`adaptd.clients.core`) reads both alike.
* ``send(frames, deadline)`` is True once the message is handed over (ZeroMQ's queue, or the
  socket), False when that could not happen by ``deadline`` (then nothing of it went out, or
  the stream was dropped): the attempt times out as for a reply that never came. A stream's
  message goes out in one system call when it fits the socket's buffer (the common case). If the
  daemon closed the connection (it restarted), the message goes again on a new one: none of it
  was read there. ``wait(ms)`` says whether a message can be read now, waiting at most ``ms``;
  ``recv()`` reads one, or None when what arrived did not complete one (a stream's partial read,
  or its end). ``close()``.
* The stream connects on first use and again after its connection ended (the daemon
  restarted, or an attempt's write was cut short): a connection is one peer to the daemon, so a
  retry sent on a new connection is a new request there (the daemon keeps a reply for retries
  per connection), and shared-memory regions registered on the old one are not the new one's. Connecting waits for
  the daemon's socket to appear until the attempt's deadline, as ZeroMQ's lazy connect does.
* The asyncio client's pair (:func:`open_async_transport`): ``await send(frames)`` (the caller
  bounds it with the attempt's deadline) and ``await recv()``, one message as ZeroMQ gives it; the
  stream connects on the first send and again after its connection ended, and ``recv`` waits
  for a connection while there is none.
* Not thread-safe; the sync client serialises calls, the async one runs in one event loop.
  Units: ``deadline`` in seconds of ``time.monotonic``, ``ms`` milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import time
from collections import deque
from typing import Any

import zmq
import zmq.asyncio

from adaptd.wire.auth import CurveKeys
from adaptd.wire.frames import recv_frames, send_frames
from adaptd.wire.stream import (FramingError, MessageReader, TooLarge, frame_count, frame_lengths, message_bytes,
                                send_message, split_frames, widen_send_buffer)

STREAM_SCHEME = "unix://"
MAX_REPLY_BYTES = 1 << 31        # replies are the daemon's: the limit only bounds a broken stream
CONNECT_RETRY_S = 0.01           # between tries to reach a stream socket not there yet
_NOBLOCK, _POLLIN, _POLLOUT = int(zmq.NOBLOCK), int(zmq.POLLIN), int(zmq.POLLOUT)


def new_dealer(context: zmq.Context, endpoint: str, curve: CurveKeys | None = None) -> zmq.Socket:
    """A DEALER connected to ``endpoint`` with a random 16-byte routing identity (the daemon keys a
    client's stored replies and regions on it: a random one cannot be guessed and claimed by
    another local client) and, with ``curve``, CurveZMQ keys."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"\x01" + os.urandom(15))   # ZeroMQ reserves a leading zero byte
    if curve is not None:
        curve.apply(sock)
    sock.connect(endpoint)
    return sock


class ZmqTransport:
    """A DEALER (``new_dealer``: random routing identity, CurveZMQ keys when given)."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self._poller = zmq.Poller()
        self._poller.register(sock, _POLLIN)

    def send(self, frames: list[Any], deadline: float) -> bool:
        while True:
            try:
                send_frames(self.sock, frames, _NOBLOCK)
                return True
            except zmq.Again:   # high-water mark reached (daemon away): wait for room
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.sock.poll(max(1, int(remaining * 1e3)), _POLLOUT):
                    return False

    def wait(self, ms: int) -> bool:
        return bool(self._poller.poll(ms))

    def recv(self) -> list[Any] | None:
        return recv_frames(self.sock)

    def close(self) -> None:
        self.sock.close(0)


class StreamTransport:
    """The daemon's local stream at ``path`` (see the module contract)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self._reader: MessageReader | None = None
        self._ready: deque[list[Any]] = deque()   # messages read, not yet taken
        self._poll = select.poll()

    def _connect(self, timeout_s: float) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        widen_send_buffer(sock)   # a large input in one write
        try:
            sock.settimeout(max(1e-3, timeout_s))   # bounded by the attempt (a full backlog refuses at once)
            sock.connect(self.path)
            sock.settimeout(None)
        except OSError:
            sock.close()
            raise
        self.sock, self._reader = sock, MessageReader(MAX_REPLY_BYTES)
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = self._reader = None

    def _take_in(self, sock: socket.socket) -> None:
        """Read, without waiting, what ``sock`` still holds (late replies) before it is dropped."""
        sock.setblocking(False)
        try:
            while self.sock is sock:
                self._keep(self._reader.read_from(sock))
        except (OSError, FramingError):   # nothing more now, or the end of the stream
            pass

    def _keep(self, messages: list[Any]) -> None:
        for message in messages:
            if type(message) is TooLarge:   # a reply beyond any sense: the stream cannot be trusted
                self._drop()
                return
            self._ready.append([b"", *message])

    def send(self, frames: list[Any], deadline: float) -> bool:
        fresh = False
        while True:
            while self.sock is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                try:
                    self._connect(remaining)
                    fresh = True
                except OSError:   # not there yet (or refusing): try again until the deadline
                    time.sleep(max(0.0, min(CONNECT_RETRY_S, deadline - time.monotonic())))
            sock = self.sock
            try:
                send_message(sock, frames[1:], deadline)   # a stream has no envelope: no delimiter
                return True
            except (BrokenPipeError, ConnectionResetError):
                # The daemon closed this connection, most likely while the client was idle (it
                # restarted): none of the message was read there, so it goes again on a new one.
                self._take_in(sock)   # (what it sent before it closed is still read, and counted)
                self._drop()
                if fresh:
                    return False
            except OSError:   # past the deadline part-way, or the daemon gone: the stream cannot go on
                self._drop()
                return False
            finally:
                if self.sock is sock and sock.gettimeout() is not None:   # (set for a long message only)
                    sock.settimeout(None)

    def wait(self, ms: int) -> bool:
        if self._ready:
            return True
        if self.sock is None:   # nothing can come: wait out the attempt
            time.sleep(ms / 1e3)
            return False
        return bool(self._poll.poll(ms))

    def recv(self) -> list[Any] | None:
        if not self._ready and self.sock is not None:
            try:
                self._keep(self._reader.read_from(self.sock))
            except (OSError, FramingError):   # the stream ended (or broke): reconnect next time
                self._drop()
        return self._ready.popleft() if self._ready else None

    def close(self) -> None:
        self._drop()


def open_transport(endpoint: str, context: zmq.Context, curve: CurveKeys | None) -> ZmqTransport | StreamTransport:
    """The transport for ``endpoint`` (see the module contract)."""
    if endpoint.startswith(STREAM_SCHEME):
        _refuse_keys(endpoint, curve)
        return StreamTransport(endpoint[len(STREAM_SCHEME):])
    return ZmqTransport(new_dealer(context, endpoint, curve))


def _refuse_keys(endpoint: str, curve: CurveKeys | None) -> None:
    if curve is not None:
        raise ValueError(f"{endpoint} is a local stream, which carries no CurveZMQ keys; "
                         "use the daemon's ipc:// or tcp:// endpoint with keys")


class AsyncZmqTransport:
    """A DEALER of a ``zmq.asyncio`` context."""

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self.sock = sock

    async def send(self, frames: list[Any]) -> None:
        await self.sock.send_multipart(frames, copy=False)

    async def recv(self) -> list[Any]:
        return await self.sock.recv_multipart(copy=False)

    def close(self) -> None:
        self.sock.close(0)


class AsyncStreamTransport:
    """The daemon's local stream at ``path``, for one event loop (see the module contract)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._connected = asyncio.Event()
        self._connecting = asyncio.Lock()   # one connection at a time, whoever asks first

    async def _connect(self) -> None:
        async with self._connecting:
            while self._writer is None or self._writer.is_closing():
                try:
                    self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=1 << 16)
                    widen_send_buffer(self._writer.get_extra_info("socket"))   # a large input in one write
                except OSError:   # not there yet: the caller's deadline ends the wait
                    await asyncio.sleep(CONNECT_RETRY_S)
            self._connected.set()

    def _drop(self, writer: asyncio.StreamWriter | None = None) -> None:
        """End the connection (``writer``: only if it is still that one)."""
        if writer is not None and writer is not self._writer:
            return
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self._connected.clear()

    async def send(self, frames: list[Any]) -> None:
        """Raises OSError when the connection broke (the attempt is lost: the caller sends again)."""
        await self._connect()
        writer = self._writer
        writer.writelines(memoryview(b).cast("B") for b in message_bytes(frames[1:]))
        try:
            await writer.drain()
        except OSError:
            self._drop(writer)
            raise

    async def recv(self) -> list[Any]:
        while True:
            await self._connected.wait()
            reader = self._reader
            try:
                n = frame_count(await reader.readexactly(4))
                lengths = frame_lengths(await reader.readexactly(4 * n), n)
                if sum(lengths) > MAX_REPLY_BYTES:
                    raise FramingError(f"a message of {sum(lengths)} bytes")
                body = memoryview(await reader.readexactly(sum(lengths)))
            except (OSError, EOFError, FramingError):   # the stream ended (or broke): wait for the next
                if self._reader is reader:
                    self._drop()
                continue
            return [b"", *split_frames(body, lengths)]

    def close(self) -> None:
        self._drop()


def open_async_transport(endpoint: str, context: zmq.asyncio.Context,
                         curve: CurveKeys | None) -> AsyncZmqTransport | AsyncStreamTransport:
    """The asyncio client's transport for ``endpoint`` (see the module contract)."""
    if endpoint.startswith(STREAM_SCHEME):
        _refuse_keys(endpoint, curve)
        return AsyncStreamTransport(endpoint[len(STREAM_SCHEME):])
    return AsyncZmqTransport(new_dealer(context, endpoint, curve))
