"""The endpoints the daemon serves itself: the local streams, and ipc for ZeroMQ's clients.

Contract
--------
* Both are ADPT/1 over Unix stream sockets, without ZeroMQ's I/O threads, in two framings: a
  ``unix://PATH`` endpoint is a local stream (PROTOCOL.md §2.3, :mod:`adaptd.wire.stream`); an
  ``ipc://PATH`` endpoint speaks ZMTP 3 as a ``ROUTER`` would (§2.4, :mod:`adaptd.wire.zmtp`):
  a connection is greeted at once, its peer is known once its handshake is read (the routing
  identity its client set, while no other connection holds it, else 8 random bytes; ``r:``
  first, as :mod:`adaptd.daemon.peers` names a ROUTER's), a ``PING`` is answered, and a handshake
  that is not ZMTP 3 ends the connection with nothing said. Everything below holds for both.
* A request endpoint (PROTOCOL.md §2.3) is a listening ``AF_UNIX`` stream socket,
  its file mode ``[server] ipc_mode`` as for ipc endpoints (the frontend removes a socket file a
  dead daemon left there first: :func:`adaptd.daemon.frontend.remove_stale_socket`). Everything
  is non-blocking and driven by the daemon's loop: :meth:`StreamServer.interest` gives each
  descriptor and the events it waits for; :meth:`StreamServer.on_event` handles one (accepting,
  reading, writing) and returns the requests to handle now, ``(connection, envelope, frames,
  size)`` (``frames`` after the delimiter; ``envelope`` the frames before it, none but behind a
  ZeroMQ proxy, None for a ZMTP message without a delimiter; a reply goes back with it),
  at most ``intake`` per connection per round (as the ZeroMQ sockets' ``INTAKE_BATCH``): a
  connection's further requests wait in its backlog, which :meth:`~StreamServer.backlog_round`
  hands out on the next rounds (``backlogged`` says the loop must not sleep), and it is not read
  from meanwhile. ``frames`` is ``[TooLarge]`` (:class:`adaptd.wire.stream.TooLarge`) for a
  request over the size limit, which the request path answers ``TOO_LARGE`` (its bytes are
  skipped as they come: the stream stays in step).
* Each local stream connection is one peer (``StreamConnection.peer``: ``s:`` and a number never
  reused in a daemon's run): its replay entries and regions belong to it, a retry is answered
  from them on the same connection; a new connection is a new peer. A ZMTP connection's peer is
  its routing identity (above): a client that reconnects with it finds its replies again, as on
  a ROUTER.
* Every request handed out gets exactly one reply through :meth:`~StreamServer.send`
  (``awaiting`` counts those not sent yet). A connection stops being read when its client shuts
  its side or breaks the framing (a frame count out of range; for ZMTP, see
  :class:`adaptd.wire.zmtp.ZmtpReader`: one ``MALFORMED`` reply without an id, after the replies
  to the requests before it); it is closed once every request it sent is
  answered and written (or at once when the client has gone and a write fails).
* Limits, as the ZeroMQ endpoints have them: replies never block the daemon; what the socket does
  not take now is queued, and a reply beyond ``send_hwm`` replies queued is dropped and counted
  (``replies_unread_dropped``), so a client that stops reading loses its own replies, never the
  daemon's memory; a reply to a connection that has gone is dropped and counted
  (``replies_to_departed``). At most ``max_connections`` connections (at most half the process's
  descriptor limit); one more is accepted and closed at once (``refused``). When accepting fails
  (out of descriptors) the listeners rest for ``ACCEPT_PAUSE_S`` (:meth:`~StreamServer.tick`
  takes them back), so that a flood of connections cannot spin the loop.
* Threads: the daemon's main thread only.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import resource
import secrets
import socket
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq

from adaptd.daemon.peers import ROUTE_PREFIX
from adaptd.wire import protocol as proto
from adaptd.wire import zmtp
from adaptd.wire.stream import MAX_FRAMES, FramingError, MessageReader, TooLarge, framed, hung_up, unsent

log = logging.getLogger("adaptd.streams")

SCHEME = "unix://"
IPC_SCHEME = "ipc://"
MAX_CONNECTIONS = 1024
ACCEPT_PAUSE_S = 1.0     # how long a listener rests after accept() failed (out of descriptors)
HANDSHAKE_TIMEOUT_S = 30.0   # a ZMTP connection not ready by then is closed (libzmq's HANDSHAKE_IVL)
MAX_IOV = 1000           # buffers given to one sendmsg (Linux's IOV_MAX is 1024)
WARN_EVERY_S = 60.0      # a failing accept is logged at most this often
# The daemon polls with ZeroMQ's poller, which reports a descriptor's events in its own flags
# (a hang-up or an error as POLLERR).
_IN, _OUT, _GONE = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.POLLERR)

# A request handed out: its connection, its envelope (frames before the delimiter: none but behind
# a ZeroMQ proxy; None when a ZMTP message has no delimiter), its frames after the delimiter, its size.
Request = tuple["StreamConnection", "tuple[Any, ...] | None", "list[Any]", int]


def stream_path(endpoint: str) -> Path | None:
    return Path(endpoint[len(SCHEME):]) if endpoint.startswith(SCHEME) else None


def zmtp_path(endpoint: str) -> Path | None:
    """The socket file of an ipc endpoint the daemon can serve itself (not in the abstract namespace)."""
    abstract = endpoint.startswith(IPC_SCHEME + "@")
    return Path(endpoint[len(IPC_SCHEME):]) if endpoint.startswith(IPC_SCHEME) and not abstract else None


class StreamConnection:
    """One client's connection: its reader, its backlog of requests, its queue of reply bytes."""

    __slots__ = ("sock", "fd", "peer", "zmtp", "reader", "backlog", "awaiting", "queued", "queued_bytes", "written",
                 "reply_ends", "reading", "farewell", "took_this_round", "closed")

    def __init__(self, sock: socket.socket, peer: bytes, max_message_bytes: int, zmtp_peer: bool = False) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer                           # (a ZMTP peer's: once its handshake is read)
        self.zmtp = zmtp_peer                      # a ZeroMQ client on an ipc endpoint, not a local stream
        self.reader: Any = zmtp.ZmtpReader(max_message_bytes) if zmtp_peer else MessageReader(max_message_bytes)
        self.backlog: deque[tuple[tuple[Any, ...] | None, list[Any], int]] = deque()   # read, not handed out yet
        self.awaiting = 0                          # requests handed out and not answered yet
        self.queued: deque[memoryview] = deque()   # reply bytes the socket has not taken yet, in order
        self.queued_bytes = 0                      # bytes ever queued (the offsets below count from 0)
        self.written = 0                           # of those, bytes the socket has taken
        self.reply_ends: deque[int] = deque()      # where each queued reply ends, in queued_bytes
        self.reading = True                        # False once the client shut its side or broke the framing
        self.farewell: list[Any] | None = None     # the framing's error reply, sent after every other
        self.took_this_round = False               # gave its intake in this round's events
        self.closed = False


