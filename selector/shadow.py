"""Which served requests get a shadow run of the model's reference variant.

Contract
--------
* Pure: no I/O, no clock (``now_s`` is passed in: seconds, one monotonic origin), one seeded
  random generator of its own. Thread safety: none; the owner serialises calls.
* Lifecycle: ``ShadowScheduler(params, now_s)``; ``decide`` once per served request, after its
  reply has been sent (the decision never holds a reply back); when a shadow run it allowed has
  finished, ``settle`` with the CPU time it really took, so the budget follows real costs, not
  predictions; ``stats`` for ``adaptd stats``.
* Units: CPU time in ms, budget in ms of CPU per s of wall time (20 = 2 % of one core), time
  in s, share in [0, 1].

Policy, in order (the first rule that says no gives the reason):
1. never for a request the reference itself served (``reference``: nothing to compare);
2. sampling: with probability ``share``, or always while the served variant's window holds
   fewer than ``warmup_samples`` comparisons (at start, after a reload, after the window has
   aged out), so a variant's figure is tested within a bounded number of its requests; the
   draw is made for every eligible request, whatever follows, so the sampled requests are a
   seeded random subset of the served ones, independent of their inputs (``not_sampled``);
3. never when no placement that can run the reference is idle (``no_idle_placement``): a
   shadow run must not queue in front of a request;
4. the CPU budget, a token bucket: it holds up to ``burst_s`` seconds of budget, fills at
   ``cpu_budget_ms_per_s``, and each run takes its predicted CPU time from it (``cpu_budget``
   when it has too little). A run is also allowed when the bucket is full, even if it
   predicts more than the bucket holds (a reference slower than the whole burst would
   otherwise never run); the bucket then goes negative and refills before the next. A run's
   real cost is booked by ``settle``; a debt is never carried into a second run (the next
   needs the bucket to hold its prediction, or to be full). So the real CPU time of the runs
   allowed over T seconds is at most ``cpu_budget_ms_per_s * (T + burst_s)`` plus one run's
   cost beyond what the bucket held for it (its prediction, or the whole bucket for a run
   dearer than that), and a run not yet settled may add its error of prediction.

Shadows taken only when a placement is idle sample quiet moments more than busy ones: if the
inputs of busy spells differ from those of quiet ones, the agreement describes the quiet ones
better. That is the price of never delaying a reply.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

REASONS = ("shadow", "reference", "disabled", "not_sampled", "no_idle_placement", "cpu_budget")


@dataclass(frozen=True)
class ShadowParams:
    share: float = 0.05                # of served requests (besides the warm-up)
    cpu_budget_ms_per_s: float = 20.0  # CPU time of shadow runs per second (2 % of one core)
    burst_s: float = 1.0               # the bucket holds this many seconds of budget
    warmup_samples: int = 30           # shadow every request while the window holds fewer (0: off)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {self.share}")
        if not (self.cpu_budget_ms_per_s >= 0 and math.isfinite(self.cpu_budget_ms_per_s)):
            raise ValueError(f"cpu_budget_ms_per_s must be >= 0, got {self.cpu_budget_ms_per_s}")
        if not (self.burst_s > 0 and math.isfinite(self.burst_s)):
            raise ValueError(f"burst_s must be > 0, got {self.burst_s}")
        if self.warmup_samples < 0:
            raise ValueError(f"warmup_samples must be >= 0, got {self.warmup_samples}")

    @property
    def enabled(self) -> bool:
        return self.cpu_budget_ms_per_s > 0 and (self.share > 0 or self.warmup_samples > 0)


@dataclass(frozen=True)
class ShadowDecision:
    run: bool
    reason: str          # one of REASONS
    charged_ms: float    # CPU time taken from the budget (pass it to ``settle``); 0 when not run


class ShadowScheduler:
    """The shadow policy of the module docstring."""

    def __init__(self, params: ShadowParams | None = None, now_s: float = 0.0) -> None:
        self.params = params or ShadowParams()
        self._rng = random.Random(self.params.seed)
        self._capacity_ms = self.params.cpu_budget_ms_per_s * self.params.burst_s
        self._tokens_ms = self._capacity_ms
        self._last_s = float(now_s)
        self.counts = {r: 0 for r in REASONS}
        self.charged_ms = 0.0      # CPU time booked for allowed runs, after ``settle``
        self.settled_runs = 0

    @property
    def tokens_ms(self) -> float:
        return self._tokens_ms

    def _refill(self, now_s: float) -> None:
        dt = max(0.0, float(now_s) - self._last_s)   # a clock that steps back adds nothing
        self._last_s = max(self._last_s, float(now_s))
        self._tokens_ms = min(self._capacity_ms, self._tokens_ms + dt * self.params.cpu_budget_ms_per_s)

    def decide(self, *, served_variant: str, reference: str, predicted_cpu_ms: float, window_samples: int,
               reference_idle: bool | Callable[[], bool], now_s: float) -> ShadowDecision:
        """Whether to run ``reference`` on the input a request was served with by
        ``served_variant``; ``predicted_cpu_ms`` is the reference's predicted CPU time on the
        placement it would run on, ``window_samples`` the served variant's comparisons in
        its window, ``reference_idle`` whether such a placement is idle now (or a function that
        says so, called only for a request the draw sampled: the unsampled ones cost a draw)."""
        if not (predicted_cpu_ms >= 0 and math.isfinite(predicted_cpu_ms)):
            raise ValueError(f"predicted_cpu_ms must be a finite number >= 0, got {predicted_cpu_ms}")
        p = self.params
        self._refill(now_s)
        if served_variant == reference:
            return self._no("reference")
        if not p.enabled:
            return self._no("disabled")
        share = 1.0 if window_samples < p.warmup_samples else p.share
        if not self._rng.random() < share:
            return self._no("not_sampled")
        if not (reference_idle() if callable(reference_idle) else reference_idle):
            return self._no("no_idle_placement")
        if self._tokens_ms < predicted_cpu_ms and self._tokens_ms < self._capacity_ms:
            return self._no("cpu_budget")
        self._tokens_ms -= predicted_cpu_ms
        self.charged_ms += predicted_cpu_ms
        self.counts["shadow"] += 1
        return ShadowDecision(True, "shadow", float(predicted_cpu_ms))

    def settle(self, charged_ms: float, actual_cpu_ms: float | None) -> None:
        """Book a finished run's real CPU time in place of its prediction (None: the run was
        abandoned before it started, so its charge is given back)."""
        actual = 0.0 if actual_cpu_ms is None else float(actual_cpu_ms)
        if not (actual >= 0 and math.isfinite(actual)):
            raise ValueError(f"actual_cpu_ms must be a finite number >= 0, got {actual_cpu_ms}")
        self._tokens_ms = min(self._capacity_ms, self._tokens_ms + charged_ms - actual)
        self.charged_ms += actual - charged_ms
        self.settled_runs += 1

    def reference_served(self) -> None:
        """A request the reference itself served: counted as :meth:`decide` counts it, without
        the rest of a decision (nothing to compare; the budget's refill is the same when it comes
        later)."""
        self.counts["reference"] += 1

    def _no(self, reason: str) -> ShadowDecision:
        self.counts[reason] += 1
        return ShadowDecision(False, reason, 0.0)

    def stats(self) -> dict:
        """Plain types: decisions per reason, CPU time booked (ms), tokens left (ms)."""
        return {"decisions": dict(self.counts), "cpu_ms": self.charged_ms, "tokens_ms": self._tokens_ms,
                "budget_ms_per_s": self.params.cpu_budget_ms_per_s, "share": self.params.share}
