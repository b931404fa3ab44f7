"""Agreement between a served variant and its model's reference: counts, intervals, windows.

Contract
--------
* Pure: numpy and the standard library only, no I/O, no clock: every time is passed in
  (seconds, any monotonic origin; the same origin for one window).
* :func:`wilson_interval` / :func:`wilson_bound`: the Wilson score interval for a binomial
  share (``successes`` of ``n``) at a confidence in (0, 1), with continuity correction by
  default; ``n == 0`` gives (0, 1). Bounds always lie in [0, 1] and bracket the point estimate
  ``successes / n``. The correction matters at the counts a window starts from: without it
  the one-sided bounds cover less than their level when ``n * share`` is a few units (at 30
  comparisons and a true disagreement of 0.059, the uncorrected 95 % lower bound exceeds it
  about 10 % of the time, the corrected one 3 %), and those are the bounds the drift test and
  the alarm act on.
* :func:`compare_outputs`: one served output against the reference's output for the same
  input, row by row (a row is one input of the batch): top-1 agreement for classifiers,
  ``relative error <= tolerance`` for regression outputs, and the relative error of every row.
* :class:`AgreementWindow`: one variant's comparisons: the last ``window`` of them (and none
  older than ``max_age_s`` when that is set) plus all-time counts. Mutated by ``add`` and
  ``expire`` only. Thread safety: none; the owner serialises calls.
* Units: shares in [0, 1]; relative errors are plain ratios (0.05 = 5 %); time in s.

Why a window by count, with an age limit
----------------------------------------
The interval's width depends on the number of comparisons, not on time, so a window of the
last ``window`` comparisons has a fixed statistical resolution whatever the traffic, and a
shift is reflected in the window after at most ``window`` comparisons (detected far sooner:
see ``fidelity.py``). A window by age alone would hold a handful of comparisons under light
traffic (an interval too wide to act on) and thousands under heavy traffic (slow to follow a
shift). The age limit is the second guard: a variant that stops being served stops being
compared, and without it the window would keep describing a regime that may have ended hours
ago. Comparisons older than ``max_age_s`` are dropped when the window is next touched.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np


def z_value(confidence: float, two_sided: bool) -> float:
    """The standard normal quantile for a confidence in (0, 1)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf((1.0 + confidence) / 2.0 if two_sided else confidence)


def _wilson(successes: int, n: int, z: float, continuity: bool) -> tuple[float, float]:
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    if continuity:  # Newcombe (1998), method 4
        denom = 2.0 * (n + z2)
        lo = (2 * n * p + z2 - 1 - z * math.sqrt(max(0.0, z2 - 2 - 1 / n + 4 * p * (n * (1 - p) + 1)))) / denom
        hi = (2 * n * p + z2 + 1 + z * math.sqrt(max(0.0, z2 + 2 - 1 / n + 4 * p * (n * (1 - p) - 1)))) / denom
    else:           # Wilson (1927); Newcombe (1998), method 3
        denom = 1.0 + z2 / n
        centre = (p + z2 / (2.0 * n)) / denom
        half = z / denom * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
        lo, hi = centre - half, centre + half
    # Exact ends: with no success the lower bound is 0, with no failure the upper bound is 1.
    lo = 0.0 if successes == 0 else min(p, max(0.0, lo))
    hi = 1.0 if successes == n else max(p, min(1.0, hi))
    return lo, hi


def wilson_interval(successes: int, n: int, confidence: float, *, continuity: bool = True) -> tuple[float, float]:
    """Two-sided Wilson score interval at ``confidence`` for ``successes`` of ``n``, with
    continuity correction unless ``continuity=False``."""
    return _wilson(successes, n, z_value(confidence, two_sided=True), continuity)


def wilson_bound(successes: int, n: int, confidence: float, *, upper: bool, continuity: bool = True) -> float:
    """One-sided Wilson bound: the share is below the upper bound (``upper=True``), or above the
    lower one, with probability about ``confidence`` (at least, on average over the share,
    with the continuity correction)."""
    lo, hi = _wilson(successes, n, z_value(confidence, two_sided=False), continuity)
    return hi if upper else lo


