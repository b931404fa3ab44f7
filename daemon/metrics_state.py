"""The metrics read at scrape time: the daemon's state as its main thread last published it, the
selector's per-arm state, the store's lag and the power sampler.

Contract
--------
* :func:`snapshot` runs on the daemon's main thread (once a second, from its tick) and returns
  plain values copied from the pool, the request path, the replay cache and the selector
  (through :class:`SelectorReader`); the caller publishes it by replacing
  :attr:`StateCollector.snapshot` whole. Nothing in a published snapshot is changed afterwards.
* :meth:`StateCollector.collect` runs on the metrics listener's threads: it reads the last
  published snapshot and the thread-safe readers of the store (``lag_s``, ``describe``) and the
  energy meter (``describe``), never the pool, the selector or the replay cache themselves.
* Units: the snapshot keeps the daemon's (ms, mJ); the families hold seconds and joules.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

ARMS_PER_PUBLISH = 8   # selector arms re-read per publish (once a second), after a full first read


def snapshot(daemon: Any, selector: SelectorReader) -> dict[str, Any]:
    """What the main thread publishes for scrapes: plain values, copied (main thread only)."""
    d = daemon
    return {
        "at": time.time(),
        "placements": [{"placement": s["name"], "queued": s["queued"], "busy": s["busy"], "ready": s["ready"],
                        "restarts": s["restarts"]} for s in d.pool.snapshots()],
        "queue_limit": d.config.placements.queue_limit,
        "replies": d.path.requests, "error_replies": dict(d.path.errors_by_code), "busy_early": d.path.busy_early,
        "in_flight": len(d.path.pending),
        "replay": {"entries": len(d.replays), "bytes": d.replays.bytes, "hits": d.replays.hits},
        "selector": selector.rows(d.policy),
    }


class SelectorReader:
    """The selector's live state per arm, through its public reads (``n_arms``, ``arm(i)``,
    ``cost_model.arm_stats(i)``: what its ``stats()`` is made of), on the main thread.

    Reading an arm costs about 13 us here, so after a full read of a new selector (start-up,
    reload) each call refreshes at most ``ARMS_PER_PUBLISH`` arms, in turn: the main loop never
    stalls for more than that many per second, however large the repository. A policy without a
    selector (``most_accurate``) has no rows."""

    def __init__(self) -> None:
        self._selector: Any = None
        self._rows: dict[int, dict[str, Any]] = {}
        self._next = 0

    def rows(self, policy: Any) -> list[dict[str, Any]]:
        selector = getattr(policy, "selector", None)
        if selector is None or not hasattr(selector, "cost_model"):
            self._selector, self._rows = None, {}
            return []
        n = selector.n_arms
        if selector is not self._selector:
            self._selector, self._rows, self._next = selector, {}, 0
            todo = range(n)
        else:
            todo = [(self._next + k) % n for k in range(min(n, ARMS_PER_PUBLISH))]
            self._next = (self._next + len(todo)) % max(n, 1)
        for i in todo:   # each row a new dict: a published list is never changed
            self._rows[i] = arm_row(selector.arm(i), selector.cost_model.arm_stats(i), selector.accuracy_used(i)[0])
        return list(self._rows.values())


def arm_row(spec: Any, stats: Mapping[str, Any], accuracy: float | None) -> dict[str, Any]:
    """One arm's gauges from its ``ArmSpec``, its cost model's ``arm_stats`` and the accuracy the
    selector judges it on (the validation accuracy, or live fidelity's bound)."""
    version = str(spec.version or "")
    model = str(spec.model)
    if version and model.endswith(":" + version):   # the daemon keys a selector's model "name:version"
        model = model[: -len(version) - 1]
    latency, energy = stats.get("latency_ms") or {}, stats.get("energy_mj") or {}
    return {"labels": (model, version, str(spec.variant), str(spec.placement)),
            "latency_bound_ms": latency.get("bound"), "latency_estimate_ms": latency.get("estimate"),
            "energy_estimate_mj": energy.get("estimate"), "energy_bound_mj": energy.get("bound"),
            "energy_estimated": bool(stats.get("energy_estimated")), "accuracy": accuracy,
            "measurements": stats.get("count")}


class StateCollector:
    """Scrape-time families from the published snapshot and the thread-safe readers."""

    def __init__(self, store: Any, meter: Any) -> None:
        self.store = store
        self.meter = meter
        self.snapshot: dict[str, Any] = {}   # replaced whole by the main thread

    def describe(self) -> list[Any]:
        return []   # names are not checked against the record-fed families' (they differ)

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot
        if snap:
            yield from self._daemon(snap)
            yield from self._selector(snap["selector"])
        yield from self._store()
        yield from self._power()

    @staticmethod
    def _daemon(snap: Mapping[str, Any]) -> Iterator[Any]:
        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        queued = GaugeMetricFamily("adaptd_queue_depth", "Requests waiting for a placement's worker "
                                   "(besides the one running).", labels=["placement"])
        busy = GaugeMetricFamily("adaptd_worker_busy", "1 while a placement's worker runs a request.",
                                 labels=["placement"])
        up = GaugeMetricFamily("adaptd_worker_up", "1 when a placement's worker is ready for requests.",
                               labels=["placement"])
        restarts = CounterMetricFamily("adaptd_worker_restarts", "Restarts of a placement's worker after it died.",
                                       labels=["placement"])
        for p in snap["placements"]:
            name = [p["placement"]]
            queued.add_metric(name, p["queued"])
            busy.add_metric(name, 1.0 if p["busy"] else 0.0)
            up.add_metric(name, 1.0 if p["ready"] else 0.0)
            restarts.add_metric(name, p["restarts"])
        yield from (queued, busy, up, restarts)
        yield gauge("adaptd_queue_limit", "Requests a placement may hold waiting; beyond it BUSY.", snap["queue_limit"])
        yield counter("adaptd_replies", "Replies sent, control and error replies included.", snap["replies"])
        errors = CounterMetricFamily("adaptd_error_replies", "Error replies by code, including requests refused "
                                     "before a decision (malformed, unknown model, bad shape), which make no "
                                     "selection record.", labels=["code"])
        for code, n in sorted(snap["error_replies"].items()):
            errors.add_metric([code], n)
        yield errors
        yield counter("adaptd_busy_refused_early", "Requests refused BUSY before parsing, every placement that "
                      "could run their model being full (no selection record).", snap["busy_early"])
        yield gauge("adaptd_requests_in_flight", "Inference requests queued or running.", snap["in_flight"])
        replay = snap["replay"]
        yield counter("adaptd_replay_hits", "Retried requests answered from a stored reply.", replay["hits"])
        yield gauge("adaptd_replay_entries", "Replies kept for replay.", replay["entries"])
        yield gauge("adaptd_replay_bytes", "Bytes of replies kept for replay.", replay["bytes"])
        yield gauge("adaptd_snapshot_age_seconds", "Age of the daemon state this scrape shows (published "
                    "once a second by the daemon's loop).", max(0.0, time.time() - snap["at"]))

    @staticmethod
    def _selector(rows: list[dict[str, Any]]) -> Iterator[Any]:
        arm = ["model", "version", "variant", "placement"]
        bound = GaugeMetricFamily("adaptd_selector_latency_bound_seconds", "Latency bound the selector judges "
                                  "max_latency_ms on, at its configured confidence (queue wait excluded).", labels=arm)
        estimate = GaugeMetricFamily("adaptd_selector_latency_estimate_seconds", "The selector's latency estimate.",
                                     labels=arm)
        energy = GaugeMetricFamily("adaptd_selector_energy_estimate_joules", "The selector's energy estimate, "
                                   "measured or estimated (a power model).", labels=[*arm, "source"])
        energy_bound = GaugeMetricFamily("adaptd_selector_energy_bound_joules", "Energy bound at the configured "
                                         "confidence.", labels=[*arm, "source"])
        accuracy = GaugeMetricFamily("adaptd_selector_accuracy_ratio", "The accuracy the selector judges "
                                     "min_accuracy on (validation, or live fidelity's bound).", labels=arm)
        measured = GaugeMetricFamily("adaptd_selector_measurements", "Executions the selector has learnt from "
                                     "since its last reset (start-up or reload).", labels=arm)
        for r in rows:
            labels = list(r["labels"])
            source = [*labels, "estimated" if r["energy_estimated"] else "measured"]
            for family, value, scale, lab in ((bound, r["latency_bound_ms"], 1e-3, labels),
                                              (estimate, r["latency_estimate_ms"], 1e-3, labels),
                                              (energy, r["energy_estimate_mj"], 1e-3, source),
                                              (energy_bound, r["energy_bound_mj"], 1e-3, source),
                                              (accuracy, r["accuracy"], 1.0, labels),
                                              (measured, r["measurements"], 1.0, labels)):
                if value is not None:
                    family.add_metric(lab, value * scale)
        yield from (bound, estimate, energy, energy_bound, accuracy, measured)

    def _store(self) -> Iterator[Any]:
        d = self.store.describe()
        yield GaugeMetricFamily("adaptd_store_lag_seconds", "Age of the oldest selection record not yet committed "
                                "to the store (0 when none waits).", value=self.store.lag_s())
        yield GaugeMetricFamily("adaptd_store_pending_records", "Records submitted, waiting for the store's writer.",
                                value=d["pending"])
        yield CounterMetricFamily("adaptd_store_records_written", "Records committed to the store.",
                                  value=d["rows_written"])
        yield CounterMetricFamily("adaptd_store_records_dropped", "Records the store gave up on after "
                                  "repeated failed inserts.", value=d["dropped"])

    def _power(self) -> Iterator[Any]:
        d = self.meter.describe()
        source = GaugeMetricFamily("adaptd_power_estimated", "1 when per-request energy comes from a power model "
                                   "rather than a sensor (replies say 'estimated').", labels=["source"])
        source.add_metric([str(d["source"])], 1.0 if d["estimated"] else 0.0)
        yield source
        yield GaugeMetricFamily("adaptd_power_sample_rate_hertz", "The power sampler's achieved rate "
                                "(0 without a sensor).", value=d["sample_hz"])
        yield GaugeMetricFamily("adaptd_power_sample_rate_configured_hertz", "The power sampler's configured rate "
                                "(0 without a sensor).", value=d["sample_hz_configured"])
        yield GaugeMetricFamily("adaptd_power_sampler_up", "1 while the power sampler process runs.",
                                value=1.0 if d["sampler_alive"] else 0.0)
        yield CounterMetricFamily("adaptd_power_sample_read_errors", "Failed sensor reads.", value=d["read_errors"])


