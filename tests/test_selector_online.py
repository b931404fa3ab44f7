"""The online cost model follows regime changes, decays with time, blends its prior; and the
pure-library version of "a sudden slow-down moves traffic off an arm within a bounded number of
requests" (simulated clock, simulated measurements)."""

from __future__ import annotations

import numpy as np
import pytest
from adaptd.selector import ArmSpec, OnlineCostModel, Request, Selector, SelectorConfig


def model(n=1, prior=5.0, sd=0.5, energy=float("nan"), **kw):
    return OnlineCostModel(**kw).init_priors(np.full(n, prior), np.full(n, sd), np.full(n, energy))


def test_first_samples_are_averaged_and_prior_fades():
    m = model(prior=50.0, sd=5.0)
    m.update(0, 10.0, None, True, 0.0)
    # one sample: prior counts as one sample -> halfway
    assert m.est_latency_ms_[0] == pytest.approx(30.0)
    for k in range(1, 5):
        m.update(0, 10.0, None, True, 0.001 * k)
    # full trust after 5 samples: prior gone
    assert m.est_latency_ms_[0] == pytest.approx(10.0)
    assert m.latency_bound_ms_[0] == pytest.approx(10.0)


@pytest.mark.parametrize("confidence, updates", [(0.95, 2), (0.9, 3)])
def test_slowdown_raises_bound_within_a_few_updates_and_mean_within_25(confidence, updates):
    """The window's quantile at q moves once (1 - q) x window of its samples are slow: two of 16
    at 0.95, three at 0.90 (the default)."""
    m = model(confidence=confidence)
    t = 0.0
    for _ in range(100):
        t += 0.01
        m.update(0, 5.0, None, True, t)
    assert m.latency_bound_ms_[0] == pytest.approx(5.0)
    for k in range(1, 26):
        t += 0.01  # 100 requests/s: time decay alone would take ~2 s; min_update_weight bounds it
        m.update(0, 10.0, None, True, t)
        if k == updates - 1:
            assert m.latency_bound_ms_[0] < 9.0
        if k == updates:
            assert m.latency_bound_ms_[0] >= 9.0
    assert m.est_latency_ms_[0] >= 9.5


def test_regime_change_followed_within_seconds_at_low_rate():
    m = model(half_life_s=2.0, min_update_weight=0.0)
    t = 0.0
    for _ in range(50):
        t += 1.0
        m.update(0, 5.0, None, True, t)
    for _ in range(8):  # 8 s at one sample per second: 1 - 2**-4 of the change followed
        t += 1.0
        m.update(0, 20.0, None, True, t)
    assert m.est_latency_ms_[0] == pytest.approx(20.0 - 15.0 * 2 ** -4, rel=1e-6)


def test_a_slow_spell_stops_counting_once_older_than_the_window_age():
    """A spell of slow samples sets the bound while it is recent; a measurement taken more than
    window_max_age_s later (a re-probe) is no longer held back by it, latency and energy alike."""
    m = model(window=16, min_window=4, window_max_age_s=10.0, half_life_s=2.0)
    t = 0.0
    for k in range(16):   # 4 slow samples among 12 fast ones, all in the window
        t += 0.05
        slow = k % 4 == 0
        m.update(0, 30.0 if slow else 5.0, 30.0 if slow else 5.0, True, t)
    spell_bound = m.latency_bound_ms_[0]
    assert spell_bound >= 29.0 and m.energy_bound_mj_[0] >= 29.0
    m.update(0, 5.0, 5.0, True, t + 5.0)   # within the age limit: the spell still counts
    assert m.latency_bound_ms_[0] >= 29.0
    for j in range(4):   # re-probed after a long quiet spell: judged on what it measures now
        m.update(0, 5.0, 5.0, True, t + 30.0 + 0.01 * j)
        # the gap reset the mean; what is left of the spell's variance is a few % of it
        assert 5.0 <= m.latency_bound_ms_[0] < 5.5 and 5.0 <= m.energy_bound_mj_[0] < 5.5


