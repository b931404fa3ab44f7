"""Live fidelity in the daemon: shadow runs of each model's reference variant, after the reply.

Contract
--------
* :class:`LiveFidelity` is owned by the daemon and used from its main thread only. Lifecycle:
  built at assembly from the ``[fidelity]`` table; :meth:`reset` at start-up and after every
  reload (one :class:`~adaptd.selector.fidelity.ModelFidelity` per loaded model version whose
  reference variant exists: new files, new evidence); then per answered request :meth:`tracks`
  and, when it says so (not for a request the reference itself served), :meth:`after_reply`;
  per finished shadow job :meth:`on_outcome`, once a second :meth:`tick`, :meth:`stats` and
  :meth:`export` for the control requests.
* Never before a reply: :meth:`after_reply` is called once the request's reply has been sent,
  with the deferred bookkeeping (at an idle moment of the loop: no request waiting), and so is
  :meth:`on_outcome`. Its cost when the request is not sampled is a dictionary lookup and one random draw
  (:class:`~adaptd.selector.shadow.ShadowScheduler`). A sampled request gets a shadow job only
  when a placement that can run the reference, with the reference loaded there, is idle (queue
  empty, nothing in flight) and the CPU budget allows; the job goes through that placement's
  normal execution, as a request's would: inline on the main thread when the reference's
  measured CPU time is within ``[placements] inline_max_ms`` (then it costs no hand-off, no
  wake-up and no GIL hand-over, and a request that arrives meanwhile waits at most that long).
  A longer run goes to the daemon's shadow worker (:mod:`adaptd.daemon.dispatch`), a process
  under ``SCHED_IDLE`` that runs only on a core nothing else wants, when it is idle: on a
  placement's thread a 9 ms MobileNetV2 reference took the second core from the client and the
  main thread, and raised the requests' p99 by 9% (BENCHMARKS.md). The worker is given the
  reference (and so started) at :meth:`reset` when the reference's predicted run is that long,
  else once one measured run is: a daemon whose references all run inline starts no worker.
  Without a shadow worker (a
  dispatcher built without one) or for a TensorFlow reference, it goes through an idle
  placement's queue, where a request that arrives meanwhile sees it as the job in flight.
* Not shadowed (counted as ``unsupported``): inputs or outputs in shared memory (the daemon never
  maps a region), models of several inputs, and inputs not sent as float32 (a variant's own
  integer dtype means nothing to the reference).
* Accounting: a shadow run's CPU time and energy are the runtime's. They are never added to a
  request's reply or record or to the per-arm statistics, and are counted here (``stats``:
  ``cpu_ms``, ``energy_mj``); its execution is not learnt by the selector.
* Events (:class:`~adaptd.selector.fidelity.FidelityEvent`): each is logged, submitted to the
  store (published under ``fid.<model>`` and kept in ``fidelity_events``), and the accuracy a
  variant's requests are judged on is handed to the policy (``set_accuracy``) whenever its value
  or source changes.
* Times: ``time.monotonic()`` s for the trackers and the budget; events carry Unix time.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from adaptd.daemon.registry import Arm, ModelVersion, Registry
from adaptd.daemon.reservoir import DisagreementReservoir
from adaptd.daemon.jobs import Job, Outcome
from adaptd.selector.fidelity import FidelityEvent, ModelFidelity
from adaptd.selector.shadow import ShadowScheduler

log = logging.getLogger("adaptd.fidelity")

CPU_EWMA = 0.3   # weight of a shadow run's measured CPU time in the next run's prediction


class ShadowRun:
    """A shadow job's context: ``model`` and ``arm`` (the reference's arm) as a request's, so the
    selector counts the job in its placement's queue; the served output to compare with."""

    __slots__ = ("arm", "charged_ms", "input", "model", "served", "served_variant")

    def __init__(self, model: ModelVersion, arm: Arm, served_variant: str, served: np.ndarray,
                 charged_ms: float, x: Any) -> None:
        self.model, self.arm, self.served_variant, self.served = model, arm, served_variant, served
        self.charged_ms, self.input = charged_ms, x


class _Model:
    """One model version's tracker, reference arms, reservoir and the figures handed to the policy."""

    __slots__ = ("applied", "model", "output", "preloaded", "reference_arms", "reservoir", "tracker")

    def __init__(self, model: ModelVersion, tracker: ModelFidelity, reservoir: DisagreementReservoir | None) -> None:
        self.model, self.tracker, self.reservoir = model, tracker, reservoir
        self.reference_arms = tuple(a for a in model.arms if a.variant.name == tracker.reference)
        self.output = model.manifest.prediction_index if model.manifest.outputs else 0
        self.applied: dict[str, tuple[float | None, str]] = {}
        self.preloaded = False   # its reference sent to the shadow worker


