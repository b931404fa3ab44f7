"""The daemon's once-a-second work, each step on its own.

Contract
--------
* :meth:`Housekeeping.tick` runs, in order: the shared-memory regions whose registering process
  has exited (PROTOCOL.md §11.2), the replies past their replay window, the local stream's
  listeners and idle connections, the arms whose quarantine ended or whose placement is back,
  live fidelity's comparisons past their window's age, the worker processes stopped in the middle
  of a message or past ``[placements] job_timeout_s`` on one job (killed; a placement's thread
  past it is logged: :meth:`~adaptd.daemon.dispatch.Dispatcher.kill_stalled`), and the metrics'
  publication.
* A step that raises is logged (:class:`~adaptd.daemon.faultlog.FaultLog`: its traceback at
  most once a minute per kind) and the next steps still run: a fault in housekeeping never ends
  the daemon's loop, and the same step is tried again at the next tick.
* The daemon's parts are read at each tick (a reload replaces the registry, start-up adds the
  metrics). Main thread only; ``now`` is ``time.monotonic()`` seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adaptd.daemon.faultlog import FaultLog


class Housekeeping:
    def __init__(self, daemon: Any, faults: FaultLog) -> None:
        self.d, self.faults = daemon, faults
        self.steps: tuple[tuple[str, Callable[[float], None]], ...] = (
            ("regions", self._sweep_regions), ("replays", self._expire_replays), ("streams", self._tend_streams),
            ("arms", self._sync_arms), ("fidelity", self._expire_comparisons), ("workers", self._kill_stalled_workers),
            ("metrics", self._publish_metrics))

    def tick(self, now: float) -> None:
        for name, step in self.steps:
            try:
                step(now)
            except Exception as exc:  # noqa: BLE001 - housekeeping must not end the daemon
                self.faults.log(exc, f"in the once-a-second housekeeping ({name})")

    def _sweep_regions(self, now: float) -> None:
        if self.d.regions.owned():
            self.d.regions_gone(self.d.regions.sweep_owners())

    def _expire_replays(self, now: float) -> None:
        self.d.replays.expire(now)

    def _tend_streams(self, now: float) -> None:
        self.d.frontend.streams.tick(now)

    def _sync_arms(self, now: float) -> None:
        self.d.health.sync(self.d.registry, now)

    def _expire_comparisons(self, now: float) -> None:
        self.d.fidelity.tick(now)

    def _kill_stalled_workers(self, now: float) -> None:
        self.d.pool.kill_stalled(now)

    def _publish_metrics(self, now: float) -> None:
        if self.d.metrics is not None:
            self.d.metrics.publish()
