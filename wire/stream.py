"""ADPT/1 messages over a Unix stream socket: the local transport without ZeroMQ's I/O threads.

Contract
--------
* Framing (PROTOCOL.md §2.3): a message is its frame count ``n`` (1 to ``MAX_FRAMES``), then
  ``n`` frame lengths, each a 4-byte little-endian unsigned integer, then the frames back to
  back. The frames are those a DEALER sends over ZeroMQ after its empty delimiter would be: the
  signature, the header, the bodies (§2.1), so the same codec (:mod:`adaptd.wire.protocol`)
  reads both transports; a stream has no envelope (the connection is the peer).
* :func:`send_message` writes one message on a blocking socket (scatter-gather: tensor buffers
  are not copied into a message first), within a deadline when given (``socket.timeout`` past it:
  the message may be cut, so the stream must end). :func:`framed` gives the prefix and the frames, and
  their size, for a writer that keeps its own queue (the daemon's non-blocking one;
  :func:`message_bytes` the buffers alone), :func:`unsent` what is
  left of them after a partial write. :func:`frame_count`, :func:`frame_lengths` and
  :func:`split_frames` read a message's parts for a reader that is not a socket's (asyncio's).
* :func:`fill_from`: one read into a large message's buffer, grown as it comes (the ZMTP
  reader's large frames share it).
* :func:`hung_up`: whether a socket's peer has closed its end, before what came first is read.
* :func:`widen_send_buffer`: a sending socket's buffer made room for a large message whole
  (``SEND_BUFFER_BYTES``, or what the kernel's ``net.core.wmem_max`` allows, doubled), which a client
  sets on its connection: a 602 KB input then goes in one write instead of three, each of which
  woke both ends.
* :class:`MessageReader` is incremental: :meth:`~MessageReader.read_from` reads what a socket
  has (one ``recv``), returns the messages completed by it, each a list of read-only
  ``memoryview`` frames over buffers that no later read changes (a caller may keep them while
  later messages are read), and keeps a partial one for the next call. A message larger than a
  read is received into one buffer, not by concatenating reads: its size at once when that is at
  most ``GROW_FROM`` bytes or twice what has come, else grown by doubling as it comes (a peer that
  announces a large message and sends little holds little memory). In that buffer the third
  frame (a request's or a reply's first tensor) starts on a ``BODY_ALIGN``-byte boundary, and so
  does every later frame whose predecessors' lengths keep it there (float32 tensors stay 4-byte
  aligned): numpy then reads the tensor as an aligned array. An unaligned 602 KB input took
  numpy's NaN screen 268 µs live instead of 49 (no BLAS for an unaligned array), and the
  interpreter's copy of it is slower too. Frames of a message that fits one read lie where the
  read put them.
* A message over ``max_message_bytes`` comes out as a :class:`TooLarge` in its place (its size,
  and its header frame when that came in the same read: the reply can name the request) and its
  bytes are skipped as they arrive, so the stream stays in step. A frame count out of
  range cannot be skipped: the messages before it come out, ``broken`` is set (a
  :class:`FramingError`), and every later call raises it; the connection must end. End of
  stream raises ``ConnectionError`` (mid-message too).
* Pure Python over ``socket`` objects; one thread per socket at a time.
"""

from __future__ import annotations

import functools
import select
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_FRAMES = 1000        # signature, header and up to 998 tensors (with the prefix, under IOV_MAX)
READ_BYTES = 65536       # one recv's size while no larger message is known to be under way
GROW_FROM = 1 << 20      # a large message's buffer: its whole size up to this, else grown as it comes
BODY_ALIGN = 16          # a large message's first tensor starts on this boundary of its buffer
SEND_BUFFER_BYTES = 4 << 20   # what a client's connection may hold unread (see widen_send_buffer)
_U32 = struct.Struct("<I")
# A write to a connection the peer closed fails with EPIPE instead of raising SIGPIPE, which kills
# a process that does not ignore it (Python ignores it, but not every embedding of it does). The
# flags are plain ints: ``socket.MSG_*`` are enum flags, and an ``|`` of two runs the enum module's
# Python (1.6 us a send here).
_NOSIGNAL = int(socket.MSG_NOSIGNAL)
_DONTWAIT_NOSIGNAL = int(socket.MSG_DONTWAIT) | _NOSIGNAL


class FramingError(ValueError):
    """The stream breaks the framing (its connection has to end)."""


@dataclass(frozen=True)
class TooLarge:
    """In place of a message over the size limit (its bytes skipped): how large it said it was,
    and its second frame (the header) when that came whole in the read that found it; over ZMTP
    (:mod:`adaptd.wire.zmtp`) the envelope before its delimiter too, the reply's way back."""

    size: int
    header: bytes | None = None
    envelope: tuple[bytes, ...] = ()


