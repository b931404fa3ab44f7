"""The local stream endpoints: ADPT/1 over Unix stream sockets, without ZeroMQ's I/O threads.

Contract
--------
* A ``unix://PATH`` request endpoint (PROTOCOL.md §2.3) is a listening ``AF_UNIX`` stream socket,
  its file mode ``[server] ipc_mode`` as for ipc endpoints; a socket file a dead daemon left is
  replaced (the caller holds the instance lock). Everything is non-blocking and driven by the
  daemon's loop: :meth:`StreamServer.interest` gives each descriptor and the events it waits for
  (a connection waits to write only while it has replies queued); :meth:`StreamServer.on_event`
  handles one, accepting, reading or writing, and returns the messages completed
  (``(connection, frames, size)``) for the request path.
* Each connection is one peer (``StreamConnection.peer``: ``s:`` and a number never reused in a
  daemon's run): its replay entries and regions belong to it, a retry is answered from them on the
  same connection; a new connection is a new peer.
* Limits, as the ZeroMQ endpoints have them: a message over ``max_message_bytes`` or with a frame
  count out of range breaks the framing: the connection gets one error reply without an id
  (``TOO_LARGE`` or ``MALFORMED``) and is closed. At most ``max_connections`` connections; one
  more is accepted and closed at once (counted in ``refused``); when accepting fails (the process
  is out of descriptors) the listeners are left alone for ``ACCEPT_PAUSE_S`` (:meth:`~StreamServer.tick`
  takes them back), so that a flood of connections cannot spin the daemon's loop. Replies never block the daemon:
  what the socket does not take now is queued, and a reply beyond ``send_hwm`` queued is
  dropped and counted (``replies_unread_dropped``), so a client that stops reading loses its own
  replies, never the daemon's memory. A reply to a connection that has gone is dropped and
  counted (``replies_to_departed``). A connection that ends with requests in flight leaves
  them to finish; their replies are dropped as departed.
* Threads: the daemon's main thread only.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import stat
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq

from adaptd.wire import protocol as proto
from adaptd.wire.stream import FramingError, MessageReader, message_bytes, unsent

log = logging.getLogger("adaptd.streams")

SCHEME = "unix://"
MAX_CONNECTIONS = 1024
ACCEPT_PAUSE_S = 1.0     # how long a listener is left alone after accept() failed (out of descriptors)
# The daemon polls with ZeroMQ's poller, which reports a descriptor's events in its own flags
# (a hang-up or an error as POLLERR).
_IN, _OUT, _GONE = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.POLLERR)


def stream_path(endpoint: str) -> Path | None:
    return Path(endpoint[len(SCHEME):]) if endpoint.startswith(SCHEME) else None


class StreamConnection:
    """One client's connection: its reader, its queue of reply bytes not yet written."""

    __slots__ = ("sock", "fd", "peer", "reader", "queued", "queued_replies", "closed")

    def __init__(self, sock: socket.socket, peer: bytes, max_message_bytes: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.reader = MessageReader(max_message_bytes)
        self.queued: deque[memoryview] = deque()   # bytes the socket has not taken yet, in order
        self.queued_replies = 0                    # replies with bytes in ``queued``
        self.closed = False


class StreamServer:
    """The daemon's ``unix://`` endpoints and their connections (see the module contract)."""

    def __init__(self, *, max_message_bytes: int, send_hwm: int, ipc_mode: int,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.max_message_bytes = max_message_bytes
        self.send_hwm = send_hwm
        self.ipc_mode = ipc_mode
        self.max_connections = max_connections
        self.listeners: dict[int, socket.socket] = {}
        self.paths: list[Path] = []
        self.connections: dict[int, StreamConnection] = {}
        self.on_change: Any = None      # called when the descriptors or their events change
        self._registered: dict[int, int] = {}   # what :meth:`sync` last gave the daemon's poller
        self._accept_paused_until = 0.0         # accepting failed (out of descriptors): until then, not
        self._numbers = itertools.count(1)
        self.refused = 0
        self.replies_unread_dropped = 0
        self.replies_to_departed = 0

    # --- endpoints -------------------------------------------------------------------------
    def bind(self, endpoint: str) -> None:
        path = stream_path(endpoint)
        if path is None:
            raise ValueError(f"not a {SCHEME} endpoint: {endpoint}")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()   # left by a daemon that is gone (the caller holds the instance lock)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            listener.bind(str(path))
            os.chmod(path, self.ipc_mode)
            listener.listen(128)
        except OSError as exc:
            listener.close()
            raise OSError(exc.errno, f"cannot bind {endpoint}: {exc.strerror}") from None
        self.listeners[listener.fileno()] = listener
        self.paths.append(path)

    def interest(self) -> list[tuple[int, int]]:
        """Every descriptor to poll and its events (no listener while accepting is paused)."""
        out = [] if self._accept_paused_until else [(fd, _IN) for fd in self.listeners]
        out += [(fd, _IN | _OUT if c.queued else _IN) for fd, c in self.connections.items()]
        return out

    def tick(self, now: float) -> None:
        """Once a second (the daemon's tick): listen again once a pause is over."""
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._changed()

    def owns(self, fd: Any) -> bool:
        return fd in self.connections or fd in self.listeners

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

    # --- events ----------------------------------------------------------------------------
    def on_event(self, fd: int, events: int) -> list[tuple[StreamConnection, list[memoryview], int]]:
        """Handle ``events`` on ``fd``: the messages they complete (connection, frames, size)."""
        listener = self.listeners.get(fd)
        if listener is not None:
            self._accept(listener)
            return []
        conn = self.connections.get(fd)
        if conn is None:
            return []
        if events & _OUT and conn.queued:
            self._flush(conn)
        if not events & (_IN | _GONE) or conn.closed:
            return []
        try:
            messages = conn.reader.read_from(conn.sock)
        except BlockingIOError:
            return []
        except FramingError as exc:
            code = proto.TOO_LARGE if exc.too_large else proto.MALFORMED
            self.send(conn, proto.encode(proto.error_header(code, f"{exc}; the connection is closed", None)))
            self._close(conn)
            return []
        except OSError:   # ConnectionError included: the peer has gone, mid-message or not
            self._close(conn)
            return []
        return [(conn, frames, sum(f.nbytes for f in frames)) for frames in messages]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:   # EMFILE and the like: stop listening a while, the peers wait
                if not self._accept_paused_until:
                    log.warning("cannot accept local connections for %.0f s: %s", ACCEPT_PAUSE_S, exc)
                self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
                self._changed()
                return
            if len(self.connections) >= self.max_connections:
                self.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            conn = StreamConnection(sock, b"s:%d" % next(self._numbers), self.max_message_bytes)
            self.connections[conn.fd] = conn
            self._changed()

    # --- replies ---------------------------------------------------------------------------
    def send(self, conn: StreamConnection, frames: Sequence[Any]) -> bool:
        """Queue one reply (``frames`` as :func:`adaptd.wire.protocol.encode` makes them, the
        empty delimiter first) and write what the socket takes now; False when it was dropped."""
        if conn.closed:
            self.replies_to_departed += 1
            return False
        if conn.queued_replies >= self.send_hwm:
            self.replies_unread_dropped += 1
            if self.replies_unread_dropped in (1, 10, 100) or self.replies_unread_dropped % 1000 == 0:
                log.warning("a local client is not reading its replies: %d dropped so far (server.send_hwm = %d)",
                            self.replies_unread_dropped, self.send_hwm)
            return False
        buffers = message_bytes(frames[1:])
        if not conn.queued:
            try:
                sent = conn.sock.sendmsg(buffers)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                self.replies_to_departed += 1
                return False
            rest = unsent(buffers, sent)
            if not rest:
                return True
            conn.queued.extend(rest)
            conn.queued_replies += 1
            self._changed()   # it waits to write now
            return True
        conn.queued.extend(memoryview(b).cast("B") for b in buffers)
        conn.queued_replies += 1
        return True

    def _flush(self, conn: StreamConnection) -> None:
        """Write queued bytes until the socket is full or the queue empty."""
        queued = conn.queued
        while queued:
            try:
                sent = conn.sock.sendmsg(list(itertools.islice(queued, 64)))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn)
                return
            while sent and queued:
                head = queued[0]
                if sent >= head.nbytes:
                    sent -= head.nbytes
                    queued.popleft()
                else:
                    queued[0] = head[sent:]
                    sent = 0
        conn.queued_replies = 0
        self._changed()   # no longer waits to write

    # --- ends ------------------------------------------------------------------------------
    def _close(self, conn: StreamConnection) -> None:
        if conn.closed:
            return
        conn.closed = True
        conn.queued.clear()
        self.connections.pop(conn.fd, None)
        try:
            conn.sock.close()
        except OSError:
            pass
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def close(self) -> None:
        for conn in list(self.connections.values()):
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

