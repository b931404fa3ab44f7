"""The daemon's side of selection: the registry, the worker pool and the parsed request in, the
selector's decision out as the request path and the wire need it.

Contract
--------
* :class:`Policy` is what the request path calls, from the daemon's main thread only: ``choose``
  once per request (or dry run), ``observe`` for one finished execution or ``observe_many`` for a
  batch of them (:class:`Observation`; the daemon's deferred bookkeeping passes a batch),
  ``reset`` at start-up and after every reload. ``choose`` does no I/O; it receives the time
  instead of reading a clock.
* :class:`SelectorPolicy` implements it over :mod:`adaptd.selector`. ``[selector] policy``:
  ``adaptive`` (the default), ``static`` (priors only, never updated and never probing, for
  comparison), ``most_accurate`` (the baseline, :class:`adaptd.selector.MostAccurate`);
  ``calibration`` (a path; default the repository's ``calibration.json``); and every
  :class:`~adaptd.selector.SelectorConfig` field.
* The edge, crossed once each way per request. In: the parsed request becomes the selector's
  :class:`~adaptd.selector.Request` (:func:`selector_request`: its ``Constraints`` were built by
  the protocol parser under the selector's rules and are not checked again); the candidates the
  daemon resolved (the pins against its registry, the input's dtype, arms set aside) go as arm
  ids, so the selector resolves nothing twice; the placements' real queues go as
  :class:`~adaptd.selector.QueueSnapshot`. Out: a :class:`Choice`, the selector's
  :class:`~adaptd.selector.Decision` with the registry arms it names, whose wire maps
  (:func:`predicted_map`, :func:`met_map`, :func:`violations_map`, :func:`alternative_map`) are
  made here and nowhere else. Selector errors become the protocol's (their ``code``).
* ``reset`` builds a new policy over every loaded model version (selector model key
  ``name:version``) and the placements, with priors from the calibrated structural predictor
  (:func:`adaptd.selector.fit.load_predictor`) when there is one, else from the manifests'
  first latency measurements. Live estimates do not survive a reload (a new regime); what the
  :class:`~adaptd.selector.PriorLearner` learnt of the priors does (``adaptive`` only learns).
* Set by the daemon after it starts: ``overhead_ms`` (per placement, the fastest round trip of
  its worker channel) and ``energy_prior`` (the energy meter's power model, ``(placement,
  latency_ms) -> mJ``); ``reset`` hands them to the learner as numbers (round trips; watts per
  placement), which completes the priors with them.
* Times: ``now_s`` is ``time.monotonic()`` seconds, the same origin for ``choose`` and ``observe``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from adaptd.daemon.registry import Arm, ModelVersion, Registry
from adaptd.daemon.request_memo import for_constraints
from adaptd.selector.baseline import MostAccurate
from adaptd.selector.config import SelectorConfig
from adaptd.selector.decision import Alternative, Decision, Met, Prediction, Violation
from adaptd.selector.fit import load_predictor
from adaptd.selector.priors import PriorLearner
from adaptd.selector.policy import Selector
from adaptd.selector.request import QueueSnapshot, Request, SelectorError
from adaptd.wire import protocol as proto

log = logging.getLogger("adaptd.selection")


def predicted_map(p: Prediction) -> dict[str, Any]:
    """PROTOCOL.md §5 ``predicted``."""
    return {"latency_ms": p.latency_ms, "latency_bound_ms": p.latency_bound_ms,
            "latency_confidence": p.latency_confidence, "queue_ms": p.queue_ms, "energy_mj": p.energy_mj,
            "energy_bound_mj": p.energy_bound_mj, "energy_estimated": p.energy_estimated, "accuracy": p.accuracy,
            "accuracy_used": p.accuracy, "accuracy_source": p.accuracy_source}


def met_map(met: Met) -> dict[str, bool]:
    """§7.6 ``predicted_met``: per constraint the request sets."""
    return dict(met.items())


def violations_map(violations: Sequence[Violation]) -> dict[str, dict[str, Any]] | None:
    """§6 ``INFEASIBLE`` details and §7.6 ``violations``; None when there are none."""
    return {v.constraint: {"predicted": v.predicted, "bound": v.bound, "by": v.by} for v in violations} or None


def alternative_map(x: Alternative) -> dict[str, Any]:
    """One of §7.6 ``alternatives``."""
    p = x.predicted
    return {"variant": x.variant, "placement": x.placement, "accuracy": p.accuracy, "latency_ms": p.latency_ms,
            "latency_bound_ms": p.latency_bound_ms, "queue_ms": p.queue_ms, "energy_mj": p.energy_mj,
            "energy_bound_mj": p.energy_bound_mj, "energy_estimated": p.energy_estimated,
            "excluded_by": list(x.excluded_by), "rank": x.rank}


class Choice:
    """A decision at the daemon's edge: the selector's ``decision``, the registry ``arm`` it runs
    (None when rejected) and the ``closest`` one (when no arm is predicted to meet the request);
    ``predicted``, ``predicted_met``, ``violations`` and ``alternatives`` are its wire maps
    (``predicted``, ``code`` and ``text`` made with it, once per decision)."""

    __slots__ = ("arm", "closest", "decision", "note", "code", "text", "predicted")

    def __init__(self, decision: Decision, arm: Arm | None, closest: Arm | None, note: str = "") -> None:
        self.decision, self.arm, self.closest, self.note = decision, arm, closest, note
        # (made here, not read through properties: the request path, the reply and the record
        # read them, and a repeat's Choice is kept, so this runs once per decision)
        self.code: str = decision.code
        self.text: str = decision.text + note   # the reason, and what the daemon added
        self.predicted: dict[str, Any] = predicted_map(decision.predicted)   # (shared: not to be changed)

    feasible = property(lambda self: self.decision.feasible)

    def noting(self, note: str) -> Choice:
        """The same decision with ``note`` added to its reason's text."""
        return Choice(self.decision, self.arm, self.closest, self.note + note)

    predicted_met = property(lambda self: met_map(self.decision.met))
    violations = property(lambda self: violations_map(self.decision.violations))

    @property
    def alternatives(self) -> list[dict[str, Any]] | None:
        alts = self.decision.alternatives
        return None if alts is None else [alternative_map(x) for x in alts]


