"""Follow the daemon's selection stream (PROTOCOL.md §9) as it happens.

Contract
--------
* Lifecycle: ``Subscriber(endpoint, models=...)`` creates a ``SUB`` socket, subscribes to
  ``sel.<model>`` per model (or ``sel.`` for all) and connects; :meth:`close` (or ``with``)
  closes it.
* Best effort, as the stream is: messages published before the subscription reached the
  daemon, or while this subscriber was too slow, are lost. For a complete record read the
  daemon's store (``adaptd log export``).
* Not thread-safe (one ZeroMQ socket): use it from one thread.
* :meth:`recv` returns one §9.1 record (a dict; ``ts`` in Unix seconds, ``*_ms`` in ms,
  ``*_mj`` in mJ, ``energy_estimated`` true for estimated energy), or ``None`` on timeout.
  Messages that are not ADPT01 selection messages are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import msgpack
import zmq

from adaptd.clients.client import default_pub_endpoint
from adaptd.wire.protocol import SIGNATURE
from adaptd.wire.auth import CurveKeys

TOPIC_PREFIX = b"sel."


class Subscriber:
    def __init__(self, endpoint: str | None = None, models: Iterable[str] | str | None = None,
                 context: zmq.Context | None = None, curve: CurveKeys | None = None) -> None:
        self.endpoint = endpoint or default_pub_endpoint()
        self.skipped = 0
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        curve = curve if curve is not None else CurveKeys.from_env()   # as the clients: [auth] curve
        if curve is not None:
            curve.apply(self._socket)
        if isinstance(models, str):
            models = [models]
        # A topic filter is a prefix: "sel.digits" would also match "sel.digits2", so the
        # exact model is checked again in recv().
        self.models = frozenset(models) if models else None
        for topic in ([TOPIC_PREFIX + m.encode() for m in self.models] if self.models else [TOPIC_PREFIX]):
            self._socket.setsockopt(zmq.SUBSCRIBE, topic)
        self._socket.connect(self.endpoint)

    def recv(self, timeout_ms: float | None = None) -> dict[str, Any] | None:
        """The next selection record, or None when none came within ``timeout_ms`` (None: wait)."""
        while True:
            if not self._socket.poll(None if timeout_ms is None else max(0, int(timeout_ms))):
                return None
            frames = self._socket.recv_multipart()
            if len(frames) != 3 or frames[1] != SIGNATURE or not frames[0].startswith(TOPIC_PREFIX):
                self.skipped += 1
                continue
            try:
                record = msgpack.unpackb(frames[2], raw=False)
            except Exception:
                self.skipped += 1
                continue
            if not isinstance(record, dict):
                self.skipped += 1
                continue
            if self.models is not None and frames[0][len(TOPIC_PREFIX):].decode("utf-8", "replace") not in self.models:
                continue
            return record

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            record = self.recv()
            if record is not None:
                yield record

    def close(self) -> None:
        self._socket.close(0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
