"""The daemon's own clocks slowed to valgrind's pace, for ``bench/instructions.py``; imported at start-up.

Under callgrind the daemon runs about 50 times slower, and a request comes 50 times less often,
while some of the daemon's rules count wall time: the inline rule (a job predicted to take up
to 2 ms, 20 ms for a sole caller, runs on the thread that received it: under valgrind the tiny
model's run is predicted past it and handed to the placement's thread), the policy's batches
(the executions held for at most ``LEARN_MAX_AGE_S``, 20 ms: one or two of them under valgrind,
eight live) and the store's (the rows that came in its batch gap: a few under valgrind, hundreds
live). The instructions counted per request would then be those of another path, with per-batch
work the live daemon spreads over many requests. Python imports a module named
``sitecustomize`` from its path when it starts: the benchmark puts this folder first on the
daemon's ``PYTHONPATH`` and names the factor in ``ADAPTD_VALGRIND_PACE``; then, and only then,
this module stretches the rules that are not settings by it (the bookkeeping's batch age and
gap, the store's batch gaps; the benchmark stretches those that are: the inline rule's bounds,
the store's flush and retention intervals) and writes the factor to the file named in
``ADAPTD_VALGRIND_PACE_MARK``, by which the benchmark knows it ran (Python only prints a failing
``sitecustomize``'s error and goes on). Not stretched: the interpreter's thread switch interval
and the selector's time-weighted averages, which change figures, not what runs. The daemon's
code is otherwise the one measured; the variables are taken out of the environment once read.
"""

from __future__ import annotations

import os

_PACE = os.environ.pop("ADAPTD_VALGRIND_PACE", None)
_MARK = os.environ.pop("ADAPTD_VALGRIND_PACE_MARK", None)

if _PACE:
    import functools
    import inspect

    from adaptd.daemon import bookkeeping, store

    _factor = float(_PACE)
    bookkeeping.LEARN_MAX_AGE_S *= _factor
    bookkeeping.LEARN_GAP_S *= _factor
    _init = store.SelectionStore.__init__
    _defaults = inspect.signature(_init).parameters

    @functools.wraps(_init)
    def _paced_init(self, *args, **kwargs):
        for name in ("min_batch_gap_s", "quiet_batch_gap_s"):
            kwargs[name] = kwargs.get(name, _defaults[name].default) * _factor
        _init(self, *args, **kwargs)

    store.SelectionStore.__init__ = _paced_init
    if _MARK:
        with open(_MARK, "w") as fh:
            fh.write(f"{_factor}\n")
