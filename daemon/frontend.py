"""The daemon's client-facing sockets: request and admin ROUTERs, how they bind, how replies leave.

Contract
--------
* :meth:`Frontend.bind` creates one ``ROUTER`` per request endpoint and per admin endpoint (ipc
  only, socket file mode 0600: only the daemon's own user, and root, may connect), guards each
  with CurveZMQ when authentication is on, and binds it; a ``unix://`` request endpoint is a
  local stream instead, and with ``ipc_engine = "adaptd"`` an ipc request endpoint is served by
  the daemon's own ZMTP engine (both :mod:`adaptd.daemon.streams`, ``streams``, which the
  daemon's loop polls). A socket file (ipc or stream) left by a daemon that is gone is
  replaced; the caller holds the instance lock (:mod:`adaptd.daemon.instance`), so it is never
  a live daemon's. On failure every socket bound so far is closed and its file removed.
* Replies (:meth:`Frontend.send`, to either kind of route) never block the daemon. Each client
  connection may have ``send_hwm`` replies waiting that it has not read; a reply beyond that is
  dropped and counted
  (``replies_unread_dropped``), as is a reply to a client that has gone
  (``replies_to_departed``). A client that stops reading loses its own replies, never the
  daemon's memory; a retry of a dropped reply is answered from the replay store.
* The loop polls a ROUTER by its notification descriptor (:meth:`Frontend.router_fds`), which
  is edge-triggered: a message that came after the socket's events were last read may go
  unannounced when a reply is sent on it (the send takes the notification). So
  :meth:`Frontend.send` notes each ROUTER it sends on (``sent_on``), and before it polls, the loop
  asks those, and only those, for their events (:meth:`Frontend.unannounced`); whoever reads a
  ROUTER's events after its last send (the request path's intake) takes it off ``sent_on``.
  ZeroMQ's own poller asked every socket for its events at every poll: two system calls each,
  four per poll with two ROUTERs, even for a request that came over the local stream.
* Threads: the daemon's main thread only (ZeroMQ sockets are not thread-safe).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq

from adaptd.daemon.streams import SCHEME as STREAM_SCHEME
from adaptd.daemon.streams import StreamConnection, StreamServer, stream_path, zmtp_path
from adaptd.wire.frames import readable, send_frames

log = logging.getLogger("adaptd.frontend")

ADMIN_IPC_MODE = 0o600
_NOBLOCK = int(zmq.NOBLOCK)


def ipc_path(endpoint: str) -> Path | None:
    return Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None


def socket_path(endpoint: str) -> Path | None:
    """The socket file of an ipc or a local stream (``unix://``) endpoint, else None."""
    return ipc_path(endpoint) or stream_path(endpoint)


def remove_stale_socket(endpoint: str) -> None:
    """Remove a socket file a dead daemon left at an ipc or local stream endpoint (the caller
    holds the lock)."""
    path = socket_path(endpoint)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


class Frontend:
    def __init__(self, context: zmq.Context, *, max_message_bytes: int, send_hwm: int, ipc_mode: int,
                 guard: Any = None, intake: int = 16, ipc_engine: str = "adaptd") -> None:
        self.context = context
        self.ipc_engine = ipc_engine
        self.max_message_bytes = max_message_bytes
        self.send_hwm = send_hwm
        self.ipc_mode = ipc_mode
        self._guard = guard            # CurveZMQ (adaptd.daemon.auth.Authenticator.guard)
        self.sockets: list[zmq.Socket] = []
        self.admin: set[zmq.Socket] = set()
        self.ipc_paths: list[Path] = []
        self.replies_unread_dropped = 0
        self.replies_to_departed = 0
        self.sent_on: set[zmq.Socket] = set()   # ROUTERs sent on since their events were last read
        self.streams = StreamServer(max_message_bytes=max_message_bytes, send_hwm=send_hwm, ipc_mode=ipc_mode,
                                    intake=intake)

    def bind(self, endpoints: Sequence[str], admin_endpoints: Sequence[str]) -> None:
        try:
            for endpoint in endpoints:
                if endpoint.startswith(STREAM_SCHEME) or self._served_by_the_daemon(endpoint):
                    remove_stale_socket(endpoint)
                    self.streams.bind(endpoint)
                else:
                    self._bind(endpoint, admin=False)
            for endpoint in admin_endpoints:
                self._bind(endpoint, admin=True)
        except BaseException:
            self.close()
            raise

    def _served_by_the_daemon(self, endpoint: str) -> bool:
        """Whether the daemon's own ZMTP engine serves this request endpoint, not a ROUTER: an ipc
        one (not in the abstract namespace) with ``ipc_engine = "adaptd"`` (which the daemon does
        not give with CurveZMQ on)."""
        return self.ipc_engine == "adaptd" and zmtp_path(endpoint) is not None

    def _bind(self, endpoint: str, admin: bool) -> None:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * self.max_message_bytes)
        sock.setsockopt(zmq.SNDHWM, self.send_hwm)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)   # a full or departed peer raises, never blocks
        if self._guard is not None:
            self._guard(sock)
        remove_stale_socket(endpoint)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise OSError(exc.errno, f"cannot bind {endpoint}: {exc.strerror}") from None
        self.sockets.append(sock)
        if admin:
            self.admin.add(sock)
        path = ipc_path(endpoint)
        if path is not None:
            self.ipc_paths.append(path)
            os.chmod(path, ADMIN_IPC_MODE if admin else self.ipc_mode)

    def router_fds(self) -> dict[int, zmq.Socket]:
        """Each ROUTER by its notification descriptor (what the loop polls)."""
        return {sock.getsockopt(zmq.FD): sock for sock in self.sockets}

    def unannounced(self) -> list[zmq.Socket]:
        """The ROUTERs sent on since their events were last read that hold a message (which
        their descriptors may not announce); ``sent_on`` is emptied."""
        waiting = [sock for sock in self.sent_on if readable(sock)]
        self.sent_on.clear()
        return waiting

    def send(self, route: tuple[zmq.Socket, list[Any]], frames: list[Any]) -> bool:
        """Send a reply (envelope + message frames) without blocking; False when it was dropped."""
        sock, envelope = route
        if type(sock) is StreamConnection:
            return self.streams.send(sock, frames, envelope)
        self.sent_on.add(sock)
        try:
            send_frames(sock, [*envelope, *frames], _NOBLOCK)
            return True
        except zmq.Again:   # the peer left send_hwm replies unread
            self.replies_unread_dropped += 1
            if self.replies_unread_dropped in (1, 10, 100) or self.replies_unread_dropped % 1000 == 0:
                log.warning("a client is not reading its replies: %d dropped so far (server.send_hwm = %d)",
                            self.replies_unread_dropped, self.send_hwm)
        except zmq.ZMQError as exc:   # EHOSTUNREACH: the peer went away
            self.replies_to_departed += 1
            log.debug("reply to a departed client dropped: %s", exc)
        return False

    def close(self) -> None:
        self.streams.close()
        for sock in self.sockets:
            sock.close(linger=2000)
        self.sockets.clear()
        self.admin.clear()
        for path in self.ipc_paths:
            try:
                path.unlink()
            except OSError:
                pass
        self.ipc_paths.clear()