def _array(body: Any, header: dict[str, Any]) -> np.ndarray:
    """An output body (a numpy array from a thread, a frame from a worker process) as float32."""
    if isinstance(body, np.ndarray):
        return body
    return np.frombuffer(body, dtype=np.dtype(header.get("dtype", "float32"))).reshape(header["shape"])


class LiveFidelity:
    def __init__(self, config: Any, pool: Any, meter: Any, submit: Callable[[dict[str, Any]], None],
                 set_accuracy: Callable[[ModelVersion, str, float | None, str], None], inline_max_ms: float = 0.0) -> None:
        self.config = config                   # adaptd.daemon.fidelity_config.FidelityConfig
        self._inline_max_ms = inline_max_ms    # [placements] inline_max_ms: shorter runs are run inline
        self._pool, self._meter, self._submit, self._set_accuracy = pool, meter, submit, set_accuracy
        self.scheduler = ShadowScheduler(config.shadow_params(), time.monotonic())
        self._models: dict[str, _Model] = {}   # version directory -> its state
        self._cpu_ms: dict[str, float] = {}    # version dir -> the reference's predicted CPU ms per run
        self._idle: str | None = None          # the placement the last idle check found
        self._offload = getattr(pool, "shadows", None) is not None   # a SCHED_IDLE shadow worker
        self.runs = self.failed = self.unsupported = self.compared = self.offloaded = 0
        self.cpu_ms = 0.0                      # measured CPU time of shadow runs (runtime's)
        self.cpu_ms_in_process = 0.0           # the part of it run by the daemon's own threads
        self.energy_mj = 0.0                   # their energy (runtime's)
        self.energy_estimated = False
        self.events = 0

    # --- lifecycle -------------------------------------------------------------------------------
    def reset(self, registry: Registry) -> None:
        """Trackers for every loaded model version (a reload starts them afresh, as the policy's
        figures do: it is rebuilt with the validation accuracies)."""
        self._models = {}
        if not self.config.enabled:
            return
        params = self.config.fidelity_params()
        for versions in registry.models.values():
            for mv in versions.values():
                try:
                    tracker = ModelFidelity.from_manifest(mv.manifest.to_dict(), params, self.config.reference)
                except ValueError as exc:
                    log.info("%s:%s: no shadow comparisons (%s)", mv.name, mv.version, exc)
                    continue
                reservoir = DisagreementReservoir(mv.name, mv.version, tracker.reference,
                                                  max_items=self.config.reservoir_items,
                                                  max_bytes=self.config.reservoir_bytes) \
                    if self.config.reservoir else None
                state = _Model(mv, tracker, reservoir)
                if state.reference_arms:
                    self._models[str(mv.directory)] = state
                    ref = state.reference_arms[0].variant   # until measured: the build's latency, every thread busy
                    self._cpu_ms.setdefault(str(mv.directory), ref.latency_ms_1thread.median
                                            * max(a.placement.threads for a in state.reference_arms))
                    if self._offloads(state, self._cpu_ms[str(mv.directory)]):   # loaded (the worker
                        state.preloaded = True                                    # started) before the first request
                        self._pool.preload_shadow(str(mv.directory), tracker.reference)

    def _offloads(self, state: _Model, cpu_ms: float) -> bool:
        """Whether the model's shadow runs go to the shadow worker: a LiteRT reference longer
        (``cpu_ms``: its CPU time per run, measured, or predicted until then) than a run made inline."""
        return cpu_ms > self._inline_max_ms and self._offload and state.reference_arms[0].variant.runtime == "litert"

    # --- the request path (after the reply) ------------------------------------------------------
    def tracks(self, version_dir: str, variant: str) -> bool:
        """Whether a request of this model version served by ``variant`` may be shadowed (fidelity
        on, a reference found, ``variant`` not the reference itself): the request path defers
        :meth:`after_reply` only for those; one the reference served is counted here."""
        state = self._models.get(version_dir)
        if state is None:
            return False
        if variant == state.tracker.reference:
            self.scheduler.reference_served()
            return False
        return True

    def after_reply(self, model: ModelVersion, arm: Arm, job: Job, outcome: Outcome) -> None:
        """A request was answered by ``arm``: maybe queue a shadow run of the reference on its input."""
        state = self._models.get(job.version_dir)
        if state is None:
            return
        variant = arm.variant.name
        tracker = state.tracker
        served_placement = arm.placement.name
        cpu_ms = self._cpu_ms.get(job.version_dir, 0.0)
        inline = cpu_ms <= self._inline_max_ms
        # Longer runs go to the shadow worker, which takes only CPU nothing else wants.
        offload = self._offloads(state, cpu_ms)   # (never for a run short enough to run inline)
        if offload and not state.preloaded:   # a reference measured longer than predicted: its
            state.preloaded = True            # worker loads it (and starts) now, its first runs wait
            self._pool.preload_shadow(job.version_dir, tracker.reference)
        d = self.scheduler.decide(
            served_variant=variant, reference=tracker.reference, predicted_cpu_ms=cpu_ms,
            window_samples=tracker.accuracy(variant).n if variant != tracker.reference else 0,
            reference_idle=self._pool.shadow_idle if offload else
            (lambda: self._find_idle(state, served_placement, inline)), now_s=time.monotonic())
        if not d.run:
            return
        placement = None if offload else self._idle
        x = self._shadowable(job, outcome, state)
        if x is None or (placement is None and not offload):
            self.unsupported += 1
            self.scheduler.settle(d.charged_ms, None)
            return
        ref_arm = state.reference_arms[0] if offload else \
            next(a for a in state.reference_arms if a.placement.name == placement)
        served = _array(outcome.bodies[state.output], outcome.header["outputs"][state.output])
        run = ShadowRun(model, ref_arm, variant, served, d.charged_ms, x)
        shadow = Job(f"shadow:{job.request_id}", job.version_dir, tracker.reference,
                     [dict(job.input_headers[0])], list(job.input_frames), time.monotonic_ns(), run)
        if inline:   # as short a run as the daemon runs inline for a request: no hand-off, no wake-up
            done = self._pool.run_inline(placement, shadow)
            if done is not None:
                self.runs += 1
                self.on_outcome(done)
                return
        if self._pool.submit_shadow(shadow) if offload else self._pool.submit(placement, shadow):
            self.runs += 1
            self.offloaded += offload
        else:
            self.scheduler.settle(d.charged_ms, None)

    def _shadowable(self, job: Job, outcome: Outcome, state: _Model) -> Any:
        """The request's input frame when a shadow can run on it (module contract), else None."""
        heads = job.input_headers
        if len(heads) != 1 or heads[0].get("shm") is not None or heads[0].get("dtype") != "float32" \
                or job.outputs_to is not None or len(job.input_frames) != 1 \
                or len(outcome.bodies) <= state.output:
            return None
        return job.input_frames[0]

    def _find_idle(self, state: _Model, served_placement: str, inline: bool) -> bool:
        """Whether a placement that runs the reference (loaded) is idle; the one found is kept in
        ``_idle``. The fewest interpreter threads first (the least CPU taken from requests), then,
        for a run on the main thread (``inline``), the placement that served (the thread is on its
        cores already), else another one (the next request most often goes to the same)."""
        pool = self._pool
        directory = state.model.version_dir
        self._idle = None
        for arm in sorted(state.reference_arms,
                          key=lambda a: (a.placement.threads, (a.placement.name == served_placement) != inline)):
            name = arm.placement.name
            if pool.queue_length(name) == 0 and pool.down_reason(name) is None \
                    and pool.is_loaded(name, directory, arm.variant.name):
                self._idle = name
                return True
        return False

    # --- outcomes --------------------------------------------------------------------------------
    def on_outcome(self, outcome: Outcome) -> None:
        """A shadow job ended: book its cost, compare, act on the events."""
        run: ShadowRun = outcome.job.context
        h = outcome.header
        if not outcome.ok:
            self.failed += 1
            self.scheduler.settle(run.charged_ms, None)
            log.debug("shadow run of %s failed: %s", run.arm.variant.name, h.get("message"))
            return
        cpu_ms = float(h["cpu_time_s"]) * 1e3
        self.scheduler.settle(run.charged_ms, cpu_ms)
        key = outcome.job.version_dir
        self._cpu_ms[key] = (1 - CPU_EWMA) * self._cpu_ms.get(key, cpu_ms) + CPU_EWMA * cpu_ms
        self.cpu_ms += cpu_ms
        if h.get("in_process"):
            self.cpu_ms_in_process += cpu_ms
        energy = self._meter.attribute(run.arm.placement, h["t0_ns"], h["t1_ns"], float(h["cpu_time_s"]), wait=False)
        if energy.energy_mj is not None:
            self.energy_mj += energy.energy_mj
        self.energy_estimated = self.energy_estimated or bool(energy.estimated)
        state = self._models.get(outcome.job.version_dir)
        if state is None:   # a reload replaced this version meanwhile
            return
        idx = state.output
        reference = _array(outcome.bodies[idx], h["outputs"][idx])
        served = run.served.reshape(reference.shape) if run.served.size == reference.size else run.served
        events = state.tracker.record_outputs(run.served_variant, served, reference, time.monotonic())
        self.compared += 1
        if state.reservoir is not None:
            self._offer(state, run, served, reference)
        self._apply(state, run.served_variant, events)

    def _offer(self, state: _Model, run: ShadowRun, served: np.ndarray, reference: np.ndarray) -> None:
        ref_top1 = reference.reshape(reference.shape[0], -1).argmax(axis=1)
        served_top1 = served.reshape(served.shape[0], -1).argmax(axis=1)
        disagreed = ref_top1 != served_top1
        if not disagreed.any():
            return
        head = run.arm.variant.inputs[0]
        x = np.frombuffer(run.input.buffer if hasattr(run.input, "buffer") else run.input, np.float32)
        x = x.reshape(len(ref_top1), *head.shape[1:])
        try:
            state.reservoir.offer_batch(x, reference_top1=ref_top1, served_variant=run.served_variant,
                                        served_top1=served_top1, t_s=time.time(), disagreed=disagreed)
        except ValueError as exc:
            log.debug("reservoir: %s", exc)

    def tick(self, now_s: float) -> None:
        """Once a second: comparisons older than the window's age limit leave it."""
        for state in self._models.values():
            events = state.tracker.expire(now_s)
            if events:
                for variant in {e.variant for e in events}:
                    self._apply(state, variant, [e for e in events if e.variant == variant])

    def _apply(self, state: _Model, variant: str, events: list[FidelityEvent]) -> None:
        """Log and publish the events; hand the variant's figure to the policy if it changed."""
        now = time.time()
        for e in events:
            self.events += 1
            level = logging.WARNING if e.event == "alarm_raised" else logging.INFO
            log.log(level, "fidelity %s:%s %s: %s (%s; agreement %s over %d, accuracy used %s from %s)",
                    e.model, e.version, e.variant, e.event, e.reason,
                    "n/a" if e.agreement is None else f"{e.agreement:.3f}", e.n,
                    "unknown" if e.accuracy_used is None else f"{e.accuracy_used:.4f}", e.accuracy_source)
            self._submit(e.to_record(ts=now))
        est = state.tracker.accuracy(variant)
        figure = (est.value, est.source)
        if state.applied.get(variant, (est.validation, "validation")) != figure:
            state.applied[variant] = figure
            self._set_accuracy(state.model, variant, est.value, est.source)

    # --- control ---------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """``stats``' ``fidelity`` section (PROTOCOL.md §7.3, docs/fidelity.md §6)."""
        shadow = self.scheduler.stats()
        return {
            "enabled": bool(self.config.enabled), "reference": self.config.reference,
            "shadow": {**shadow, "runs": self.runs, "failed": self.failed, "compared": self.compared,
                       "unsupported": self.unsupported, "offloaded": self.offloaded,
                       "cpu_ms_measured": self.cpu_ms, "cpu_ms_in_process": self.cpu_ms_in_process,
                       "energy_mj": self.energy_mj, "energy_estimated": self.energy_estimated},
            "events": self.events,
            "models": [{**s.tracker.snapshot(),
                        "reservoir": None if s.reservoir is None else {"items": len(s.reservoir),
                                                                       "bytes": s.reservoir.nbytes,
                                                                       "capacity": s.reservoir.capacity}}
                       for s in self._models.values()],
        }

    def export(self, model: str, version: str | None) -> tuple[bytes, int]:
        """The reservoir of ``model`` (its newest tracked version when ``version`` is None) as
        ``.npz`` bytes and the number of inputs; ``LookupError`` when there is none to export."""
        states = [s for s in self._models.values() if s.model.name == model
                  and (version is None or s.model.version == str(version))]
        if not states:
            raise LookupError(f"no live fidelity for model {model}" + (f" version {version}" if version else ""))
        state = max(states, key=lambda s: int(s.model.version) if s.model.version.isdigit() else -1)
        if state.reservoir is None:
            raise LookupError("the reservoir is off ([fidelity] reservoir = false)")
        if len(state.reservoir) == 0:
            raise LookupError(f"{model}:{state.model.version}: no disagreeing input kept yet")
        with tempfile.TemporaryDirectory(prefix="adaptd-export-") as tmp:
            path = Path(tmp) / "reservoir.npz"
            n = state.reservoir.export(path)
            return path.read_bytes(), n

