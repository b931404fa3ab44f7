"""Probing: the budget that bounds how often the selector runs an arm to refresh its estimate
rather than the best one, and the arms it owes a probe.

Contract
--------
* :class:`ProbeBudget` keeps one credit per kind of decision. ``FEASIBLE``: decisions where some
  arm is predicted to meet the request (their probe: a stale arm itself predicted to meet it).
  ``STALE_PRIOR``: decisions where none is (their probe: a stale arm whose *prior* meets it). Each
  decision of a kind earns ``share`` of a credit of that kind (:meth:`~ProbeBudget.earn`); a look
  for an arm to probe costs a whole credit (:meth:`~ProbeBudget.spend`: True and the credit spent,
  or False and nothing spent), found or not, so that the look itself runs on that share of
  decisions only; :meth:`~ProbeBudget.look` is the two in one call. Probes of a kind are thus at most ``share`` x its decisions + 1. A dry run
  neither earns nor spends.
* :class:`PendingProbes` holds, per model, the arm closest to a rejected request on a stale
  estimate (see the selector's policy): the model's next probe look takes it if it is eligible,
  and it is dropped once the arm has been measured since.
* The order probes go in: the best by the request's objective, then the longest unmeasured
  (never measured first), then the lowest arm index: :func:`best_stale` over tuples (a few
  arms), :func:`best_stale_columns` over numpy columns (many).
* Not thread-safe (the selector is called from one thread); no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence

import numpy as np

from .kernel import finite


class ProbeBudget:
    FEASIBLE = 0
    STALE_PRIOR = 1

    __slots__ = ("credits", "share")

    def __init__(self, share: float) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"probe share must be in [0, 1], got {share}")
        self.share = share
        self.credits = [0.0, 0.0]   # by kind

    @property
    def enabled(self) -> bool:
        return self.share > 0.0

    def earn(self, kind: int) -> None:
        """One decision of ``kind``: its share of a credit."""
        self.credits[kind] += self.share

    def look(self, kind: int) -> bool:
        """One decision of ``kind`` that may look for an arm to probe: :meth:`earn`, then
        :meth:`spend`."""
        credit = self.credits[kind] + self.share
        if credit >= 1.0:
            self.credits[kind] = credit - 1.0
            return True
        self.credits[kind] = credit
        return False

    def spend(self, kind: int) -> bool:
        """A whole credit of ``kind`` for a look, if there is one."""
        if self.credits[kind] >= 1.0:
            self.credits[kind] -= 1.0
            return True
        return False


class PendingProbes:
    """Per model (any hashable key): the arm closest to a rejected request, and when."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[object, tuple[int, float]] = {}

    def note(self, model: object, arm: int, now_s: float) -> None:
        """``arm`` was closest to a rejected request at ``now_s``: the model's next probe (replacing
        any earlier one)."""
        self._pending[model] = (arm, now_s)

    def take(self, model: int, eligible: Container[int], last_update_s: Sequence[float]) -> int | None:
        """The model's pending arm when it is ``eligible`` (indices relative to ``model``, the
        model's first arm id), taken off, as such an index; None otherwise. A pending arm measured
        since (``last_update_s`` by arm id) is dropped."""
        pending = self._pending.get(model)
        if pending is None:
            return None
        arm, since_s = pending
        if last_update_s[arm] >= since_s:
            del self._pending[model]
            return None
        if arm - model not in eligible:
            return None
        del self._pending[model]
        return arm - model


def best_stale(entries: Iterable[tuple[float, float, float, int]]) -> int | None:
    """The arm of the least (key1, key2, last measured, arm) among ``entries``; None if empty."""
    best = min(entries, default=None)
    return None if best is None else best[3]


def best_stale_columns(idx: np.ndarray, key1: np.ndarray, key2: np.ndarray, last: np.ndarray) -> int | None:
    """:func:`best_stale` over the arms ``idx`` (ascending) of a model's columns: its keys (NaN or
    infinite: ``BIG``) and last measurement times, read only as far as ties need."""
    if idx.size <= 1:
        return int(idx[0]) if idx.size else None
    k1 = finite(key1[idx])
    idx = idx[k1 == k1.min()]   # usually one arm
    if idx.size == 1:
        return int(idx[0])
    return int(idx[np.lexsort((idx, last[idx], finite(key2[idx])))[0]])
