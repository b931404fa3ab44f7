"""What the structural priors miss, learnt from executions across arms and kept across reloads.

Contract
--------
* One :class:`PriorLearner` per daemon; it outlives each selector (a reload builds a new
  :class:`~.policy.Selector` over the same learner). Pure: every number is passed in, no clock,
  no I/O. Thread safety: none; the selector's owner serialises calls.
* Units: latency in ms, energy in mJ, power in W.
* Completion (:meth:`~PriorLearner.complete`): a variant's latency prior is its execution alone;
  ``round_trip_ms`` (per placement, the caller's channel to its worker: every measured service
  time includes it) is added to it, and an arm with a latency prior but no energy prior gets
  ``power_w`` (per placement, the power model's estimate, labelled estimated like every figure
  from it) times its latency prior, so an energy bound can be met, and the arm probed, before its
  first measurement. Measurements replace both.
* The path (:meth:`~PriorLearner.path_sample`): the rest of the caller's request path (receiving,
  deciding, wake-ups, the reply: about 0.5 ms a request on the development machine, ten times a
  tiny model's execution) is learnt per placement from executions' latency minus execution, as
  a running *median*: the median of the first PATH_FIRST_N samples, then a step of PATH_STEP of
  itself towards each new sample (up if above, down if below), which settles where half the
  samples lie on either side. On a shared host the path's distribution is broad and skewed: one
  execution can take 20 times the usual (a preempted worker), and with a fifth of the guest's CPU
  stolen its mean was twice its median, so a mean (even of samples clipped to 3x it) shifted
  every never-measured arm's prior by twice the usual path (tests/test_selection_total_latency.py).
  A lasting change is still followed: a doubling in about 15 executions. Once the median moves
  away from what the priors include (by over 10%, or 0.02 ms), every latency prior on that
  placement is shifted by the difference: an arm never measured is predicted with the path its
  placement's other arms paid (:meth:`~.online.OnlineCostModel.shift_priors`). A placement with no
  execution of its own yet borrows the median of the other placements' paths (at least its own
  round trip): most of the path is the daemon's own work, the same on every placement, and
  without it a fresh daemon predicted 0.008 ms for a request that took 1.5 ms on each placement's
  first request. Its own first execution replaces the borrowed figure.
* Energy (:meth:`~PriorLearner.energy_sample`), per model and placement: an average (weight
  OVERHEAD_WEIGHT) of measured energy minus the arm's prior shifts, once it moves by over 10%,
  the energy prior of that model's arms on that placement not yet measured (a tiny model's
  priors come from hot-loop latencies, 0.017 ms for the demo's float32, while the daemon's
  executions take 0.045 ms, so its energy priors were 2-3x low). A placement where the model has
  no energy measurement yet borrows the median of its other placements' misses, each scaled by
  the ratio of the two placements' power (``power_w``, when known for both), as it borrows the
  path; its own measurements replace the borrowed figure.
* Both are kept across reloads: :meth:`~PriorLearner.start` gives a new generation of priors
  what has been learnt (the shifts to apply to it). Pure: the numbers are passed in.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import replace

OVERHEAD_WEIGHT = 0.1   # each execution's share in its model and placement's energy-miss average
PATH_FIRST_N = 10       # the learnt path: the median of this many first samples, ...
PATH_STEP = 0.05        # ... then a step of this share of itself towards each sample


class PriorLearner:
    """What the structural priors miss, learnt from executions (see the module's contract)."""

    def __init__(self, round_trip_ms: Mapping[str, float] | None = None,
                 power_w: Mapping[str, float] | None = None) -> None:
        self.round_trip_ms: dict[str, float] = dict(round_trip_ms or {})   # placement -> ms
        self.power_w: dict[str, float] = dict(power_w or {})               # placement -> W (estimated)
        self.path_ms: dict[str, float] = {}                  # placement -> learnt path (ms)
        self.energy_miss_mj: dict[tuple[str, str], float] = {}   # (model, placement) -> learnt miss
        self._path_first: dict[str, list[float]] = {}
        self._applied_ms: dict[str, float] = {}              # what the current priors include
        self._applied_mj: dict[tuple[str, str], float] = {}

    def complete(self, arm):
        """``arm`` (an ArmSpec) with the round trip added to its latency prior and, lacking an
        energy prior, the power model's; unchanged when it has no latency prior."""
        if arm.prior_latency_ms is None:
            return arm
        energy_mj = arm.prior_energy_mj
        if energy_mj is None and arm.placement in self.power_w:
            energy_mj = self.power_w[arm.placement] * max(arm.prior_latency_ms, 0.0)
        return replace(arm, prior_latency_ms=arm.prior_latency_ms + self.round_trip_ms.get(arm.placement, 0.0),
                       prior_energy_mj=energy_mj)

    def start(self, placements: Iterable[str]) -> tuple[list[tuple[str, float]], list[tuple[str, str, float]]]:
        """A new generation of priors over ``placements``, completed (round trips included): the
        (placement, ms) and (model, placement, mJ) shifts that add what has been learnt so far."""
        self._applied_ms = {p: self.round_trip_ms.get(p, 0.0) for p in placements}
        self._applied_mj = {}
        path = [(p, d) for p, learnt in self.path_ms.items() if (d := self._path_shift(p, learnt)) is not None]
        path += self._borrowed_shifts()
        energy = [(*where, d) for where, learnt in self.energy_miss_mj.items()
                  if (d := self._energy_shift(where, learnt)) is not None]
        for model in {m for m, _ in self.energy_miss_mj}:
            energy += self._borrowed_energy_shifts(model)
        return path, energy

    def path_sample(self, placement: str, path_ms: float) -> list[tuple[str, float]]:
        """One execution's latency beyond the interpreter on ``placement``: into its running median;
        the (placement, ms) shifts latency priors need now: its own, and those of placements that
        borrow the median path (none of their own yet). Empty when nothing moved enough."""
        first = self._path_first.setdefault(placement, [])
        old = self.path_ms.get(placement)
        if len(first) < PATH_FIRST_N or old is None:
            first.append(path_ms)
            new = statistics.median(first)
        else:
            step = PATH_STEP * (0.01 if 0.01 > old else old)   # (max() written out: per request)
            new = old + step if path_ms > old else old - step if path_ms < old else old
        self.path_ms[placement] = new
        shift = self._path_shift(placement, new)
        if shift is None:
            return []
        return [(placement, shift), *self._borrowed_shifts()]

    def _borrowed_shifts(self) -> list[tuple[str, float]]:
        """Shifts for the current generation's placements with no path of their own: to the median
        of the learnt paths, or their round trip where that is more."""
        if not self.path_ms:
            return []
        median_ms = statistics.median(self.path_ms.values())
        return [(p, d) for p in self._applied_ms if p not in self.path_ms
                and (d := self._path_shift(p, max(median_ms, self.round_trip_ms.get(p, 0.0)))) is not None]

    def energy_sample(self, model: str, placement: str, miss_mj: float) -> list[tuple[str, str, float]]:
        """One execution's energy minus its arm's prior: into the average of its model on its
        placement; the (model, placement, mJ) shifts the energy priors of that model's unmeasured
        arms need now: there, and on the placements that borrow it. Empty when nothing moved enough."""
        where = (model, placement)
        old = self.energy_miss_mj.get(where)
        new = miss_mj if old is None else old + OVERHEAD_WEIGHT * (miss_mj - old)
        self.energy_miss_mj[where] = new
        shift = self._energy_shift(where, new)
        if shift is None:
            return []
        return [(model, placement, shift), *self._borrowed_energy_shifts(model)]

    def _borrowed_energy_shifts(self, model: str) -> list[tuple[str, str, float]]:
        """Shifts for the current generation's placements where ``model`` has no energy miss of
        its own: to the median of its misses elsewhere, scaled by the power ratio where known."""
        own = {p: m for (mo, p), m in self.energy_miss_mj.items() if mo == model}
        out = []
        for p in self._applied_ms:
            if p in own or not own:
                continue
            w = self.power_w.get(p)
            scaled = [m * w / self.power_w[q] if w and self.power_w.get(q) else m for q, m in own.items()]
            if (d := self._energy_shift((model, p), statistics.median(scaled))) is not None:
                out.append((model, p, d))
        return out

    def _path_shift(self, placement: str, learnt_ms: float) -> float | None:
        applied = self._applied_ms.get(placement, 0.0)
        if abs(learnt_ms - applied) > (t if (t := 0.1 * applied) > 0.02 else 0.02):   # (max(), per request)
            self._applied_ms[placement] = learnt_ms
            return learnt_ms - applied
        return None

    def _energy_shift(self, where: tuple[str, str], learnt_mj: float) -> float | None:
        applied = self._applied_mj.get(where, 0.0)
        if abs(learnt_mj - applied) > 0.1 * (b if (b := abs(learnt_mj)) > (a := abs(applied)) else a):   # (max())
            self._applied_mj[where] = learnt_mj
            return learnt_mj - applied
        return None
