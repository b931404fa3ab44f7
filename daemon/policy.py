"""The daemon's side of selection: the interface a policy offers the request path.

Contract
--------
* A :class:`Policy` is called from the daemon's main thread only: ``choose`` once per request
  (or dry run), ``observe`` once per finished execution, ``reset`` after a reload. ``choose``
  must not block or do I/O; it receives the time instead of reading a clock.
* ``choose`` receives the candidate arms already restricted by the request's pins and the
  input's dtype (never empty) and the worker pool (read only: its queued and in-flight jobs,
  each job's ``context`` a request with ``model`` and ``arm``); it returns a :class:`Choice`. An infeasible request
  under ``reject`` is a Choice with ``arm=None``; the daemon turns it into ``INFEASIBLE``.
* :class:`MostAccuratePolicy` is the trivial baseline: the most accurate variant on the first
  placement that can run it. The cost-model selector lives in :mod:`adaptd.selector`, wrapped
  by :mod:`adaptd.daemon.selection`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from adaptd.wire.protocol import Request
from adaptd.daemon.registry import Arm, ModelVersion, Registry


@dataclass
class Choice:
    arm: Arm | None
    code: str                                 # selected | pinned | probe | best_effort | infeasible
    text: str
    predicted: dict[str, Any] = field(default_factory=dict)
    predicted_met: dict[str, bool] = field(default_factory=dict)
    feasible: bool = True
    violations: dict[str, Any] | None = None
    closest: Arm | None = None
    alternatives: list[dict[str, Any]] | None = None


class Policy(Protocol):
    def choose(self, model: ModelVersion, request: Request, candidates: Sequence[Arm],
               queues: Any, now_s: float) -> Choice: ...

    def observe(self, model: ModelVersion, arm: Arm, latency_ms: float, energy_mj: float | None,
                energy_estimated: bool, now_s: float, compute_ms: float | None = None) -> None: ...

    def reset(self, registry: Registry) -> None: ...

    def set_available(self, model: ModelVersion, arm: Arm, available: bool) -> None: ...


def _predicted_met(request: Request, accuracy: float | None, latency_ms: float | None,
                   energy_mj: float | None) -> dict[str, bool]:
    c = request.constraints
    met: dict[str, bool] = {}
    if c.min_accuracy is not None:
        met["min_accuracy"] = accuracy is not None and accuracy >= c.min_accuracy
    if c.max_latency_ms is not None and latency_ms is not None:
        met["max_latency_ms"] = latency_ms <= c.max_latency_ms
    if c.max_energy_mj is not None and energy_mj is not None:
        met["max_energy_mj"] = energy_mj <= c.max_energy_mj
    return met


class MostAccuratePolicy:
    """Baseline: the most accurate variant (then the smallest) on the first capable placement."""

    def __init__(self) -> None:
        self._latency_ewma_ms: dict[tuple[str, str, str, str], float] = {}

    def choose(self, model: ModelVersion, request: Request, candidates: Sequence[Arm],
               queues: Any, now_s: float) -> Choice:
        def rank(arm: Arm) -> tuple:
            acc = arm.accuracy
            return (-(acc if acc is not None else -1.0), arm.variant.size_bytes, arm.variant.name)

        best_variant = min(candidates, key=rank).variant.name
        arm = next(a for a in candidates if a.variant.name == best_variant)
        key = (model.name, model.version, *arm.key)
        latency_ms = self._latency_ewma_ms.get(key, arm.variant.latency_ms_1thread.median)
        # its "bound" is the mean: it keeps no quantiles, so it says of no level (latency_confidence)
        predicted = {"latency_ms": latency_ms, "latency_bound_ms": latency_ms, "latency_confidence": None,
                     "queue_ms": 0.0, "energy_mj": None, "energy_estimated": True, "accuracy": arm.accuracy}
        pinned = request.pin_variant is not None and request.pin_placement is not None
        return Choice(arm, "pinned" if pinned else "selected",
                      "pinned by the request" if pinned else
                      f"most accurate variant ({arm.variant.name}) on the first placement that runs it",
                      predicted, _predicted_met(request, arm.accuracy, latency_ms, None))

    def observe(self, model: ModelVersion, arm: Arm, latency_ms: float, energy_mj: float | None,
                energy_estimated: bool, now_s: float, compute_ms: float | None = None) -> None:
        key = (model.name, model.version, *arm.key)
        old = self._latency_ewma_ms.get(key)
        self._latency_ewma_ms[key] = latency_ms if old is None else old + 0.2 * (latency_ms - old)

    def reset(self, registry: Registry) -> None:
        self._latency_ewma_ms.clear()

    def set_available(self, model: ModelVersion, arm: Arm, available: bool) -> None:
        """Nothing to do: it chooses among the candidates the daemon passes, which leave such arms out."""
