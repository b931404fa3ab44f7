"""The daemon's policy backed by :mod:`adaptd.selector`: manifests and placements in, a
:class:`~adaptd.daemon.policy.Choice` per request out.

Contract
--------
* Implements :class:`~adaptd.daemon.policy.Policy`; called from the daemon's main thread only.
* ``reset`` (start-up and every reload) builds a new :class:`~adaptd.selector.Selector` over every
  loaded model version (selector model key ``name:version``) and the placements, with priors from
  the calibrated structural predictor stored beside the repository (``calibration.json``,
  written by ``adaptd calibrate``) when there is one, else from the manifests' first latency
  measurements. Live estimates of arms that survive a reload are not carried over: a reload is
  a new regime.
* ``choose`` passes the placements' real queues (queued and in-flight jobs by arm) so the
  prediction includes the queue wait; ``observe`` feeds every measured execution back.
* ``[selector]`` config: ``policy`` (``adaptive``, the default; ``static``: priors only, never
  updated and never probing, for comparison; ``most_accurate``: the baseline), ``calibration``
  (a path; default the repository's ``calibration.json``), and every
  :class:`~adaptd.selector.SelectorConfig` field.
* Priors are completed with what the daemon knows: ``overhead_ms`` (the fastest measured round
  trip of each placement's worker channel) is added to every latency prior, since measured service
  times include it; where the predictor gives no energy, ``energy_prior`` (the energy meter's
  power model) estimates one from the latency prior, labelled estimated like every figure from
  the power model. Measurements replace both.
* The rest of the daemon's path (receiving, deciding, the wake-ups, the reply: about 0.5 ms a
  request on the development machine, ten times a tiny model's execution) is learnt, not
  guessed: ``observe`` with ``compute_ms`` keeps per placement a running median of latency minus
  execution (robust to slow outliers: see PATH_STEP), and once it moves away from what the
  priors include (by over 10%, or 0.02 ms), every latency prior on that placement is shifted by
  the difference
  (:meth:`~adaptd.selector.Selector.shift_placement_priors`). So an arm never measured is
  predicted with the path its placement's other arms paid, not the execution alone. Energy
  likewise, per model and placement: the average of measured energy minus the arm's prior shifts
  the energy prior of that model's arms on that placement not yet measured (a tiny model's
  priors come from hot-loop latencies, 0.017 ms for the demo's float32, while the daemon's
  executions take 0.045 ms, so its energy priors were 2-3x low). Both averages survive reloads;
  the ``static`` policy learns nothing, this included.
* Times: ``now_s`` is ``time.monotonic()`` seconds, the same origin for ``choose`` and ``observe``.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adaptd.wire import protocol as proto
from adaptd.daemon.policy import Choice, MostAccuratePolicy, Policy
from adaptd.daemon.registry import Arm, ModelVersion, Registry
from adaptd.selector import QueueSnapshot, Request, Selector, SelectorConfig, SelectorError

log = logging.getLogger("adaptd.selection")

OVERHEAD_WEIGHT = 0.1   # each execution's share in its model and placement's energy-miss average
# The learnt path is a running *median*: the median of the first PATH_FIRST_N samples, then a
# step of PATH_STEP of itself towards each new sample (up if above, down if below), which
# settles where half the samples lie on either side. On a shared host the path's distribution is
# broad and skewed: one execution can take 20 times the usual (a preempted worker), and with a
# fifth of the guest's CPU stolen its mean was twice its median, so a mean (even of samples
# clipped to 3x it) shifted every never-measured arm's prior by twice the usual path
# (tests/test_selection_total_latency.py). A lasting change is still followed: a doubling in
# about 15 executions.
PATH_FIRST_N = 10
PATH_STEP = 0.05


def _key(model: ModelVersion) -> str:
    return f"{model.name}:{model.version}"


class SelectorPolicy:
    def __init__(self, selector_config: SelectorConfig, *, online: bool = True,
                 calibration: Path | None = None) -> None:
        if not online:   # a probe refreshes an estimate; one that never learns would just run a worse arm
            selector_config = dataclasses.replace(selector_config, probe_share=0.0)
        self.selector_config = selector_config
        self.online = online
        self.calibration = calibration
        self.selector: Selector | None = None
        self.predictor_source = "manifest first latency"
        # (placement, latency_ms) -> estimated mJ: the energy meter's power model (set by the daemon)
        self.energy_prior: Callable[[Any, float], float] | None = None
        # placement -> ms the daemon <-> worker hop adds to every execution (set by the daemon)
        self.overhead_ms: dict[str, float] = {}
        # placement -> learnt latency minus execution (ms), and what the current priors include
        self.path_overhead_ms: dict[str, float] = {}
        self._path_first: dict[str, list[float]] = {}   # placement -> its first PATH_FIRST_N samples
        self._applied_overhead_ms: dict[str, float] = {}
        # (model key, placement) -> learnt energy the priors missed (mJ), and what they include
        self.energy_miss_mj: dict[tuple[str, str], float] = {}
        self._applied_energy_mj: dict[tuple[str, str], float] = {}

    @classmethod
    def from_config(cls, config: Any) -> Policy:
        """The policy ``config.selector`` (a validated :class:`~adaptd.daemon.config.SelectorSettings`) names."""
        settings = config.selector
        if settings.policy == "most_accurate":
            return MostAccuratePolicy()
        return cls(settings.params, online=(settings.policy == "adaptive"), calibration=config.calibration_path)

    # --- Policy ----------------------------------------------------------------------------
    def reset(self, registry: Registry) -> None:
        predictor = None
        if self.calibration is not None and self.calibration.is_file():
            try:
                from adaptd.variants.calibrate import load_predictor

                predictor = load_predictor(self.calibration)
                self.predictor_source = f"calibrated structural predictor ({self.calibration})"
            except (OSError, ValueError, KeyError) as exc:
                log.warning("ignoring calibration %s: %s", self.calibration, exc)
        manifests = []
        for versions in registry.models.values():
            for mv in versions.values():
                doc = mv.manifest.to_dict()
                doc["model"] = _key(mv)
                if mv.unservable:   # a refused file, or a runtime no placement has: no arm
                    doc["variants"] = [v for v in doc["variants"] if v["name"] not in mv.unservable]
                manifests.append(doc)
        placements = {a.placement.name: a.placement for vs in registry.models.values()
                      for mv in vs.values() for a in mv.arms}
        selector = Selector.from_manifests(manifests, placements.values(), predictor, self.selector_config) \
            if manifests else None
        if selector is not None and (self.energy_prior is not None or self.overhead_ms):
            selector = Selector([self._complete_prior(a, placements[a.placement]) for a in selector.arms],
                                list(placements), self.selector_config)
        self.selector = selector
        # the new selector's priors include the channel's round trip; add what was learnt since
        self._applied_overhead_ms = {p: self.overhead_ms.get(p, 0.0) for p in placements}
        self._applied_energy_mj = {}
        if selector is not None and self.online:
            for p, learnt in self.path_overhead_ms.items():
                self._shift_priors(p, learnt)
            for where, learnt_mj in self.energy_miss_mj.items():
                self._shift_energy_priors(where, learnt_mj)
        # variants that some placement here runs, per model (a TensorFlow variant has no arm
        # when no TensorFlow placement is configured)
        self._runnable: dict[str, int] = {_key(mv): len({a.variant.name for a in mv.arms})
                                          for vs in registry.models.values() for mv in vs.values()}
        self._arms: dict[tuple[str, str, str], Arm] = {
            (_key(mv), a.variant.name, a.placement.name): a
            for vs in registry.models.values() for mv in vs.values() for a in mv.arms}
        log.info("selector over %d arms; priors from the %s", self.selector.n_arms if self.selector else 0,
                 self.predictor_source)

    def choose(self, model: ModelVersion, request: proto.Request, candidates: Sequence[Arm],
               queues: Any, now_s: float) -> Choice:
        assert self.selector is not None
        snapshots = self._snapshots(queues, now_s) if queues is not None else None
        # The input's dtype may rule some variants out (e.g. uint8 input: integer variants only).
        # A pinned variant is the only candidate variant already: no set to pass.
        # Candidates covering every arm the model has here (the usual case) need no set.
        allowed = None
        if request.pin_variant is None and len(candidates) < len(model.arms):
            variants = {a.variant.name for a in candidates}
            allowed = variants if len(variants) < self._runnable.get(_key(model), 0) else None
        return self._choice(model, self._decide(model, request, snapshots, now_s, allowed))

    def observe(self, model: ModelVersion, arm: Arm, latency_ms: float, energy_mj: float | None,
                energy_estimated: bool, now_s: float, compute_ms: float | None = None) -> None:
        if not self.online or self.selector is None:
            return
        key = _key(model)
        try:
            arm_id = self.selector.arm_id(key, arm.variant.name, arm.placement.name)
        except KeyError:   # an arm of a generation that a reload replaced
            return
        self.selector.update(arm_id, latency_ms, energy_mj, energy_estimated, now_s)
        if compute_ms is not None:
            self._learn_overhead(arm.placement.name, max(0.0, latency_ms - compute_ms))
        prior_mj = self.selector.prior_energy_mj(arm_id)
        if energy_mj is not None and prior_mj == prior_mj:
            self._learn_energy_miss((key, arm.placement.name), energy_mj - prior_mj)

    def set_available(self, model: ModelVersion, arm: Arm, available: bool) -> None:
        """Leave an arm out of every decision, or put it back (:meth:`Selector.set_available`)."""
        if self.selector is None:
            return
        try:
            self.selector.set_available(self.selector.arm_id(_key(model), arm.variant.name, arm.placement.name),
                                        available)
        except KeyError:   # an arm of a generation that a reload replaced
            pass

    # --- helpers ---------------------------------------------------------------------------
    def _learn_overhead(self, placement: str, overhead_ms: float) -> None:
        """One execution's latency beyond the interpreter on ``placement``, into that placement's
        running median (the median of the first PATH_FIRST_N, then a PATH_STEP step towards each
        sample)."""
        first = self._path_first.setdefault(placement, [])
        old = self.path_overhead_ms.get(placement)
        if len(first) < PATH_FIRST_N or old is None:
            first.append(overhead_ms)
            new = statistics.median(first)
        else:
            step = PATH_STEP * max(old, 0.01)
            new = old + step if overhead_ms > old else old - step if overhead_ms < old else old
        self.path_overhead_ms[placement] = new
        self._shift_priors(placement, new)

    def _shift_priors(self, placement: str, learnt_ms: float) -> None:
        applied = self._applied_overhead_ms.get(placement, 0.0)
        if abs(learnt_ms - applied) > max(0.02, 0.1 * applied):
            self.selector.shift_placement_priors(placement, learnt_ms - applied)
            self._applied_overhead_ms[placement] = learnt_ms

    def _learn_energy_miss(self, where: tuple[str, str], miss_mj: float) -> None:
        """One execution's energy minus its arm's prior, into the average of its model on its
        placement (``where``)."""
        old = self.energy_miss_mj.get(where)
        new = miss_mj if old is None else old + OVERHEAD_WEIGHT * (miss_mj - old)
        self.energy_miss_mj[where] = new
        self._shift_energy_priors(where, new)

    def _shift_energy_priors(self, where: tuple[str, str], learnt_mj: float) -> None:
        applied = self._applied_energy_mj.get(where, 0.0)
        if abs(learnt_mj - applied) > 0.1 * max(abs(applied), abs(learnt_mj)):
            self.selector.shift_energy_priors(where[0], where[1], learnt_mj - applied)
            self._applied_energy_mj[where] = learnt_mj

    def _complete_prior(self, arm: Any, placement: Any) -> Any:
        """A variant's latency prior is its execution alone: add the hop to its worker, which
        every measured service time includes. Arms with a latency prior but no energy prior get
        the power model's estimate, so an energy bound can be met (and the arm probed) before
        the first measurement."""
        if arm.prior_latency_ms is None:
            return arm
        latency_ms = arm.prior_latency_ms + self.overhead_ms.get(arm.placement, 0.0)
        energy_mj = arm.prior_energy_mj
        if energy_mj is None and self.energy_prior is not None:
            energy_mj = self.energy_prior(placement, arm.prior_latency_ms)
        return dataclasses.replace(arm, prior_latency_ms=latency_ms, prior_energy_mj=energy_mj)

    def _decide(self, model: ModelVersion, request: proto.Request, snapshots, now_s: float,
                allowed_variants: set[str] | None = None):
        c = request.constraints
        try:
            sreq = Request(model=_key(model), min_accuracy=c.min_accuracy, max_latency_ms=c.max_latency_ms,
                           max_energy_mj=c.max_energy_mj, objective=request.objective,
                           on_infeasible=request.on_infeasible, variant=request.pin_variant,
                           placement=request.pin_placement, latency_confidence=c.latency_confidence)
            return self.selector.choose(sreq, now_s, snapshots, explain=request.explain,
                                        dry_run=request.type == "explain", allowed_variants=allowed_variants)
        except SelectorError as exc:
            code = getattr(exc, "code", proto.BAD_REQUEST)
            raise proto.ProtocolError(code if code in proto.ERROR_CODES else proto.BAD_REQUEST, str(exc),
                                      request.id) from None

    def _snapshots(self, pool: Any, now_s: float) -> dict[str, QueueSnapshot] | None:
        out: dict[str, QueueSnapshot] | None = None
        now_ns = time.monotonic_ns()
        for name, worker in pool.workers.items():
            # A placement thread pops its queue and sets its in-flight job while this runs: read
            # each once, the queue as one copy (tuple() of a deque runs under the GIL, whole).
            running, waiting = worker.inflight, tuple(worker.queue)
            if running is None and not waiting:
                continue
            queued = tuple(i for i in (self._arm_id(j.context) for j in waiting) if i is not None)
            inflight = elapsed = None
            if running is not None:
                inflight = self._arm_id(running.context)
                started = running.dispatched_ns or now_ns
                elapsed = (now_ns - started) / 1e6
            if out is None:
                out = {}
            out[name] = QueueSnapshot(queued, inflight, elapsed or 0.0)
        return out

    def _arm_id(self, pending: Any) -> int | None:
        try:
            return self.selector.arm_id(_key(pending.model), pending.arm.variant.name, pending.arm.placement.name)
        except (KeyError, AttributeError):
            return None

    def _choice(self, model: ModelVersion, d: Any) -> Choice:
        key = _key(model)
        arm = self._arms.get((key, d.variant, d.placement)) if d.variant else None
        closest = None
        if d.closest:
            closest = self._arms.get((key, d.closest["variant"], d.closest["placement"]))
        met = {k: bool(v) for k, v in (d.predicted_met or {}).items() if v is not None}
        return Choice(arm=arm, code=d.code, text=d.text, predicted=dict(d.predicted or {}), predicted_met=met,
                      feasible=bool(d.feasible), violations=d.violations, closest=closest,
                      alternatives=d.alternatives)
