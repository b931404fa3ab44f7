"""ZMTP 3 over a stream socket, the server's side: what a ZeroMQ client's ipc connection speaks.

Contract
--------
* The daemon serves its ipc request endpoints itself (``[server] ipc_engine = "adaptd"``, the
  default): a ZeroMQ ``DEALER`` or ``REQ`` connects to ``ipc://PATH`` as to a ``ROUTER``, and its
  messages reach the daemon's loop without ZeroMQ's I/O thread, two thread wake-ups per request
  that cost the daemon as much CPU as the local stream's whole saving (docs/decisions.md,
  "The daemon's own ZMTP engine for ipc"). This module is the wire format: ZeroMQ's RFC 23
  (ZMTP 3.0) and RFC 37 (3.1), the NULL security mechanism only (CurveZMQ stays with libzmq).
* :func:`handshake` is what the server sends on accepting: its greeting (version 3.1, NULL, not
  as-server) and its ``READY`` command (``Socket-Type`` ``ROUTER``), at once; ZMTP lets each
  side send both before reading the other's.
* :class:`ZmtpReader` is incremental, as :class:`adaptd.wire.stream.MessageReader` is:
  :meth:`~ZmtpReader.read_from` does one ``recv`` and returns the messages it completes, each a
  list of read-only ``memoryview`` frames (the envelope and the delimiter included: the caller
  splits them) over buffers no later read changes. Before the first message it reads the peer's
  greeting (ZMTP 3.x, NULL) and its ``READY`` (``Socket-Type`` ``DEALER``, ``REQ`` or
  ``ROUTER``; its ``Identity``, when set, in ``identity``); ``ready`` says the handshake is done.
  A ``PING`` is answered: its ``PONG`` waits in ``pong`` (bytes the caller writes, when nothing
  else waits to be written; a later PING's replaces it, so a flood of them holds one); other
  commands are ignored, between messages or between a message's frames (libzmq sends a
  heartbeat wherever its timer finds the stream).
* A frame larger than a read is received into a buffer of its own (its size at once up to
  ``GROW_FROM`` bytes or twice what has come, else grown as it comes), which starts on malloc's
  16-byte boundary: a large tensor is an aligned array for numpy. Frames within one read lie
  where the read put them.
* Limits, as the local stream has them: a message over ``max_message_bytes`` comes out as a
  :class:`~adaptd.wire.stream.TooLarge` in its place once its last frame has gone by (its bytes
  skipped, the stream in step; the header frame, the one after the delimiter and the signature,
  when it came whole, and the envelope before the delimiter); at most ``MAX_FRAMES`` frames a message. A message with more, a frame
  with reserved flag bits, a command with the MORE flag, or a greeting or handshake that is not
  ZMTP 3 with NULL and a ROUTER's peer, breaks the stream for good (``broken``, a
  :class:`~adaptd.wire.stream.FramingError`; the messages before it come out first). The end of
  the stream is ``ConnectionError``.
* :func:`split_envelope` cuts a message at its delimiter, as a ROUTER's reader does.
* :func:`framed` writes a message (envelope, delimiter, signature, header, bodies) as ZMTP frames
  for a writer that keeps its own queue; tensor buffers are not copied.
* Pure Python over ``socket`` objects; one thread per socket at a time.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from typing import Any

from adaptd.wire.protocol import SIGNATURE
from adaptd.wire.stream import GROW_FROM, READ_BYTES, FramingError, TooLarge, fill_from, frame_nbytes

MAX_FRAMES = 1016        # a proxy's envelope, the delimiter, the signature, the header, 998 tensors
PEER_TYPES = frozenset({b"DEALER", b"REQ", b"ROUTER"})   # what a ROUTER talks to (RFC 28)
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04
_GREETING_BYTES = 64
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_LONG_HEADER = struct.Struct(">BQ")
# Every short frame's header, by its size, for a frame with more to come and for a last one.
_SHORT_MORE = tuple(bytes((_MORE, n)) for n in range(256))
_SHORT_LAST = tuple(bytes((0, n)) for n in range(256))
_REPLY_HEAD = _SHORT_MORE[0] + _SHORT_MORE[len(SIGNATURE)] + SIGNATURE   # the delimiter, then the signature


def command(name: bytes, body: bytes = b"") -> bytes:
    """A command frame: its name, then its body (RFC 23)."""
    data = bytes((len(name),)) + name + body
    if len(data) < 256:
        return bytes((_COMMAND, len(data))) + data
    return _LONG_HEADER.pack(_COMMAND | _LONG, len(data)) + data


def _property(name: bytes, value: bytes) -> bytes:
    return bytes((len(name),)) + name + _U32.pack(len(value)) + value


GREETING = b"\xff" + b"\0" * 8 + b"\x7f" + bytes((3, 1)) + b"NULL".ljust(20, b"\0") + b"\0" + b"\0" * 31


def ready_command(socket_type: bytes, identity: bytes = b"") -> bytes:
    """A ``READY`` command: the sender's socket type and, when set, its routing identity. With
    NULL the greeting is the same both ways: ``GREETING`` and this are what a client sends too."""
    return command(b"READY", _property(b"Socket-Type", socket_type)
                   + (_property(b"Identity", identity) if identity else b""))


READY = ready_command(b"ROUTER")


def handshake() -> bytes:
    """What the server sends on accepting a connection: its greeting and its ``READY``."""
    return GREETING + READY


def framed(frames: Sequence[Any]) -> tuple[list[Any], int]:
    """The buffers of one message as ZMTP frames (each frame's flags and size, then the frame;
    an empty frame is its header alone), and their size in bytes."""
    last = len(frames) - 1
    if last > 1 and frames[1] is SIGNATURE and frames[0] == b"":   # a reply's delimiter and signature,
        out: list[Any] = [_REPLY_HEAD]                           # as protocol.encode makes them: framed once
        total = len(_REPLY_HEAD)
        first = 2
    else:
        out, total, first = [], 0, 0
    for i in range(first, last + 1):
        frame = frames[i]
        n = len(frame) if type(frame) is bytes else frame_nbytes(frame)
        if n < 256:
            out.append((_SHORT_MORE if i < last else _SHORT_LAST)[n])
            total += 2 + n
        else:
            out.append(_LONG_HEADER.pack(_LONG | (_MORE if i < last else 0), n))
            total += 9 + n
        if n:
            out.append(frame)
    return out, total


class ZmtpReader:
    """Messages out of a ZMTP 3 byte stream, after its handshake (see the module's contract)."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = int(max_message_bytes)
        self.ready = False               # the peer's greeting and READY have come
        self.identity = b""              # the peer's Identity property (empty: none set)
        self.socket_type = b""
        self.pong: bytes | None = None   # the answer to the latest PING, not written yet
        self.pings = 0                   # PINGs read
        self.broken: FramingError | None = None
        self._greeted = False
        self._partial = b""              # bytes of a frame header or a small frame not all here yet
        self._frames: list[memoryview] = []   # the message under way
        self._bytes = 0                  # its size so far
        self._envelope_bytes = -1        # of which its envelope's, once its delimiter came (-1: not yet)
        self._big: bytearray | None = None    # a large frame's own buffer, being filled
        self._big_filled = 0
        self._big_size = 0
        self._big_more = False
        self._skip = 0                   # bytes of a discarded frame still to come
        self._skip_more = False          # the discarded message has frames after that one
        self._discarding = False         # the message under way is over the limit
        self._header: bytes | None = None   # a discarded message's header frame, when it came
        self._envelope: tuple[bytes, ...] = ()   # and its envelope, when its delimiter came

    def read_from(self, sock: socket.socket) -> list[list[memoryview] | TooLarge]:
        """One ``recv`` from ``sock`` and the messages it completes; ``BlockingIOError`` when a
        non-blocking socket has nothing, ConnectionError at the end of the stream, ``broken``
        once the stream broke."""
        if self.broken is not None:
            raise self.broken
        if self._big is not None:
            return self._fill_big(sock)
        if self._skip:
            data = sock.recv(min(self._skip, READ_BYTES))
            if not data:
                raise ConnectionError("the peer closed the stream in the middle of a message")
            self._skip -= len(data)
            if self._skip or self._skip_more:
                return []
            return [self._end_discarded()]
        data = sock.recv(READ_BYTES)
        if not data:
            if self._partial or self._frames or self._discarding:
                raise ConnectionError("the peer closed the stream in the middle of a message")
            raise ConnectionError("the peer closed the stream")
        if self._partial:
            data = self._partial + data
            self._partial = b""
        messages: list[list[memoryview] | TooLarge] = []
        try:
            at = 0 if self.ready else self._handshake(data)
            if at >= 0:
                self._parse(data, at, messages)
        except FramingError as exc:
            self.broken = exc
            if not messages:
                raise
        return messages

    # --- the handshake ----------------------------------------------------------------------
    def _handshake(self, data: bytes) -> int:
        """Read the greeting and the READY at the start of ``data``: where the frames start, or
        -1 when more must come first (kept in ``_partial``)."""
        at = 0
        if not self._greeted:
            if len(data) < _GREETING_BYTES:
                if data[0] != 0xFF or (len(data) >= 10 and not data[9] & 1) or (len(data) >= 11 and data[10] < 3):
                    raise FramingError("not a ZMTP 3 greeting (a ZeroMQ 4 DEALER or REQ is expected)")
                self._partial = data
                return -1
            if data[0] != 0xFF or not data[9] & 1 or data[10] < 3:
                raise FramingError("not a ZMTP 3 greeting (a ZeroMQ 4 DEALER or REQ is expected)")
            mechanism = bytes(data[12:32]).rstrip(b"\0")
            if mechanism != b"NULL":
                raise FramingError(f"security mechanism {mechanism!r}: this endpoint speaks NULL only")
            self._greeted = True
            at = _GREETING_BYTES
        head = _frame_head(data, at)
        if head is None:
            self._partial = data[at:]
            return -1
        flags, size, start = head
        if not flags & _COMMAND:
            raise FramingError("a message before the READY command")
        if start + size > len(data):
            if size > READ_BYTES:
                raise FramingError(f"a READY command of {size} bytes")
            self._partial = data[at:]
            return -1
        self._on_ready(memoryview(data)[start:start + size])
        self.ready = True
        return start + size

    def _on_ready(self, body: memoryview) -> None:
        name, at = _command_name(body)
        if name == b"ERROR":
            raise FramingError(f"the peer refused the connection: {bytes(body[at + 1:]).decode('utf-8', 'replace')}")
        if name != b"READY":
            raise FramingError(f"a {name!r} command before READY")
        properties: dict[bytes, bytes] = {}
        while at < len(body):
            n = body[at]
            key = bytes(body[at + 1:at + 1 + n])
            if at + 5 + n > len(body):
                raise FramingError("a READY property cut short")
            (length,) = _U32.unpack_from(body, at + 1 + n)
            value_at = at + 5 + n
            if value_at + length > len(body):
                raise FramingError("a READY property cut short")
            properties[key.lower()] = bytes(body[value_at:value_at + length])
            at = value_at + length
        self.socket_type = properties.get(b"socket-type", b"")
        if self.socket_type not in PEER_TYPES:
            raise FramingError(f"a {self.socket_type.decode('ascii', 'replace') or 'nameless'} socket cannot talk "
                               "to a ROUTER (DEALER or REQ expected)")
        self.identity = properties.get(b"identity", b"")

    # --- frames -----------------------------------------------------------------------------
    def _parse(self, data: bytes, at: int, messages: list[list[memoryview] | TooLarge]) -> None:
        view = memoryview(data)   # (over bytes: read-only)
        size = len(data)
        frames = self._frames
        limit = self.max_message_bytes
        while at < size:
            flags = data[at]
            if flags & _LONG:
                if size - at < 9:
                    break
                (n,) = _U64.unpack_from(data, at + 1)
                start = at + 9
            else:
                if size - at < 2:
                    break
                n = data[at + 1]
                start = at + 2
            if flags > _MORE | _LONG:   # a command or reserved bits: one test for a data frame
                if flags & 0xF8:
                    raise FramingError(f"a frame with reserved flag bits set ({flags:#04x})")
                if flags & _MORE:   # (libzmq may send a heartbeat between a message's frames)
                    raise FramingError("a command with the MORE flag")
                if start + n > size:
                    if n > READ_BYTES:
                        raise FramingError(f"a command of {n} bytes")
                    break
                self._oncommand(view[start:start + n])
                at = start + n
                continue
            end = start + n
            envelope = self._envelope_bytes   # (max() written out: per frame)
            if self._discarding or self._bytes - (envelope if envelope > 0 else 0) + n > limit:
                if not self._discarding:
                    self._discard(frames, view)
                    frames = self._frames
                self._bytes += n
                have = n if end <= size else size - start
                at = start + have
                if have < n:
                    self._skip, self._skip_more = n - have, bool(flags & _MORE)
                    return
                if not flags & _MORE:
                    messages.append(self._end_discarded())
                continue
            if end > size:
                if n > READ_BYTES:   # received into a buffer of its own, not by concatenation
                    have = size - start
                    big = bytearray(min(n, max(GROW_FROM, 2 * have)))   # (grown by fill_from as it comes)
                    big[:have] = view[start:]
                    self._big, self._big_filled, self._big_size, self._big_more = big, have, n, bool(flags & _MORE)
                    return
                break
            if not n and envelope < 0:   # the delimiter: what came before it is the envelope
                self._envelope_bytes = self._bytes
            frames.append(view[start:end])
            self._bytes += n
            at = end
            if len(frames) > MAX_FRAMES:
                raise FramingError(f"a message of more than {MAX_FRAMES} frames")
            if not flags & _MORE:
                messages.append(frames)
                self._frames = frames = []
                self._bytes, self._envelope_bytes = 0, -1
        if at < size:
            self._partial = data[at:]

    def _fill_big(self, sock: socket.socket) -> list[list[memoryview] | TooLarge]:
        assert self._big is not None
        big, self._big_filled = fill_from(sock, self._big, 0, self._big_filled, self._big_size)
        if self._big_filled < self._big_size:
            self._big = big
            return []
        self._big = None
        self._frames.append(memoryview(big).toreadonly())
        self._bytes += self._big_size
        if len(self._frames) > MAX_FRAMES:
            self.broken = FramingError(f"a message of more than {MAX_FRAMES} frames")
            raise self.broken
        if self._big_more:
            return []
        frames, self._frames, self._bytes, self._envelope_bytes = self._frames, [], 0, -1
        return [frames]

    def _discard(self, frames: list[memoryview], view: memoryview) -> None:
        """The message under way is over the limit: keep its header frame, drop the rest."""
        self._discarding = True
        self._header, self._envelope = None, ()
        for i, frame in enumerate(frames):
            if not frame.nbytes:   # the delimiter: the envelope before it, the signature and header after
                self._envelope = tuple(bytes(f) for f in frames[:i])
                if i + 2 < len(frames):
                    self._header = bytes(frames[i + 2])
                break
        self._frames = []

    def _end_discarded(self) -> TooLarge:
        out = TooLarge(self._bytes - sum(len(f) for f in self._envelope), self._header, self._envelope)
        self._discarding, self._header, self._envelope, self._bytes, self._skip_more = False, None, (), 0, False
        self._envelope_bytes = -1
        return out

    def _oncommand(self, body: memoryview) -> None:
        name, at = _command_name(body)
        if name == b"PING":   # (RFC 37: a TTL of 2 bytes, then up to 16 bytes of context to echo)
            self.pong = command(b"PONG", bytes(body[at + 2:at + 18]))   # (one kept: libzmq's way)
            self.pings += 1
        elif name == b"ERROR":
            raise FramingError(f"the peer sent ERROR: {bytes(body[at + 1:]).decode('utf-8', 'replace')}")


def _frame_head(data: bytes, at: int) -> tuple[int, int, int] | None:
    """A frame's flags, size and where its body starts, or None when its header is not all here."""
    if len(data) - at < 2:
        return None
    flags = data[at]
    if flags & 0xF8:
        raise FramingError(f"a frame with reserved flag bits set ({flags:#04x})")
    if flags & _LONG:
        if len(data) - at < 9:
            return None
        return flags, _U64.unpack_from(data, at + 1)[0], at + 9
    return flags, data[at + 1], at + 2


def _command_name(body: memoryview) -> tuple[bytes, int]:
    if not body.nbytes or body[0] + 1 > body.nbytes:
        raise FramingError("a command without a name")
    return bytes(body[1:1 + body[0]]), 1 + body[0]


def split_envelope(frames: list[Any]) -> tuple[tuple[Any, ...] | None, list[Any]]:
    """A message's envelope (the frames before the first empty one) and the frames after that
    delimiter; None and the frames as they are when there is no delimiter."""
    for i, frame in enumerate(frames):
        if not frame.nbytes:
            return tuple(frames[:i]), frames[i + 1:]
    return None, frames
