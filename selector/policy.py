"""The selection policy: per request, the arm (variant x placement) that meets the caller's
constraints at least cost, and why.

Contract
--------
* Lifecycle: build once per repository generation (``Selector(arms, placements, config,
  learner)`` or ``Selector.from_manifests(...)``); then, per request, ``choose`` (``explain`` for
  a dry run), and per measured execution ``update``. A reload builds a new Selector (arm ids are
  only valid within the Selector that issued them); a :class:`~.priors.PriorLearner` passed to
  each carries what was learnt about the priors across them.
* Pure: no sockets, files, threads or clocks; ``now_s`` and measurement timestamps are passed in
  (seconds, any monotonic origin, the same one for both).
* Thread safety: none; the daemon calls ``choose``/``update`` from one thread.
* Determinism: the decision is a function of the arms, every ``update`` so far, the number of
  non-dry-run ``choose`` calls so far (the probe budget) and the call's arguments. ``explain`` and
  ``choose(dry_run=True)`` change nothing.
* Repeats: a decision for a request *object* seen before (the daemon passes a steady client's
  repeated header as one object), with the same candidates (none, or the same tuple object: a
  tuple cannot change) and no queue holding anything, is the one kept from its last ``choose``
  while nothing it was made from has changed since: the cost model's ``version`` (every update
  and prior shift) and the accuracies (``set_accuracy`` drops what was kept). A kept
  ``selected`` decision still takes its turn of the probe budget, and a look that comes due
  decides afresh; ``probe``, ``best_effort`` and ``infeasible`` decisions are never kept. The
  same decisions either way (``tests/test_selector_repeats.py``); a repeat costs a dictionary
  lookup instead of the scan and the decision's making, 12 us of the daemon's 80 per request in
  its hot loop (bench/bench_request_path.py).
* Candidates: a request's pins are resolved here, unless the caller passes ``candidates`` (arm
  ids it has already restricted by the pins and anything else, e.g. an input's dtype or arms set
  aside): then they are the candidates and the pins only mark the decision ``pinned``.
* Units: ms, mJ, s; accuracy as a share.

Policy (PROTOCOL.md §4, §5.2)
-----------------------------
* Arms: every (variant, placement) pair of a model whose runtimes match, ids in sorted
  ``(model, variant, placement)`` order.
* Feasible and best: by the kernel (:mod:`.kernel`). Accuracy >= ``min_accuracy`` (unknown
  never is); the latency bound at the configured confidence (or the lowest kept at or above the
  request's ``latency_confidence``) *plus the predicted queue wait on the arm's placement* <=
  ``max_latency_ms``; the predicted mean energy, or with ``energy_at_confidence`` the energy
  bound (:mod:`.online`), <= ``max_energy_mj`` (unknown never is). Among feasible arms the least
  expected latency (queue included), the least energy, or the most accurate (unknown last); ties
  by the secondary key (energy for ``latency``, latency otherwise), then by arm id.
* Probing (budgets: :class:`~.probe.ProbeBudget`): each non-dry-run decision of code
  ``selected`` earns ``probe_share`` of a probe credit; a whole credit is spent on looking for a
  candidate arm not measured for ``probe_interval_s`` that is itself predicted feasible, the
  best of them by the request's objective (then the longest unmeasured, never measured first,
  then arm id); if there is one it replaces the best, with code ``probe``. Best-first, because
  the arm worth refreshing is the one that would be chosen if its estimate were stale-high:
  oldest-first spent the probes on arms measured hopeless, again and again, while an arm that
  had one slow spell waited (bench/bench_selection.py). One exception, with ``probe_closest``
  (the default): when a request is found infeasible and its *closest* arm's estimate is stale (a
  prior never measured, or older than ``probe_interval_s``) and that arm meets the request's
  accuracy bound (a manifest figure: nothing to learn there), the arm becomes the model's
  pending probe (:class:`~.probe.PendingProbes`), taken at the model's next probe look whose
  request it is predicted to meet, and dropped once the arm has been measured since. A rejection
  teaches the cost model nothing, so without this an arm that fails a tight bound on an old
  estimate stays unmeasured while the requests it might meet are rejected. When no arm is
  predicted feasible, a look on a budget of its own (``probe_share`` of such decisions) takes a
  stale arm that its latency *prior* predicts feasible, best by the objective under that prior,
  and runs it with code ``probe`` and the prior's predictions (``probe_stale_prior``, on by
  default): a stream whose requests share one tight bound was otherwise rejected for good once a
  slow spell had raised every arm's bound above it, since rejections measure nothing.
* Infeasible: the *closest* arm minimises the normalised total violation
  (:func:`~.kernel.violation_totals`), ties by arm id. ``reject``: no arm, code ``infeasible``,
  the closest arm and its violations reported; ``best_effort``: the closest arm, code
  ``best_effort``.
* Pins: both pinned, that arm is returned whatever the predictions (code ``pinned``; ``met``
  stays honest): the kernel applied to one arm.
"""

