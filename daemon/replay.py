"""Stored replies for idempotent retries (PROTOCOL.md §8), bounded and private to each client.

Contract
--------
* A reply is stored under (peer, request id): ``peer`` is the identity the daemon saw the request
  come from (the client's CurveZMQ public key when authentication is on, else its connection's
  routing identity), never something the request itself claims. A retry is answered from the
  store only when it comes from the same peer, so knowing another client's request id (the
  selection stream publishes ids) reaches nothing.
* A reply is kept as it was sent: its header packed (msgpack bytes, as :func:`~adaptd.wire.
  protocol.pack` made it: one object to keep and free, not a tree of maps) and its bodies.
* Bounded three ways: entries (``max_entries``), bytes (``max_bytes``: the bodies and the packed
  header) and age (``window_s``). An entry older than the window is never answered; it is
  dropped when a retry looks it up or at the next :meth:`expire`, whichever comes first (or
  sooner, pushed out by new replies); the daemon calls :meth:`expire` about once a second, so
  memory held by expired replies is released within a second of their expiry. Replies larger
  than ``max_bytes`` on their own are not stored.
* Stored bodies are the buffers that were sent (zero-copy frames or arrays); the store keeps
  them alive until the entry goes.
* Single-threaded: the daemon's main thread only. Times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

# An entry is a plain tuple (a NamedTuple's constructor is Python code, run on every reply):
_EXPIRES, _HEADER, _BODIES, _NBYTES = range(4)   # monotonic s, packed header, bodies, bytes held
_ARRAY = np.ndarray


class ReplayCache:
    def __init__(self, window_s: float, max_entries: int, max_bytes: int) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.enabled = window_s > 0 and max_entries > 0 and max_bytes > 0
        self.bytes = 0
        self.hits = 0
        self._entries: OrderedDict[tuple[bytes, str], tuple[float, bytes, list[Any], int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, peer: bytes, request_id: str, now: float) -> tuple[bytes, list[Any]] | None:
        """The stored reply for this peer's id (packed header, bodies), or None."""
        if not self._entries:
            return None
        entry = self._entries.get((peer, request_id))
        if entry is None:
            return None
        if entry[_EXPIRES] < now:
            self._drop((peer, request_id))
            return None
        self.hits += 1
        return entry[_HEADER], entry[_BODIES]

    def put(self, peer: bytes, request_id: str, header: bytes, bodies: list[Any], now: float) -> None:
        """Keep a reply sent: its packed header and its bodies."""
        if not self.enabled:
            return
        nbytes = len(header)
        for body in bodies:
            nbytes += body.nbytes if type(body) is _ARRAY else _nbytes(body)
        if nbytes > self.max_bytes:
            return
        key = (peer, request_id)
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self.bytes -= old[_NBYTES]
        entries[key] = (now + self.window_s, header, bodies, nbytes)
        self.bytes += nbytes
        while len(entries) > self.max_entries or self.bytes > self.max_bytes:
            self.bytes -= entries.popitem(last=False)[1][_NBYTES]

    def expire(self, now: float) -> None:
        """Drop every entry past its window (entries are in expiry order: one window for all)."""
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry[_EXPIRES] >= now:
                return
            self._drop(key)

    def _drop(self, key: tuple[bytes, str]) -> None:
        self.bytes -= self._entries.pop(key)[_NBYTES]


def _nbytes(buffer: Any) -> int:
    n = getattr(buffer, "nbytes", None)
    if n is not None:
        return int(n)
    inner = getattr(buffer, "buffer", None)   # zmq.Frame
    return len(inner if inner is not None else buffer)
