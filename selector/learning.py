"""The selector's learning side: what it does with each measured execution.

Contract
--------
* :class:`Learning` is a part of :class:`~.policy.Selector` (its base class), kept in a module of
  its own: ``update`` / ``update_many`` feed measured executions to the arms' online estimates
  (:class:`~.online.OnlineCostModel`) and to the learner of what the structural priors miss
  (:class:`~.priors.PriorLearner`), whose shifts move the priors of the arms on a placement.
* Pure and single-threaded, as the selector is; units ms, mJ, s.
* Batches: ``update_many`` computes each arm's published figures once for all its samples, which
  is what the daemon's deferred bookkeeping saves per request. The state afterwards is that of
  one ``update`` per sample, except that a prior shift the learner asks for mid-batch is applied
  after the batch's updates: an arm measured for its first time later in the same batch blends
  the prior as it was before that shift (the blend's share is gone after ``full_trust_n`` samples).
  A sample ``update`` would refuse is left out of a batch (``update_many`` returns how many), so
  one bad measurement costs only itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .online import sample_error


class Learning:
    # Set by Selector.__init__: the online model, the learner (or None), the arms and indices.
    _online: Any
    _learner: Any
    _n_arms: int
    _pindex: dict[str, int]
    _pidx: np.ndarray
    _model_range: dict[str, tuple[int, int]]
    _on_placement: dict[int, np.ndarray]   # placement index -> its arms' ids (made on first use)
    _on_model_placement: dict[tuple[str, str], np.ndarray]   # (model, placement) -> its arms' ids (the same)
    arms: Any
    # and Selector's arm_id() and prior_energy_mj()

    def update(self, arm: int | tuple[str, str, str], latency_ms: float, energy_mj: float | None,
               energy_estimated: bool, t_s: float, compute_ms: float | None = None) -> None:
        """Feed one measured execution: the arm (id or (model, variant, placement)), its latency
        (ms, model load and queue wait excluded), its energy (mJ, or None), whether that energy is
        estimated, when it finished (s, same origin as ``now_s``) and, when known, the execution
        alone (``compute_ms``: the rest of the latency is the caller's path, learnt per placement
        by the learner, as what the energy priors missed is). Raises ValueError for a measurement
        ``update_many`` would leave out, and changes nothing then. One sample's own code: what a
        paced client's flush feeds costs less this way; a test holds it to ``update_many``'s state."""
        a = arm if isinstance(arm, (int, np.integer)) else self.arm_id(*arm)
        if not 0 <= a < self._n_arms:
            raise KeyError(f"no arm id {a}")
        self._online.update(a, latency_ms, energy_mj, energy_estimated, t_s)
        learner = self._learner
        if learner is None:
            return
        spec = self.arms[a]
        if compute_ms is not None:
            for placement, delta_ms in learner.path_sample(spec.placement, max(0.0, latency_ms - compute_ms)):
                self.shift_placement_priors(placement, delta_ms)
        prior_mj = self.prior_energy_mj(a)
        if energy_mj is not None and prior_mj == prior_mj:
            for model, placement, delta_mj in learner.energy_sample(spec.model, spec.placement, energy_mj - prior_mj):
                self.shift_energy_priors(model, placement, delta_mj)

    def update_many(self, observations: Iterable[tuple[Any, float, float | None, bool, float, float | None]]) -> int:
        """Feed several measured executions, in the order they finished, each as ``update``'s
        arguments. Each arm's estimates are computed once for all its samples; the learner sees
        every sample in order, and the prior shifts it asks for are applied after the arms'
        updates (their sums: the same priors as one ``update`` at a time). A sample that
        ``update`` would refuse (a latency or time not finite, a negative latency or energy) is
        left out, the others learnt from; returns how many were left out. An unknown arm raises
        KeyError before anything is learnt."""
        by_arm: dict[int, list[tuple[Any, ...]]] = {}
        ordered: list[tuple[int, tuple[Any, ...]]] = []
        for x in observations:
            a = x[0]
            if not isinstance(a, int):
                a = int(a) if isinstance(a, np.integer) else self.arm_id(*a)
            if not 0 <= a < self._n_arms:
                raise KeyError(f"no arm id {a}")
            sample = x[1:]   # (latency_ms, energy_mj, estimated, t_s, compute_ms)
            ordered.append((a, sample))
            samples = by_arm.get(a)
            if samples is None:
                by_arm[a] = [sample]
            else:
                samples.append(sample)
        refused = 0
        for a, samples in by_arm.items():
            try:
                self._online.update_batch(a, samples)   # it changes nothing when it refuses a sample
            except ValueError:
                kept = [x for x in samples if _valid(x)]
                refused += len(samples) - len(kept)
                self._online.update_batch(a, kept)
        if refused:
            ordered = [(a, x) for a, x in ordered if _valid(x)]
        learner = self._learner
        if learner is None:
            return refused
        path: dict[str, float] = {}
        energy: dict[tuple[str, str], float] = {}
        arm_of: dict[int, tuple[str, str, float]] = {}   # (the batch's shifts come after it: its priors hold)
        for a, (latency_ms, energy_mj, _, _, compute_ms) in ordered:   # the learner's averages depend on order
            known = arm_of.get(a)
            if known is None:
                spec = self.arms[a]
                known = arm_of[a] = (spec.model, spec.placement, self.prior_energy_mj(a))
            model, placement, prior_mj = known
            if compute_ms is not None:
                beyond_ms = latency_ms - compute_ms   # (max() written out: per sample)
                for p, delta_ms in learner.path_sample(placement, beyond_ms if beyond_ms > 0.0 else 0.0):
                    path[p] = path.get(p, 0.0) + delta_ms
            if energy_mj is not None and prior_mj == prior_mj:
                for m, p, delta_mj in learner.energy_sample(model, placement, energy_mj - prior_mj):
                    energy[m, p] = energy.get((m, p), 0.0) + delta_mj
        for placement, delta_ms in path.items():
            self.shift_placement_priors(placement, delta_ms)
        for (model, placement), delta_mj in energy.items():
            self.shift_energy_priors(model, placement, delta_mj)
        return refused

    def shift_placement_priors(self, placement: str, delta_ms: float) -> None:
        """Add ``delta_ms`` to the latency prior of every arm on ``placement`` (see
        :meth:`OnlineCostModel.shift_priors`); unknown placements are ignored."""
        p = self._pindex.get(placement)
        if p is not None:
            on = self._on_placement.get(p)
            if on is None:
                on = self._on_placement[p] = np.flatnonzero(self._pidx == p)
            self._online.shift_priors(on, delta_ms)

    def shift_energy_priors(self, model: str, placement: str, delta_mj: float) -> None:
        """Add ``delta_mj`` to the energy prior of ``model``'s arms on ``placement`` not yet
        measured (see :meth:`OnlineCostModel.shift_energy_priors`); unknown names are ignored."""
        on = self._on_model_placement.get((model, placement))
        if on is None:
            p = self._pindex.get(placement)
            rng = self._model_range.get(model)
            if p is None or rng is None:
                return
            lo, hi = rng
            on = self._on_model_placement[model, placement] = lo + np.flatnonzero(self._pidx[lo:hi] == p)
        self._online.shift_energy_priors(on, delta_mj)



def _valid(sample: tuple[Any, ...]) -> bool:
    """Whether ``OnlineCostModel.update_batch`` accepts the sample (its own rule)."""
    try:
        return sample_error(sample) is None
    except (TypeError, ValueError):   # not a number at all
        return False
