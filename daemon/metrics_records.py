"""The metrics fed by selection records: requests, constraints, latency histograms, energy, probes.

Contract
--------
* :meth:`RecordMetrics.observe` takes one selection record (PROTOCOL.md §9.1, as
  ``adaptd.wire.records.selection_record`` builds it) on the daemon's main thread, the only
  writer; it never raises. :meth:`RecordMetrics.collect` (a ``prometheus_client`` collector,
  registered on the daemon's private registry) runs on the metrics listener's threads.
* Why not ``prometheus_client.Counter``/``Histogram``: each of their updates takes a lock and a
  labelled child costs a look-up, about 10 us per record in all here, on the daemon's main
  thread, the one that serves requests. Figures are plain ints and floats in per-arm objects,
  dicts and lists, written by that thread alone; a scrape copies each dict or list in one
  C-level call (atomic under the GIL: no Python code runs between its items) and renders the
  copies with the library's metric families. A histogram's ``_sum`` may lag its buckets by the
  record being counted; every counter only grows. Labelled series appear with their first record.
* Units: records carry ms and mJ; the families hold seconds and joules.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
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
    """A count per bucket (the last: above every bound) and the sum (s)."""

    __slots__ = ("counts", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS) + 1)
        self.sum_s = 0.0


class _Arm:
    """One arm's figures from its answered requests."""

    __slots__ = ("ok", "met", "durations", "energy_j")

    def __init__(self) -> None:
        self.ok = 0
        self.met = [0] * 6                                   # (accuracy, latency, energy) x (met, missed)
        self.durations = (_Histogram(), _Histogram(), _Histogram())   # in DURATIONS' order
        self.energy_j: dict[str, float] = {}                 # source (estimated, measured) -> J


class RecordMetrics:
    """The record-fed families (see the module contract)."""

    def __init__(self) -> None:
        self.arms: dict[tuple[str, str, str], _Arm] = {}
        self.refused: dict[tuple[str, ...], int] = {}        # (model, variant, placement, outcome, code), not ok
        self.probes: dict[tuple[str, str, str], int] = {}
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
        key = (r["model"] or "", r["variant"] or "", r["placement"] or "")
        if r["reason_code"] == "probe":
            self.probes[key] = self.probes.get(key, 0) + 1
        outcome = r["outcome"]
        if outcome != "ok":
            k = (*key, outcome or "", r["error_code"] or "")
            self.refused[k] = self.refused.get(k, 0) + 1
            return
        arm = self.arms.get(key)
        if arm is None:
            arm = self.arms[key] = _Arm()
        arm.ok += 1
        met = arm.met
        for i, field in ((0, "met_accuracy"), (2, "met_latency"), (4, "met_energy")):
            m = r[field]
            if m is not None:
                met[i if m else i + 1] += 1
        total, queue, compute = arm.durations
        for hist, ms in ((total, r["total_ms"]), (queue, r["queue_ms"]), (compute, r["compute_ms"])):
            if ms is not None:
                seconds = ms / 1e3
                hist.counts[bisect_left(_BOUNDS, seconds)] += 1   # le: a value on a bound counts in it
                hist.sum_s += seconds
        energy_mj = r["energy_mj"]
        if energy_mj is not None and energy_mj == energy_mj:   # not NaN; below zero (sensor noise) adds 0
            source = "estimated" if r["energy_estimated"] else "measured"
            energy_j = arm.energy_j
            energy_j[source] = energy_j.get(source, 0.0) + (energy_mj / 1e3 if energy_mj > 0.0 else 0.0)

    # --- scrapes (any thread) ------------------------------------------------------------------
    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        arms = list(self.arms.items())
        requests = CounterMetricFamily(
            "adaptd_requests", "Inference requests that reached a decision, by arm, outcome (ok, rejected, error) "
            "and error code ('' when ok). A rejected request's arm is the one closest to meeting it.",
            labels=[*ARM, "outcome", "code"])
        for key, arm in arms:
            requests.add_metric((*key, "ok", ""), arm.ok)
        for labels, n in list(self.refused.items()):
            requests.add_metric(labels, n)
        met: dict[tuple[str, str, str], int] = {}
        energy = CounterMetricFamily(
            "adaptd_energy_joules", "Energy attributed to answered requests, labelled measured or estimated as "
            "the replies are (an execution read below zero by sensor noise adds nothing).", labels=[*ARM, "source"])
        for key, arm in arms:
            counts = list(arm.met)
            for i, (_, kind) in enumerate(CONSTRAINT_KINDS):
                for j, word in ((0, "true"), (1, "false")):
                    if counts[2 * i + j]:
                        k = (key[0], kind, word)
                        met[k] = met.get(k, 0) + counts[2 * i + j]
            for source, joules in list(arm.energy_j.items()):
                energy.add_metric((*key, source), joules)
        constraints = CounterMetricFamily(
            "adaptd_constraints", "Constraints of answered requests, by kind (accuracy, latency, energy) and "
            "whether the reply met them.", labels=["model", "kind", "met"])
        for labels, n in met.items():
            constraints.add_metric(labels, n)
        probes = CounterMetricFamily(
            "adaptd_probes", "Requests the selector sent to an arm to refresh its estimate (reason 'probe').",
            labels=list(ARM))
        for labels, n in list(self.probes.items()):
            probes.add_metric(labels, n)
        yield from (requests, constraints, energy, probes)
        for i, (name, _, doc) in enumerate(DURATIONS):
            family = HistogramMetricFamily(name, doc, labels=list(ARM))
            for key, arm in arms:
                hist = arm.durations[i]
                counts, total_s = list(hist.counts), hist.sum_s
                cumulative, buckets = 0, []
                for le, n in zip(_LE, counts):
                    cumulative += n
                    buckets.append((le, cumulative))
                family.add_metric(key, buckets, total_s)
            yield family
