"""What the priors miss (adaptd.selector.priors.PriorLearner): completion with the caller's
numbers, the placement's path as a running median, the energy miss as an average, both kept
across selector generations. Real selectors; no daemon (tests/test_selection_total_latency.py
holds the same through a real daemon)."""

from __future__ import annotations

import statistics

import pytest
from adaptd.selector import ArmSpec, PriorLearner, Selector, SelectorConfig
from adaptd.selector.priors import OVERHEAD_WEIGHT, PATH_FIRST_N, PATH_STEP

ARMS = [ArmSpec("m", v, p, 0.9, 1.0, 0.1, e) for v, e in (("a", 2.0), ("b", None)) for p in ("cpu:0", "cpu:1")]


def test_priors_are_completed_with_the_round_trip_and_the_power_model():
    learner = PriorLearner(round_trip_ms={"cpu:0": 0.25}, power_w={"cpu:0": 3.0, "cpu:1": 2.0})
    s = Selector(ARMS, ["cpu:0", "cpu:1"], SelectorConfig(), learner)
    by = {(a.variant, a.placement): a for a in s.arms}
    assert by[("a", "cpu:0")].prior_latency_ms == 1.25 and by[("a", "cpu:1")].prior_latency_ms == 1.0
    assert by[("a", "cpu:0")].prior_energy_mj == 2.0                 # its own prior kept
    assert by[("b", "cpu:0")].prior_energy_mj == pytest.approx(3.0)  # the power model x the execution's prior
    assert by[("b", "cpu:1")].prior_energy_mj == pytest.approx(2.0)
    unknown = ArmSpec("m", "c", "cpu:0")
    assert learner.complete(unknown) is unknown


def test_the_path_is_a_running_median_and_shifts_never_measured_arms_beyond_a_threshold():
    learner = PriorLearner()
    s = Selector(ARMS, ["cpu:0", "cpu:1"], SelectorConfig(), learner)
    a0, b0, b1 = s.arm_id("m", "a", "cpu:0"), s.arm_id("m", "b", "cpu:0"), s.arm_id("m", "b", "cpu:1")
    paths = [0.5, 0.5, 9.0, 0.5, 0.4, 0.6, 0.5, 0.5, 0.5, 0.5]
    for k, path in enumerate(paths):
        s.update(a0, 0.1 + path, None, True, 0.01 * k, compute_ms=0.1)
    assert len(paths) == PATH_FIRST_N and learner.path_ms["cpu:0"] == pytest.approx(statistics.median(paths))
    assert s.service_estimate_ms(b0) == pytest.approx(1.0 + 0.5)   # never measured: prior + path
    assert s.service_estimate_ms(b1) == pytest.approx(1.0 + 0.5)   # no path of its own: borrows it
    s.update(a0, 0.1 + 50.0, None, True, 1.0, compute_ms=0.1)      # one slow path: one step up
    assert learner.path_ms["cpu:0"] == pytest.approx(0.5 * (1 + PATH_STEP))
    assert s.service_estimate_ms(b0) == pytest.approx(1.5)         # within 10%: not applied
    s.update(a0, 0.1, None, True, 1.1)                             # no compute_ms: no path sample
    assert learner.path_ms["cpu:0"] == pytest.approx(0.5 * (1 + PATH_STEP))


