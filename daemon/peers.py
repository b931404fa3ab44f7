"""Who sent a request: the peer identity the daemon keys private state on, and its public tag.

Contract
--------
* :func:`peer_of` returns the identity of the connection a request came in on, as ZeroMQ saw it,
  never anything the request claims about itself: with CurveZMQ authentication on, the client's
  public key (the ``User-Id`` our authenticator gives each connection); otherwise the routing
  identity of the client's connection (the ``ROUTER`` envelope). Replies kept for replay
  (:mod:`adaptd.daemon.replay`) and shared-memory regions (:mod:`adaptd.daemon.shm`) belong to a
  peer: another peer cannot reach them. On the ipc endpoint the daemon serves itself
  (:mod:`adaptd.daemon.streams`) the connection's peer is named the same way, ``r:`` and the
  routing identity, by the stream server.
* Without authentication a routing identity is only as private as it is unguessable: libzmq's
  ``ROUTER`` gives a connection that does not choose one a counter-based one (the daemon's own
  ipc engine, 8 random bytes), which a hostile local client could claim once its owner
  disconnected. The client library therefore sets 16 random bytes, and the
  daemon never publishes an identity: :meth:`PeerTags.tag` gives records and the selection
  stream a keyed hash of it instead (stable within one daemon run, useless to reach the peer).
* Pure functions and a small object; the daemon's main thread only.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

KEY_PREFIX = b"k:"      # an authenticated client's key
ROUTE_PREFIX = b"r:"    # a connection's routing identity


def peer_of(envelope: Sequence[Any], first_frame: Any) -> bytes:
    """The peer identity of a request (see the module contract). ``first_frame`` is any frame of
    the message after the envelope (ZeroMQ attaches the connection's metadata to each)."""
    if first_frame is not None:
        user = _user_id(first_frame)
        if user:
            return KEY_PREFIX + user.encode("utf-8", "surrogateescape")
    if len(envelope) == 1:   # a direct DEALER or REQ peer: the common case
        return ROUTE_PREFIX + bytes(envelope[0])   # (a zmq.Frame's bytes, through its buffer protocol)
    return ROUTE_PREFIX + b"/".join(bytes(f) for f in envelope)


def _user_id(frame: Any) -> str | None:
    get = getattr(frame, "get", None)
    if get is None:
        return None
    try:
        return get("User-Id") or None
    except Exception:  # noqa: BLE001 - no metadata on this frame (no authentication)
        return None


class PeerTags:
    """Opaque, stable-per-run tags for peers (``client`` in records when a request names none)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(16)
        self._memo: dict[bytes, str] = {}

    def tag(self, peer: bytes) -> str:
        tag = self._memo.get(peer)
        if tag is None:
            if len(self._memo) > 4096:
                self._memo.clear()
            tag = self._memo[peer] = "peer-" + hashlib.blake2b(peer, key=self._key, digest_size=6).hexdigest()
        return tag
