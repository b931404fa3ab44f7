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
  now, if any: the oldest generation whose count (of allocations less frees, for the youngest;
  of collections of the one below since its own last, for the others) passed its threshold,
  but the oldest only once the objects moved into it since its last collection are more than a
  quarter of those it kept then (CPython's rule against quadratic full collections; the
  objects frozen at start count as kept; those moved in are counted as those still in it,
  where CPython counts every one moved, so a full collection may come later than CPython's).
  :meth:`IdleCollector.busy` (each round of a loop that is not idle): the same, but only once
  the youngest generation's count is ``BUSY_FACTOR`` times its threshold, so that a daemon that
  is never idle still collects, less often.
* A full collection made elsewhere (``gc.collect()``) is noticed at the next collection here
  (the oldest generation's count fell), and what it kept is counted afresh.
* CPython 3.10 to 3.13 only (their generational collector), not free-threaded; elsewhere
  (CPython 3.14's incremental collector, the free-threaded build, another Python)
  :meth:`IdleCollector.start` freezes and leaves the automatic collector on.
* The counts are the interpreter's: what the placements' threads allocate counts too.
* The daemon's main thread only.
"""

from __future__ import annotations

import gc
import sys
import sysconfig

BUSY_FACTOR = 8   # a loop with no idle moment collects at this many times the youngest threshold
# (the free-threaded build's collector is not generational either)
GENERATIONAL = (sys.implementation.name == "cpython" and (3, 10) <= sys.version_info[:2] < (3, 14)
                and not sysconfig.get_config_var("Py_GIL_DISABLED"))


class IdleCollector:
    def __init__(self) -> None:
        self.thresholds = gc.get_threshold()
        self.collections = 0   # collections made here (any generation)
        self._busy_at = self.thresholds[0] * BUSY_FACTOR
        self._on = False
        self._kept = 0         # objects the oldest generation kept at its last collection (frozen: at start)
        self._kept_since = 0   # how many of the objects in it now were there then
        self._looked_at = 0    # the oldest's count when its pending objects were last found too few
        self._oldest_count = 0   # the oldest's count after this collector's last collection

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        self._kept, self._kept_since = gc.get_freeze_count(), 0
        self.thresholds = gc.get_threshold()
        self._busy_at = self.thresholds[0] * BUSY_FACTOR
        if GENERATIONAL and self.thresholds[0] > 0 and gc.isenabled():   # (else left as it is)
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
        _, young_collections, middle_collections = gc.get_count()
        _, t1, t2 = self.thresholds
        if middle_collections < self._oldest_count:   # a full collection made elsewhere (gc.collect())
            self._kept = self._kept_since = len(gc.get_objects(generation=2))
            self._looked_at = 0
        generation = 1 if young_collections > t1 else 0
        if middle_collections > t2 and middle_collections > self._looked_at:
            # (counted by listing the generation: once per t2 of its count, not each time, as
            # CPython's own counter allows)
            if len(gc.get_objects(generation=2)) - self._kept_since > self._kept / 4:
                generation = 2
            else:
                self._looked_at = middle_collections + t2
        gc.collect(generation)
        if generation == 2:
            self._kept = self._kept_since = len(gc.get_objects(generation=2))
            self._looked_at = 0
        self._oldest_count = gc.get_count()[2]
        self.collections += 1