def test_the_energy_miss_is_an_average_per_model_and_placement_shifting_unmeasured_arms():
    learner = PriorLearner(power_w={"cpu:0": 2.0, "cpu:1": 2.0})   # b's energy prior: 2 W x 1 ms
    s = Selector(ARMS, ["cpu:0", "cpu:1"], SelectorConfig(), learner)
    a0, b0, b1 = s.arm_id("m", "a", "cpu:0"), s.arm_id("m", "b", "cpu:0"), s.arm_id("m", "b", "cpu:1")
    energy = s.cost_model.est_energy_mj_
    s.update(a0, 1.0, 3.0, True, 0.0)                 # missed 1 mJ of its 2 mJ prior
    assert learner.energy_miss_mj[("m", "cpu:0")] == 1.0
    # cpu:1 has no energy measurement of m: it borrows the miss (same power: unscaled)
    assert energy[b0] == pytest.approx(2.0 + 1.0) and energy[b1] == pytest.approx(2.0 + 1.0)
    s.update(a0, 1.0, 4.0, True, 0.1)                 # missed 2: the average moves by 10%, no more
    assert learner.energy_miss_mj[("m", "cpu:0")] == pytest.approx(1.0 + OVERHEAD_WEIGHT * (2.0 - 1.0))
    assert energy[b0] == pytest.approx(3.0)           # within the 10% hysteresis: not applied
    for k in range(10):
        s.update(a0, 1.0, 4.0, True, 0.2 + 0.01 * k)
    assert energy[b0] > 3.2 and ("m", "cpu:1") not in learner.energy_miss_mj


def test_what_was_learnt_is_given_to_the_next_generation():
    learner = PriorLearner(round_trip_ms={"cpu:0": 0.1})
    s = Selector(ARMS, ["cpu:0", "cpu:1"], SelectorConfig(), learner)
    a0 = s.arm_id("m", "a", "cpu:0")
    for k in range(PATH_FIRST_N):
        s.update(a0, 1.0, 3.0, True, 0.01 * k, compute_ms=0.2)    # path 0.8 ms; energy missed 1 mJ
    fresh = Selector(ARMS, ["cpu:0", "cpu:1"], SelectorConfig(), learner)
    a1 = fresh.arm_id("m", "a", "cpu:1")
    # the round trip is in the completed prior; the learnt path replaces it, not adds to it
    assert fresh.service_estimate_ms(a0) == pytest.approx(1.0 + 0.8)
    assert fresh.service_estimate_ms(a1) == pytest.approx(1.0 + 0.8)   # borrowed: cpu:1 never ran
    assert fresh.cost_model.est_energy_mj_[a0] == pytest.approx(2.0 + 1.0)
    assert fresh.cost_model.est_energy_mj_[a1] == pytest.approx(2.0 + 1.0)   # borrowed, as the path


def test_a_placement_borrows_the_median_path_until_its_own_executions_replace_it():
    """The daemon's own work is most of the path and the same on every placement: a placement
    that never ran is predicted with the others' median path (at least its own round trip), and
    its first executions replace that figure, not add to it."""
    placements = ["cpu:0", "cpu:1", "cpu:2"]
    arms = [ArmSpec("m", "a", p, 0.9, 1.0, 0.1) for p in placements]
    learner = PriorLearner(round_trip_ms={"cpu:2": 0.9})   # a process placement's measured hop
    s = Selector(arms, placements, SelectorConfig(), learner)
    a0, a1, a2 = (s.arm_id("m", "a", p) for p in placements)
    assert s.service_estimate_ms(a1) == 1.0 and s.service_estimate_ms(a2) == pytest.approx(1.9)
    s.update(a0, 0.1 + 0.5, None, True, 0.0, compute_ms=0.1)           # cpu:0's path: 0.5 ms
    assert s.service_estimate_ms(a1) == pytest.approx(1.0 + 0.5)        # borrowed
    assert s.service_estimate_ms(a2) == pytest.approx(1.9)              # its own hop is more
    for k in range(3):
        s.update(a1, 0.1 + 0.2, None, True, 0.1 * (k + 1), compute_ms=0.1)   # cpu:1's own: 0.2 ms
    assert learner.path_ms["cpu:1"] == pytest.approx(0.2)
    assert s.cost_model.prior_latency_ms_[a1] == pytest.approx(1.0 + 0.2)   # replaced, not added


