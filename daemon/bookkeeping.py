"""What the daemon writes down after a reply: per-arm statistics, the policy's update, the record.

Contract
--------
* The reply's fields are all computed before it is sent; what no caller waits for is *deferred*
  (:meth:`Bookkeeping.defer`): run at the next idle moment of the main loop (no socket, channel
  or signal ready), before any control message (so statistics, explanations and health include
  every answered request), once ``DEFER_MAX_ITEMS`` items wait (a daemon that is never idle:
  then :meth:`flush_slice` per round of the loop, between its intake and completions, so that a
  request never waits behind a whole backlog, a flush of 32 took 1.5-2 ms, while the backlog
  stays at about ``DEFER_MAX_ITEMS``), and at shutdown. A caller that reads its reply and sends
  the next request gives the daemon that idle moment, so the bookkeeping leaves the round trip.
  The policy's update is one call per batch (:meth:`observe` collects the executions,
  ``observe_many`` gets them at a flush's end), so each arm's estimates are computed once per
  batch. A lone steady client gives an idle moment after every reply, and one execution per
  batch cost it 18 us of the main thread's CPU against 6 per execution in batches of 8
  (bench/bench_request_path.py), and 132 us live after each 7 ms MobileNetV2 run, on caches
  the run had filled: so while executions come less than ``LEARN_GAP_S`` apart, the loop's idle
  flushes (``hold``) keep them until ``LEARN_BATCH`` are held or the oldest has waited
  ``LEARN_MAX_AGE_S`` (:attr:`learn_due_s`: the loop wakes for it when no request comes and no
  run goes on; a run's reply brings an idle flush anyway). Executions further apart (a camera
  at 30 frames a second) are handed over at once, as every other flush does: holding them
  would cost a wake-up per batch of one.
  At idle moments the estimates thus lag the measurements by at most ``LEARN_BATCH`` executions
  or ``LEARN_MAX_AGE_S``, far less than the time over which interference or a throttled clock
  changes them; a loop that is never idle hands them over ``DEFER_MAX_ITEMS`` at a time.
  Holding all the deferred work for a batch (the records too) was measured and rejected: on a
  2-vCPU VM the core then idled right after each reply and every request paid a colder wake-up
  (the round trip and the CPU per request grew more than the batch saved; docs/decisions.md).
  Holding the policy's update alone leaves that work in place.
* :meth:`Bookkeeping.record` builds a selection record as the store's row
  (``adaptd.wire.records.selection_row``: a tuple, not a map the writer would turn into one)
  and hands it to the store, which commits and publishes it off the request path, then its map
  to ``on_record`` when set (the metrics, :mod:`adaptd.daemon.metrics`), on this thread.
* A failure in one request's bookkeeping is logged and does not stop the others.
* The daemon's main thread only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from adaptd.daemon.registry import Arm, ModelVersion
from adaptd.daemon.request_memo import constraints_map
from adaptd.daemon.selection import Observation
from adaptd.daemon.stats import ArmStats
from adaptd.wire import protocol as proto
from adaptd.wire import records

log = logging.getLogger("adaptd.bookkeeping")

DEFER_MAX_ITEMS = 32  # deferred items (an answered request defers one or two) that may wait for an idle moment
FLUSH_SLICE = 4       # items done per round of a loop that is never idle, beyond those over DEFER_MAX_ITEMS
LEARN_BATCH = 8       # executions an idle flush holds for the policy before handing them over
LEARN_MAX_AGE_S = 0.02   # ... or until the oldest has waited this long (s)
LEARN_GAP_S = LEARN_MAX_AGE_S  # held only while executions come closer than this (s)


class Bookkeeping:
    def __init__(self, submit: Callable[[dict[str, Any]], None], window: int, ewma_alpha: float,
                 observe_many: Callable[[list[Observation]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._submit = submit          # the store's submit: O(1), never blocks
        self._observe_many = observe_many   # the policy's, for the observations a flush collected
        self._window = window
        self._alpha = ewma_alpha
        self._stats: dict[tuple[str, str, str, str], ArmStats] = {}
        self._deferred: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._observations: list[Observation] = []
        self._clock = clock
        self._held_since = 0.0   # when the oldest execution held for the policy came (clock's s)
        self._last_observed_s = float("-inf")
        self._steady = False     # the last two executions came less than LEARN_GAP_S apart
        self.on_record: Callable[[dict[str, Any]], None] | None = None   # also sees each record (metrics)

    # --- deferred work ---------------------------------------------------------------------------
    @property
    def waiting(self) -> bool:
        return bool(self._deferred)

    @property
    def backlog(self) -> int:
        """Deferred items waiting."""
        return len(self._deferred)

    @property
    def full(self) -> bool:
        return len(self._deferred) >= DEFER_MAX_ITEMS

    def defer(self, fn: Callable[..., Any], *args: Any) -> None:
        self._deferred.append((fn, args))

    def observe(self, observation: Observation) -> None:
        """One measured execution for the policy (deferred work calls this): handed over with the
        rest of the batch at the end of a flush (see the module contract)."""
        now = self._clock()
        if not self._observations:
            self._held_since = now
        self._steady = now - self._last_observed_s < LEARN_GAP_S
        self._last_observed_s = now
        self._observations.append(observation)

    @property
    def learn_due_s(self) -> float | None:
        """When the executions held for the policy are due to it (clock's s), None if none are."""
        return self._held_since + LEARN_MAX_AGE_S if self._observations else None

    def flush_slice(self) -> None:
        """A never-idle loop's round: ``FLUSH_SLICE`` items, and every item over
        ``DEFER_MAX_ITEMS`` (a round may defer more than a slice: the backlog stays bounded)."""
        self.flush(max(FLUSH_SLICE, len(self._deferred) - DEFER_MAX_ITEMS + FLUSH_SLICE), hold=True)

    def flush(self, limit: int | None = None, *, hold: bool = False) -> None:
        """Do the deferred work: all of it, or the oldest ``limit`` items (a daemon that is never
        idle does a slice per round of its loop, so no request waits behind a whole backlog). The
        policy gets the executions collected once they are ``DEFER_MAX_ITEMS``, else once the
        backlog is done, unless ``hold`` (the loop's idle moments), they come steadily (less
        than ``LEARN_GAP_S`` apart) and fewer than ``LEARN_BATCH`` are held, none of them for
        ``LEARN_MAX_AGE_S``."""
        if limit is None or limit >= len(self._deferred):
            work, self._deferred = self._deferred, []
        else:
            work, self._deferred = self._deferred[:limit], self._deferred[limit:]
        for fn, args in work:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - one record's bookkeeping must not stop the daemon
                log.exception("bookkeeping of an answered request failed")
        held = len(self._observations)
        if held < DEFER_MAX_ITEMS and (self._deferred or hold and self._steady and held < LEARN_BATCH
                                       and self._clock() < self._held_since + LEARN_MAX_AGE_S):
            return
        observations, self._observations = self._observations, []
        if observations and self._observe_many is not None:
            try:
                self._observe_many(observations)
            except Exception:  # noqa: BLE001 - a failed update must not stop the daemon
                log.exception("the policy's update from %d executions failed", len(observations))

    # --- statistics ------------------------------------------------------------------------------
    def stats_of(self, model: ModelVersion, arm: Arm) -> ArmStats:
        key = (model.name, model.version, arm.variant.name, arm.placement.name)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = ArmStats(*key, window=self._window, alpha=self._alpha)
        return stats

    # --- records ---------------------------------------------------------------------------------
    def record(self, request: proto.Request, model: ModelVersion, client: str, now: float, *, outcome: str,
               error_code: str | None, choice: Any, arm: Arm | None, timing: Mapping[str, float] | None = None,
               energy: Mapping[str, Any] | None = None, met: Mapping[str, bool] | None = None,
               runtime: Mapping[str, Any] | None = None) -> None:
        """One selection record: ``timing``, ``energy`` and ``met`` as the reply carries them
        (None when nothing ran). A repeated header's answered request, from the same client
        with the same decision on the same arm as the last one, reuses that one's row for all
        but its id, time and what ran (``records.repeat_row``)."""
        kept = request.derived.get("row") if outcome == "ok" and request.derived is not None else None
        if kept is not None and kept[0] is choice and kept[1] is arm and kept[2] is model and kept[3] == client:
            row = records.repeat_row(kept[4], ts=now, request_id=request.id, predicted=choice.predicted,
                                     timing=timing, energy=energy, met=met, runtime=runtime)
        else:
            row = records.selection_row(
                ts=now, request_id=request.id, client=client, model=model.name, version=model.version,
                objective=request.objective, on_infeasible=request.on_infeasible,
                constraints=constraints_map(request), outcome=outcome, error_code=error_code,
                variant=arm.variant.name if arm else None, placement=arm.placement.name if arm else None,
                reason_code=choice.code, reason=choice.text, predicted=choice.predicted, timing=timing,
                energy=energy, met=met, runtime=runtime)
            if outcome == "ok" and request.derived is not None:   # (one per header: the last client's)
                request.derived["row"] = (choice, arm, model, client, row)
        self._submit(row)
        if self.on_record is not None:
            self.on_record(records.row_record(row))