class Observation(NamedTuple):
    """One measured execution, as :meth:`Policy.observe` takes it (ms, mJ, s)."""
    model: ModelVersion
    arm: Arm
    latency_ms: float
    energy_mj: float | None
    energy_estimated: bool
    now_s: float
    compute_ms: float | None


class Policy(Protocol):
    def choose(self, model: ModelVersion, request: proto.Request, candidates: Sequence[Arm],
               queues: Any, now_s: float, dry_run: bool = False) -> Choice: ...

    def observe(self, model: ModelVersion, arm: Arm, latency_ms: float, energy_mj: float | None,
                energy_estimated: bool, now_s: float, compute_ms: float | None = None) -> None: ...

    def observe_many(self, observations: Sequence[Observation]) -> None: ...

    def reset(self, registry: Registry) -> None: ...


def model_key(model: ModelVersion) -> str:
    return model.key


def selector_request(key: str, request: proto.Request) -> Request:
    """The selector's request for a parsed one, addressed to the selector's model ``key``."""
    return Request(key, objective=request.objective, on_infeasible=request.on_infeasible,
                   variant=request.pin_variant, placement=request.pin_placement, constraints=request.constraints)


class SelectorPolicy:
    def __init__(self, selector_config: SelectorConfig, *, online: bool = True, calibration: Path | None = None,
                 baseline: bool = False) -> None:
        if not online:   # a probe refreshes an estimate; one that never learns would just run a worse arm
            selector_config = dataclasses.replace(selector_config, probe_share=0.0)
        self.selector_config = selector_config
        self.online = online
        self.baseline = baseline
        self.calibration = calibration
        self.selector: Selector | MostAccurate | None = None
        self.predictor_source = "manifest first latency"
        self.energy_prior: Callable[[Any, float], float] | None = None   # set by the daemon
        self.overhead_ms: dict[str, float] = {}                          # set by the daemon
        self.learner = PriorLearner()
        self._arms: dict[tuple[str, str, str], Arm] = {}   # (model key, variant, placement) -> arm
        self._by_id: list[Arm] = []                         # selector arm id -> arm
        self._id_of: dict[int, int] = {}                    # id(arm) -> selector arm id, this generation's arms
        self._last: Choice | None = None                    # the last choice (its decision's repeats share it)
        self._candidate_ids: dict[int, tuple[Sequence[Arm], tuple[int, ...]]] = {}   # see choose

    @classmethod
    def from_config(cls, config: Any) -> SelectorPolicy:
        """The policy ``config.selector`` (a validated :class:`~adaptd.daemon.config.SelectorSettings`) names."""
        settings = config.selector
        return cls(settings.params, online=settings.policy == "adaptive", calibration=config.calibration_path,
                   baseline=settings.policy == "most_accurate")

    def reset(self, registry: Registry) -> None:
        manifests = []
        for versions in registry.models.values():
            for mv in versions.values():
                doc = mv.manifest.to_dict()
                doc["model"] = model_key(mv)
                if mv.unservable:   # a refused file, or a runtime no placement has: no arm
                    doc["variants"] = [v for v in doc["variants"] if v["name"] not in mv.unservable]
                manifests.append(doc)
        placements = {a.placement.name: a.placement for vs in registry.models.values()
                      for mv in vs.values() for a in mv.arms}
        self._arms = {(model_key(mv), a.variant.name, a.placement.name): a
                      for vs in registry.models.values() for mv in vs.values() for a in mv.arms}
        self.learner.round_trip_ms = dict(self.overhead_ms)
        if self.energy_prior is not None:   # the power model is linear in time: watts per placement
            self.learner.power_w = {name: self.energy_prior(p, 1.0) for name, p in placements.items()}
        if not manifests:
            self.selector = None
        elif self.baseline:
            self.selector = MostAccurate.from_manifests(manifests, placements.values())
        else:
            self.selector = Selector.from_manifests(manifests, placements.values(), self._predictor(),
                                                    self.selector_config, self.learner)
        self._last = None
        self._candidate_ids.clear()
        self._by_id = [] if self.selector is None else [self._arms[(s.model, s.variant, s.placement)]
                                                        for s in self.selector.arms]
        # (each arm kept alive by _by_id beside it, so an id found here is that arm's)
        self._id_of = {id(arm): i for i, arm in enumerate(self._by_id)}
        log.info("selector over %d arms; priors from the %s", self.selector.n_arms if self.selector else 0,
                 "manifests (most_accurate)" if self.baseline else self.predictor_source)

    def choose(self, model: ModelVersion, request: proto.Request, candidates: Sequence[Arm],
               queues: Any, now_s: float, dry_run: bool = False) -> Choice:
        """The decision for ``request`` among ``candidates``; ``dry_run`` (an ``explain``
        request's always): one that changes nothing, no probe and no probe credit."""
        assert self.selector is not None
        key = model.key
        # Candidates covering every arm the model has here (the usual case) need no ids; the
        # arms a pins leave (one tuple per pins, worked out by admission) get the same tuple of
        # ids each time, so that the selector keeps its decision for a repeated header's too.
        ids = None if len(candidates) == len(model.arms) else self._ids(key, candidates)
        snapshots = self._snapshots(queues) if queues is not None and not self.baseline else None
        try:
            d = self.selector.choose(for_constraints(request, ("selector", key), selector_request, key, request),
                                     now_s, snapshots, candidates=ids,
                                     explain=request.explain, dry_run=dry_run or request.type == "explain")
        except SelectorError as exc:
            code = exc.code if exc.code in proto.ERROR_CODES else proto.BAD_REQUEST
            raise proto.ProtocolError(code, str(exc), request.id) from None
        last = self._last
        if last is not None and last.decision is d:   # a repeat's decision, kept by the selector
            return last
        self._last = last = Choice(d, None if d.arm_id is None else self._by_id[d.arm_id],
                                   None if d.closest_id is None else self._by_id[d.closest_id])
        return last

    def _ids(self, key: str, candidates: Sequence[Arm]) -> tuple[int, ...]:
        kept = self._candidate_ids.get(id(candidates))
        if kept is not None and kept[0] is candidates:
            return kept[1]
        ids = tuple([self._selector_id(key, a) for a in candidates])
        if type(candidates) is not tuple:   # (a list made for this request, set-aside arms removed: never again)
            return ids
        if len(self._candidate_ids) >= 256:
            self._candidate_ids.clear()
        self._candidate_ids[id(candidates)] = (candidates, ids)
        return ids

    def observe(self, model: ModelVersion, arm: Arm, latency_ms: float, energy_mj: float | None,
                energy_estimated: bool, now_s: float, compute_ms: float | None = None) -> None:
        self.observe_many([Observation(model, arm, latency_ms, energy_mj, energy_estimated, now_s, compute_ms)])

    def observe_many(self, observations: Sequence[Observation]) -> None:
        """Measured executions, in the order they finished: one update of the selector for all
        (``Selector.update_many``; ``update`` for one). An arm of a generation a reload replaced
        goes by its names, and is skipped when they are no longer served; a measurement the
        selector cannot learn from is left out and logged."""
        if self.selector is None or not (self.online or self.baseline):
            return
        selector, refused, batch, id_of = self.selector, 0, [], self._id_of
        for o in observations:
            arm_id = id_of.get(id(o.arm))   # (_selector_id, inline: an arm of this generation, alive)
            if arm_id is None:
                try:   # an arm of a generation that a reload replaced: by its names, if they are still served
                    arm_id = selector.arm_id(o.model.key, o.arm.variant.name, o.arm.placement.name)
                except KeyError:
                    continue
            batch.append((arm_id, o.latency_ms, o.energy_mj, o.energy_estimated, o.now_s, o.compute_ms))
        if isinstance(selector, Selector) and len(batch) > 1:
            refused = selector.update_many(batch)
        else:   # one (a paced client's, or the first after a pause): the single update costs less
            for a, latency_ms, energy_mj, estimated, now_s, compute_ms in batch:
                try:
                    selector.update(a, latency_ms, energy_mj, estimated, now_s, compute_ms=compute_ms)
                except ValueError:
                    refused += 1
        if refused:   # e.g. a measured energy that a noisy rail's idle correction made negative
            log.warning("the selector left out %d of %d measurements it cannot learn from", refused,
                        len(observations))

    def set_accuracy(self, model: ModelVersion, variant: str, accuracy: float | None, source: str) -> None:
        """The accuracy ``min_accuracy`` is judged against for ``variant``'s arms from now on
        (live fidelity, :mod:`adaptd.daemon.fidelity`); the baseline policy keeps the manifest's."""
        if isinstance(self.selector, Selector):
            self.selector.set_accuracy(model_key(model), variant, accuracy, source)

    def set_available(self, model: ModelVersion, arm: Arm, available: bool) -> None:
        """Nothing to do: the candidates the daemon passes to ``choose`` leave arms set aside out."""

    # --- helpers ---------------------------------------------------------------------------
    def _predictor(self) -> Any:
        if self.calibration is None or not self.calibration.is_file():
            return None
        try:
            predictor = load_predictor(self.calibration)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring calibration %s: %s", self.calibration, exc)
            return None
        self.predictor_source = f"calibrated structural predictor ({self.calibration})"
        return predictor

    def _snapshots(self, pool: Any) -> dict[str, QueueSnapshot] | None:
        out: dict[str, QueueSnapshot] | None = None
        now_ns = time.monotonic_ns()
        for name, worker in pool.workers.items():
            # A placement thread pops its queue and sets its in-flight job while this runs: read
            # each once, the waiting jobs as one copy (ThreadPlacement.waiting).
            running, waiting = worker.inflight, worker.waiting()
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
            return self._selector_id(pending.model.key, pending.arm)
        except (KeyError, AttributeError):
            return None

    def _selector_id(self, key: str, arm: Arm) -> int:
        """The selector's id of ``arm`` (of model ``key``): by the arm itself for this generation's
        arms, by its names for one of a generation a reload replaced (KeyError when it has none).
        ``observe_many`` does the same inline, once per measurement."""
        arm_id = self._id_of.get(id(arm))
        if arm_id is None:
            arm_id = self.selector.arm_id(key, arm.variant.name, arm.placement.name)
        return arm_id
