"""The shared slow-down of a model's arms on one placement (selector/online.py): executions of
one arm in a new regime move every arm of its group, measured or not, and nothing outside it;
one outlier, a drift inside the dead band and untrusted arms move nothing; switched off, the
model is exactly the per-arm one. Simulated clock and measurements (the selector is pure)."""

from __future__ import annotations

import numpy as np
import pytest
from adaptd.selector import ArmSpec, OnlineCostModel, Request, Selector, SelectorConfig
from hypothesis import given, settings
from hypothesis import strategies as st

# arms 0, 1, 2 share a placement (group 0: 2 is never measured); arm 3 is alone (group 1)
GROUPS = [0, 0, 0, 1]
PRIOR = [1.0, 2.0, 4.0, 1.0]


def grouped(window=5, **kw) -> OnlineCostModel:
    return OnlineCostModel(slowdown_window=window, **kw).init_priors(
        np.array(PRIOR), np.array(PRIOR) * 0.1, np.array(PRIOR) * 2.0, groups=GROUPS)


def settle(m: OnlineCostModel, t: float = 0.0, n: int = 20) -> float:
    """Every measured arm at its prior latency, ``n`` times each."""
    for _ in range(n):
        for a in (0, 1, 3):
            t += 0.01
            m.update(a, PRIOR[a], None, True, t)
    return t


def test_a_slowdown_seen_on_one_arm_moves_its_siblings_and_nothing_else():
    m = grouped()
    t = settle(m)
    before = m.est_latency_ms_.copy()
    bound_before = m.latency_bound_ms_.copy()
    energy_before = m.est_energy_mj_.copy()
    for k in range(3):   # arm 0 runs 3x slower: the median of 5 moves on the third
        t += 0.01
        m.update(0, 3.0 * PRIOR[0], None, True, t)
        if k < 2:
            assert m.est_latency_ms_[1] == pytest.approx(before[1])
    assert m.slowdown_[0] == pytest.approx(3.0, rel=0.05)
    # arm 1 (measured) and arm 2 (its prior only) were not run, and are 3x now
    assert m.est_latency_ms_[1] == pytest.approx(3.0 * before[1], rel=0.05)
    assert m.latency_bound_ms_[1] == pytest.approx(3.0 * bound_before[1], rel=0.05)
    assert m.est_latency_ms_[2] == pytest.approx(3.0 * before[2], rel=0.05)
    # an arm with no energy measured: prior power x latency, so its energy follows too
    assert m.est_energy_mj_[2] == pytest.approx(3.0 * energy_before[2], rel=0.05)
    # the other group is untouched
    assert m.est_latency_ms_[3] == before[3]
    assert m.slowdown_[1] == 1.0
    # arm 0 itself publishes at least the regime: its base mean took the two executions before
    # the level moved at full size (on the cautious side until later samples average them out)
    assert m.est_latency_ms_[0] >= 0.95 * 3.0 * PRIOR[0]
    for _ in range(40):
        t += 0.01
        m.update(0, 3.0 * PRIOR[0], None, True, t)
    assert m.est_latency_ms_[0] == pytest.approx(3.0 * PRIOR[0], rel=0.05)
    assert m.base_latency_ms_[0] == pytest.approx(PRIOR[0], rel=0.05)


def test_the_end_of_a_slowdown_moves_the_group_back_on_any_arm():
    m = grouped()
    t = settle(m)
    for _ in range(5):
        t += 0.01
        m.update(0, 3.0 * PRIOR[0], None, True, t)
    assert m.est_latency_ms_[1] > 2.5 * PRIOR[1]
    for _ in range(3):   # arm 1, not arm 0, sees the regime end
        t += 0.01
        m.update(1, PRIOR[1], None, True, t)
    assert m.slowdown_[0] == 1.0
    # arm 0 is back to its base (which holds the two executions taken before the level moved)
    assert m.est_latency_ms_[0] < 1.5 * PRIOR[0]
    assert m.est_latency_ms_[2] == pytest.approx(PRIOR[2])


