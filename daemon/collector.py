"""Python's garbage collector, run at the loop's idle moments rather than inside a request.

CPython collects when a generation's count of allocations passes its threshold, in whatever
code allocates then, the daemon's request path among it. Traced live over 2,000 requests of one
client (the tiny model), 62 of the 118 collections came inside a request, before its reply: a
young generation's pass took 60 µs (median), an older one's 230, once up to 1.5 ms. A fresh
daemon's first requests fill caches that stay, so they met them too (the first request's
decision met one in one trace, its job's set-up in another). Reference counting frees nearly
everything the request path makes; the collector is only for cycles, and it can wait for the
next idle moment: then 2 collections of 109 came inside a request.

Contract
--------
* :meth:`IdleCollector.start` (once, at the end of start-up): a full collection, then
  everything left frozen (``gc.freeze``: it lives as long as the daemon, and no collection need
  walk it again), then the automatic collector off; :meth:`IdleCollector.stop` (shutdown) turns
  it back on.
* :meth:`IdleCollector.idle` (the loop's idle moments): the collection CPython would have made by
  now, if any (the oldest generation whose count passed its threshold, as CPython picks it);
  :meth:`IdleCollector.busy` (each round of a loop that is not idle): the same, but only once
  the youngest generation's count is ``BUSY_FACTOR`` times its threshold, so that a daemon that
  is never idle still collects, less often.
* The counts are the interpreter's: what the placements' threads allocate counts too.
* The daemon's main thread only.
"""

from __future__ import annotations

import gc

BUSY_FACTOR = 8   # a loop with no idle moment collects at this many times the youngest threshold


class IdleCollector:
    def __init__(self) -> None:
        self.thresholds = gc.get_threshold()
        self.collections = 0   # collections made here (any generation)
        self._busy_at = self.thresholds[0] * BUSY_FACTOR
        self._on = False

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        self.thresholds = gc.get_threshold()
        self._busy_at = self.thresholds[0] * BUSY_FACTOR
        if self.thresholds[0] > 0 and gc.isenabled():   # (else it was off already: left so)
            gc.disable()
            self._on = True

    def stop(self) -> None:
        if self._on:
            self._on = False
            gc.enable()

    def idle(self) -> None:
        if self._on and gc.get_count()[0] > self.thresholds[0]:
            self._collect()

    def busy(self) -> None:
        if self._on and gc.get_count()[0] > self._busy_at:
            self._collect()

    def _collect(self) -> None:
        _, collected_young, collected_middle = gc.get_count()
        _, t1, t2 = self.thresholds
        # (CPython's rule: the oldest generation whose count, the collections of the one below it
        # since its own last, passed its threshold, with those below it)
        generation = 2 if collected_middle > t2 else 1 if collected_young > t1 else 0
        gc.collect(generation)
        self.collections += 1
