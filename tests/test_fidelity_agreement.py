"""Agreement statistics: the Wilson interval (properties, exact coverage), output comparison and
the sliding window (count, age, all-time)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adaptd.selector.agreement import (
    AgreementWindow,
    compare_outputs,
    wilson_bound,
    wilson_interval,
    z_value,
)

counts = st.integers(min_value=0, max_value=5000).flatmap(
    lambda n: st.tuples(st.integers(min_value=0, max_value=n), st.just(n)))
confidences = st.floats(min_value=0.5, max_value=0.999)
corrected = st.booleans()


@given(counts, confidences, corrected)
def test_the_interval_lies_in_0_1_and_brackets_the_share(kn, c, cc):
    k, n = kn
    lo, hi = wilson_interval(k, n, c, continuity=cc)
    assert 0.0 <= lo <= hi <= 1.0
    if n:
        assert lo <= k / n <= hi
        assert lo == 0.0 if k == 0 else lo > 0.0 or k / n < 1e-6
        assert hi == 1.0 if k == n else hi < 1.0 or k / n > 1 - 1e-6
    else:
        assert (lo, hi) == (0.0, 1.0)


@given(counts, confidences, corrected)
def test_bounds_rise_with_successes_and_fall_with_more_trials(kn, c, cc):
    k, n = kn
    lo, hi = wilson_interval(k, n, c, continuity=cc)
    if k < n:  # one more success of the same trials
        lo2, hi2 = wilson_interval(k + 1, n, c, continuity=cc)
        assert lo2 >= lo - 1e-12 and hi2 >= hi - 1e-12
    lo3, hi3 = wilson_interval(k, n + 1, c, continuity=cc)  # one more failure
    assert lo3 <= lo + 1e-12 and hi3 <= hi + 1e-12


@given(st.integers(min_value=1, max_value=2000), st.floats(min_value=0.0, max_value=1.0), confidences,
       confidences, corrected)
def test_a_higher_confidence_widens_and_more_data_narrows(n, p, c1, c2, cc):
    k = int(round(p * n))
    lo1, hi1 = wilson_interval(k, n, min(c1, c2), continuity=cc)
    lo2, hi2 = wilson_interval(k, n, max(c1, c2), continuity=cc)
    assert lo2 <= lo1 + 1e-12 and hi2 >= hi1 - 1e-12
    lo4, hi4 = wilson_interval(4 * k, 4 * n, min(c1, c2), continuity=cc)  # same share, 4x the data
    assert hi4 - lo4 <= hi1 - lo1 + 1e-12


@given(counts, confidences, corrected)
def test_one_sided_bounds_are_inside_the_two_sided_interval(kn, c, cc):
    k, n = kn
    lo, hi = wilson_interval(k, n, c, continuity=cc)
    assert lo <= wilson_bound(k, n, c, upper=False, continuity=cc) + 1e-12
    assert wilson_bound(k, n, c, upper=True, continuity=cc) <= hi + 1e-12


@given(counts, confidences)
def test_the_correction_only_widens(kn, c):
    k, n = kn
    lo, hi = wilson_interval(k, n, c, continuity=False)
    lo_cc, hi_cc = wilson_interval(k, n, c)
    assert lo_cc <= lo + 1e-12 and hi_cc >= hi - 1e-12


def _coverage(p: float, n: int, c: float, *, upper: bool | None, cc: bool = True) -> float:
    """Exact probability that the interval (or one-sided bound) covers p, over Binomial(n, p)."""
    total = 0.0
    for k in range(n + 1):
        if upper is None:
            lo, hi = wilson_interval(k, n, c, continuity=cc)
            ok = lo <= p <= hi
        elif upper:
            ok = p <= wilson_bound(k, n, c, upper=True, continuity=cc)
        else:
            ok = p >= wilson_bound(k, n, c, upper=False, continuity=cc)
        if ok:
            total += math.comb(n, k) * p ** k * (1 - p) ** (n - k)
    return total


GRID = np.linspace(0.05, 0.95, 91)


@pytest.mark.parametrize("n", [30, 100, 200])
@pytest.mark.parametrize("c", [0.9, 0.95])
def test_coverage_is_at_least_about_the_nominal_level(n, c):
    # Corrected: at least the nominal level on average over the share, never far below it.
    for upper in (None, True, False):
        cov = np.array([_coverage(float(p), n, c, upper=upper) for p in GRID])
        assert cov.mean() >= c, (upper, cov.mean())
        assert cov.min() > c - 0.015, (upper, GRID[cov.argmin()], cov.min())
    # Uncorrected: Wilson's coverage oscillates around the nominal level.
    cov = np.array([_coverage(float(p), n, c, upper=None, cc=False) for p in GRID])
    assert abs(cov.mean() - c) < 0.015, cov.mean()


def test_the_corrected_lower_bound_rarely_exceeds_a_small_share_at_small_counts():
    # The case the drift test meets: 30 comparisons, a true disagreement of 0.059.
    p, n = 0.059, 30
    exceed = 1 - _coverage(p, n, 0.95, upper=False)
    exceed_plain = 1 - _coverage(p, n, 0.95, upper=False, cc=False)
    assert exceed <= 0.05 < exceed_plain, (exceed, exceed_plain)


def test_bad_arguments_are_refused():
    for bad in ((5, 4), (-1, 4), (0, -1)):
        with pytest.raises(ValueError):
            wilson_interval(*bad, 0.95)
    for c in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError):
            z_value(c, two_sided=True)


@pytest.mark.parametrize("k, n, plain, corrected", [
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, methods 3 and 4.
    (81, 263, (0.2553, 0.3662), (0.2535, 0.3682)),
    (15, 148, (0.0624, 0.1605), (0.0598, 0.1644)),
    (0, 20, (0.0, 0.1611), (0.0, 0.2005)),
    (1, 29, (0.0061, 0.1718), (0.0018, 0.1963)),
])
def test_known_values(k, n, plain, corrected):
    assert wilson_interval(k, n, 0.95, continuity=False) == pytest.approx(plain, abs=1e-4)
    assert wilson_interval(k, n, 0.95) == pytest.approx(corrected, abs=1e-4)


def test_outputs_are_compared_by_top1_for_classifiers_and_by_relative_error_otherwise():
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.0, 0.0]], np.float32)
    served = np.array([[0.2, 0.8], [0.4, 0.6], [0.0, 0.0]], np.float32)
    agreed, rel = compare_outputs(served, ref)
    assert agreed.tolist() == [True, False, True]
    assert rel[0] == pytest.approx(math.hypot(0.1, 0.1) / math.hypot(0.1, 0.9), rel=1e-6)
    assert rel[2] == 0.0
    agreed, rel = compare_outputs(served, ref, classification=False, tolerance=0.2)
    assert agreed.tolist() == [True, False, True]
    _, rel = compare_outputs(np.array([[1.0]]), np.array([[0.0]]), classification=False)
    assert rel[0] == math.inf
    with pytest.raises(ValueError):
        compare_outputs(served, ref[:2])


def test_the_window_keeps_the_last_comparisons_and_counts_all_of_them():
    w = AgreementWindow(window=10)
    for i in range(25):
        w.add(i % 5 != 0, t_s=float(i), rel_error=0.01 * i)
    assert w.n == 10 and w.agreed == 8          # the last ten: 15..24, of which 15 and 20 disagree
    s = w.summary(0.95)
    assert (s.n_all, s.agreed_all) == (25, 20)
    assert s.agreement == 0.8 and s.agreement_all == 0.8
    assert s.agreement_low < 0.8 < s.agreement_high
    assert s.rel_error_mean == pytest.approx(0.01 * np.mean(range(15, 25)))
    assert s.rel_error_max_all == pytest.approx(0.24)
    assert s.to_dict()["n"] == 10


def test_the_window_drops_comparisons_older_than_its_age_limit():
    w = AgreementWindow(window=100, max_age_s=10.0)
    for t in range(20):
        w.add(t < 10, t_s=float(t))
    assert w.n == 11                      # 9..19 are no older than 10 s at t = 19
    assert w.agreed == 1
    assert w.expire(25.0) == 6 and w.n == 5
    assert w.expire(100.0) == 5 and w.n == 0 and w.agreed == 0
    s = w.summary(0.95)
    assert s.agreement is None and s.n_all == 20 and s.agreed_all == 10
