"""The selection policy: per request, the arm (variant x placement) that meets the caller's
constraints at least cost, and why.

Contract
--------
* Lifecycle: build once per repository generation (``Selector(arms, placements, config)`` or
  ``Selector.from_manifests(manifests, placements, predictor, config)``); then, per request,
  ``choose`` (or ``explain`` for a dry run), and per measured execution ``update``. A reload
  builds a new Selector (arm ids are only valid within the Selector that issued them).
* Pure: no sockets, files, threads or clocks; ``now_s`` and measurement timestamps are passed in
  (seconds, any monotonic origin, the same one for both).
* Thread safety: none; the daemon calls ``choose``/``update`` from one thread.
* Determinism: the decision is a function of the arms, every ``update`` so far, the number of
  non-dry-run ``choose`` calls so far (the probe budget) and the call's arguments. ``explain`` and
  ``choose(dry_run=True)`` change nothing.
* Units: ms, mJ, s; accuracy as a share.

Policy (PROTOCOL.md §4, §5.2)
-----------------------------
* Arms: every (variant, placement) pair of a model whose runtimes match, ids in sorted
  ``(model, variant, placement)`` order. Ties are broken by the objective, then by the secondary
  key (energy for ``latency``; latency for ``energy`` and ``accuracy``), then by arm id.
* Feasible: accuracy >= ``min_accuracy`` (unknown accuracy never is), latency bound at the
  configured confidence (or the lowest kept at or above the request's ``latency_confidence``)
  *plus the predicted queue wait on the arm's placement* <= ``max_latency_ms``, predicted mean
  energy <= ``max_energy_mj`` (unknown energy never is), or with ``energy_at_confidence`` the
  energy bound at the same confidence (see :mod:`.online`).
* Objective among feasible arms: least expected latency (queue included), least energy, or
  most accurate (unknown accuracy ranks last).
* Probing: each non-dry-run decision of code ``selected`` earns ``probe_share`` of a probe
  credit; a whole credit is spent on looking for a candidate arm not measured for
  ``probe_interval_s`` that is itself predicted feasible, the best of them by the request's
  objective (then the longest unmeasured, never measured first, then arm id); if there is one
  it replaces the best, with code ``probe``. So probes are at most ``probe_share * decisions``
  (+1 per budget: this one and the stale-arm probe's below), and the look itself runs on that
  share only. Best-first, because the arm worth refreshing is the one that would be chosen if its estimate were stale-high: oldest-first
  spent the probes on arms measured hopeless, again and again, while an arm that had one slow
  spell waited (bench/bench_selection.py). One exception to best-first, with ``probe_closest``
  (the default): when a request is found infeasible and its *closest* arm's estimate is stale
  (a prior never measured, or older than ``probe_interval_s``) and that arm meets the request's
  accuracy bound (a manifest figure: nothing to learn there), the arm becomes the model's
  pending probe, replacing any earlier one. It is taken at the model's next probe look (within
  the budget above) whose request it is predicted to meet, and dropped once the arm has been
  measured since. A rejection teaches the cost model nothing, so without this an arm that
  fails a tight bound on an old estimate stays unmeasured while the requests it might meet are
  rejected (bench/bench_selection.py: MobileNetV2's arm closest to its tight latency bound was
  never measured in a run, only its prior known). When no arm is predicted feasible, a look on a
  budget of its own (``probe_share`` of such decisions, earned and spent by them) takes a stale
  arm that its latency *prior* predicts feasible, best by the objective under that prior, and
  runs it with code ``probe`` and the prior's predictions (``_stale_probe``;
  ``probe_stale_prior``, on by default): a stream whose requests share one tight bound was
  otherwise rejected for good once a slow spell had raised every arm's bound above it, since
  rejections measure nothing.
* Infeasible: the *closest* arm minimises the normalised total violation
  ``sum over set constraints of max(0, (value - bound) / bound)`` (for accuracy
  ``(min_accuracy - accuracy) / min_accuracy``; unknown accuracy counts 1, unknown latency or
  energy counts +inf), ties by arm id. ``reject``: no arm, code ``infeasible``, the closest arm
  and its violations reported; ``best_effort``: the closest arm, code ``best_effort``.
* Pins: a pinned variant and/or placement restrict the candidates; pinning both returns that
  arm whatever the predictions (code ``pinned``; ``predicted_met`` stays honest).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .online import DEFAULT_CONFIDENCE, OnlineCostModel
from .request import (
    InvalidConstraintsError,
    QueueSnapshot,
    Request,
    UnknownModelError,
    UnknownPlacementError,
    UnknownVariantError,
)

_BIG = 1e300  # "unknown" cost: ranks after every known cost, before excluded arms (inf)
# Models with at most this many arms are decided by a loop over Python floats, larger ones by
# masked numpy arrays. On the daemon's request path a decision runs with cold caches (requests
# arrive milliseconds apart, other work in between), where numpy's per-call dispatch costs most:
# for 24 arms the loop takes about two thirds of the masked path's time cold, and no more hot
# (bench/bench_decision.py --cold; BENCHMARKS.md). For 200 arms the arrays win. Same decisions
# either way (tests/test_selector_policy.py compares them).
SCALAR_MAX_ARMS = 48


@dataclass(frozen=True)
class SelectorConfig:
    """Hyper-parameters of the selector and its online cost model."""

    confidence: float = DEFAULT_CONFIDENCE   # latency bound quantile (see online.py)
    half_life_s: float = 2.0          # time decay of the latency/energy EWMA
    min_update_weight: float = 0.1    # each sample's weight at least this (bounded reaction in requests)
    window: int = 16                  # sliding window for the empirical quantile
    min_window: int = 4               # samples before the window quantile is used
    window_max_age_s: float = 10.0    # window samples older than this (s) no longer count
    # once the window holds min_window samples, the latency bound is its quantile (False, the
    # default) or max(mean + z sd, quantile) (True): in paired runs of bench/bench_selection.py
    # the floor, inflated by rare slow samples, rejected more and met fewer constraints
    gaussian_floor: bool = False
    prior_weight: float = 1.0         # prior counts as this many samples ...
    full_trust_n: int = 5             # ... until this many measurements
    probe_interval_s: float = 10.0    # an arm unmeasured this long may be probed
    probe_share: float = 0.02         # at most this share of decisions are probes (+1 per budget)
    probe_closest: bool = True        # a stale arm closest to an infeasible request is probed first
    probe_stale_prior: bool = True    # with no arm feasible, a stale arm whose prior meets the request is probed
    prior_rel_sd: float = 0.25        # relative spread of a prior that comes without one
    # max_energy_mj judged on the energy bound at ``confidence`` (True) or on the mean (False, the
    # default): bench/bench_selection.py measured the bound turning near-mean misses into
    # rejections, which lowered attainment (BENCHMARKS.md, Selection)
    energy_at_confidence: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.probe_share <= 1.0:
            raise ValueError(f"probe_share must be in [0, 1], got {self.probe_share}")
        if not self.probe_interval_s >= 0:
            raise ValueError(f"probe_interval_s must be >= 0, got {self.probe_interval_s}")
        if not self.prior_rel_sd >= 0:
            raise ValueError(f"prior_rel_sd must be >= 0, got {self.prior_rel_sd}")


@dataclass(frozen=True)
class ArmSpec:
    """One arm's static description and prior cost (NaN/None: unknown)."""

    model: str
    variant: str
    placement: str
    accuracy: float | None = None
    prior_latency_ms: float | None = None
    prior_latency_sd_ms: float | None = None
    prior_energy_mj: float | None = None
    version: str | None = None