class StreamServer:
    """The daemon's ``unix://`` endpoints and their connections (see the module contract)."""

    def __init__(self, *, max_message_bytes: int, send_hwm: int, ipc_mode: int, intake: int = 16,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.max_message_bytes = max_message_bytes
        self.send_hwm = send_hwm
        self.ipc_mode = ipc_mode
        self.intake = intake
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.max_connections = min(max_connections, max(8, soft // 2)) if soft > 0 else max_connections
        self.listeners: dict[int, socket.socket] = {}
        self.zmtp_listeners: set[int] = set()    # the listeners of ipc endpoints (ZeroMQ's clients)
        self.identities: dict[bytes, StreamConnection] = {}   # ZMTP peers' routing identities in use
        self._handshaking: dict[int, tuple[float, StreamConnection]] = {}   # ZMTP connections not ready: by when
        self.paths: list[Path] = []
        self.connections: dict[int, StreamConnection] = {}
        self.on_change: Any = None      # called when the descriptors or their events change
        self._registered: dict[int, int] = {}    # what :meth:`sync` last gave the daemon's poller
        # Connections with requests read and not handed out (by fd): truthy while any. Read-only
        # outside this class (the loop asks every round: a dict, not a property, whose call it would pay).
        self.backlogged: dict[int, StreamConnection] = {}
        self._accept_paused_until = 0.0          # accepting failed (out of descriptors): until then, not
        self._warned_at = -WARN_EVERY_S
        self._numbers = itertools.count(1)
        self.refused = 0
        self.replies_unread_dropped = 0
        self.replies_to_departed = 0

    # --- endpoints -------------------------------------------------------------------------
    def bind(self, endpoint: str) -> None:
        """Listen on a ``unix://`` endpoint (a local stream) or an ``ipc://`` one (ZMTP, for
        ZeroMQ's clients; not one in the abstract namespace)."""
        zmtp_peers = (path := stream_path(endpoint)) is None
        path = zmtp_path(endpoint) if zmtp_peers else path
        if path is None:
            raise ValueError(f"not a {SCHEME} or an {IPC_SCHEME} endpoint: {endpoint}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            listener.bind(str(path))
            os.chmod(path, self.ipc_mode)
            listener.listen(128)
        except OSError as exc:
            listener.close()
            raise OSError(exc.errno, f"cannot bind {endpoint}: {exc.strerror}") from None
        self.listeners[listener.fileno()] = listener
        if zmtp_peers:
            self.zmtp_listeners.add(listener.fileno())
        self.paths.append(path)

    def interest(self) -> list[tuple[int, int]]:
        """Every descriptor to poll and its events (none for a listener while accepting rests, nor
        for a connection with nothing to read or write now)."""
        out = [] if self._accept_paused_until else [(fd, _IN) for fd in self.listeners]
        for fd, c in self.connections.items():
            flags = (_IN if c.reading and not c.backlog else 0) | (_OUT if c.queued else 0)
            if flags:
                out.append((fd, flags))
        return out

    def sync(self, poller: zmq.Poller, rank: dict[Any, int], fresh: bool = False) -> None:
        """Bring ``poller``'s registrations of these descriptors to :meth:`interest` (``fresh``: a
        new poller, none registered yet), each ranked with the request sockets in ``rank``."""
        if fresh:
            self._registered = {}
        want = dict(self.interest())
        for fd in [fd for fd in self._registered if fd not in want]:
            poller.unregister(fd)
            rank.pop(fd, None)
            del self._registered[fd]
        for fd, flags in want.items():
            if self._registered.get(fd) != flags:
                poller.register(fd, flags)
                rank[fd] = 1
                self._registered[fd] = flags

    def tick(self, now: float) -> None:
        """Once a second (the daemon's tick): listen again once a rest is over."""
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._changed()
        for _, conn in [entry for entry in self._handshaking.values() if entry[0] <= now]:
            log.debug("an ipc connection did not complete its handshake in %.0f s", HANDSHAKE_TIMEOUT_S)
            self._close(conn)

    def owns(self, fd: Any) -> bool:
        return fd in self.connections or fd in self.listeners

    # --- events ----------------------------------------------------------------------------
    def on_event(self, fd: int, events: int) -> list[Request]:
        """Handle ``events`` on ``fd``: the requests to handle now (see the module contract)."""
        listener = self.listeners.get(fd)
        if listener is not None:
            self._accept(listener)
            return []
        conn = self.connections.get(fd)
        if conn is None:
            return []
        if events & _OUT and conn.queued:
            self._flush(conn)
        if conn.closed or not conn.reading or conn.backlog or not events & (_IN | _GONE):
            return []
        try:
            for frames in conn.reader.read_from(conn.sock):
                if type(frames) is TooLarge:
                    conn.backlog.append((frames.envelope, [frames], frames.size))
                    continue
                envelope: tuple[Any, ...] | None = ()
                if conn.zmtp:   # the frames after the delimiter (a DEALER's first), the envelope before it
                    if frames and not frames[0].nbytes:
                        del frames[0]
                    else:
                        envelope, frames = zmtp.split_envelope(frames)
                size = 0
                for frame in frames:   # (a loop: a generator's resumptions are calls, one a frame)
                    size += frame.nbytes
                conn.backlog.append((envelope, frames, size))
        except BlockingIOError:
            pass
        except FramingError:
            pass   # reported by the reader's ``broken`` (below): the messages before it stand
        except OSError:   # ConnectionError included: the client shut its side or has gone
            conn.reading = False
            self._changed()
        if conn.zmtp:
            reader = conn.reader
            if not conn.peer and reader.ready:
                self._identify(conn)
            if not reader.ready and reader.broken is not None:   # not a ZeroMQ peer: nothing to say
                log.debug("an ipc connection ends in its handshake: %s", reader.broken)
                self._close(conn)
                return []
            if reader.pong is not None and not conn.queued:   # (else the client is not reading anyway)
                pong, reader.pong = reader.pong, None
                self._write(conn, pong)
                if conn.closed:
                    return []
        broken = conn.reader.broken
        if broken is not None and conn.reading:   # answered once the requests before it are
            conn.reading = False
            conn.farewell = proto.encode(proto.error_header(proto.MALFORMED, f"{broken}; the connection ends", None))
            self._changed()
        out = self._take(conn)
        conn.took_this_round = bool(conn.backlog)   # its backlog's turn is the next round
        self._close_if_done(conn)
        return out

    def backlog_round(self) -> list[Request]:
        """The next requests of every connection with a backlog, ``intake`` each, but for those
        that gave theirs in this round's events (:meth:`on_event`); ends the round."""
        out: list[Request] = []
        for conn in list(self.backlogged.values()):
            if conn.took_this_round:
                conn.took_this_round = False
            else:
                out += self._take(conn)
        return out

    def _take(self, conn: StreamConnection) -> list[Request]:
        backlog = conn.backlog
        n = min(len(backlog), self.intake)
        out = []
        for _ in range(n):   # (a loop, not a comprehension's call)
            out.append((conn, *backlog.popleft()))
        conn.awaiting += n
        if backlog and conn.fd not in self.backlogged:
            self.backlogged[conn.fd] = conn
            self._changed()   # not read while it has a backlog
        elif not backlog and self.backlogged.pop(conn.fd, None) is not None:
            self._changed()   # read again
        return out

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:   # EMFILE and the like: the listeners rest, the clients wait
                now = time.monotonic()
                if now - self._warned_at >= WARN_EVERY_S:
                    self._warned_at = now
                    log.warning("cannot accept local connections (resting %.0f s at a time): %s", ACCEPT_PAUSE_S, exc)
                self._accept_paused_until = now + ACCEPT_PAUSE_S
                self._changed()
                return
            if len(self.connections) >= self.max_connections:
                self.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            if listener.fileno() in self.zmtp_listeners:   # its peer is known once its handshake is read
                conn = StreamConnection(sock, b"", self.max_message_bytes, zmtp_peer=True)
                self.connections[conn.fd] = conn
                self._handshaking[conn.fd] = (time.monotonic() + HANDSHAKE_TIMEOUT_S, conn)
                self._write(conn, zmtp.handshake())
            else:
                conn = StreamConnection(sock, b"s:%d" % next(self._numbers), self.max_message_bytes)
                self.connections[conn.fd] = conn
            self._changed()

    def _identify(self, conn: StreamConnection) -> None:
        """A ZMTP peer's identity, as a ROUTER gives it: the routing identity its client set, while
        no other connection holds it; otherwise one of its own, unguessable (ZeroMQ's counter-based
        ones are not: adaptd.daemon.peers)."""
        identity = conn.reader.identity
        holder = self.identities.get(identity) if identity else None
        if identity and (holder is None or holder.closed or not holder.reading or hung_up(holder.sock)):
            # (one whose client has gone, still writing the replies it was owed, hands it over:
            # its client reconnected, as libzmq does, and its retries must find their replies;
            # gone even when the loop has not read its end yet: one with a backlog is not read)
            self.identities[identity] = conn
            conn.peer = ROUTE_PREFIX + identity
        else:
            conn.peer = ROUTE_PREFIX + b"\0" + secrets.token_bytes(8)
        self._handshaking.pop(conn.fd, None)

    # --- replies ---------------------------------------------------------------------------
    def send(self, conn: StreamConnection, frames: Sequence[Any], envelope: Sequence[Any] = ()) -> bool:
        """The reply to one request of ``conn`` (``frames`` as :func:`adaptd.wire.protocol.encode`
        makes them, the empty delimiter first; ``envelope``, the request's): written now as far as
        the socket takes it, the rest queued; False when it was dropped."""
        if conn.awaiting:
            conn.awaiting -= 1
        else:   # a second reply to one request: a fault of the request path, not the client's
            log.warning("a reply to a local client that is owed none (peer %s)", conn.peer)
        try:
            return self._send_now(conn, [*envelope, *frames] if envelope else frames)
        finally:
            self._close_if_done(conn)

    def _write(self, conn: StreamConnection, data: bytes) -> None:
        """Bytes of the connection's own (a handshake, a PONG), after what is queued; not a reply."""
        if not conn.queued:
            try:
                sent = conn.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            if sent == len(data):
                return
            data = data[sent:]
        was_idle = not conn.queued
        conn.queued.append(memoryview(data))
        conn.queued_bytes += len(data)
        if was_idle:
            self._changed()   # it waits to write now (after the append: the poller asks the queue)

    def _send_now(self, conn: StreamConnection, frames: Sequence[Any]) -> bool:
        if conn.closed:
            self.replies_to_departed += 1
            return False
        if len(conn.reply_ends) >= self.send_hwm:
            self.replies_unread_dropped += 1
            if self.replies_unread_dropped in (1, 10, 100) or self.replies_unread_dropped % 1000 == 0:
                log.warning("a local client is not reading its replies: %d dropped so far (server.send_hwm = %d)",
                            self.replies_unread_dropped, self.send_hwm)
            return False
        buffers, size = zmtp.framed(frames) if conn.zmtp else _stream_framed(frames)
        if conn.queued:
            rest = [memoryview(b).cast("B") for b in buffers]
        else:
            try:   # (at most IOV_MAX buffers a call: a ZMTP reply's frames take two each)
                sent = conn.sock.sendmsg(buffers if len(buffers) <= MAX_IOV else buffers[:MAX_IOV])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                self.replies_to_departed += 1
                return False
            if sent == size:   # (the common case: the whole reply in one write)
                return True
            rest = unsent(buffers, sent)
        was_idle = not conn.queued
        conn.queued.extend(rest)
        conn.queued_bytes += sum(v.nbytes for v in rest)
        conn.reply_ends.append(conn.queued_bytes)
        if was_idle:
            self._changed()   # it waits to write now
        return True

    def _flush(self, conn: StreamConnection) -> None:
        """Write queued bytes until the socket is full or the queue empty."""
        queued = conn.queued
        while queued:
            try:
                sent = conn.sock.sendmsg(list(itertools.islice(queued, 64)))   # (64: under MAX_IOV)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            conn.written += sent
            while sent and queued:
                head = queued[0]
                if sent >= head.nbytes:
                    sent -= head.nbytes
                    queued.popleft()
                else:
                    queued[0] = head[sent:]
                    sent = 0
        while conn.reply_ends and conn.reply_ends[0] <= conn.written:
            conn.reply_ends.popleft()
        if not queued:
            self._changed()   # no longer waits to write
            self._close_if_done(conn)

    # --- ends ------------------------------------------------------------------------------
    def _close_if_done(self, conn: StreamConnection) -> None:
        """Close a connection no longer read once it owes nothing: every request answered (then
        its farewell sent, if the framing broke) and every reply written."""
        if conn.reading or conn.closed or conn.awaiting or conn.backlog:
            return
        if conn.farewell is not None:
            farewell, conn.farewell = conn.farewell, None
            self._send_now(conn, farewell)
        if not conn.queued and not conn.closed:
            self._close(conn)

    def _close(self, conn: StreamConnection) -> None:
        if conn.closed:
            return
        conn.closed = True
        conn.queued.clear()
        conn.reply_ends.clear()
        conn.backlog.clear()
        self.connections.pop(conn.fd, None)
        self.backlogged.pop(conn.fd, None)
        self._handshaking.pop(conn.fd, None)
        if conn.zmtp and self.identities.get(conn.reader.identity) is conn:
            del self.identities[conn.reader.identity]
        try:
            conn.sock.close()
        except OSError:
            pass
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def close(self) -> None:
        """Shutdown: what each connection's socket takes now of its queued replies (the drain's
        last ``SHUTTING_DOWN`` answers among them), then every socket and file."""
        self.on_change = None
        for conn in list(self.connections.values()):
            if conn.queued:
                self._flush(conn)
            self._close(conn)
        for listener in self.listeners.values():
            listener.close()
        self.listeners.clear()
        for path in self.paths:
            try:
                path.unlink()
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.debug("cannot remove %s: %s", path, exc)
        self.paths.clear()


def _stream_framed(frames: Sequence[Any]) -> tuple[list[Any], int]:
    """A reply's buffers on a local stream (its frames after the delimiter); one with more frames
    than a stream message holds becomes an ``INTERNAL`` error reply."""
    try:
        return framed(frames[1:])
    except ValueError as exc:
        log.error("a reply to a local client cannot be framed: %s", exc)
        try:
            request_id = proto.decode(frames)[0].get("id")
        except proto.ProtocolError:
            request_id = None
        return framed(proto.encode(proto.error_header(
            proto.INTERNAL, f"the reply has {len(frames) - 1} frames; the local stream carries at most "
            f"{MAX_FRAMES}: use ZeroMQ or fewer outputs", request_id))[1:])

