"""The request path's second half: a finished job's reply, and what is written down after it.

Contract
--------
* :class:`Outcomes` is a part of :class:`adaptd.daemon.request_path.RequestPath` (its base
  class), not used alone: it works on the request path's state (``d``, the daemon's parts;
  ``pending``, the requests held; its counters) and replies through its helpers (``_send``,
  ``_release``, ``_give_up``, ``_count_errors``, ``_log_internal``).
* :meth:`Outcomes.on_outcome` turns a finished job (done, failed, or its worker dead) into the
  reply of each route its request came on (:mod:`adaptd.wire.replies`: energy attributed,
  timings, the runtime's own CPU and estimated energy), stores it for replay, and defers the
  statistics, the policy's update and the selection record (:mod:`adaptd.daemon.bookkeeping`)
  off the round trip; deferred with them, live fidelity (:mod:`adaptd.daemon.fidelity`) may
  queue a shadow run of the model's reference on the same input. A shadow job's outcome goes
  back to live fidelity (deferred too), with no reply and no record.
* Never raises: a fault is logged, and the request answered ``INTERNAL`` unless its reply went
  out (never a second reply); the request is no longer held either way.
* The daemon's main thread only.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from adaptd.daemon.arms import arm_key
from adaptd.daemon.fidelity import ShadowRun
from adaptd.daemon.jobs import Outcome
from adaptd.daemon.pending import Pending
from adaptd.daemon.request_memo import constraints_map
from adaptd.daemon.selection import Observation
from adaptd.wire import protocol as proto, replies

log = logging.getLogger("adaptd")


def internal_message(exc: BaseException) -> str:
    """An ``INTERNAL`` reply's message for a fault."""
    return f"internal error: {type(exc).__name__}: {exc}"


