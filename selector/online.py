"""Online learning: per-arm latency and energy estimates that learn from every execution
(:class:`OnlineCostModel`). What the structural priors miss, learnt across arms and kept across
reloads, is :mod:`.priors`.

Contract
--------
* Lifecycle: construct with hyper-parameters only; ``init_priors`` sizes the per-arm state from
  the structural predictor's estimates (prior mean and spread of latency, prior energy) and returns
  self; then ``update`` once per measured execution (or ``update_batch`` for several of one arm:
  the same state, but for the one case its docstring names), in any order of arms, with the measurement's timestamp passed in (seconds, any
  monotonic origin; the model never reads a clock).
* State is columnar: numpy arrays indexed by arm id, updated in place by ``update``. The
  arrays the selector reads on the request path (``est_latency_ms_``, ``latency_bound_ms_``,
  ``latency_bounds_ms_``, ``est_energy_mj_``, ``energy_bound_mj_``, ``energy_estimated_``,
  ``last_update_s_``) are always current after ``update`` returns, so a decision reads them
  without recomputing anything. ``version`` counts the calls that changed them (``update``,
  ``update_batch``, and ``shift_priors`` or ``shift_energy_priors`` when an arm they shift has
  no measurement of its own, the only arms whose published figures a shift moves): a decision
  made at one version holds while it stays.
* Latency bounds are published at several confidences (``levels_``: BOUND_LEVELS and the
  configured one), one row of ``latency_bounds_ms_`` each, so a request may ask for its own
  (``level_for``: the lowest level at or above it, never a weaker promise than asked);
  ``latency_bound_ms_`` is the configured confidence's row (a view).
* Thread safety: none. The daemon calls ``update`` and the selector's ``choose`` from one thread.
* Units: latency ms, energy mJ, time s, power W (= mJ/ms).

Estimator, per arm
------------------
* Latency mean and variance: an exponentially weighted moving average with *time-based* decay:
  a measurement ``dt`` seconds after the previous one gets weight
  ``max(1 - 2**(-dt / half_life_s), min_update_weight, 1 / n)``: with few samples it is their plain
  average, under heavy traffic each sample still counts ``min_update_weight`` (so a slow-down is
  followed within a bounded number of requests), and after a quiet spell the new sample dominates
  (a regime change is followed within about one half-life of seconds).
* A sliding window of the last ``window`` latencies gives an empirical quantile once it holds
  ``min_window`` samples no older than ``window_max_age_s`` at the update being made. Without the
  age limit a window outlived the regime that filled it: an arm that had a slow spell and then
  went unchosen kept the spell's quantile as its bound until ``window`` new samples came, which
  its own bound prevented (bench/bench_selection.py: one arm left unchosen for the last 25 s of a
  run). With it, the next measurement (a re-probe) is judged on the samples of its own regime.
* The measured bound at confidence q is the window's quantile q once the window holds
  ``min_window`` samples, and ``mean + z_q * sd`` before (with ``gaussian_floor``, the larger
  of the two throughout: latency is heavy-tailed, and a rare slow sample inflates the variance
  for many samples after it; in paired runs the floor rejected requests the arms went on to
  meet: docs/decisions.md, "Latency bound: the window's quantile alone"). The published mean and bound blend the prior (from the
  structural predictor) with the measurements: ``prior_share = prior_weight / (prior_weight +
  n)`` while ``n < full_trust_n``, 0 after.
* ``shift_priors`` moves the latency priors of some arms by a cost learnt elsewhere (the daemon:
  its own path around the interpreter, per placement); ``shift_energy_priors`` the energy
  priors of arms with no energy measured (the daemon: what the priors of the same model's
  measured arms on that placement missed).
* Energy: same weighting of measured energy when the daemon reports one. Until an arm has any,
  its energy is its prior power (W) times its current latency estimate, so an energy estimate
  follows a latency regime change too; ``energy_estimated_`` is True then, and otherwise copies
  the flag of the last measurement.
* Energy bound at the same confidence, because a caller's energy bound is judged per execution
  like its latency bound (a bound near the mean would be missed about half the time): once the
  arm's energy window holds ``min_window`` samples, its quantile q (the same rule as latency's);
  before that, the mean scaled by the arm's latency bound / latency estimate (energy is power x
  time, and the latency side already blends a prior spread in); with no energy measured, prior
  power x latency bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

_INF = math.inf

# The default quantile of the latency bound (SelectorConfig uses it too): 0.90, not 0.95, from
# paired runs of bench/bench_selection.py (docs/decisions.md, "Latency confidence").
DEFAULT_CONFIDENCE = 0.9
# The confidences every arm's latency bound is kept at, besides the configured one, for requests
# that ask for their own (PROTOCOL.md, constraints.latency_confidence). From a 16-sample window a
# 0.99 bound is about its largest sample.
BOUND_LEVELS = (0.5, 0.75, 0.9, 0.95, 0.99)


class OnlineCostModel:
    def __init__(
        self,
        *,
        confidence: float = DEFAULT_CONFIDENCE,
        half_life_s: float = 2.0,
        min_update_weight: float = 0.1,
        window: int = 16,
        min_window: int = 4,
        window_max_age_s: float = 10.0,
        prior_weight: float = 1.0,
        full_trust_n: int = 5,
        gaussian_floor: bool = False,
    ) -> None:
        if not 0.5 <= confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
        if not half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0, got {half_life_s}")
        if not 0.0 <= min_update_weight <= 1.0:
            raise ValueError(f"min_update_weight must be in [0, 1], got {min_update_weight}")
        if window < 1 or min_window < 1:
            raise ValueError("window and min_window must be >= 1")
        if not window_max_age_s > 0:
            raise ValueError(f"window_max_age_s must be > 0, got {window_max_age_s}")
        self.confidence = confidence
        self.half_life_s = half_life_s
        self.min_update_weight = min_update_weight
        self.window = window
        self.min_window = min_window
        self.window_max_age_s = window_max_age_s
        self.gaussian_floor = gaussian_floor
        self.prior_weight = prior_weight
        self.full_trust_n = full_trust_n

    # ------------------------------------------------------------------ setup
    def init_priors(self, prior_latency_ms, prior_latency_sd_ms, prior_energy_mj) -> OnlineCostModel:
        """Size the per-arm state; NaN in a prior means "unknown" (an arm with no latency prior
        is never predicted to meet a latency bound until measured)."""
        lat = np.asarray(prior_latency_ms, dtype=np.float64).copy()
        sd = np.asarray(prior_latency_sd_ms, dtype=np.float64).copy()
        en = np.asarray(prior_energy_mj, dtype=np.float64).copy()
        n_arms = lat.shape[0]
        if sd.shape != (n_arms,) or en.shape != (n_arms,):
            raise ValueError("prior arrays must have one entry per arm")
        self.z_ = NormalDist().inv_cdf(self.confidence)
        self.levels_ = tuple(sorted({*BOUND_LEVELS, self.confidence}))
        self.level_ = self.levels_.index(self.confidence)
        self.zs_ = np.array([NormalDist().inv_cdf(q) for q in self.levels_])
        self.prior_latency_ms_ = lat
        self.prior_latency_sd_ms_ = sd
        # [level, arm]; the configured level's row is prior_bound_ms_ (a view)
        self.prior_bounds_ms_ = lat[None, :] + self.zs_[:, None] * np.nan_to_num(sd, nan=0.0)[None, :]
        self.prior_bound_ms_ = self.prior_bounds_ms_[self.level_]
        self.prior_energy_mj_ = en.copy()                 # as given (NaN: unknown)
        self.prior_energy_shift_mj_ = np.zeros(n_arms)   # see shift_energy_priors
        with np.errstate(invalid="ignore", divide="ignore"):
            self.prior_power_w_ = np.where(lat > 0, en / lat, np.nan)
        # measured state
        self.n_ = np.zeros(n_arms, dtype=np.int64)
        self.mean_ms_ = np.full(n_arms, np.nan)
        self.var_ms2_ = np.zeros(n_arms)
        self.last_update_s_ = np.full(n_arms, -np.inf)  # -inf: never measured
        self.window_ms_ = np.zeros((n_arms, self.window))
        # rings of the last ``window`` samples and when each was taken (s); the n-th sample of an
        # arm goes to slot (n - 1) % window, so the counts above say what each ring holds
        self.window_t_ = np.zeros((n_arms, self.window))
        self.energy_n_ = np.zeros(n_arms, dtype=np.int64)
        self.energy_mean_mj_ = np.full(n_arms, np.nan)
        self.energy_var_mj2_ = np.zeros(n_arms)
        self.last_energy_s_ = np.full(n_arms, -np.inf)
        self.energy_window_mj_ = np.zeros((n_arms, self.window))
        self.energy_window_t_ = np.zeros((n_arms, self.window))
        # published (read by the selector on the request path)
        self.est_latency_ms_ = lat.copy()
        self.latency_bounds_ms_ = self.prior_bounds_ms_.copy()
        self.latency_bound_ms_ = self.latency_bounds_ms_[self.level_]
        self.est_energy_mj_ = en.copy()
        with np.errstate(invalid="ignore"):
            self.energy_bound_mj_ = self.prior_power_w_ * self.prior_bound_ms_
        self.energy_bound_mj_ = np.where(np.isnan(self.energy_bound_mj_), en, self.energy_bound_mj_)
        self.energy_estimated_ = np.ones(n_arms, dtype=bool)
        self.version = 0   # counts the changes to the published arrays (see the contract)
        return self

    @property
    def n_arms(self) -> int:
        return int(self.n_.shape[0])

    def level_for(self, confidence: float | None) -> int:
        """The row of ``latency_bounds_ms_`` for a request asking for ``confidence`` (None: the
        configured one): the lowest kept level at or above it. Raises ValueError above the
        highest level kept."""
        if confidence is None:
            return self.level_
        for k, q in enumerate(self.levels_):
            if q >= confidence:
                return k
        raise ValueError(f"latency_confidence {confidence:g} is above the highest kept here "
                         f"({self.levels_[-1]:g}); kept: {', '.join(f'{q:g}' for q in self.levels_)}")

    # ------------------------------------------------------------------ learning
    def update(self, arm: int, latency_ms: float, energy_mj: float | None = None,
               energy_estimated: bool = True, t_s: float = 0.0) -> None:
        """Learn from one execution of ``arm``: its measured latency (ms, model load excluded),
        its energy (mJ) or None when the daemon has none, whether that energy is an estimate, and
        the time it finished (s). Raises ValueError on a negative or non-finite latency (and the
        state is left unchanged). Kept beside :meth:`update_batch`, with the same fold
        (:meth:`_fold`), for what a paced client's flush feeds: it skips the batch's collecting of
        samples; a test holds the two to the same state."""
        a = int(arm)
        lat = float(latency_ms)
        if not (math.isfinite(lat) and lat >= 0.0):
            raise ValueError(f"latency_ms must be finite and >= 0, got {latency_ms!r}")
        t = float(t_s)
        if not math.isfinite(t):
            raise ValueError(f"t_s must be finite, got {t_s!r}")
        e = None
        if energy_mj is not None:
            e = float(energy_mj)
            if not (math.isfinite(e) and e >= 0.0):
                raise ValueError(f"energy_mj must be finite and >= 0 or None, got {energy_mj!r}")

        n, mean, var, _ = self._fold(a, self.n_, self.mean_ms_, self.var_ms2_, self.last_update_s_,
                                     self.window_ms_, self.window_t_, (lat,), (t,))
        est, bound = self._publish_latency(a, n, mean, var, self._recent(self.window_ms_, self.window_t_, a, n, t))
        measured = None
        if e is not None:
            ne, em, ev, _ = self._fold(a, self.energy_n_, self.energy_mean_mj_, self.energy_var_mj2_,
                                       self.last_energy_s_, self.energy_window_mj_, self.energy_window_t_, (e,), (t,))
            measured = (em, ev, self._recent(self.energy_window_mj_, self.energy_window_t_, a, ne, t), energy_estimated)
        self._publish_energy(a, est, bound, measured)
        self.version += 1

    def update_batch(self, arm: int, samples: Sequence[tuple[Any, ...]]) -> None:
        """Learn from several executions of one arm, in the order they finished: each
        ``(latency_ms, energy_mj, energy_estimated, t_s)`` as :meth:`update` takes them (items
        past the fourth are ignored: the selector passes its observations as they are). The
        state afterwards is the state after that many ``update`` calls, with one exception: an
        arm with fewer than ``min_window`` energy samples whose batch ends with samples without
        energy gets its energy bound from the latency bound at the batch's end, not at its last
        energy sample. The published figures are computed once (one sort of each window), which
        is what a batch saves. Raises ValueError on a bad sample before changing anything."""
        a = int(arm)
        lats, times, energies = [], [], []
        for x in samples:
            lat, e, t = x[0], x[1], x[3]
            if not (type(lat) is float and type(t) is float and 0.0 <= lat < _INF and -_INF < t < _INF
                    and (e is None or type(e) is float and 0.0 <= e < _INF)):   # (else: checked, converted)
                error = sample_error(x)
                if error is not None:
                    raise ValueError(error)
                lat, t = float(lat), float(t)
            if e is not None:
                energies.append((float(e), t, x[2]))
            lats.append(lat)
            times.append(t)
        if not lats:
            return

        n, mean, var, t = self._fold(a, self.n_, self.mean_ms_, self.var_ms2_, self.last_update_s_,
                                           self.window_ms_, self.window_t_, lats, times)
        est, bound = self._publish_latency(a, n, mean, var, self._recent(self.window_ms_, self.window_t_, a, n, t))
        measured = None
        if energies:
            ne, em, ev, te = self._fold(a, self.energy_n_, self.energy_mean_mj_, self.energy_var_mj2_,
                                        self.last_energy_s_, self.energy_window_mj_, self.energy_window_t_,
                                        [x[0] for x in energies], [x[1] for x in energies])
            measured = (em, ev, self._recent(self.energy_window_mj_, self.energy_window_t_, a, ne, te), energies[-1][2])
        self._publish_energy(a, est, bound, measured)
        self.version += 1

    def _publish_latency(self, a: int, n: int, mean: float, var: float, recent: np.ndarray) -> tuple[float, float]:
        """Arm ``a``'s published latency estimate and bounds from its ``n`` samples' mean, variance
        and recent window, the prior blended in while it has few; returns (estimate, bound at
        the configured confidence)."""
        bounds = self._bounds(mean, var, recent)
        share = self.prior_weight / (self.prior_weight + n) if n < self.full_trust_n else 0.0
        prior_mean = float(self.prior_latency_ms_[a])
        if share > 0.0 and math.isfinite(prior_mean):
            est = (1.0 - share) * mean + share * prior_mean
            bounds = [(1.0 - share) * b + share * pb for b, pb in zip(bounds, self.prior_bounds_ms_[:, a].tolist())]
        else:
            est = mean
        self.est_latency_ms_[a] = est
        self.latency_bounds_ms_[:, a] = bounds
        return est, bounds[self.level_]

    def _publish_energy(self, a: int, est: float, bound: float,
                        measured: tuple[float, float, np.ndarray, bool] | None) -> None:
        """Arm ``a``'s published energy: from its measured (mean, variance, recent window, whether
        estimated) when this update brought energy, else, while it has none, its prior power x
        the latency estimate and bound (``est``, ``bound``)."""
        if measured is not None:
            em, ev, recent, estimated = measured
            if recent.shape[0] >= self.min_window:
                ebound = self._bound(em, ev, recent)
            else:
                ebound = em * (bound / est if est > 0.0 and bound > est else 1.0)
            self.est_energy_mj_[a] = em
            self.energy_bound_mj_[a] = ebound
            self.energy_estimated_[a] = bool(estimated)
        elif self.energy_n_[a] == 0:
            p = float(self.prior_power_w_[a])
            shift = float(self.prior_energy_shift_mj_[a])
            self.est_energy_mj_[a] = max(p * est + shift, 0.0) if math.isfinite(p) else float("nan")
            self.energy_bound_mj_[a] = max(p * bound + shift, 0.0) if math.isfinite(p) else float("nan")
            self.energy_estimated_[a] = True

    def _fold(self, a: int, counts: np.ndarray, means: np.ndarray, variances: np.ndarray, lasts: np.ndarray,
              values: np.ndarray, times: np.ndarray, xs: Sequence[float],
              ts: Sequence[float]) -> tuple[int, float, float, float]:
        """Samples ``xs`` taken at ``ts`` into arm ``a``'s count, running mean and variance, latest
        time and ring (latency's columns or energy's), with Python floats in the loop; returns
        (count, mean, variance, time of the last sample). Each sample gets the weight of the
        module's contract and one exponentially weighted step of the mean and variance (the first
        sample is the mean itself), written out in the loop: the selector learns every execution,
        and two calls a sample were a fifth of the update's time."""
        n, mean, var, last = int(counts[a]), float(means[a]), float(variances[a]), float(lasts[a])
        w = self.window
        ring, ring_t = values[a], times[a]
        half_life_s, min_weight, pow_, isfinite = self.half_life_s, self.min_update_weight, math.pow, math.isfinite
        for x, t in zip(xs, ts):
            n += 1
            dt = t - last
            if n == 1:
                mean, var = x, 0.0
            else:
                w_time = 1.0 - pow_(2.0, -(dt if dt > 0.0 else 0.0) / half_life_s) if isfinite(dt) else 1.0
                weight = min_weight if min_weight > w_time else w_time   # (max() written out: per sample)
                if (inv_n := 1.0 / n) > weight:
                    weight = inv_n
                diff = x - mean
                incr = weight * diff
                mean, var = mean + incr, (1.0 - weight) * (var + diff * incr)
            if t > last:
                last = t
            i = (n - 1) % w
            ring[i] = x
            ring_t[i] = t
        counts[a], means[a], variances[a], lasts[a] = n, mean, var, last
        return n, mean, var, ts[-1]

    def shift_priors(self, arms: np.ndarray, delta_ms: float) -> None:
        """Add ``delta_ms`` to the latency prior (mean and bound) of ``arms`` (a boolean mask, or
        their ids): a cost every execution on their placement pays that the structural prior does
        not know (the serving path around the interpreter), learnt from other arms. A never-measured
        arm publishes the shifted prior at once; a measured one blends it in at its next update
        while it still gives the prior weight. Energy priors are left alone: that path's time is
        not the worker's CPU time, which is what energy is estimated from."""
        d = float(delta_ms)
        if not math.isfinite(d):
            raise ValueError(f"delta_ms must be finite, got {delta_ms!r}")
        idx = _arm_ids(arms)
        self.prior_latency_ms_[idx] += d
        self.prior_bounds_ms_[:, idx] += d
        fresh = idx[self.n_[idx] == 0]
        if len(fresh):   # (none, most often: the arms a daemon serves are measured)
            self.est_latency_ms_[fresh] = self.prior_latency_ms_[fresh]
            self.latency_bounds_ms_[:, fresh] = self.prior_bounds_ms_[:, fresh]
            self.version += 1   # (else nothing published changed: a measured arm blends at its update)

    def shift_energy_priors(self, arms: np.ndarray, delta_mj: float) -> None:
        """Add ``delta_mj`` to the energy prior (mean and bound, kept >= 0) of ``arms`` (a boolean
        mask, or their ids): what the priors of their siblings missed, learnt from those siblings'
        measurements (the daemon: per model and placement). Arms with an energy measurement are
        left alone: their estimate is measured."""
        d = float(delta_mj)
        if not math.isfinite(d):
            raise ValueError(f"delta_mj must be finite, got {delta_mj!r}")
        idx = _arm_ids(arms)
        self.prior_energy_shift_mj_[idx] += d
        fresh = idx[self.energy_n_[idx] == 0]
        if len(fresh):
            self.est_energy_mj_[fresh] = np.maximum(self.est_energy_mj_[fresh] + d, 0.0)
            self.energy_bound_mj_[fresh] = np.maximum(self.energy_bound_mj_[fresh] + d, 0.0)
            self.version += 1

    def _recent(self, values: np.ndarray, times: np.ndarray, a: int, n: int, t: float) -> np.ndarray:
        """Arm ``a``'s ring (its ``n`` samples so far, the n-th in slot ``(n - 1) % window``): the
        samples no older than ``window_max_age_s`` at ``t``."""
        w = self.window
        k = min(n, w)
        oldest = times.item(a, n % w if k == w else 0)
        if oldest >= t - self.window_max_age_s:   # the common case: the whole ring is recent
            return values[a, :k]
        return values[a, :k][times[a, :k] >= t - self.window_max_age_s]

    def _bound(self, mean: float, var: float, window: np.ndarray) -> float:
        """``mean + z sd`` until the window holds ``min_window`` samples, then the window's
        quantile (with ``gaussian_floor``: the larger of the two), at the configured confidence."""
        # (max() written out, here and below, with its result for NaN: on every learnt execution,
        # where the builtin's call and argument parsing cost 20 times a comparison)
        if window.shape[0] >= self.min_window:
            q = _quantile(window, self.confidence)
            if not self.gaussian_floor:
                return q
        gaussian = mean + self.z_ * (0.0 if var < 0.0 else math.sqrt(var))
        return gaussian if window.shape[0] < self.min_window else (q if q > gaussian else gaussian)

    def _bounds(self, mean: float, var: float, window: np.ndarray) -> list[float]:
        """:meth:`_bound` at every kept level (one sort of the window for all)."""
        if window.shape[0] >= self.min_window:
            s = sorted(window.tolist())   # (a window of a few floats: half numpy's sort and list)
            qs = [_sorted_quantile(s, q) for q in self.levels_]
            if not self.gaussian_floor:
                return qs
        sd = 0.0 if var < 0.0 else math.sqrt(var)
        gaussian = [mean + z * sd for z in self.zs_.tolist()]
        return gaussian if window.shape[0] < self.min_window else [q if q > g else g for g, q in zip(gaussian, qs)]

    # ------------------------------------------------------------------ reading
    def arm_stats(self, a: int) -> dict:
        """Plain-typed statistics of one arm (for ``stats`` replies and tests)."""
        k = min(int(self.n_[a]), self.window)
        win = np.sort(self.window_ms_[a, :k]) if k else None
        last = None
        if k:
            last = float(self.window_ms_[a, (int(self.n_[a]) - 1) % self.window])

        def f(x):
            x = float(x)
            return x if math.isfinite(x) else None

        return {
            "count": int(self.n_[a]),
            "latency_ms": {
                "last": last,
                "ewma": f(self.mean_ms_[a]),
                "sd": f(math.sqrt(self.var_ms2_[a])) if self.n_[a] else None,
                "p50": _quantile(win, 0.5) if k else None,
                "p95": _quantile(win, 0.95) if k else None,
                "estimate": f(self.est_latency_ms_[a]),
                "bound": f(self.latency_bound_ms_[a]),
                "bounds": {f"{q:g}": f(v) for q, v in zip(self.levels_, self.latency_bounds_ms_[:, a].tolist())},
                "prior": f(self.prior_latency_ms_[a]),
            },
            "energy_mj": {
                "ewma": f(self.energy_mean_mj_[a]),
                "estimate": f(self.est_energy_mj_[a]),
                "bound": f(self.energy_bound_mj_[a]),
            },
            "energy_estimated": bool(self.energy_estimated_[a]),
            "last_at_s": f(self.last_update_s_[a]),
        }