def test_long_gap_lets_the_new_sample_dominate():
    m = model(half_life_s=2.0)
    for k in range(30):
        m.update(0, 5.0, None, True, 0.01 * k)
    m.update(0, 8.0, None, True, 30.0)  # 30 s later: weight 1 - 2**-15
    assert m.mean_ms_[0] == pytest.approx(8.0, abs=1e-3)


def test_speedup_followed_and_window_flushes():
    m = model(window=8)
    t = 0.0
    for _ in range(20):
        t += 0.01
        m.update(0, 10.0, None, True, t)
    for _ in range(40):
        t += 0.01
        m.update(0, 4.0, None, True, t)
    assert m.est_latency_ms_[0] == pytest.approx(4.0, rel=0.03)  # 6 ms * 0.9**40
    # the bound is conservative: the step's variance decays like the mean, the window has flushed
    assert m.latency_bound_ms_[0] < 6.0
    for _ in range(40):
        t += 0.01
        m.update(0, 4.0, None, True, t)
    assert m.latency_bound_ms_[0] < 4.2  # sd decays like 0.95**k


@pytest.mark.parametrize("gaussian_floor", [False, True])
def test_bound_uses_distribution_not_mean(gaussian_floor):
    """The bound is the window's quantile (numpy's, of the last ``window`` samples), well above
    the mean; with ``gaussian_floor`` it is never below mean + z sd either."""
    m = model(min_update_weight=0.0, half_life_s=1e9, confidence=0.95, gaussian_floor=gaussian_floor)
    rng = np.random.default_rng(0)
    xs = rng.normal(10.0, 1.0, 400)
    for k, x in enumerate(xs):
        m.update(0, x, None, True, 0.001 * k)
        if k >= 50 and not gaussian_floor:
            assert m.latency_bound_ms_[0] == pytest.approx(np.quantile(xs[k - 15:k + 1], 0.95))
    assert m.est_latency_ms_[0] == pytest.approx(10.0, abs=0.2)
    assert m.latency_bound_ms_[0] > 10.5
    if gaussian_floor:
        assert m.latency_bound_ms_[0] >= m.mean_ms_[0] + 1.6448 * np.sqrt(m.var_ms2_[0])


def test_a_rare_slow_sample_does_not_hold_the_bound_up():
    """One slow sample in a steady stream: the Gaussian floor stays raised for as long as the
    variance remembers it (tens of samples at min_update_weight 0.1), the window's 0.90 quantile
    lets go once the sample is one of the top 10% no longer (it is the window's maximum)."""
    bounds = {}
    for floor in (False, True):
        m = model(confidence=0.9, gaussian_floor=floor)
        t = 0.0
        for k in range(60):
            t += 0.01
            m.update(0, 50.0 if k == 30 else 5.0, None, True, t)
            if k == 32:
                bounds[floor] = m.latency_bound_ms_[0]
    assert bounds[False] == pytest.approx(5.0)
    assert bounds[True] > 20.0


def test_energy_prior_follows_latency_until_measured():
    m = model(prior=5.0, energy=10.0)  # prior power 2 W
    assert m.est_energy_mj_[0] == 10.0 and m.energy_estimated_[0]
    for k in range(6):
        m.update(0, 8.0, None, True, 0.01 * k)
    assert m.est_energy_mj_[0] == pytest.approx(16.0)
    m.update(0, 8.0, 3.0, False, 1.0)
    assert m.est_energy_mj_[0] == 3.0 and not m.energy_estimated_[0]
    m.update(0, 8.0, None, True, 1.1)  # no energy this time: keeps the measured estimate
    assert m.est_energy_mj_[0] == 3.0 and not m.energy_estimated_[0]


def test_energy_bound_before_and_after_measurements():
    m = model(prior=5.0, sd=0.5, energy=10.0)   # prior power 2 W; prior latency bound 5 + 1.645 * 0.5
    assert m.energy_bound_mj_[0] == pytest.approx(2.0 * m.latency_bound_ms_[0])
    assert m.energy_bound_mj_[0] > m.est_energy_mj_[0]
    # first energies: no window yet -> the mean scaled by the latency side's relative spread
    m.update(0, 5.0, 4.0, False, 0.0)
    ratio = m.latency_bound_ms_[0] / m.est_latency_ms_[0]
    assert ratio > 1.0 and m.energy_bound_mj_[0] == pytest.approx(4.0 * ratio)


