"""The metrics fed by selection records: requests, constraints, latency histograms, energy, probes.

Contract
--------
* :meth:`RecordMetrics.observe` takes one selection record (PROTOCOL.md §9.1, as
  ``adaptd.wire.records.selection_record`` builds it) on the daemon's main thread, the only
  writer; it never raises. :meth:`RecordMetrics.collect` (a ``prometheus_client`` collector,
  registered on the daemon's private registry) runs on the metrics listener's threads.
* Why not ``prometheus_client.Counter``/``Histogram``: each of their updates takes a lock and a
  labelled child costs a look-up, about 10 us per record in all here; the daemon's main thread
  is the one that serves requests. Figures are plain ints and floats in dicts and lists, written
  by one thread; a scrape copies each dict or list in one C-level call (atomic under the GIL:
  no Python code runs between its items) and renders the copies with the library's metric
  families. A histogram's ``_sum`` may lag its buckets by the record being counted; every
  counter only grows. Labelled series appear with their first record.
* Units: records carry ms and mJ; the families hold seconds and joules.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

log = logging.getLogger("adaptd.metrics")

# Latency buckets (s): 1, 2, 3, 5 per decade from 20 us to 10 s, so a 45 us execution and a 100 us
# one land in different buckets and a multi-second model load still has one.
DURATION_BUCKETS_S: tuple[float, ...] = (
    20e-6, 30e-6, 50e-6,
    *(float(f"{m}e{e}") for e in range(-4, 1) for m in (1, 2, 3, 5)),
    10.0,
)
ARM = ("model", "variant", "placement")
CONSTRAINT_KINDS = (("met_accuracy", "accuracy"), ("met_latency", "latency"), ("met_energy", "energy"))
# (family name, record field, help)
DURATIONS = (
    ("adaptd_request_duration_seconds", "total_ms", "Round trip in the daemon: request received to reply sent."),
    ("adaptd_queue_duration_seconds", "queue_ms", "Request received to its execution's start (decode, choice, "
     "waiting behind other work, dispatch)."),
    ("adaptd_compute_duration_seconds", "compute_ms", "The interpreter's execution, model load excluded."),
)
_BOUNDS = list(DURATION_BUCKETS_S)
_LE = [*(repr(b) for b in DURATION_BUCKETS_S), "+Inf"]


class _Histogram:
    """One arm's histogram: a count per bucket (the last: above every bound) and the sum (s)."""

    __slots__ = ("counts", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS) + 1)
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(_BOUNDS, seconds)] += 1   # le: a value on a bound counts in it
        self.sum_s += seconds


class RecordMetrics:
    """The record-fed families (see the module contract)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, ...], int] = {}        # (model, variant, placement, outcome, code)
        self.constraints: dict[tuple[str, str, str], int] = {}  # (model, kind, met)
        self.probes: dict[tuple[str, str, str], int] = {}
        self.energy_j: dict[tuple[str, ...], float] = {}      # (model, variant, placement, source)
        self.durations: dict[tuple[str, str, str], tuple[_Histogram, _Histogram, _Histogram]] = {}
        self._errors_logged_at = -60.0

    # --- main thread ---------------------------------------------------------------------------
    def observe(self, record: Mapping[str, Any]) -> None:
        """Count one record. Never raises (a fault is logged at most once a minute)."""
        try:
            self._observe(record)
        except Exception:  # noqa: BLE001 - metrics must not fail a request or its bookkeeping
            now = time.monotonic()
            if now - self._errors_logged_at >= 60.0:
                self._errors_logged_at = now
                log.exception("metrics: a selection record could not be counted")

    def _observe(self, r: Mapping[str, Any]) -> None:
        model = r["model"] or ""
        arm = (model, r["variant"] or "", r["placement"] or "")
        outcome = r["outcome"] or ""
        key = (*arm, outcome, r["error_code"] or "")
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        if r["reason_code"] == "probe":
            self.probes[arm] = self.probes.get(arm, 0) + 1
        if outcome != "ok":
            return
        constraints = self.constraints
        for field, kind in CONSTRAINT_KINDS:
            met = r[field]
            if met is not None:
                k = (model, kind, "true" if met else "false")
                constraints[k] = constraints.get(k, 0) + 1
        hists = self.durations.get(arm)
        if hists is None:
            hists = self.durations[arm] = (_Histogram(), _Histogram(), _Histogram())
        for hist, (_, field, _) in zip(hists, DURATIONS):
            ms = r[field]
            if ms is not None:
                hist.observe(ms / 1e3)
        energy_mj = r["energy_mj"]
        if energy_mj is not None and energy_mj == energy_mj:
            k = (*arm, "estimated" if r["energy_estimated"] else "measured")
            self.energy_j[k] = self.energy_j.get(k, 0.0) + max(0.0, energy_mj) / 1e3

    # --- scrapes (any thread) ------------------------------------------------------------------
    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        requests = CounterMetricFamily(
            "adaptd_requests", "Inference requests that reached a decision, by arm, outcome (ok, rejected, error) "
            "and error code ('' when ok). A rejected request's arm is the one closest to meeting it.",
            labels=[*ARM, "outcome", "code"])
        for labels, n in list(self.requests.items()):
            requests.add_metric(labels, n)
        constraints = CounterMetricFamily(
            "adaptd_constraints", "Constraints of answered requests, by kind (accuracy, latency, energy) and "
            "whether the reply met them.", labels=["model", "kind", "met"])
        for labels, n in list(self.constraints.items()):
            constraints.add_metric(labels, n)
        energy = CounterMetricFamily(
            "adaptd_energy_joules", "Energy attributed to answered requests, labelled measured or estimated as "
            "the replies are (an execution read below zero by sensor noise adds nothing).", labels=[*ARM, "source"])
        for labels, joules in list(self.energy_j.items()):
            energy.add_metric(labels, joules)
        probes = CounterMetricFamily(
            "adaptd_probes", "Requests the selector sent to an arm to refresh its estimate (reason 'probe').",
            labels=list(ARM))
        for labels, n in list(self.probes.items()):
            probes.add_metric(labels, n)
        yield from (requests, constraints, energy, probes)
        arms = list(self.durations.items())
        for i, (name, _, doc) in enumerate(DURATIONS):
            family = HistogramMetricFamily(name, doc, labels=list(ARM))
            for labels, hists in arms:
                hist = hists[i]
                counts, total_s = list(hist.counts), hist.sum_s
                cumulative, buckets = 0, []
                for le, n in zip(_LE, counts):
                    cumulative += n
                    buckets.append((le, cumulative))
                family.add_metric(labels, buckets, total_s)
            yield family