def compare_outputs(served: np.ndarray, reference: np.ndarray, *, classification: bool = True,
                    tolerance: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Compare one output of a served variant with the reference's, row by row.

    Both arrays have the same shape ``(N, ...)``. Returns ``(agreed, rel_error)``, each of
    length N: for a classifier ``agreed`` is top-1 equality (argmax over the last axis, scores
    flattened per row), for a regression output ``rel_error <= tolerance``. ``rel_error`` is
    ``||served - reference||_2 / ||reference||_2`` per row (0 when both are zero, infinite when
    only the reference is)."""
    s = np.asarray(served, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if s.shape != r.shape or s.ndim < 1:
        raise ValueError(f"served output {s.shape} and reference output {r.shape} differ")
    s = s.reshape(len(s), -1)
    r = r.reshape(len(r), -1)
    diff = np.linalg.norm(s - r, axis=1)
    norm = np.linalg.norm(r, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(norm > 0, diff / np.where(norm > 0, norm, 1.0), np.where(diff > 0, np.inf, 0.0))
    if classification:
        agreed = np.argmax(s, axis=1) == np.argmax(r, axis=1)
    else:
        agreed = rel <= tolerance
    return agreed, rel


@dataclass(frozen=True)
class AgreementSummary:
    """A window's and the all-time agreement, with intervals at ``confidence`` (two-sided).

    ``agreement`` fields are None when there is no comparison; relative errors are None when
    none was recorded (``rel_error_p95`` is over the window)."""

    n: int
    agreed: int
    agreement: float | None
    agreement_low: float | None
    agreement_high: float | None
    n_all: int
    agreed_all: int
    agreement_all: float | None
    agreement_all_low: float | None
    agreement_all_high: float | None
    rel_error_mean: float | None
    rel_error_p95: float | None
    rel_error_mean_all: float | None
    rel_error_max_all: float | None
    confidence: float

    def to_dict(self) -> dict:
        """Plain types only (msgpack/JSON-ready); infinite relative errors become None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


class AgreementWindow:
    """One variant's comparisons with the reference (see the module contract)."""

    def __init__(self, window: int, max_age_s: float | None = None) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if max_age_s is not None and not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0 or None, got {max_age_s}")
        self.window = int(window)
        self.max_age_s = max_age_s
        self._items: deque[tuple[float, bool, float]] = deque()  # (t_s, agreed, rel_error or nan)
        self.agreed = 0                 # in the window
        self.n_all = 0
        self.agreed_all = 0
        self._rel_sum_all = 0.0
        self._rel_n_all = 0
        self._rel_max_all = 0.0

    @property
    def n(self) -> int:
        """Comparisons in the window (after the last ``add`` or ``expire``)."""
        return len(self._items)

    def add(self, agreed: bool, t_s: float, rel_error: float | None = None) -> None:
        """One comparison at ``t_s`` (non-decreasing from call to call)."""
        agreed = bool(agreed)
        rel = float("nan") if rel_error is None else float(rel_error)
        self._items.append((float(t_s), agreed, rel))
        self.agreed += agreed
        self.n_all += 1
        self.agreed_all += agreed
        if rel == rel:
            self._rel_n_all += 1
            self._rel_sum_all += rel
            self._rel_max_all = max(self._rel_max_all, rel)
        while len(self._items) > self.window:
            self.agreed -= self._items.popleft()[1]
        self.expire(t_s)

    def expire(self, now_s: float) -> int:
        """Drop comparisons older than ``max_age_s`` at ``now_s``; returns how many went."""
        if self.max_age_s is None:
            return 0
        cutoff = now_s - self.max_age_s
        dropped = 0
        while self._items and self._items[0][0] < cutoff:
            self.agreed -= self._items.popleft()[1]
            dropped += 1
        return dropped

    def summary(self, confidence: float) -> AgreementSummary:
        """The window's and the all-time counts, shares and two-sided intervals."""
        def share(k: int, n: int) -> tuple[float | None, float | None, float | None]:
            if n == 0:
                return None, None, None
            lo, hi = wilson_interval(k, n, confidence)
            return k / n, lo, hi

        rel = np.array([r for _, _, r in self._items], dtype=np.float64)
        rel = rel[~np.isnan(rel)]
        p, lo, hi = share(self.agreed, self.n)
        pa, loa, hia = share(self.agreed_all, self.n_all)
        return AgreementSummary(
            n=self.n, agreed=self.agreed, agreement=p, agreement_low=lo, agreement_high=hi,
            n_all=self.n_all, agreed_all=self.agreed_all, agreement_all=pa,
            agreement_all_low=loa, agreement_all_high=hia,
            rel_error_mean=float(rel.mean()) if rel.size else None,
            rel_error_p95=float(np.quantile(rel, 0.95)) if rel.size else None,
            rel_error_mean_all=self._rel_sum_all / self._rel_n_all if self._rel_n_all else None,
            rel_error_max_all=self._rel_max_all if self._rel_n_all else None,
            confidence=confidence)