def test_energy_bound_is_met_by_new_samples_at_the_confidence():
    """Per-execution energies scatter around their mean: judged one by one, a bound at the mean is
    missed about half the time, the 95% bound about 5% of the time."""
    m = model(energy=10.0, min_update_weight=0.0, half_life_s=1e9, confidence=0.95)
    rng = np.random.default_rng(1)
    xs = rng.lognormal(np.log(2.0), 0.25, 2000)
    above_mean = above_bound = 0
    for k, x in enumerate(xs):
        if k >= 50:
            above_mean += x > m.est_energy_mj_[0]
            above_bound += x > m.energy_bound_mj_[0]
        m.update(0, 5.0, x, True, 0.001 * k)
    n = len(xs) - 50
    assert 0.35 < above_mean / n < 0.65
    assert above_bound / n < 0.10
    assert m.energy_bound_mj_[0] > m.est_energy_mj_[0]


@pytest.mark.parametrize("energy_at_confidence", [False, True])
def test_selector_judges_an_energy_bound_on_the_mean_or_the_confidence_bound(energy_at_confidence):
    arms = [ArmSpec("m", "a", "p0", 0.9, 1.0, 0.1, 2.0), ArmSpec("m", "b", "p0", 0.9, 2.0, 0.1, 2.5)]
    s = Selector(arms, ["p0"], SelectorConfig(probe_share=0.0, energy_at_confidence=energy_at_confidence))
    rng = np.random.default_rng(2)
    for k in range(40):   # a: mean 2 mJ but wide; b: mean 2.5 mJ, steady
        s.update(0, 1.0, float(rng.choice([1.0, 3.0])), True, 0.01 * k)
        s.update(1, 2.0, 2.5, True, 0.01 * k)
    d = s.choose(Request("m", max_energy_mj=2.7, objective="latency"), 0.5)
    if not energy_at_confidence:   # the mean (about 2) fits: the faster arm a
        assert (d.variant, d.code) == ("a", "selected")
        assert d.predicted.energy_mj < 2.7 < d.predicted.energy_bound_mj
        return
    assert (d.variant, d.code) == ("b", "selected")   # a's mean (2) fits, its bound (3) does not
    pinned = s.choose(Request("m", max_energy_mj=2.7, variant="a", placement="p0"), 0.5)
    assert not pinned.feasible and pinned.violation("max_energy_mj").predicted == pinned.predicted.energy_bound_mj
    assert pinned.predicted.energy_mj < 2.7 < pinned.predicted.energy_bound_mj


def test_bad_measurement_rejected_state_unchanged():
    m = model()
    m.update(0, 5.0, None, True, 0.0)
    before = (m.n_.copy(), m.est_latency_ms_.copy())
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError):
            m.update(0, bad, None, True, 1.0)
    with pytest.raises(ValueError):
        m.update(0, 5.0, -2.0, True, 1.0)
    assert (m.n_ == before[0]).all() and (m.est_latency_ms_ == before[1]).all()


def test_stats_plain_types():
    arms = [ArmSpec("m", "a", "cpu:0", 0.9, 2.0, 0.2, 4.0)]
    s = Selector(arms)
    s.update(0, 2.5, None, True, 1.0)
    st = s.stats()[0]
    assert st["count"] == 1 and st["latency_ms"]["last"] == 2.5 and st["energy_estimated"] is True


# ---------------------------------------------------------------------------------------------
# Pure-library version of the daemon test: a sudden slow-down of one arm moves traffic off it.