def sample_error(sample: Sequence[Any]) -> str | None:
    """Why :meth:`OnlineCostModel.update_batch` refuses a ``(latency_ms, energy_mj,
    energy_estimated, t_s, ...)`` sample, or None (a value that is no number raises)."""
    lat, t, e = float(sample[0]), float(sample[3]), sample[1]
    if not (math.isfinite(lat) and lat >= 0.0):
        return f"latency_ms must be finite and >= 0, got {sample[0]!r}"
    if not math.isfinite(t):
        return f"t_s must be finite, got {sample[3]!r}"
    if e is not None and not (math.isfinite(float(e)) and float(e) >= 0.0):
        return f"energy_mj must be finite and >= 0 or None, got {e!r}"
    return None


def _quantile(values: np.ndarray, q: float) -> float:
    """Linear-interpolated quantile of a small 1-D array (numpy's default method), cheaply."""
    return _sorted_quantile(sorted(values.tolist()), q)


def _arm_ids(arms: np.ndarray) -> np.ndarray:
    """Arm ids from a boolean mask over every arm, or ids as they are."""
    return np.flatnonzero(arms) if arms.dtype == bool else arms


def _sorted_quantile(s: list[float], q: float) -> float:
    """:func:`_quantile` of an already sorted, non-empty list."""
    k = len(s)
    if k == 1:
        return float(s[0])
    pos = q * (k - 1)
    lo = int(pos)
    hi = min(lo + 1, k - 1)
    frac = pos - lo
    return float(s[lo] + (s[hi] - s[lo]) * frac)
