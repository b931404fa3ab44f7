"""Which jobs run on the thread that received them (inline) instead of their placement's thread.

A job run inline costs no hand-off: no wake-up of the placement's thread before the run and
none of the main thread after it, about 1.9% of MobileNetV2's 7 ms round trip here
(docs/decisions.md, "Inline runs for a sole caller"). While it runs, though, the main thread
reads no socket: a request that comes meanwhile waits for the run's end, even one for another
placement that could have run at once. Hence two limits on the job's predicted latency:

* ``inline_max_ms`` (``[placements]``, 2 ms): any job this short runs inline, whoever calls;
* ``inline_sole_caller_max_ms`` (20 ms): a longer job runs inline only for a *sole caller*:
  its peer (a connection of the local stream, a ZeroMQ client) sent every inference the daemon
  received in the last ``SOLE_CALLER_WINDOW_S``, no other request is held, read or waiting (a
  caller that sends several at once is not one), and no placement is busy; the limit is
  compared with the job's latency bound at the policy's confidence, not its mean. A caller that
  comes while such a run goes on waits at most that run, once: its inference makes the first
  caller no longer the sole one for the window. Control requests (an operator's ``stats`` every
  second, say) do not count: they wait at most one such run, and would otherwise end every sole
  caller's turn.

Contract
--------
* :meth:`InlineRule.seen` is told of every inference received, in order;
  :meth:`InlineRule.allows` is asked for one that is about to be run (the placement must also be
  idle: :meth:`adaptd.daemon.placement_threads.ThreadPlacements.run_inline` checks that).
* The daemon's main thread only; no I/O. Times are ``time.monotonic_ns()``; limits in ms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Long enough that a caller sending every few seconds counts as active: it would otherwise find a
# sole caller's run in progress at nearly every request (docs/decisions.md).
SOLE_CALLER_WINDOW_S = 5.0


class InlineRule:
    """The two limits and the sole caller seen so far (see the module contract)."""

    def __init__(self, inline_max_ms: float, sole_caller_max_ms: float,
                 window_s: float = SOLE_CALLER_WINDOW_S) -> None:
        self.inline_max_ms = inline_max_ms
        self.sole_caller_max_ms = sole_caller_max_ms
        self._window_ns = int(window_s * 1e9)
        self._peer: bytes | None = None
        self._since_ns = 0   # when the latest peer sent its first request of its current run

    def seen(self, peer: bytes, now_ns: int) -> None:
        """An inference from ``peer`` was received at ``now_ns``."""
        if peer != self._peer:
            self._peer = peer
            self._since_ns = now_ns

    def sole_caller(self, peer: bytes, now_ns: int) -> bool:
        """Whether ``peer`` sent every inference of the last window (its first excluded)."""
        return peer == self._peer and now_ns - self._since_ns >= self._window_ns

    def allows(self, predicted_ms: float, bound_ms: float | None, peer: bytes, now_ns: int,
               others_busy: Callable[..., bool], *args: Any) -> bool:
        """Whether a job predicted to take ``predicted_ms`` runs inline. A sole caller's job is
        judged on ``bound_ms``, the latency it stays under at the policy's confidence (where
        known): its run is the loop's pause. ``others_busy(*args)`` (asked last, only for a sole
        caller's longer job, so that no closure is made per request): other requests are held,
        read or waiting, or a placement is busy."""
        if predicted_ms <= self.inline_max_ms:
            return True
        return ((bound_ms if bound_ms is not None else predicted_ms) <= self.sole_caller_max_ms
                and self.sole_caller(peer, now_ns) and not others_busy(*args))