def frame_nbytes(frame: Any) -> int:
    """A frame's size in bytes: its ``nbytes`` (a memoryview, a numpy array), else its length."""
    n = getattr(frame, "nbytes", None)
    return len(frame) if n is None else n


def message_bytes(frames: Sequence[Any]) -> list[Any]:
    """The buffers of one message: its prefix (count and lengths), then ``frames`` as given."""
    return framed(frames)[0]


def framed(frames: Sequence[Any]) -> tuple[list[Any], int]:
    """:func:`message_bytes` and their size in bytes, what a writer checks its write against."""
    n = len(frames)
    if not 1 <= n <= MAX_FRAMES:
        raise ValueError(f"a message has 1 to {MAX_FRAMES} frames, not {n}")
    lengths = [n]
    for frame in frames:   # (frame_nbytes written out: a call a frame, on every reply's path)
        size = getattr(frame, "nbytes", None)
        lengths.append(len(frame) if size is None else size)
    prefix = struct.pack(f"<{n + 1}I", *lengths)
    return [prefix, *frames], len(prefix) + sum(lengths) - n


def widen_send_buffer(sock: socket.socket) -> None:
    """Let ``sock`` hold ``SEND_BUFFER_BYTES`` unread (Linux grants twice what is asked, for its
    bookkeeping, up to twice ``net.core.wmem_max``).

    A Unix stream socket takes what its sender's buffer holds, 212992 bytes by default: a larger
    message went in pieces, each one write, a wake-up of the reader and, once it had read, of the
    writer. MobileNetV2's 602 KB input over the local stream (AMD-3, bench/bench_stages.py, two
    pairs): the daemon's read of it 161-165 µs instead of 233-239, the round trip 240-300 µs
    shorter. The buffer is a limit, not memory taken: only bytes written and not yet read use it.
    A buffer at least as large as the request would grant (a host whose ``net.core.wmem_default``
    is larger) is left as it is."""
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < _granted_send_buffer():
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    except OSError:   # (a socket that refuses keeps its default: only slower)
        pass


@functools.lru_cache(maxsize=1)
def _granted_send_buffer() -> int:
    """The send buffer that asking for ``SEND_BUFFER_BYTES`` gives (as ``SO_SNDBUF`` reads back):
    twice the request, capped at twice ``net.core.wmem_max`` (read once per process)."""
    try:
        with open("/proc/sys/net/core/wmem_max") as fh:
            cap = int(fh.read())
    except (OSError, ValueError):   # (not Linux's /proc: the request's own size)
        cap = SEND_BUFFER_BYTES
    return 2 * min(SEND_BUFFER_BYTES, cap)


def hung_up(sock: socket.socket) -> bool:
    """Whether the peer of ``sock`` has closed its end (one ``poll`` that does not wait): what a
    reader learns only once it has read all that came before the end."""
    probe = select.poll()
    probe.register(sock.fileno(), select.POLLRDHUP | select.POLLHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP) for _, events in probe.poll(0))


