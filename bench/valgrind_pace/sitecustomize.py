"""The daemon's own clocks slowed to valgrind's pace, for ``bench/instructions.py``; imported at start-up.

Under callgrind the daemon runs about 50 times slower, and a request comes 50 times less often,
while the daemon's batching rules count wall time: the policy's update takes the executions held
for at most ``LEARN_MAX_AGE_S`` (20 ms: one or two of them under valgrind, eight live), and the
store's writer commits what came in its batch gap (a few rows under valgrind, hundreds live). The
instructions counted per request would then hold per-batch work that the live daemon spreads over
many requests. Python imports a module named ``sitecustomize`` from its path when it starts: the
benchmark puts this folder first on the daemon's ``PYTHONPATH`` and names the factor in
``ADAPTD_VALGRIND_PACE``; then, and only then, this module stretches those wall-time rules by it:
the bookkeeping's batch age and gap, and the store's batch gaps (the benchmark stretches the
settings the configuration holds: the store's flush interval and the inline rule's bounds). The
daemon's code is otherwise the one measured; the variable is taken out of the environment once
read.
"""

from __future__ import annotations

import os

_PACE = os.environ.pop("ADAPTD_VALGRIND_PACE", None)

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