def _f(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


class Decision:
    """The outcome of one ``choose``: the arm (or None), the reason and the predictions.

    Attributes: ``model``, ``variant``, ``placement``, ``arm_id`` (None when infeasible),
    ``code`` (selected | pinned | probe | best_effort | infeasible), ``text``, ``predicted``
    (dict), ``predicted_met`` (dict: True/False per constraint, None when unset), ``feasible``
    (the returned/closest arm is predicted to meet every set constraint), ``violations``
    ({constraint: {predicted, bound, by}} for the returned or closest arm's failing constraints),
    ``closest`` ({variant, placement} when infeasible or best_effort), ``n_candidates``,
    ``n_feasible``, ``alternatives`` (list of dicts, only when asked).
    """

    __slots__ = (
        "alternatives",
        "arm_id",
        "closest",
        "code",
        "feasible",
        "model",
        "n_candidates",
        "n_feasible",
        "placement",
        "predicted",
        "predicted_met",
        "text",
        "variant",
        "violations",
    )

    def __init__(self, *, model=None, variant=None, placement=None, arm_id=None, code=None, text=None,
                 predicted=None, predicted_met=None, feasible=None, violations=None, closest=None,
                 n_candidates=None, n_feasible=None, alternatives=None) -> None:
        self.model = model
        self.variant = variant
        self.placement = placement
        self.arm_id = arm_id
        self.code = code
        self.text = text
        self.predicted = predicted
        self.predicted_met = predicted_met
        self.feasible = feasible
        self.violations = violations
        self.closest = closest
        self.n_candidates = n_candidates
        self.n_feasible = n_feasible
        self.alternatives = alternatives

    @property
    def met(self) -> bool:
        return bool(self.feasible)

    def to_dict(self) -> dict:
        """Plain types only (str, float, int, bool, None, list, dict): msgpack/JSON-ready."""
        d = {
            "model": self.model,
            "variant": self.variant,
            "placement": self.placement,
            "arm_id": self.arm_id,
            "reason": {"code": self.code, "text": self.text},
            "predicted": dict(self.predicted) if self.predicted is not None else None,
            "predicted_met": dict(self.predicted_met),
            "feasible": bool(self.feasible),
            "n_candidates": self.n_candidates,
            "n_feasible": self.n_feasible,
        }
        if self.violations:
            d["violations"] = {k: dict(v) for k, v in self.violations.items()}
        if self.closest is not None:
            d["closest"] = dict(self.closest)
        if self.alternatives is not None:
            d["alternatives"] = [dict(a) for a in self.alternatives]
        return d

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Decision({self.code}: {self.variant} on {self.placement}: {self.text})"


_UNIT = {"min_accuracy": "", "max_latency_ms": " ms", "max_energy_mj": " mJ"}
_WHAT = {"min_accuracy": "accuracy", "max_latency_ms": "latency bound", "max_energy_mj": "energy"}


def describe_violations(violations: Mapping[str, Mapping[str, Any]]) -> str:
    """E.g. ``latency bound 7.9 ms exceeds 5.0 ms by 2.9 ms``; joined with '; '."""
    parts = []
    for name, v in violations.items():
        unit = _UNIT[name]
        if v["predicted"] is None:
            parts.append(f"{_WHAT[name]} unknown (bound {v['bound']:.4g}{unit})")
        elif name == "min_accuracy":
            parts.append(f"accuracy {v['predicted']:.4g} is below {v['bound']:.4g} by {v['by']:.3g}")
        else:
            parts.append(f"{_WHAT[name]} {v['predicted']:.3g}{unit} exceeds {v['bound']:.3g}{unit} "
                         f"by {v['by']:.3g}{unit}")
    return "; ".join(parts)


def _attr(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


class Selector:
    """Columnar per-request selector over every arm of every model in a repository."""

    def __init__(self, arms: Iterable[ArmSpec], placements: Sequence[str] | None = None,
                 config: SelectorConfig | None = None) -> None:
        self.config = config or SelectorConfig()
        specs = sorted(arms, key=lambda s: (s.model, s.variant, s.placement))
        if not specs:
            raise ValueError("a selector needs at least one arm")
        keys = [(s.model, s.variant, s.placement) for s in specs]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate arm (model, variant, placement)")
        self.arms: tuple[ArmSpec, ...] = tuple(specs)
        names = sorted({s.placement for s in specs} | set(placements or ()))
        self.placements: tuple[str, ...] = tuple(names)
        self._pindex = {p: i for i, p in enumerate(names)}
        self._arm_index = {k: i for i, k in enumerate(keys)}
        n = len(specs)
        self._pidx = np.array([self._pindex[s.placement] for s in specs], dtype=np.intp)
        self._acc = np.array([np.nan if s.accuracy is None else float(s.accuracy) for s in specs])
        self._acc_key = np.where(np.isnan(self._acc), 1.0, -self._acc)  # accuracy objective: lower is better
        self._acc_unknown = np.isnan(self._acc).astype(np.float64)
        self._acc0 = np.nan_to_num(self._acc, nan=0.0)
        self._variant_names = [s.variant for s in specs]
        self._placement_names = [s.placement for s in specs]
        self._model_range: dict[str, tuple[int, int]] = {}
        for i, s in enumerate(specs):
            lo, _ = self._model_range.get(s.model, (i, i))
            self._model_range[s.model] = (lo, i + 1)
        self._variant_mask: dict[tuple[str, str], np.ndarray] = {}
        self._placement_mask: dict[tuple[str, str], np.ndarray] = {}
        for model, (lo, hi) in self._model_range.items():
            for i in range(lo, hi):
                for key, table, attr in (((model, self._variant_names[i]), self._variant_mask, None),
                                         ((model, self._placement_names[i]), self._placement_mask, None)):
                    if key not in table:
                        table[key] = np.zeros(hi - lo, dtype=bool)
                    table[key][i - lo] = True
        cfg = self.config
        prior_lat = np.array([np.nan if s.prior_latency_ms is None else float(s.prior_latency_ms) for s in specs])
        prior_sd = np.array([
            (cfg.prior_rel_sd * float(s.prior_latency_ms) if s.prior_latency_sd_ms is None else float(s.prior_latency_sd_ms))
            if s.prior_latency_ms is not None else np.nan for s in specs])
        prior_en = np.array([np.nan if s.prior_energy_mj is None else float(s.prior_energy_mj) for s in specs])
        self._online = OnlineCostModel(
            confidence=cfg.confidence, half_life_s=cfg.half_life_s,
            min_update_weight=cfg.min_update_weight, window=cfg.window, min_window=cfg.min_window,
            window_max_age_s=cfg.window_max_age_s, gaussian_floor=cfg.gaussian_floor,
            prior_weight=cfg.prior_weight, full_trust_n=cfg.full_trust_n,
        ).init_priors(prior_lat, prior_sd, prior_en)
        self._probe_credit = 0.0
        self._stale_credit = 0.0   # the same budget, earned and spent by decisions no arm meets (_stale_probe)
        # per model (its first arm id): the arm closest to an infeasible request, on a stale
        # estimate, and when (s); the model's next probe (see the module's contract)
        self._probe_next: dict[int, tuple[int, float]] = {}
        self._n_arms = n
        self._unavailable = np.zeros(n, dtype=bool)   # arms the caller set aside (set_available)
        self._any_unavailable = False
        self.scalar_max_arms = SCALAR_MAX_ARMS
        # plain-float copies of the static columns for the scalar path
        self._acc_l: list[float] = self._acc.tolist()
        self._acc_key_l: list[float] = self._acc_key.tolist()
        self._pidx_l: list[int] = self._pidx.tolist()

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_manifests(cls, manifests: Iterable[Mapping[str, Any]], placements: Iterable[Any],
                       predictor: Any = None, config: SelectorConfig | None = None) -> Selector:
        """Arms from variant manifests (``adaptd.manifest/1`` dicts) x placements (objects or
        dicts with ``name``, ``kind``, ``cores``, ``threads``, ``runtime``), pairing each variant
        with every placement of its runtime. Priors come from ``predictor.predict`` (a fitted
        :class:`~adaptd.selector.predictor.StructuralPredictor`) when it knows the arm, else from
        the manifest's ``latency_ms_1thread`` median scaled by ``threads ** -0.75``, else unknown.
        """
        from .predictor import variant_records  # local: keep import order simple

        cfg = config or SelectorConfig()
        placements = list(placements)
        specs = []
        for manifest in manifests:
            model, version, records = variant_records(manifest)
            for rec in records:
                runtime = rec.get("runtime", "litert")
                metrics = rec.get("metrics") or {}
                acc = metrics.get("accuracy") if isinstance(metrics, Mapping) else None
                for pl in placements:
                    if _attr(pl, "runtime", "litert") != runtime:
                        continue
                    lat = sd = en = None
                    pred = predictor.predict_record(rec, pl) if predictor is not None else None
                    if pred is not None:
                        lat, sd, en = pred["latency_ms"], pred["latency_sd_ms"], pred["energy_mj"]
                    else:
                        l1 = (rec.get("latency_ms_1thread") or {}).get("median")
                        if l1:
                            threads = max(int(_attr(pl, "threads", 1) or 1), 1)
                            lat = float(l1) * threads ** -0.75
                            sd = cfg.prior_rel_sd * lat * (1.0 if threads == 1 else 2.0)
                    specs.append(ArmSpec(model=model, variant=str(rec["name"]), placement=str(_attr(pl, "name")),
                                         accuracy=None if acc is None else float(acc), prior_latency_ms=lat,
                                         prior_latency_sd_ms=sd, prior_energy_mj=en, version=version))
        return cls(specs, [str(_attr(p, "name")) for p in placements], cfg)

    # ------------------------------------------------------------------ lookups
    @property
    def n_arms(self) -> int:
        return self._n_arms

    def set_available(self, arm_id: int, available: bool) -> None:
        """Leave an arm out of every decision (``available=False``: its loads or executions keep
        failing, its placement is down) or put it back. An arm set aside is never chosen, probed
        or named closest; a request with none of its candidates left is the caller's to refuse."""
        self._unavailable[arm_id] = not available
        self._any_unavailable = bool(self._unavailable.any())

    @property
    def cost_model(self) -> OnlineCostModel:
        return self._online

    def arm_id(self, model: str, variant: str, placement: str) -> int:
        try:
            return self._arm_index[(model, variant, placement)]
        except KeyError:
            raise KeyError(f"no arm {variant} on {placement} for model {model}") from None

    def arm(self, arm_id: int) -> ArmSpec:
        return self.arms[arm_id]

    def models(self) -> list[str]:
        return sorted(self._model_range)

    def service_estimate_ms(self, arm_id: int) -> float:
        return float(self._online.est_latency_ms_[arm_id])

    # ------------------------------------------------------------------ learning
    def update(self, arm: int | tuple[str, str, str], latency_ms: float, energy_mj: float | None,
               energy_estimated: bool, t_s: float) -> None:
        """Feed one measured execution: the arm (id or (model, variant, placement)), its latency
        (ms, compute only, model load and queue wait excluded), its energy (mJ, or None), whether
        that energy is estimated, and when it finished (s, same origin as ``now_s``)."""
        a = arm if isinstance(arm, (int, np.integer)) else self.arm_id(*arm)
        if not 0 <= a < self._n_arms:
            raise KeyError(f"no arm id {a}")
        self._online.update(a, latency_ms, energy_mj, energy_estimated, t_s)

    def shift_placement_priors(self, placement: str, delta_ms: float) -> None:
        """Add ``delta_ms`` to the latency prior of every arm on ``placement`` (see
        :meth:`OnlineCostModel.shift_priors`); unknown placements are ignored."""
        p = self._pindex.get(placement)
        if p is not None:
            self._online.shift_priors(self._pidx == p, delta_ms)

    def prior_energy_mj(self, arm_id: int) -> float:
        """The energy prior an arm was built with (mJ; NaN when it had none)."""
        return self._online.prior_energy_mj_.item(arm_id)

    def shift_energy_priors(self, model: str, placement: str, delta_mj: float) -> None:
        """Add ``delta_mj`` to the energy prior of ``model``'s arms on ``placement`` not yet
        measured (see :meth:`OnlineCostModel.shift_energy_priors`); unknown names are ignored."""
        p = self._pindex.get(placement)
        rng = self._model_range.get(model)
        if p is None or rng is None:
            return
        lo, hi = rng
        mask = np.zeros(self._n_arms, dtype=bool)
        mask[lo:hi] = self._pidx[lo:hi] == p
        self._online.shift_energy_priors(mask, delta_mj)

    def stats(self) -> list[dict]:
        """Per-arm live statistics, plain types (for the ``stats`` control reply)."""
        out = []
        for i, s in enumerate(self.arms):
            d = {"arm_id": i, "model": s.model, "version": s.version, "variant": s.variant,
                 "placement": s.placement, "accuracy": s.accuracy}
            d.update(self._online.arm_stats(i))
            out.append(d)
        return out

    # ------------------------------------------------------------------ the decision
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
            if w != w:  # an unknown estimate in the queue: treat as no information
                w = 0.0
            if wait is None:
                wait = [0.0] * len(self.placements)
            wait[p] = w
        return wait

    def _placement_wait(self, queues: Mapping[str, QueueSnapshot]) -> np.ndarray | None:
        wait = self._placement_waits(queues)
        return None if wait is None else np.array(wait)

    def explain(self, request: Request, now_s: float,
                queues: Mapping[str, QueueSnapshot] | None = None) -> Decision:
        """Dry run with alternatives: what ``choose`` would pick now, changing nothing (no probe)."""
        return self.choose(request, now_s, queues, explain=True, dry_run=True)

    def choose(self, request: Request, now_s: float, queues: Mapping[str, QueueSnapshot] | None = None,
               *, explain: bool = False, dry_run: bool = False,
               allowed_variants: Iterable[str] | None = None) -> Decision:
        """Pick the arm for ``request`` at time ``now_s`` given the placements' queues.

        ``allowed_variants`` restricts the candidates like a pin does, to several variants (e.g.
        those that accept the request's input dtype); unknown names in it are ignored.
        Raises UnknownModelError / UnknownVariantError / UnknownPlacementError for pins or models
        this selector does not know (UnknownVariantError too when no allowed variant is left).
        Never raises for an infeasible request: see ``Decision.code``.
        """
        r = request
        if allowed_variants is not None:   # read twice when the scalar path hands over: no one-shot iterators
            allowed_variants = tuple(allowed_variants)
        try:
            lo, hi = self._model_range[r.model]
        except KeyError:
            raise UnknownModelError(f"unknown model {r.model!r}") from None
        om = self._online
        try:
            level = om.level_for(r.latency_confidence)
        except ValueError as exc:
            raise InvalidConstraintsError(str(exc)) from None
        if r.variant is not None and r.placement is not None and allowed_variants is None and not explain:
            a = self._arm_index.get((r.model, r.variant, r.placement))
            if a is not None:   # both pinned: one arm, no arrays to mask (unknown pins: the checks below)
                return self._choose_pinned(r, a, now_s, queues, level)
        if hi - lo <= self.scalar_max_arms and not explain:
            d = self._choose_small(r, lo, hi, now_s, queues, dry_run, allowed_variants, level)
            if d is not None:
                return d
        est = om.est_latency_ms_[lo:hi]
        bound = om.latency_bounds_ms_[level, lo:hi]
        energy = om.est_energy_mj_[lo:hi]
        # the energy a max_energy_mj bound is judged on: the mean, or the bound at the confidence
        energy_judged = om.energy_bound_mj_[lo:hi] if self.config.energy_at_confidence else energy
        wait = self._placement_wait(queues) if queues else None
        if wait is None:
            arm_wait = None
            lat_mean, lat_bound = est, bound
        else:
            arm_wait = wait[self._pidx[lo:hi]]
            lat_mean = est + arm_wait
            lat_bound = bound + arm_wait

        # candidates: pins
        cand = self._candidates_mask(r, lo, hi, allowed_variants)
        pinned_arm = None
        if r.variant is not None and r.placement is not None:
            pinned_arm = int(np.flatnonzero(cand)[0])
        n_cand = (hi - lo) if cand is None else int(np.count_nonzero(cand))

        # feasibility by the model's own estimates
        stale = None   # (index, latency, bound) of a stale arm probed on its prior, see below
        feas = cand
        if r.min_accuracy is not None:
            ok = self._acc[lo:hi] >= r.min_accuracy
            feas = ok if feas is None else feas & ok
        if r.max_latency_ms is not None:
            ok = lat_bound <= r.max_latency_ms
            feas = ok if feas is None else feas & ok
        if r.max_energy_mj is not None:
            ok = energy_judged <= r.max_energy_mj
            feas = ok if feas is None else feas & ok

        if pinned_arm is not None:
            i = pinned_arm
            n_feas = int(bool(feas[i]))
            code = "pinned"
        else:
            if feas is None:
                n_feas = hi - lo
            else:
                n_feas = int(np.count_nonzero(feas))
            if n_feas:
                key1, key2 = self._keys(r.objective, lo, hi, lat_mean, energy)
                masked = key1 if feas is None else np.where(feas, key1, np.inf)
                i = int(masked.argmin())
                best = masked.item(i)
                if not best < _BIG:
                    # argmin stopped at a NaN (unknown), or the best is infinite and may tie with
                    # an excluded arm: redo with unknown and infinite costs at _BIG
                    masked = _finite(key1)
                    if feas is not None:
                        masked = np.where(feas, masked, np.inf)
                    i = int(masked.argmin())
                    best = masked.item(i)
                ties = masked == best
                if np.count_nonzero(ties) > 1:
                    i = int(np.where(ties, _finite(key2), np.inf).argmin())
                code = "selected"
                if not dry_run and self.config.probe_share > 0.0:
                    credit = self._probe_credit + self.config.probe_share
                    if credit >= 1.0:
                        # the credit pays for the look, found or not: the stale-arm scan then
                        # costs a 1/probe_share share of decisions, never every one
                        credit -= 1.0
                        j = self._probe_pick(now_s, lo, hi, feas, i, key1, key2)
                        if j is not None:
                            i = j
                            code = "probe"
                    self._probe_credit = credit
            else:
                i = self._closest(r, lo, hi, cand, lat_bound, energy_judged)
                code = "best_effort" if r.on_infeasible == "best_effort" else "infeasible"
                if not dry_run and self.config.probe_share > 0.0 and self.config.probe_stale_prior:
                    # a budget of its own, the same share: the probes of feasible decisions keep
                    # their rate, and the scan runs on that share of these decisions only
                    credit = self._stale_credit + self.config.probe_share
                    if credit >= 1.0:
                        credit -= 1.0
                        stale = self._stale_probe(r, lo, hi, cand, now_s, level, arm_wait, energy, energy_judged)
                    self._stale_credit = credit
                if stale is not None:
                    i = stale[0]
                    code = "probe"
                elif not dry_run and self.config.probe_closest and self.config.probe_share > 0.0 \
                        and now_s - om.last_update_s_.item(lo + i) > self.config.probe_interval_s \
                        and (r.min_accuracy is None or self._acc.item(lo + i) >= r.min_accuracy):
                    # (an arm that fails on accuracy, a manifest figure, has nothing to learn)
                    self._probe_next[lo] = (lo + i, now_s)

        alternatives = None
        if explain:
            alternatives = self._alternatives(r, lo, hi, cand, feas, lat_mean, lat_bound, arm_wait,
                                              energy, energy_judged, i, code)
        # a stale arm probed on its prior (_stale_probe) is predicted by that prior
        mean_i, bound_i = stale[1:] if stale is not None else (lat_mean.item(i), lat_bound.item(i))
        return self._decision(r, lo + i, code, mean_i, bound_i,
                              0.0 if arm_wait is None else float(arm_wait.item(i)), energy.item(i),
                              energy_judged.item(i), n_cand, n_feas, now_s, alternatives, level)

    def _choose_pinned(self, r: Request, a: int, now_s: float,
                       queues: Mapping[str, QueueSnapshot] | None, level: int) -> Decision:
        """``choose`` for a request pinning both variant and placement: the same decision as the
        general path (``tests/test_selector_policy.py`` compares them), in scalars."""
        om = self._online
        queue_ms = 0.0
        if queues:
            wait = self._placement_waits(queues)
            if wait is not None:
                queue_ms = wait[self._pidx_l[a]]
        lat_mean = om.est_latency_ms_.item(a) + queue_ms
        lat_bound = om.latency_bounds_ms_.item(level, a) + queue_ms
        e = om.est_energy_mj_.item(a)
        e_judged = om.energy_bound_mj_.item(a) if self.config.energy_at_confidence else e
        ok = ((r.min_accuracy is None or self._acc.item(a) >= r.min_accuracy)
              and (r.max_latency_ms is None or lat_bound <= r.max_latency_ms)
              and (r.max_energy_mj is None or e_judged <= r.max_energy_mj))
        return self._decision(r, a, "pinned", lat_mean, lat_bound, queue_ms, e, e_judged, 1, int(ok), now_s, None,
                              level)

    def _choose_small(self, r: Request, lo: int, hi: int, now_s: float,
                      queues: Mapping[str, QueueSnapshot] | None, dry_run: bool,
                      allowed: Iterable[str] | None, level: int) -> Decision | None:
        """``choose`` for a small model, in Python floats: the same decision as the masked path.
        None when it has nothing to say more cheaply: no feasible arm (the masked path finds the
        closest) or both pins given through ``allowed`` (its ``pinned`` code)."""
        cand = self._candidates_mask(r, lo, hi, allowed)
        if r.variant is not None and r.placement is not None:
            return None
        om = self._online
        est = om.est_latency_ms_[lo:hi].tolist()
        bound = om.latency_bounds_ms_[level, lo:hi].tolist()
        energy = om.est_energy_mj_[lo:hi].tolist()
        judged = om.energy_bound_mj_[lo:hi].tolist() if self.config.energy_at_confidence else energy
        waits = self._placement_waits(queues) if queues else None
        in_cand = None if cand is None else cand.tolist()
        acc, pidx = self._acc_l, self._pidx_l
        min_acc, max_lat, max_en = r.min_accuracy, r.max_latency_ms, r.max_energy_mj
        objective = r.objective
        n_cand = n_feas = 0
        feas: list[tuple[float, float, int]] = []
        best_key: tuple | None = None
        best = -1
        for j in range(hi - lo):
            if in_cand is not None and not in_cand[j]:
                continue
            n_cand += 1
            a = lo + j
            if min_acc is not None and not acc[a] >= min_acc:
                continue
            if waits is None:
                mean, lb = est[j], bound[j]
            else:
                w = waits[pidx[a]]
                mean, lb = est[j] + w, bound[j] + w
            if max_lat is not None and not lb <= max_lat:
                continue
            if max_en is not None and not judged[j] <= max_en:
                continue
            n_feas += 1
            if objective == "latency":
                k1, k2 = mean, energy[j]
            elif objective == "energy":
                k1, k2 = energy[j], mean
            else:
                k1, k2 = self._acc_key_l[a], mean
            key = (k1 if k1 < _BIG else _BIG, k2 if k2 < _BIG else _BIG)   # NaN, inf: _BIG
            feas.append((*key, j))
            if best_key is None or key < best_key:
                best_key, best = key, j
        if not n_feas:
            return None
        i = best
        code = "selected"
        if not dry_run and self.config.probe_share > 0.0:
            credit = self._probe_credit + self.config.probe_share
            if credit >= 1.0:   # as in the masked path: the credit pays for the look
                credit -= 1.0
                last = om.last_update_s_[lo:hi].tolist()
                interval = self.config.probe_interval_s
                stale = [(k1, k2, last[j], j) for k1, k2, j in feas if j != best and (now_s - last[j]) > interval]
                closest = self._take_probe_closest(lo, {x[3] for x in stale})
                if closest is not None:
                    i = closest
                    code = "probe"
                elif stale:
                    i = min(stale)[3]
                    code = "probe"
            self._probe_credit = credit
        w = 0.0 if waits is None else waits[pidx[lo + i]]
        return self._decision(r, lo + i, code, est[i] + w if waits is not None else est[i],
                              bound[i] + w if waits is not None else bound[i], w, energy[i], judged[i],
                              n_cand, n_feas, now_s, None, level)

    def _decision(self, r: Request, a: int, code: str, lat_mean: float, lat_bound: float, queue_ms: float,
                  e: float, e_judged: float, n_cand: int, n_feas: int, now_s: float,
                  alternatives: list | None, level: int) -> Decision:
        """The Decision for arm ``a`` (global id) with its predicted latency, bound (at the
        cost model's ``level``), queue wait, energy and the energy an energy bound is judged on
        (NaN: unknown)."""
        acc = self._acc.item(a)
        e_bound = self._online.energy_bound_mj_.item(a)
        predicted = {
            "latency_ms": _f(lat_mean),
            "latency_bound_ms": _f(lat_bound),
            "latency_confidence": self._online.levels_[level],
            "queue_ms": queue_ms,
            "energy_mj": e if e == e else None,
            "energy_bound_mj": e_bound if e_bound == e_bound else None,
            "energy_estimated": bool(self._online.energy_estimated_.item(a)),
            "accuracy": acc if acc == acc else None,
        }
        met = {
            "min_accuracy": None if r.min_accuracy is None else (acc >= r.min_accuracy),
            "max_latency_ms": None if r.max_latency_ms is None else bool(lat_bound <= r.max_latency_ms),
            "max_energy_mj": None if r.max_energy_mj is None else bool(e_judged <= r.max_energy_mj),
        }
        feasible = met["min_accuracy"] is not False and met["max_latency_ms"] is not False \
            and met["max_energy_mj"] is not False
        violations = None if feasible else self._violations(r, predicted, e_judged if e_judged == e_judged else None)
        variant, placement = self._variant_names[a], self._placement_names[a]
        closest = None
        if code == "infeasible" or code == "best_effort":
            closest = {"variant": variant, "placement": placement}
        text = self._text(code, r, variant, placement, predicted, n_cand, n_feas, violations, now_s, a)
        if code == "infeasible":
            variant = placement = None
            a_out = None
        else:
            a_out = a
        return Decision(model=r.model, variant=variant, placement=placement, arm_id=a_out, code=code,
                        text=text, predicted=predicted, predicted_met=met, feasible=feasible,
                        violations=violations, closest=closest, n_candidates=n_cand, n_feasible=n_feas,
                        alternatives=alternatives)

    # ------------------------------------------------------------------ decision helpers
    def _candidates_mask(self, r: Request, lo: int, hi: int, allowed: Iterable[str] | None) -> np.ndarray | None:
        """The model's arms that the pins and ``allowed`` leave (None: all); raises for unknown
        pins and for an empty set."""
        cand = None
        if r.variant is not None or r.placement is not None:
            cand = self._pin_mask(r, lo, hi)
        if allowed is not None:
            cand = self._allowed_mask(r, lo, hi, allowed, cand)
        if self._any_unavailable:
            up = ~self._unavailable[lo:hi]
            if not up.all():
                cand = up if cand is None else cand & up
                if not cand.any():
                    raise UnknownVariantError(f"model {r.model!r}: every candidate arm is set aside")
        return cand

    def _pin_mask(self, r: Request, lo: int, hi: int) -> np.ndarray:
        mask = None
        if r.variant is not None:
            mask = self._variant_mask.get((r.model, r.variant))
            if mask is None:
                raise UnknownVariantError(f"model {r.model!r} has no variant {r.variant!r}")
        if r.placement is not None:
            pm = self._placement_mask.get((r.model, r.placement))
            if pm is None:
                raise UnknownPlacementError(f"no placement {r.placement!r} can run model {r.model!r}")
            mask = pm if mask is None else mask & pm
            if not mask.any():
                raise UnknownPlacementError(f"placement {r.placement!r} cannot run variant {r.variant!r}")
        return mask

    def _allowed_mask(self, r: Request, lo: int, hi: int, allowed: Iterable[str], cand) -> np.ndarray:
        mask = np.zeros(hi - lo, dtype=bool)
        names = []
        for v in allowed:
            names.append(v)
            vm = self._variant_mask.get((r.model, v))
            if vm is not None:
                mask |= vm
        if cand is not None:
            mask &= cand
        if not mask.any():
            pinned = " with the pins of this request" if cand is not None else ""
            raise UnknownVariantError(f"model {r.model!r}: no arm left among the allowed variants "
                                      f"({', '.join(sorted(names)) or 'none'}){pinned}")
        return mask

    def _keys(self, objective: str, lo: int, hi: int, lat_mean: np.ndarray, energy: np.ndarray):
        """(primary, secondary) cost keys, lower is better; NaN means unknown (callers map it
        to ``_BIG`` with ``_finite`` so unknowns rank after every known cost)."""
        if objective == "latency":
            return lat_mean, energy
        if objective == "energy":
            return energy, lat_mean
        return self._acc_key[lo:hi], lat_mean

    def _probe_pick(self, now_s: float, lo: int, hi: int, feas: np.ndarray | None, best: int,
                    key1: np.ndarray, key2: np.ndarray) -> int | None:
        last = self._online.last_update_s_[lo:hi]
        stale = (now_s - last) > self.config.probe_interval_s
        if feas is not None:
            stale &= feas
        stale[best] = False
        j = self._take_probe_closest(lo, np.flatnonzero(stale))
        if j is not None:
            return j
        idx = np.flatnonzero(stale)
        if idx.size <= 1:
            return int(idx[0]) if idx.size else None
        k1 = _finite(key1[idx])
        idx = idx[k1 == k1.min()]   # the best by the objective; usually one arm
        if idx.size == 1:
            return int(idx[0])
        order = np.lexsort((idx, last[idx], _finite(key2[idx])))
        return int(idx[order[0]])

    def _stale_probe(self, r: Request, lo: int, hi: int, cand: np.ndarray | None, now_s: float, level: int,
                     arm_wait: np.ndarray | None, energy: np.ndarray, energy_judged: np.ndarray
                     ) -> tuple[int, float, float] | None:
        """For a request no arm is predicted to meet: a stale arm (not measured for
        ``probe_interval_s``) that its latency *prior* predicts to meet it, the best by the
        request's objective under that prior (ties: energy or latency, then arm id), as
        (index in the model's range, predicted latency, latency bound); None when there is none.

        A rejection teaches the cost model nothing, so without this a stream whose requests all
        carry one tight bound is rejected for good once a slow spell has put every arm's bound
        above it: nothing is measured again, and the bounds never come down. An estimate nobody
        has refreshed for ``probe_interval_s`` says little about now; the prior (the structural
        predictor's, with the placement's learnt path) is what is known then. Energy and accuracy
        are judged as for any decision."""
        om = self._online
        ok = (now_s - om.last_update_s_[lo:hi]) > self.config.probe_interval_s
        if cand is not None:
            ok &= cand
        if r.min_accuracy is not None:
            ok &= self._acc[lo:hi] >= r.min_accuracy
        mean = om.prior_latency_ms_[lo:hi]
        bound = om.prior_bounds_ms_[level, lo:hi]
        if arm_wait is not None:
            mean, bound = mean + arm_wait, bound + arm_wait
        if r.max_latency_ms is not None:
            ok &= bound <= r.max_latency_ms
        if r.max_energy_mj is not None:
            ok &= energy_judged <= r.max_energy_mj
        if not ok.any():
            return None
        key1, key2 = self._keys(r.objective, lo, hi, mean, energy)
        masked = np.where(ok, _finite(key1), np.inf)
        ties = masked == masked.min()
        j = int(np.where(ties, _finite(key2), np.inf).argmin()) if np.count_nonzero(ties) > 1 else int(masked.argmin())
        return j, mean.item(j), bound.item(j)

    def _take_probe_closest(self, lo: int, eligible) -> int | None:
        """The model's pending probe of the arm closest to an infeasible request (index in the
        model's range) when it is among ``eligible`` (indices of the stale, feasible arms but the
        best), taken off the model's pending probe; None otherwise. A pending probe is dropped
        once its arm has been measured since that request."""
        pending = self._probe_next.get(lo)
        if pending is None:
            return None
        a, since_s = pending
        if self._online.last_update_s_.item(a) >= since_s:
            del self._probe_next[lo]
            return None
        if (a - lo) not in eligible:
            return None
        del self._probe_next[lo]
        return a - lo

    def _closest(self, r: Request, lo: int, hi: int, cand, lat_bound, energy_bound) -> int:
        """Arm (index in the model's range) with the least normalised total violation; unknown
        accuracy counts 1, unknown latency or energy ``_BIG``; ties -> lowest arm id. Divisions,
        not products with a reciprocal: ``(m - 0) / m`` is exactly 1, as unknown accuracy counts,
        while ``m * (1 / m)`` may not be, which would break ties by rounding."""
        total = np.zeros(hi - lo)
        if r.min_accuracy is not None:
            m = r.min_accuracy
            if m > 0.0:  # unknown accuracy is stored as 0 here: violation exactly 1
                with np.errstate(over="ignore"):   # a subnormal bound: inf, capped below
                    total += np.maximum(0.0, (m - self._acc0[lo:hi]) / m)
            else:
                total += self._acc_unknown[lo:hi]
        if r.max_latency_ms is not None:
            total += np.maximum(0.0, (lat_bound - r.max_latency_ms) / r.max_latency_ms)
        if r.max_energy_mj is not None:
            total += np.maximum(0.0, (energy_bound - r.max_energy_mj) / r.max_energy_mj)
        total = np.fmin(total, _BIG)  # NaN (unknown estimate) and inf -> _BIG
        if cand is not None:
            total = np.where(cand, total, np.inf)
        return int(total.argmin())

    @staticmethod
    def _violations(r: Request, predicted: Mapping[str, Any], e: float | None) -> dict:
        """Failing constraints of a prediction; ``e``: the energy the bound is judged on."""
        out = {}
        acc = predicted["accuracy"]
        if r.min_accuracy is not None and (acc is None or acc < r.min_accuracy):
            out["min_accuracy"] = {"predicted": acc, "bound": r.min_accuracy,
                                   "by": None if acc is None else r.min_accuracy - acc}
        lb = predicted["latency_bound_ms"]
        if r.max_latency_ms is not None and (lb is None or lb > r.max_latency_ms):
            out["max_latency_ms"] = {"predicted": lb, "bound": r.max_latency_ms,
                                     "by": None if lb is None else lb - r.max_latency_ms}
        if r.max_energy_mj is not None and (e is None or e > r.max_energy_mj):
            out["max_energy_mj"] = {"predicted": e, "bound": r.max_energy_mj,
                                    "by": None if e is None else e - r.max_energy_mj}
        return out

    def _text(self, code, r, variant, placement, p, n_cand, n_feas, violations, now_s, a) -> str:
        if code == "selected":
            if r.objective == "latency":
                what = "least latency"
                val = "latency unknown" if p["latency_ms"] is None else f"{p['latency_ms']:.3g} ms"
            elif r.objective == "energy":
                what = "least energy"
                val = "energy unknown" if p["energy_mj"] is None else f"{p['energy_mj']:.3g} mJ"
            else:
                what = "most accurate"
                val = "accuracy unknown" if p["accuracy"] is None else f"accuracy {p['accuracy']:.4g}"
            return (f"{what} among {n_feas} of {n_cand} arms predicted to meet the constraints: "
                    f"{variant} on {placement} ({val})")
        if code == "probe":
            last = self._online.last_update_s_.item(a)
            age = "never measured" if last == -math.inf else f"not measured for {now_s - last:.1f} s"
            if not n_feas:
                return (f"probe: no arm of {n_cand} predicted to meet the constraints on its measurements; "
                        f"{variant} on {placement} {age}, predicted to meet them by its prior")
            return f"probe: {variant} on {placement} {age}, predicted to meet the constraints"
        if code == "pinned":
            tail = "predicted to meet the constraints" if not violations else \
                "predicted NOT to meet the constraints: " + describe_violations(violations)
            return f"pinned: {variant} on {placement}; {tail}"
        head = f"no arm of {n_cand} predicted to meet the constraints; closest: {variant} on {placement}: "
        body = describe_violations(violations or {})
        return head + body + ("; running it (best effort)" if code == "best_effort" else "")

    def _alternatives(self, r, lo, hi, cand, feas, lat_mean, lat_bound, arm_wait, energy, energy_judged, chosen,
                      code):
        n = hi - lo
        idx = np.arange(n) if cand is None else np.flatnonzero(cand)
        feas_all = np.ones(n, dtype=bool) if feas is None else feas
        key1, key2 = self._keys(r.objective, lo, hi, lat_mean, energy)
        key1, key2 = _finite(key1), _finite(key2)
        order = [int(j) for j in np.lexsort((np.arange(n), key2, key1)) if feas_all[j] and (cand is None or cand[j])]
        if chosen in order:
            order.remove(chosen)
        ranks = {chosen: 0}
        for k, j in enumerate(order, start=1):
            ranks[j] = k
        out = []
        for j in idx:
            j = int(j)
            a = lo + j
            acc = self._acc.item(a)
            excluded = []
            if r.min_accuracy is not None and not (acc >= r.min_accuracy):
                excluded.append("min_accuracy")
            if r.max_latency_ms is not None and not (lat_bound.item(j) <= r.max_latency_ms):
                excluded.append("max_latency_ms")
            eb = self._online.energy_bound_mj_.item(a)
            if r.max_energy_mj is not None and not (energy_judged.item(j) <= r.max_energy_mj):
                excluded.append("max_energy_mj")
            e = energy.item(j)
            out.append({
                "variant": self._variant_names[a], "placement": self._placement_names[a],
                "accuracy": acc if acc == acc else None,
                "latency_ms": _f(lat_mean.item(j)), "latency_bound_ms": _f(lat_bound.item(j)),
                "queue_ms": 0.0 if arm_wait is None else float(arm_wait.item(j)),
                "energy_mj": e if e == e else None,
                "energy_bound_mj": eb if eb == eb else None,
                "energy_estimated": bool(self._online.energy_estimated_.item(a)),
                "excluded_by": excluded,
                "rank": ranks.get(j) if (not excluded or j == chosen) and code != "infeasible" else None,
            })
        out.sort(key=lambda d: (d["rank"] is None, d["rank"] if d["rank"] is not None else 0,
                                d["variant"], d["placement"]))
        return out


def _finite(x: np.ndarray) -> np.ndarray:
    """NaN (unknown) and +inf -> a huge finite cost, so they rank after known costs but before
    excluded arms (inf): an infinite prior must not tie with an excluded arm."""
    bad = ~(x < _BIG)
    if bad.any():
        return np.where(bad, _BIG, x)
    return x