from __future__ import annotations

import math
from math import isfinite
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from . import kernel
from .arms import ArmSpec, ArmTable, arms_from_manifests, attr
from .config import SelectorConfig
from .learning import Learning
from .decision import Alternative, Decision, Met, Prediction, finite_or_none, number_or_none, reason_text, violations
from .online import OnlineCostModel
from .priors import PriorLearner
from .probe import PendingProbes, ProbeBudget, best_stale, best_stale_columns
from .request import CONSTRAINT_NAMES, InvalidConstraintsError, QueueSnapshot, Request

# Decisions among at most this many candidate arms are scanned by a loop over Python floats
# compiled from the kernel, larger ones by numpy over the model's columns. On the daemon's request
# path a decision runs with cold caches (requests arrive milliseconds apart, other work in
# between), where numpy's per-call dispatch costs most. bench/bench_decision.py --cold (BENCHMARKS.md,
# "How long does the selector take to decide?"): at 24 and 60 arms the loop costs what numpy does hot and 30-40 us less cold; at
# 120 it costs 1.7x numpy's hot and a little less cold; at 200, 2.7x hot and as much cold. 64
# covers a model of 9 variants on up to 7 placements. Same decisions either way: the loop and the
# columns apply the same kernel.
SCALAR_MAX_ARMS = 64
MAX_REPEATS = 256   # requests whose last decision is kept for their repeats (see Selector.choose)


