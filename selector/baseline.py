"""The baseline policy, for comparison with the selector (``[selector] policy = "most_accurate"``):
the most accurate variant (then the smallest file, then by name) on the first placement that can
run it, whatever the request asks.

Contract
--------
* The interface of :class:`~.policy.Selector` where a caller uses it: ``choose`` (the queues are
  ignored), ``update``, ``arm_id``, ``arms``, ``n_arms``; arm ids as the selector's for the same
  arms. "First placement": in the order of ``placements`` as given (then by name).
* Its prediction: the arm's latency as an average of its measurements (each weighing
  ``EWMA_WEIGHT``), the manifest's single-thread median before any. It keeps no quantiles, so the
  bound is that figure and its level None (it accepts a request's ``latency_confidence`` and
  ignores it), and it knows no energy. The prediction is judged by the kernel like any other
  (:func:`~.kernel.meets`: an energy bound is not met by an unknown energy).
* Code ``pinned`` when both pins are given, else ``selected``: it never probes nor rejects.
* Pure; not thread-safe; units ms.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import kernel
from .arms import ArmSpec, ArmTable, arms_from_manifests, attr
from .decision import Decision, Met, Prediction, violations
from .request import QueueSnapshot, Request

EWMA_WEIGHT = 0.2
_NAN = float("nan")


class MostAccurate:
    def __init__(self, arms: Iterable[ArmSpec], placements: Sequence[str] | None = None) -> None:
        arms = list(arms)
        self.table = ArmTable(arms, placements)
        self.arms = self.table.arms
        order = list(placements or ()) + sorted({a.placement for a in arms} - set(placements or ()))
        self._placement_rank = {p: i for i, p in enumerate(order)}
        self._latency_ms: list[float | None] = [None] * len(self.arms)   # average of measurements

    @classmethod
    def from_manifests(cls, manifests: Iterable[Any], placements: Iterable[Any]) -> MostAccurate:
        placements = list(placements)
        return cls(arms_from_manifests(manifests, placements), [str(attr(p, "name")) for p in placements])

    @property
    def n_arms(self) -> int:
        return len(self.arms)

    def arm_id(self, model: str, variant: str, placement: str) -> int:
        return self.table.arm_id(model, variant, placement)

    def choose(self, request: Request, now_s: float, queues: Mapping[str, QueueSnapshot] | None = None,
               *, candidates: Sequence[int] | None = None, explain: bool = False,
               dry_run: bool = False) -> Decision:
        r = request
        lo, hi = self.table.model_range(r.model)
        idx = self.table.candidates(r, lo, hi, candidates)
        ids = [lo + j for j in (range(hi - lo) if idx is None else idx)]

        def rank(a: int) -> tuple:
            acc = self.arms[a].accuracy
            return (-(acc if acc is not None else -1.0), self.arms[a].size_bytes or 0, self.arms[a].variant)

        variant = self.arms[min(ids, key=rank)].variant
        a = min((b for b in ids if self.arms[b].variant == variant),
                key=lambda b: self._placement_rank[self.arms[b].placement])
        spec = self.arms[a]
        latency_ms = self._latency_ms[a]
        if latency_ms is None:
            latency_ms = spec.manifest_latency_ms
        predicted = Prediction(latency_ms, latency_ms, None, 0.0, None, None, True, spec.accuracy)
        met = Met(*kernel.meets(r, _NAN if spec.accuracy is None else spec.accuracy,
                                _NAN if latency_ms is None else latency_ms, _NAN))
        c = r.constraints
        vs = violations(met, (c.min_accuracy, c.max_latency_ms, c.max_energy_mj), (spec.accuracy, latency_ms, None))
        code = "pinned" if r.pinned else "selected"
        text = "pinned by the request" if r.pinned else \
            f"most accurate variant ({spec.variant}) on the first placement that runs it"
        return Decision(r.model, code, text, a, spec.variant, spec.placement, predicted, met, vs, None,
                        len(ids), int(met.all))

    def update(self, arm: int, latency_ms: float, energy_mj: float | None, energy_estimated: bool, t_s: float,
               compute_ms: float | None = None) -> None:
        """One measured execution of ``arm``: its latency into the arm's average (nothing else is kept)."""
        old = self._latency_ms[arm]
        self._latency_ms[arm] = latency_ms if old is None else old + EWMA_WEIGHT * (latency_ms - old)