def send_message(sock: socket.socket, frames: Sequence[Any], deadline: float | None = None) -> None:
    """Write one message on a blocking stream socket (all of it, or raise OSError), by ``deadline``
    (``time.monotonic`` seconds) when given. With a deadline, the first write does not wait
    (``MSG_DONTWAIT``): a message that fits the socket's buffer, the common case, goes out in one
    system call. Only what does not is written with the socket's timeout set to what is left
    before each write (and left so): setting it costs two more system calls, and Python polls
    before each write on a socket with a timeout. A closed connection is ``BrokenPipeError``
    (``MSG_NOSIGNAL``: never a SIGPIPE)."""
    buffers, total = framed(frames)
    if deadline is None:
        sent = sock.sendmsg(buffers, (), _NOSIGNAL)
    else:
        try:
            sent = sock.sendmsg(buffers, (), _DONTWAIT_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            sent = 0
    if sent < total:   # a large message, or a full socket buffer: the rest in order
        for buf in unsent(buffers, sent):
            if deadline is not None:
                sock.settimeout(max(1e-3, deadline - time.monotonic()))
            sock.sendall(buf, _NOSIGNAL)


def unsent(buffers: Sequence[Any], sent: int) -> list[memoryview]:
    """What is left of ``buffers`` once ``sent`` bytes of them went out (nothing is copied, and
    nothing viewed for a buffer that went out whole)."""
    rest: list[memoryview] = []
    for buf in buffers:
        if rest:
            rest.append(memoryview(buf).cast("B"))
            continue
        n = frame_nbytes(buf)
        if sent >= n:
            sent -= n
            continue
        rest.append(memoryview(buf).cast("B")[sent:])
    return rest


class MessageReader:
    """Messages out of a byte stream, as they complete (see the module's contract)."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = int(max_message_bytes)
        self._partial = b""            # the start of a message whose prefix is not all here yet
        self._big: bytearray | None = None   # a large message's buffer, being filled
        self._big_at = 0                 # where the message starts in it (the first tensor aligned)
        self._big_filled = 0
        self._big_size = 0               # the large message's size (its buffer may be smaller yet)
        self._big_frames: list[int] = []
        self._skip = 0                   # bytes of a message over the limit still to come (skipped)
        self.broken: FramingError | None = None

    @property
    def held_bytes(self) -> int:
        """The bytes held for a message not complete yet."""
        return len(self._partial) + (len(self._big) if self._big is not None else 0)

    def read_from(self, sock: socket.socket) -> list[list[memoryview] | TooLarge]:
        """One ``recv`` from ``sock`` and the messages it completes; ``BlockingIOError`` when a
        non-blocking socket has nothing, ConnectionError at the end of the stream, ``broken``
        once the framing broke."""
        if self.broken is not None:
            raise self.broken
        if self._skip:
            data = sock.recv(min(self._skip, READ_BYTES))
            if not data:
                raise ConnectionError("the peer closed the stream in the middle of a message")
            self._skip -= len(data)
            return []
        big = self._big
        if big is not None:
            at = self._big_at
            big, self._big_filled = fill_from(sock, big, at, self._big_filled, self._big_size)
            if self._big_filled < self._big_size:
                self._big = big
                return []
            self._big = None
            return [split_frames(memoryview(big)[at:].toreadonly(), self._big_frames)]
        data = sock.recv(READ_BYTES)
        if not data:
            if self._partial:
                raise ConnectionError("the peer closed the stream in the middle of a message")
            raise ConnectionError("the peer closed the stream")
        if self._partial:
            data = self._partial + data
            self._partial = b""
        return self._parse(data)

    def _parse(self, data: bytes) -> list[list[memoryview] | TooLarge]:
        messages: list[list[memoryview] | TooLarge] = []
        view = memoryview(data)
        size, at = len(data), 0
        while at < size:
            if size - at < 4:
                break
            try:
                n = frame_count(data, at)
            except FramingError as exc:
                self.broken = exc
                if not messages:
                    raise
                return messages
            head = 4 + 4 * n
            if size - at < head:
                break
            lengths = frame_lengths(data, n, at + 4)
            body = sum(lengths)
            start = at + head
            if body > self.max_message_bytes:   # skipped in step, answered in its place
                header = None
                if n >= 2 and lengths[1] <= READ_BYTES and start + lengths[0] + lengths[1] <= size:
                    header = bytes(view[start + lengths[0]:start + lengths[0] + lengths[1]])
                messages.append(TooLarge(body, header))
                have = min(body, size - start)
                self._skip = body - have
                at = start + have
                if self._skip:
                    return messages
                continue
            if size - start < body:
                if body > READ_BYTES:   # received into one buffer, not by concatenation
                    have = size - start
                    pad = -sum(lengths[:2]) % BODY_ALIGN   # (the buffer's own start is malloc's: 16-byte aligned)
                    big = bytearray(pad + (body if body <= max(GROW_FROM, 2 * have) else max(GROW_FROM, 2 * have)))
                    big[pad:pad + have] = view[start:]
                    self._big, self._big_at, self._big_filled, self._big_size = big, pad, have, body
                    self._big_frames = list(lengths)
                    return messages
                break
            messages.append(split_frames(view[start:start + body], lengths))
            at = start + body
        if at < size:
            self._partial = bytes(view[at:])
        return messages


def fill_from(sock: socket.socket, big: bytearray, at: int, filled: int, size: int) -> tuple[bytearray, int]:
    """One ``recv_into`` a large message's (or frame's) buffer, whose ``size`` bytes start at
    ``at`` and of which ``filled`` have come: the buffer (doubled, up to ``size``, when it was
    full) and how much of it is filled now; ConnectionError at the end of the stream."""
    if at + filled == len(big):   # full, the message not: double it
        grown = bytearray(at + min(size, 2 * filled))
        grown[at:at + filled] = memoryview(big)[at:at + filled]
        big = grown
    n = sock.recv_into(memoryview(big)[at + filled:])
    if n == 0:
        raise ConnectionError("the peer closed the stream in the middle of a message")
    return big, filled + n


def frame_count(data: Any, at: int = 0) -> int:
    """The frame count that starts at ``at`` in ``data``; FramingError when out of range."""
    (n,) = _U32.unpack_from(data, at)
    if not 1 <= n <= MAX_FRAMES:
        raise FramingError(f"a message of {n} frames (1 to {MAX_FRAMES})")
    return n


def frame_lengths(data: Any, n: int, at: int = 0) -> tuple[int, ...]:
    """The ``n`` frame lengths that start at ``at`` in ``data``."""
    return struct.unpack_from(f"<{n}I", data, at)


def split_frames(view: memoryview, lengths: Sequence[int]) -> list[memoryview]:
    """A message's body cut into its frames (views, no copies)."""
    frames, at = [], 0
    for length in lengths:
        frames.append(view[at:at + length])
        at += length
    return frames
