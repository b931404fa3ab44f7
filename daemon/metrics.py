"""The daemon's Prometheus/OpenMetrics endpoint (``[metrics]``, off by default).

Contract
--------
* Lifecycle: :func:`start` (called by the daemon once its parts are assembled and its workers
  are up, only when ``[metrics] enabled = true``; this module is imported only then, so a daemon
  with metrics off never imports ``prometheus_client``) builds a private ``CollectorRegistry``,
  hooks :meth:`DaemonMetrics.observe` to the bookkeeping's ``on_record``, publishes a first
  snapshot and starts an HTTP listener on ``[metrics] address:port`` in a thread of its own.
  :meth:`DaemonMetrics.close` stops the listener (idempotent). A missing ``prometheus-client``
  (the ``metrics`` extra) or a port that cannot be bound is a ``RuntimeError`` with one line.
* Threads: :meth:`DaemonMetrics.observe` (once per selection record:
  :mod:`adaptd.daemon.metrics_records`) and :meth:`DaemonMetrics.publish` (once a second, from
  the daemon's tick: :mod:`adaptd.daemon.metrics_state`) run on the daemon's main thread. Scrapes
  run on the listener's threads and read only copies: of the record-fed figures (one writer,
  copied in one C-level call each), of the last published snapshot (a plain dict, replaced
  whole), and what the store's and the energy meter's thread-safe readers return. Nothing the
  main thread mutates mid-update (pool, selector arrays, replay cache) is read from a scrape.
* What a scrape can lag by: an answered request's record is made in the deferred bookkeeping, at
  the daemon's next idle moment (or before its next control reply); the snapshot is at most about
  a second old (``adaptd_snapshot_age_seconds`` says how old); a selector arm's gauges at most
  ``n_arms / ARMS_PER_PUBLISH`` seconds.
* Costs (``bench/bench_metrics.py``, BENCHMARKS.md): observing a record takes a few dict and list
  updates on the main thread, in the deferred bookkeeping for answered requests (off their round
  trip); requests refused INFEASIBLE or BUSY at dispatch are counted before their reply. A
  scrape renders its text on the listener's thread, which holds the interpreter's lock while it
  does so; the main thread waits for it at most the interpreter's switch interval at a time.
* Names follow Prometheus' rules: ``adaptd_`` prefix, base units (seconds, joules), ``_total`` on
  counters. Labels hold only names the repository and the placements bound (model, variant,
  placement, version), outcomes and error codes: never a request id or a client.
* Units in: records carry ms and mJ; the families hold seconds and joules.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

try:
    from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer
except ImportError:   # the metrics extra is not installed
    raise RuntimeError("[metrics] enabled = true needs the prometheus-client package: "
                       "pip install 'adaptd[metrics]'") from None

from adaptd.daemon.metrics_records import RecordMetrics
from adaptd.daemon.metrics_state import SelectorReader, StateCollector, snapshot
from adaptd.daemon.sched import name_thread

log = logging.getLogger("adaptd.metrics")

SERVE_POLL_S = 0.1   # how often the listener checks for close(): the most it adds to a shutdown


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Scrapes are not logged."""


class DaemonMetrics:
    """The registry, the families and the HTTP listener of one daemon (see the module contract)."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.registry = CollectorRegistry()
        self.records = RecordMetrics()
        self.registry.register(self.records)
        self.state = StateCollector(daemon.store, daemon.meter)
        self.registry.register(self.state)
        ProcessCollector(registry=self.registry)   # the daemon process's CPU time, memory, open files
        self.observe = self.records.observe
        self._selector = SelectorReader()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def publish(self) -> None:
        """Main thread, once a second: a fresh snapshot of the daemon's state for scrapes."""
        try:
            self.state.snapshot = snapshot(self.daemon, self._selector)
        except Exception:  # noqa: BLE001 - a scrape shows an older snapshot rather than stop the loop
            log.exception("metrics: the daemon's state could not be read")

    def listen(self, address: str, port: int) -> None:
        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

        host = address.strip("[]")
        try:
            self._server = make_server(host, port, make_wsgi_app(self.registry), Server, handler_class=_QuietHandler)
        except OSError as exc:
            raise RuntimeError(f"[metrics] cannot listen on {address}:{port}: "
                               f"{exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._serve, name="adaptd-metrics", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        name_thread("adaptd-metrics")
        self._server.serve_forever(poll_interval=SERVE_POLL_S)

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_address[1])

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        books = getattr(self.daemon, "books", None)
        if books is not None and books.on_record == self.observe:
            books.on_record = None


def start(daemon: Any) -> DaemonMetrics:
    """Metrics for an assembled daemon, served on ``[metrics] address:port`` (see the contract)."""
    cfg = daemon.config.metrics
    metrics = DaemonMetrics(daemon)
    daemon.books.on_record = metrics.observe
    metrics.publish()
    metrics.listen(cfg.address, cfg.port)
    log.info("metrics on http://%s:%d/metrics", cfg.address, metrics.port)
    return metrics