def simulate(slow_at: int, n: int, request: Request, gap_s: float = 0.02, seed: int = 0):
    """Two arms; 'fast' runs 5 ms until request `slow_at`, then 15 ms; 'steady' always 7 ms.
    Each request: choose at the simulated time, 'run' it, feed the measurement back."""
    rng = np.random.default_rng(seed)
    arms = [ArmSpec("m", "fast", "cpu:0", 0.9, 5.0, 0.5, None),
            ArmSpec("m", "steady", "cpu:1", 0.9, 7.0, 0.7, None)]
    s = Selector(arms, ["cpu:0", "cpu:1"], SelectorConfig(probe_share=0.02, probe_interval_s=1.0))
    truth = {"fast": 5.0, "steady": 7.0}
    chosen = []
    t = 0.0
    for k in range(n):
        if k == slow_at:
            truth["fast"] = 15.0
        t += gap_s
        d = s.choose(request, t)
        chosen.append((d.variant, d.code))
        if d.arm_id is not None:
            lat = truth[d.variant] * float(rng.lognormal(0.0, 0.05))
            s.update(d.arm_id, lat, None, True, t + lat / 1e3)
    return chosen


@pytest.mark.parametrize("request_, bound", [
    (Request("m", objective="latency"), 12),               # mean must cross 7 ms: ~0.9**k decay
    (Request("m", max_latency_ms=10.0), 3),                # bound crosses 10 ms within 2 samples
])
def test_sudden_slowdown_moves_traffic_off_within_bounded_requests(request_, bound):
    slow_at, n = 200, 600
    chosen = simulate(slow_at, n, request_)
    assert all(v == "fast" for v, c in chosen[100:slow_at] if c == "selected")
    after = chosen[slow_at:]
    first_off = next(k for k, (v, c) in enumerate(after) if v == "steady" and c == "selected")
    assert first_off <= bound
    # and it stays off, apart from bounded probes of the slowed arm
    later = after[first_off:]
    on_fast = [c for v, c in later if v == "fast"]
    assert all(c == "probe" for c in on_fast)
    assert len(on_fast) <= 0.02 * len(later) + 1


def test_shifting_a_placements_priors_moves_never_measured_arms_now_and_measured_ones_by_blend():
    arms = [ArmSpec("m", v, p, 0.9, 1.0, 0.1, 2.0) for v in ("a", "b") for p in ("cpu:0", "cpu:1")]
    s = Selector(arms, ["cpu:0", "cpu:1"], SelectorConfig(prior_weight=1.0, full_trust_n=5))
    om = s.cost_model
    ids = {(v, p): s.arm_id("m", v, p) for v in "ab" for p in ("cpu:0", "cpu:1")}
    s.update(ids[("a", "cpu:0")], 3.0, None, True, 0.0)   # measured once: est = (3 + 1) / 2
    measured_before = om.est_latency_ms_[ids[("a", "cpu:0")]]
    energy_before = om.est_energy_mj_.copy()
    s.shift_placement_priors("cpu:0", 0.5)
    s.shift_placement_priors("gpu:9", 7.0)   # unknown: ignored
    assert om.est_latency_ms_[ids[("b", "cpu:0")]] == pytest.approx(1.5)       # never measured: at once
    assert om.latency_bound_ms_[ids[("b", "cpu:0")]] > 1.5
    assert om.est_latency_ms_[ids[("b", "cpu:1")]] == pytest.approx(1.0)       # other placement: as it was
    assert om.est_latency_ms_[ids[("a", "cpu:0")]] == measured_before          # measured: at its next update
    s.update(ids[("a", "cpu:0")], 3.0, None, True, 0.01)
    assert om.est_latency_ms_[ids[("a", "cpu:0")]] == pytest.approx((2 * 3.0 + 1.5) / 3)
    assert om.est_energy_mj_[ids[("b", "cpu:0")]] == energy_before[ids[("b", "cpu:0")]]   # energy prior untouched