class Selector(Learning):
    """Columnar per-request selector over every arm of every model in a repository."""

    def __init__(self, arms: Iterable[ArmSpec], placements: Sequence[str] | None = None,
                 config: SelectorConfig | None = None, learner: PriorLearner | None = None) -> None:
        self.config = cfg = config or SelectorConfig()
        if learner is not None:
            arms = [learner.complete(a) for a in arms]
        self.table = table = ArmTable(arms, placements)
        specs = table.arms
        self.arms, self.placements = specs, table.placements
        self._pindex = {p: i for i, p in enumerate(self.placements)}
        self._n_arms = len(specs)
        self._pidx = np.array([self._pindex[s.placement] for s in specs], dtype=np.intp)
        self._acc = np.array([np.nan if s.accuracy is None else float(s.accuracy) for s in specs])
        self._acc_key = np.where(np.isnan(self._acc), 1.0, -self._acc)   # accuracy objective: lower is better
        self._acc_unknown = np.isnan(self._acc).astype(np.float64)
        self._acc0 = np.nan_to_num(self._acc, nan=0.0)
        self._model_range = table.ranges
        self._pidx_l: list[int] = self._pidx.tolist()
        self._acc_l: list[float] = self._acc.tolist()
        self._acc_src: list[str] = ["validation"] * len(specs)   # accuracy_source per arm
        prior_lat = np.array([np.nan if s.prior_latency_ms is None else float(s.prior_latency_ms) for s in specs])
        prior_sd = np.array([
            (cfg.prior_rel_sd * float(s.prior_latency_ms) if s.prior_latency_sd_ms is None
             else float(s.prior_latency_sd_ms)) if s.prior_latency_ms is not None else np.nan for s in specs])
        prior_en = np.array([np.nan if s.prior_energy_mj is None else float(s.prior_energy_mj) for s in specs])
        self._online = OnlineCostModel(
            confidence=cfg.confidence, half_life_s=cfg.half_life_s,
            min_update_weight=cfg.min_update_weight, window=cfg.window, min_window=cfg.min_window,
            window_max_age_s=cfg.window_max_age_s, gaussian_floor=cfg.gaussian_floor,
            prior_weight=cfg.prior_weight, full_trust_n=cfg.full_trust_n,
        ).init_priors(prior_lat, prior_sd, prior_en)
        self._models = {model: _Columns(self, lo, hi) for model, (lo, hi) in table.ranges.items()}
        self.probes = ProbeBudget(cfg.probe_share)
        self._probing = self.probes.enabled
        self._pending = PendingProbes()   # per model (its first arm id)
        self.scalar_max_arms = SCALAR_MAX_ARMS
        self._scanners: dict[tuple, Any] = {}   # the kernel's compiled loops, by the shape of a request
        self._repeats: dict[int, tuple[Request, int, Decision, tuple[int, ...] | None]] = {}   # see choose
        self._on_placement: dict[int, np.ndarray] = {}
        self._on_model_placement: dict[tuple[str, str], np.ndarray] = {}
        self._learner = learner
        if learner is not None:   # what was learnt before this generation
            path, energy = learner.start(self.placements)
            for placement, delta_ms in path:
                self.shift_placement_priors(placement, delta_ms)
            for model, placement, delta_mj in energy:
                self.shift_energy_priors(model, placement, delta_mj)

    @classmethod
    def from_manifests(cls, manifests: Iterable[Any], placements: Iterable[Any], predictor: Any = None,
                       config: SelectorConfig | None = None, learner: PriorLearner | None = None) -> Selector:
        """Arms from variant manifests x placements (:func:`~.arms.arms_from_manifests`)."""
        cfg = config or SelectorConfig()
        placements = list(placements)
        return cls(arms_from_manifests(manifests, placements, predictor, cfg.prior_rel_sd),
                   [str(attr(p, "name")) for p in placements], cfg, learner)

    # ------------------------------------------------------------------ lookups
    @property
    def n_arms(self) -> int:
        return self._n_arms

    @property
    def cost_model(self) -> OnlineCostModel:
        return self._online

    def arm_id(self, model: str, variant: str, placement: str) -> int:
        return self.table.arm_id(model, variant, placement)

    def arm(self, arm_id: int) -> ArmSpec:
        return self.arms[arm_id]

    def models(self) -> list[str]:
        return sorted(self._model_range)

    def service_estimate_ms(self, arm_id: int) -> float:
        return float(self._online.est_latency_ms_[arm_id])

    def prior_energy_mj(self, arm_id: int) -> float:
        """The energy prior an arm was built with (mJ; NaN when it had none)."""
        return self._online.prior_energy_mj_.item(arm_id)

    def stats(self) -> list[dict]:
        """Per-arm live statistics, plain types (for the ``stats`` control reply)."""
        return [{"arm_id": i, "model": s.model, "version": s.version, "variant": s.variant,
                 "placement": s.placement, "accuracy": s.accuracy, **self._online.arm_stats(i)}
                for i, s in enumerate(self.arms)]

    def accuracy_used(self, arm_id: int) -> tuple[float | None, str]:
        """The accuracy ``min_accuracy`` is judged on for an arm (None: unknown), and its source."""
        return number_or_none(self._acc_l[arm_id]), self._acc_src[arm_id]

    def set_accuracy(self, model: str, variant: str, accuracy: float | None, source: str) -> int:
        """Set the figure ``min_accuracy`` is judged on for a variant's arms, and its source; how many."""
        m, v = self._models.get(model), (np.nan if accuracy is None else float(accuracy))
        arms = [a for a in range(m.lo, m.hi) if self.arms[a].variant == variant] if m else []
        for a in arms:   # in place: the model's columns are views of these; its lists are remade
            self._acc[a], self._acc_key[a], self._acc_unknown[a] = v, 1.0 if v != v else -v, float(v != v)
            self._acc0[a], self._acc_l[a], self._acc_src[a] = 0.0 if v != v else v, v, source
            m.acc_l, m.acc_key_l = m.acc.tolist(), m.acc_key.tolist()
        self._repeats.clear()
        return len(arms)

    # ------------------------------------------------------------------ learning
    # ------------------------------------------------------------------ the decision
    def explain(self, request: Request, now_s: float, queues: Mapping[str, QueueSnapshot] | None = None,
                candidates: Sequence[int] | None = None) -> Decision:
        """Dry run with alternatives: what ``choose`` would pick now, changing nothing (no probe)."""
        return self.choose(request, now_s, queues, candidates=candidates, explain=True, dry_run=True)

    def choose(self, request: Request, now_s: float, queues: Mapping[str, QueueSnapshot] | None = None,
               *, candidates: Sequence[int] | None = None, explain: bool = False,
               dry_run: bool = False) -> Decision:
        """Pick the arm for ``request`` at time ``now_s`` given the placements' queues.

        ``candidates``: arm ids of the request's model to choose among, already restricted by the
        caller (see the module's contract); None: the model's arms, restricted by the pins.
        Raises UnknownModelError / UnknownVariantError / UnknownPlacementError for a model or pins
        this selector does not know, InvalidConstraintsError for a ``latency_confidence`` above
        the highest level kept. Never raises for an infeasible request: see ``Decision.code``.
        """
        r = request
        waits = self._placement_waits(queues) if queues else None
        repeat = (candidates is None or type(candidates) is tuple) and waits is None and not explain
        looked = None
        if repeat:   # the same request object and candidates as before, nothing learnt since
            hit = self._repeats.get(id(r))
            if hit is not None and hit[0] is r and hit[3] is candidates and hit[1] == self._online.version:
                d = hit[2]
                if d.code == "pinned" or dry_run or not self._probing:
                    return d
                looked = self.probes.look(ProbeBudget.FEASIBLE)
                if not looked:
                    return d
        d = self._choose(r, now_s, waits, candidates, explain, dry_run, looked)
        if repeat and d.code in ("selected", "pinned"):
            if len(self._repeats) >= MAX_REPEATS:
                self._repeats.clear()
            self._repeats[id(r)] = (r, self._online.version, d, candidates)
        return d

    def _choose(self, r: Request, now_s: float, waits: list[float] | None, candidates: Sequence[int] | None,
                explain: bool, dry_run: bool, looked: bool | None) -> Decision:
        m = self._models.get(r.model)
        if m is None:
            self.table.model_range(r.model)   # raises UnknownModelError
        lo, hi = m.lo, m.hi
        try:
            level = self._online.level_for(r.latency_confidence)
        except ValueError as exc:
            raise InvalidConstraintsError(str(exc)) from None
        idx = None if candidates is None and r.variant is None and r.placement is None else \
            self.table.candidates(r, lo, hi, candidates)
        n_cand = hi - lo if idx is None else len(idx)
        if r.variant is not None and r.placement is not None:   # pinned: the kernel on one arm
            i = idx[0]
            alternatives = self._alternatives(r, m, idx, waits, level, i, "pinned") if explain else None
            return self._decision(r, lo + i, "pinned", waits, level, 1, None, now_s, alternatives)
        if not explain and n_cand <= self.scalar_max_arms:
            best, feasible = self._scan_lists(r, m, idx, waits, level)
            if best is not None:
                i, code = best[2], "selected"
                if not dry_run and self._probing and (looked if looked is not None
                                                      else self.probes.look(ProbeBudget.FEASIBLE)):
                    last = m.last.tolist()
                    interval = self.config.probe_interval_s
                    j = self._probe_pick(lo, [(k1, k2, last[j], j) for k1, k2, j in feasible
                                              if j != i and now_s - last[j] > interval])
                    if j is not None:
                        i, code = j, "probe"
                return self._decision(r, lo + i, code, waits, level, n_cand, len(feasible), now_s)
        # numpy over the model's columns: large models, explanations, and what is left when no arm
        # is feasible (the closest, the stale-arm probe)
        figures, cand = self._columns(m, idx, waits, level)
        feas, n_feas, i = kernel.scan_columns(r, figures, cand)
        prior = False   # the decision is predicted by the arm's prior (a stale-arm probe)
        if n_feas:
            code = "selected"
            if not dry_run and self._probing and (looked if looked is not None
                                                  else self.probes.look(ProbeBudget.FEASIBLE)):
                j = self._probe_pick_columns(r, m, feas, i, figures, now_s)
                if j is not None:
                    i, code = j, "probe"
        else:
            total = kernel.violation_totals(r, m.acc0, m.acc_unknown, figures["latency_bound_ms"],
                                            figures["energy_judged_mj"])
            i = int((total if cand is None else np.where(cand, total, np.inf)).argmin())
            code = "best_effort" if r.on_infeasible == "best_effort" else "infeasible"
            j = None
            if not dry_run and self._probing and self.config.probe_stale_prior \
                    and self.probes.look(ProbeBudget.STALE_PRIOR):
                j = self._stale_probe(r, m, cand, figures, level, now_s)
            if j is not None:
                i, code, prior = j, "probe", True
            elif not dry_run and self.config.probe_closest and self._probing \
                    and now_s - self._online.last_update_s_.item(lo + i) > self.config.probe_interval_s \
                    and (r.min_accuracy is None or self._acc.item(lo + i) >= r.min_accuracy):
                # (an arm that fails on accuracy, a manifest figure, has nothing to learn)
                self._pending.note(lo, lo + i, now_s)
        alternatives = self._alternatives(r, m, idx, waits, level, i, code) if explain else None
        return self._decision(r, lo + i, code, waits, level, n_cand, n_feas, now_s, alternatives, prior)

    # ------------------------------------------------------------------ decision helpers
    def _placement_waits(self, queues: Mapping[str, QueueSnapshot]) -> list[float] | None:
        """Predicted wait (ms) per placement index, or None when no queue holds anything."""
        wait = None
        est = self._online.est_latency_ms_
        for name, q in queues.items():
            if q.inflight_arm_id is None and not q.queued_arm_ids:
                continue
            p = self._pindex.get(name)
            if p is None:
                continue
            w = 0.0
            if q.inflight_arm_id is not None:
                rem = est.item(q.inflight_arm_id) - q.inflight_elapsed_ms
                if rem > 0.0:
                    w += rem
            for j in q.queued_arm_ids:
                w += est.item(j)
            if w != w:   # an unknown estimate in the queue: treat as no information
                w = 0.0
            if wait is None:
                wait = [0.0] * len(self.placements)
            wait[p] = w
        return wait

    def _scan_lists(self, r: Request, m: _Columns, idx: list[int] | None, waits: list[float] | None, level: int):
        """The kernel's compiled loop over the model's candidates: (best (key1, key2, j) or None,
        every feasible arm's)."""
        est, bnd, energy = m.est, m.bounds[level], m.energy
        judged = m.energy_bound if self.config.energy_at_confidence else None
        if idx is None or 4 * len(idx) > m.hi - m.lo:   # Python floats; a few candidates of many: read in place
            est, bnd, energy = est.tolist(), bnd.tolist(), energy.tolist()
            if judged is not None:
                judged = judged.tolist()
        c = r.constraints
        bounds = (c.min_accuracy, c.max_latency_ms, c.max_energy_mj)
        shape = (bounds[0] is not None, bounds[1] is not None, bounds[2] is not None, r.objective, waits is not None)
        scan = self._scanners.get(shape)
        if scan is None:
            scan = self._scanners[shape] = kernel.scanner(shape[:3], r.objective, waits is not None)
        return scan(range(m.hi - m.lo) if idx is None else idx, est, bnd, energy, energy if judged is None else judged,
                    m.acc_l, m.acc_key_l, m.pidx_l, waits, bounds)

    def _columns(self, m: _Columns, idx: list[int] | None, waits: list[float] | None, level: int,
                 prior: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """The kernel's figures of the model's arms as numpy columns (by their priors with
        ``prior``), and the candidates' mask (None: all)."""
        arm_wait = None if waits is None else np.array(waits)[m.pidx]
        figures = kernel.figure_columns(m.prior if prior else m.est, (m.prior_bounds if prior else m.bounds)[level],
                                        m.energy, m.energy_bound if self.config.energy_at_confidence else m.energy,
                                        m.acc, m.acc_key, arm_wait)
        figures["queue_ms"] = arm_wait
        cand = None
        if idx is not None:
            cand = np.zeros(m.hi - m.lo, dtype=bool)
            cand[idx] = True
        return figures, cand

    def _probe_pick(self, lo: int, stale: list[tuple[float, float, float, int]]) -> int | None:
        """Among the stale feasible arms but the best ((key1, key2, last measured, j) each): the
        model's pending probe if it is one of them, else the first in probe order."""
        taken = self._pending.take(lo, {e[3] for e in stale}, self._online.last_update_s_)
        return taken if taken is not None else best_stale(stale)

    def _probe_pick_columns(self, r: Request, m: _Columns, feas: np.ndarray | None, best: int,
                            figures: dict[str, np.ndarray], now_s: float) -> int | None:
        """:meth:`_probe_pick` over the model's columns."""
        stale = (now_s - m.last) > self.config.probe_interval_s
        if feas is not None:
            stale &= feas
        stale[best] = False
        j = np.flatnonzero(stale)
        taken = self._pending.take(m.lo, j, self._online.last_update_s_)
        if taken is not None:
            return taken
        k1, k2 = kernel.KEYS[r.objective]
        return best_stale_columns(j, figures[k1], figures[k2], m.last)

    def _stale_probe(self, r: Request, m: _Columns, cand: np.ndarray | None, figures: dict[str, np.ndarray],
                     level: int, now_s: float) -> int | None:
        """For a request no arm is predicted to meet: the best stale arm (not measured for
        ``probe_interval_s``) that its latency *prior* predicts to meet it, by the request's
        objective under that prior (the kernel applied to the prior's figures); None if none.

        A rejection teaches the cost model nothing, so without this a stream whose requests all
        carry one tight bound is rejected for good once a slow spell has put every arm's bound
        above it: nothing is measured again, and the bounds never come down. An estimate nobody
        has refreshed for ``probe_interval_s`` says little about now; the prior (the structural
        predictor's, with the placement's learnt path) is what is known then. Energy and accuracy
        are judged as for any decision."""
        ok = (now_s - m.last) > self.config.probe_interval_s   # stale
        if cand is not None:
            ok &= cand
        prior = kernel.figure_columns(m.prior, m.prior_bounds[level], figures["energy_mj"], figures["energy_judged_mj"],
                                      m.acc, m.acc_key, figures["queue_ms"])
        for verdict in kernel.meets(r, prior["accuracy"], prior["latency_bound_ms"], prior["energy_judged_mj"]):
            if verdict is not None:
                ok &= verdict
        if not ok.any():
            return None
        k1, k2 = kernel.KEYS[r.objective]
        return kernel.lexmin(ok, prior[k1], prior[k2])

    def _alternatives(self, r: Request, m: _Columns, idx: list[int] | None, waits: list[float] | None,
                      level: int, chosen: int, code: str) -> tuple[Alternative, ...]:
        """Every candidate with its prediction, the bounds that exclude it, and its rank."""
        lo, hi = m.lo, m.hi
        figures, cand = self._columns(m, idx, waits, level)
        masks = kernel.meets(r, figures["accuracy"], figures["latency_bound_ms"], figures["energy_judged_mj"])
        feas = kernel.conjunction(masks, cand)
        n = hi - lo
        k1, k2 = (kernel.finite(figures[k]) for k in kernel.KEYS[r.objective])
        order = [int(j) for j in np.lexsort((np.arange(n), k2, k1)) if feas is None or feas[j]]
        if chosen in order:
            order.remove(chosen)
        ranks = {chosen: 0, **{j: k for k, j in enumerate(order, start=1)}}
        om = self._online
        conf = om.levels_[level]
        mean, bound, energy = (figures[k].tolist() for k in ("latency_ms", "latency_bound_ms", "energy_mj"))
        e_bound, estimated = m.energy_bound.tolist(), om.energy_estimated_[lo:hi].tolist()
        queue = [0.0] * n if figures["queue_ms"] is None else figures["queue_ms"].tolist()
        acc = m.acc_l
        failed = [(name, m.tolist()) for name, m in zip(CONSTRAINT_NAMES, masks) if m is not None]
        out = []
        for j in (range(n) if idx is None else idx):
            spec = self.arms[lo + j]
            excluded = tuple(name for name, ok in failed if not ok[j])
            rank = ranks.get(j) if (not excluded or j == chosen) and code != "infeasible" else None
            out.append(Alternative(spec.variant, spec.placement, Prediction(
                finite_or_none(mean[j]), finite_or_none(bound[j]), conf, queue[j], number_or_none(energy[j]),
                number_or_none(e_bound[j]), estimated[j], number_or_none(acc[j]), self._acc_src[lo + j]), excluded, rank))
        out.sort(key=lambda x: (x.rank is None, x.rank or 0, x.variant, x.placement))
        return tuple(out)

    def _decision(self, r: Request, a: int, code: str, waits: list[float] | None, level: int, n_cand: int,
                  n_feas: int | None, now_s: float, alternatives: tuple[Alternative, ...] | None = None,
                  prior: bool = False) -> Decision:
        """The Decision for arm ``a`` (global id): its figures (by its prior with ``prior``), the
        kernel's judgement of them, the reason. ``n_feas`` None: 1 if the arm is feasible, else 0."""
        om = self._online
        w = 0.0 if waits is None else waits[self._pidx_l[a]]
        if prior:
            mean, bound = om.prior_latency_ms_.item(a) + w, om.prior_bounds_ms_.item(level, a) + w
        else:
            mean, bound = om.est_latency_ms_.item(a) + w, om.latency_bounds_ms_.item(level, a) + w
        e, e_bound = om.est_energy_mj_.item(a), om.energy_bound_mj_.item(a)
        e_judged = e_bound if self.config.energy_at_confidence else e
        acc = self._acc_l[a]
        predicted = Prediction(mean if isfinite(mean) else None, bound if isfinite(bound) else None, om.levels_[level],
                               w, e if e == e else None, e_bound if e_bound == e_bound else None,
                               om.energy_estimated_.item(a), acc if acc == acc else None, self._acc_src[a])
        verdicts = kernel.meets(r, acc, bound, e_judged)
        met = Met(*verdicts)
        feasible = False not in verdicts
        c = r.constraints
        vs = () if feasible else violations(met, (c.min_accuracy, c.max_latency_ms, c.max_energy_mj),
                                            (predicted.accuracy, predicted.latency_bound_ms, number_or_none(e_judged)))
        if n_feas is None:
            n_feas = int(feasible)
        spec = self.arms[a]
        age = None
        if code == "probe":
            last = om.last_update_s_.item(a)
            age = "never measured" if last == -math.inf else f"not measured for {now_s - last:.1f} s"
        text = reason_text(code, r.objective, spec.variant, spec.placement, predicted, n_cand, n_feas, vs, age)
        run = code != "infeasible"
        return Decision(r.model, code, text, a if run else None, spec.variant if run else None,
                        spec.placement if run else None, predicted, met, vs,
                        a if code in ("infeasible", "best_effort") else None, n_cand, n_feas, alternatives)


class _Columns:
    """One model's columns (arms ``lo`` to ``hi``): views into the selector's and its cost model's
    arrays (which are allocated once and updated in place), made once per selector, and the
    static ones as Python lists for the compiled loop."""

    __slots__ = ("acc", "acc0", "acc_key", "acc_key_l", "acc_l", "acc_unknown", "bounds", "energy", "energy_bound",
                 "est", "hi", "last", "lo", "pidx", "pidx_l", "prior", "prior_bounds")

    def __init__(self, s: Selector, lo: int, hi: int) -> None:
        om = s.cost_model
        self.lo, self.hi = lo, hi
        self.est, self.bounds = om.est_latency_ms_[lo:hi], om.latency_bounds_ms_[:, lo:hi]
        self.energy, self.energy_bound = om.est_energy_mj_[lo:hi], om.energy_bound_mj_[lo:hi]
        self.last = om.last_update_s_[lo:hi]
        self.prior, self.prior_bounds = om.prior_latency_ms_[lo:hi], om.prior_bounds_ms_[:, lo:hi]
        self.acc, self.acc_key, self.acc0 = s._acc[lo:hi], s._acc_key[lo:hi], s._acc0[lo:hi]
        self.acc_unknown, self.pidx = s._acc_unknown[lo:hi], s._pidx[lo:hi]
        self.acc_l, self.acc_key_l, self.pidx_l = self.acc.tolist(), self.acc_key.tolist(), self.pidx.tolist()