class Outcomes:
    """Finished jobs into replies (see the module's contract)."""

    def on_outcome(self, outcome: Outcome) -> None:
        """A job ended (done, failed, or its worker died): its reply, then its bookkeeping. Never
        raises: a fault is logged, and the request answered ``INTERNAL`` unless its reply went out."""
        answered, pending = self.requests, outcome.job.context
        held = type(pending) is Pending and self.pending.get((pending.peer, pending.request.id)) is pending
        try:
            self._on_outcome(outcome, held)
        except Exception as exc:  # noqa: BLE001 - one request's outcome must not stop the daemon
            self._log_internal(exc)
            if not held:   # a shadow run's, or a request answered already
                return
            self._give_up(pending)   # (if the fault came before the outcome let it go)
            unanswered = pending.routes[self.requests - answered:]   # (its routes are answered in order)
            if not unanswered:
                return
            header = proto.error_header(proto.INTERNAL, internal_message(exc), pending.request.id)
            self._count_errors(proto.INTERNAL, len(unanswered))
            try:
                for route in unanswered:
                    self._send(route, header, ())
            except Exception:  # noqa: BLE001 - the frontend itself failed: logged, the loop goes on
                log.exception("an INTERNAL reply could not be sent")

    def _on_outcome(self, outcome: Outcome, held: bool) -> None:
        if type(outcome.job.context) is ShadowRun:   # the runtime's own work: no reply, no record,
            self.d.books.defer(self.d.fidelity.on_outcome, outcome)   # compared at an idle moment
            return
        self.saturated = False
        pending: Pending = outcome.job.context
        # (an inline run's request is measured from its arrival: one CPU clock read fewer)
        cpu0 = 0 if pending.inline else time.thread_time_ns()
        request, arm, model = pending.request, pending.arm, pending.model
        self._release(pending)   # the job is done with its regions
        if not held:   # answered already: given up when its hand-off raised (a retry may hold the
            return     # id now), or at shutdown
        del self.pending[(pending.peer, request.id)]
        if not outcome.ok:
            message = str(outcome.header.get("message", "the worker failed"))
            code = proto.BAD_INPUT if outcome.header.get("code") == proto.BAD_INPUT else proto.WORKER_FAILED
            if code == proto.WORKER_FAILED:
                self.d.books.stats_of(model, arm).errors += 1
                if outcome.header.get("died", True):   # a crash of its own: not a kill from outside, not a job that waited
                    self.d.health.failed(self.d.registry, arm_key(model, arm), message, time.monotonic())
            self._count_errors(code, len(pending.routes))
            header = proto.error_header(code, message, request.id,
                                        {"placement": arm.placement.name, "variant": arm.variant.name})
            for route in pending.routes:
                packed = self._send(route, header, ())
            if code not in proto.TRANSIENT_CODES:
                self.d.replays.put(pending.peer, request.id, packed, [], time.monotonic())
            self.d.books.record(request, model, pending.client, time.time(), outcome="error", error_code=code,
                              choice=pending.choice, arm=arm)
            return
        self.d.health.succeeded(model, arm)   # (the run succeeded, whatever becomes of its reply)
        h = outcome.header
        compute_ms = float(h["compute_ms"])
        queue_ms = (h["t0_ns"] - pending.received_ns) / 1e6   # (max() written out, here and below:
        if queue_ms < 0.0:                                      # a builtin call costs 20 comparisons)
            queue_ms = 0.0
        execution_cpu_s = float(h["cpu_time_s"])
        energy = self.d.meter.attribute(arm.placement, h["t0_ns"], h["t1_ns"], execution_cpu_s, wait=False)
        now = time.time()
        now_ns = time.monotonic_ns()
        total_ms = (now_ns - pending.received_ns) / 1e6
        # The policy learns the latency a caller's bound is judged on (total_ms: from receiving the
        # request to the reply) less the wait behind other work, which it predicts from the queues
        # instead: so the daemon's own decode, choice, dispatch and result handling count, with the
        # worker's wake-up, the channel and the execution (model load excluded), which is what a
        # contended core or a throttled clock lengthens. Learning the service time alone left out
        # ~0.3 ms per request here, and 70% of replies exceeded the predicted 95% bound
        # (bench/bench_selection.py). The statistics keep the interpreter's own execution time.
        started_ns = outcome.job.dispatched_ns   # not behind other work
        if (idle_since_ns := int(h.get("idle_since_ns") or 0)) > started_ns:
            started_ns = idle_since_ns
        behind_ns = started_ns - (pending.submitted_ns or started_ns)
        if behind_ns < 0:
            behind_ns = 0
        path_ms = (now_ns - pending.received_ns - behind_ns) / 1e6 - float(h.get("load_ms") or 0.0)
        met = replies.met_constraints(constraints_map(request), pending.choice.decision.predicted.accuracy, total_ms,
                                      energy.energy_mj)
        choice = pending.choice
        if pending.inline:   # this thread ran the execution too: its CPU clock includes the run
            cpu_ns = time.thread_time_ns() - pending.cpu_start_ns - int(float(h.get("caller_cpu_s", 0.0)) * 1e9)
        else:
            cpu_ns = pending.cpu_ns + time.thread_time_ns() - cpu0
        runtime = replies.runtime_cost(cpu_ns / 1e6, *self.d.meter.runtime_energy_mj(cpu_ns / 1e9))
        header = replies.result_header(
            request_id=request.id, model=model.name, version=model.version, variant=arm.variant.name,
            placement=arm.placement.name, outputs=h["outputs"], queue_ms=queue_ms, compute_ms=compute_ms,
            total_ms=total_ms, energy_mj=energy.energy_mj, energy_source=energy.source,
            energy_estimated=energy.estimated, predicted=choice.predicted, constraints_met=met,
            reason_code=choice.code, reason_text=choice.text,
            alternatives=choice.alternatives if request.explain else None, runtime=runtime)
        for route in pending.routes:
            packed = self._send(route, header, outcome.bodies)
        self.inferences += 1   # (counted once answered: a fault before the reply answers INTERNAL)
        self.execution_cpu_s_all += execution_cpu_s
        if h.get("in_process"):
            self.execution_cpu_s_in_process += execution_cpu_s
        self.d.replays.put(pending.peer, request.id, packed, outcome.bodies, time.monotonic())
        self.d.books.defer(self._account, pending, header, compute_ms if compute_ms > path_ms else path_ms, now, now_ns)
        # The reply is out; at the next idle moment (no request waiting), maybe a shadow run.
        if self.d.fidelity.tracks(outcome.job.version_dir, arm.variant.name):
            self.d.books.defer(self.d.fidelity.after_reply, model, arm, outcome.job, outcome)

    def _account(self, pending: Pending, header: dict[str, Any], path_ms: float, now: float, now_ns: int) -> None:
        """An answered request's statistics, the policy's update and its selection record."""
        timing, energy = header["timing"], header["energy"]
        self.d.books.stats_of(pending.model, pending.arm).record(timing["compute_ms"], energy["energy_mj"],
                                                                 energy["source"], energy["estimated"], now)
        self.d.books.observe(Observation(pending.model, pending.arm, path_ms, energy["energy_mj"], energy["estimated"],
                                         now_ns / 1e9, timing["compute_ms"]))
        self.d.books.record(pending.request, pending.model, pending.client, now, outcome="ok", error_code=None,
                          choice=pending.choice, arm=pending.arm, timing=timing, energy=energy,
                          met=header["constraints_met"], runtime=header["runtime"])