def test_one_outlier_and_drift_inside_the_dead_band_move_nothing():
    m = grouped()
    t = settle(m)
    before = m.est_latency_ms_.copy()
    t += 0.01
    m.update(0, 10.0 * PRIOR[0], None, True, t)   # one spike among normal executions
    assert m.slowdown_[0] == 1.0
    assert m.est_latency_ms_[1] == before[1]
    for _ in range(5):   # 10% slower: under the 15% dead band, left to the per-arm estimates
        t += 0.01
        m.update(0, 1.1 * PRIOR[0], None, True, t)
    assert m.slowdown_[0] == 1.0
    assert m.est_latency_ms_[1] == before[1]


def test_arms_not_yet_trusted_do_not_set_the_level():
    m = grouped(full_trust_n=5)
    for k in range(4):   # arm 0 measured slow from its first execution: it has no base yet
        m.update(0, 3.0, None, True, 0.01 * k)
    assert m.slowdown_[0] == 1.0
    assert m.est_latency_ms_[2] == PRIOR[2]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="slowdown_window"):
        OnlineCostModel(slowdown_window=-1)
    with pytest.raises(ValueError, match="slowdown_deadband"):
        OnlineCostModel(slowdown_deadband=0.9)
    with pytest.raises(ValueError, match="groups"):
        OnlineCostModel().init_priors(np.ones(2), np.ones(2), np.ones(2), groups=[0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0.05, 50.0), st.one_of(st.none(), st.floats(0.0, 20.0))),
                min_size=1, max_size=60))
def test_switched_off_it_is_exactly_the_per_arm_model(updates):
    plain = OnlineCostModel().init_priors(np.array(PRIOR), np.array(PRIOR) * 0.1, np.array(PRIOR) * 2.0)
    off = OnlineCostModel(slowdown_window=0).init_priors(
        np.array(PRIOR), np.array(PRIOR) * 0.1, np.array(PRIOR) * 2.0, groups=GROUPS)
    for k, (a, lat, energy) in enumerate(updates):
        plain.update(a, lat, energy, True, 0.01 * k)
        off.update(a, lat, energy, True, 0.01 * k)
    for name in ("est_latency_ms_", "latency_bound_ms_", "est_energy_mj_", "energy_bound_mj_"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(off, name))


def test_selector_moves_a_models_traffic_off_a_slowed_placement_in_three_executions():
    """Four variants of one model on two placements; the placement the policy prefers (its
    energy is lower) slows down 3x. With the shared slow-down the model's traffic leaves it after
    three executions there, whichever variants ran them; per arm, every variant is tried there
    and missed in turn, each until its own bound has moved."""
    variants = {"a": 1.0, "b": 1.05, "c": 1.1, "d": 1.15}
    arms = [ArmSpec("m", v, p, accuracy=0.9, prior_latency_ms=lat, prior_energy_mj=lat)
            for v, lat in variants.items() for p in ("cpu:0", "cpu:1")]
    req = Request(model="m", max_latency_ms=2.5, objective="energy")

    def misses(window: int) -> int:
        sel = Selector(arms, config=SelectorConfig(slowdown_window=window, probe_share=0.0))
        t = 0.0

        def run(v: str, p: str, slow: float) -> None:
            nonlocal t
            t += 0.01
            energy = variants[v] * (1.0 if p == "cpu:1" else 1.2)   # energy unchanged: latency decides
            sel.update(("m", v, p), variants[v] * slow, energy, True, t)

        for _ in range(10):   # every arm measured at its prior, cpu:1 the cheaper one
            for v in variants:
                for p in ("cpu:0", "cpu:1"):
                    run(v, p, 1.0)
        slow_runs = 0
        for _ in range(20):
            t += 0.01
            d = sel.choose(req, t)
            assert d.arm_id is not None
            slow_runs += d.placement == "cpu:1"
            run(d.variant, d.placement, 3.0 if d.placement == "cpu:1" else 1.0)
        return slow_runs

    assert misses(5) == 3
    assert misses(0) >= 2 * len(variants)