def test_a_placement_borrows_the_energy_miss_scaled_by_its_power_until_it_has_its_own():
    """A model's arms on a placement where it has no energy measurement take the miss learnt on
    its other placements, scaled by the two placements' power; their own measurements replace it."""
    arms = [ArmSpec("m", v, p, 0.9, 1.0, 0.1) for v in ("a", "b") for p in ("cpu:0", "cpu:1")]
    learner = PriorLearner(power_w={"cpu:0": 2.0, "cpu:1": 4.0})   # priors: 2 mJ on cpu:0, 4 on cpu:1
    s = Selector(arms, ["cpu:0", "cpu:1"], SelectorConfig(), learner)
    a0, a1, b1 = s.arm_id("m", "a", "cpu:0"), s.arm_id("m", "a", "cpu:1"), s.arm_id("m", "b", "cpu:1")
    energy = s.cost_model.est_energy_mj_
    assert energy[b1] == pytest.approx(4.0)
    s.update(a0, 1.0, 3.0, True, 0.0)                 # cpu:0 missed 1 mJ
    assert energy[b1] == pytest.approx(4.0 + 2.0)     # borrowed, x 4 W / 2 W
    s.update(a1, 1.0, 4.5, True, 0.1)                 # cpu:1's own: missed 0.5 mJ
    assert learner.energy_miss_mj[("m", "cpu:1")] == pytest.approx(0.5)
    assert energy[b1] == pytest.approx(4.0 + 0.5)     # replaced, not added


def test_update_many_learns_what_one_update_at_a_time_learns():
    """The daemon's deferred bookkeeping feeds the selector in batches: the same estimates and the
    same learnt path and energy miss as one update per execution, across arms and placements."""
    def run(batch):
        learner = PriorLearner(power_w={"cpu:0": 2.0, "cpu:1": 2.0})
        s = Selector(ARMS, ["cpu:0", "cpu:1"], SelectorConfig(), learner)
        obs = []
        for k in range(60):
            arm = s.arm_id("m", "a" if k % 3 else "b", "cpu:0" if k % 4 else "cpu:1")
            obs.append((arm, 1.0 + 0.3 * (k % 7), 2.0 + 0.1 * (k % 5), True, 0.01 * k, 0.2 + 0.01 * (k % 3)))
        if batch == 1:   # one update at a time: update's own code, held to update_many's state
            for o in obs:
                s.update(*o[:5], compute_ms=o[5])
        else:
            for i in range(0, len(obs), batch):
                s.update_many(obs[i:i + batch])
        cm = s.cost_model
        return learner, cm.est_latency_ms_.copy(), cm.latency_bound_ms_.copy(), cm.est_energy_mj_.copy()
    one, many = run(1), run(12)
    assert many[0].path_ms == pytest.approx(one[0].path_ms)
    assert many[0].energy_miss_mj == pytest.approx(one[0].energy_miss_mj)
    for x, y in zip(one[1:], many[1:]):
        assert y == pytest.approx(x, rel=1e-9)


def test_a_measurement_the_selector_cannot_learn_from_is_left_out_not_the_batch():
    """One bad sample (a negative energy from a noisy rail, a NaN latency) must not cost the other
    executions of the daemon's batch; one update alone still refuses it."""
    def run(obs):
        s = Selector(ARMS, ["cpu:0", "cpu:1"], SelectorConfig(), PriorLearner())
        return s, s.update_many(obs)
    a0 = 0
    good = [(a0, 1.0 + 0.1 * k, 2.0, True, 0.01 * k, 0.2) for k in range(6)]
    bad = [(a0, float("nan"), 2.0, True, 0.5, 0.2), (a0, 1.0, -0.3, False, 0.6, 0.2)]
    clean, refused_clean = run(good)
    mixed, refused_mixed = run(good[:3] + bad + good[3:])
    assert (refused_clean, refused_mixed) == (0, 2)
    assert mixed.cost_model.est_latency_ms_[a0] == pytest.approx(clean.cost_model.est_latency_ms_[a0])
    assert mixed.cost_model.n_[a0] == 6
    with pytest.raises(ValueError, match="finite"):
        mixed.update(a0, float("nan"), None, True, 1.0)