def test_energy_prior_shift_moves_only_arms_without_an_energy_measurement():
    """What the energy priors of an arm's siblings missed is added to its prior while it has no
    energy measured, and stays in it through latency-only updates; a measured arm's energy is
    its measurements'. A shifted prior never goes below zero."""
    m = model(n=3, prior=2.0, sd=0.0, energy=1.0)        # prior power 0.5 W
    m.update(0, 2.0, 3.0, True, 0.0)                     # arm 0: energy measured
    m.shift_energy_priors(np.array([True, True, False]), 0.4)
    assert m.est_energy_mj_[0] == pytest.approx(3.0)
    assert m.est_energy_mj_[1] == pytest.approx(1.4) and m.energy_bound_mj_[1] >= 1.4
    assert m.est_energy_mj_[2] == pytest.approx(1.0)
    m.update(1, 4.0, None, True, 1.0)                    # a latency without an energy
    assert m.est_energy_mj_[1] == pytest.approx(0.5 * m.est_latency_ms_[1] + 0.4)
    m.shift_energy_priors(np.array([False, False, True]), -5.0)
    assert m.est_energy_mj_[2] == 0.0 and m.energy_bound_mj_[2] == 0.0
    with pytest.raises(ValueError):
        m.shift_energy_priors(np.array([True, False, False]), float("nan"))


def test_a_shift_counts_as_a_change_only_when_it_moves_a_published_figure():
    """``version`` says when a decision made earlier may no longer hold: a prior shift that
    reaches only measured arms changes nothing published (each blends it at its next update,
    which counts), so it leaves ``version`` alone; one that reaches an unmeasured arm counts."""
    m = model(n=3, prior=2.0, sd=0.0, energy=1.0)
    m.update(0, 2.0, 3.0, True, 0.0)
    m.update(1, 2.5, 3.5, True, 0.0)
    before, published = m.version, _published(m)
    m.shift_priors(np.array([0, 1]), 0.3)                     # measured arms only (their ids)
    m.shift_energy_priors(np.array([True, True, False]), 0.4)   # (a mask)
    assert m.version == before and _published(m) == published
    m.update(1, 2.5, 3.5, True, 0.1)                          # its update blends the shifted prior in
    assert m.version == before + 1 and m.est_latency_ms_[1] != published["est_latency_ms_"][1]
    m.shift_priors(np.array([1, 2]), 0.3)                     # arm 2 has no measurement
    assert m.version == before + 2 and m.est_latency_ms_[2] == pytest.approx(2.3)
    m.shift_energy_priors(np.array([2]), 0.4)
    assert m.version == before + 3 and m.est_energy_mj_[2] == pytest.approx(1.4)


def _published(m):
    return {k: getattr(m, k).tolist() for k in ("est_latency_ms_", "latency_bounds_ms_", "est_energy_mj_",
                                                 "energy_bound_mj_")}


def _state(m):
    return {k: np.array(v, copy=True) for k, v in vars(m).items() if k.endswith("_") and isinstance(v, np.ndarray)}


@pytest.mark.parametrize("batch", [1, 3, 16, 40])
def test_a_batch_of_updates_leaves_the_state_of_one_update_at_a_time(batch):
    """The daemon hands its deferred executions over in batches: the published estimates, bounds,
    windows and counts must be those of feeding them one by one, energy (some missing) included."""
    rng = np.random.default_rng(7)
    samples = [(float(5 + rng.gamma(2.0)), None if k % 5 == 3 else float(1 + rng.random()), bool(k % 2),
                0.003 * k + (4.0 if k > 30 else 0.0)) for k in range(80)]
    one, many = model(n=2, energy=2.0), model(n=2, energy=2.0)
    for lat, e, est, t in samples:
        one.update(1, lat, e, est, t)
    for i in range(0, len(samples), batch):
        many.update_batch(1, samples[i:i + batch])
    a, b = _state(one), _state(many)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-12, err_msg=key)


def test_a_bad_sample_in_a_batch_changes_nothing():
    m = model()
    before = _state(m)
    with pytest.raises(ValueError, match="latency_ms"):
        m.update_batch(0, [(5.0, None, True, 0.0), (float("nan"), None, True, 0.1)])
    with pytest.raises(ValueError, match="energy_mj"):
        m.update_batch(0, [(5.0, -1.0, True, 0.0)])
    for key, value in _state(m).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
