"""The shadow scheduler: who gets a reference run, the share, the warm-up, the CPU budget."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptd.selector.shadow import REASONS, ShadowParams, ShadowScheduler


def ask(s: ShadowScheduler, now_s: float, *, variant="int8_full", cost=0.1, samples=1000, idle=True):
    return s.decide(served_variant=variant, reference="float32", predicted_cpu_ms=cost,
                    window_samples=samples, reference_idle=idle, now_s=now_s)


def test_the_reference_itself_and_a_busy_machine_are_never_shadowed():
    s = ShadowScheduler(ShadowParams(share=1.0))
    assert ask(s, 0.0, variant="float32").reason == "reference"
    assert ask(s, 0.0, idle=False).reason == "no_idle_placement"
    assert ask(s, 0.0, samples=0, idle=False).reason == "no_idle_placement"   # warm-up too
    d = ask(s, 0.0)
    assert d.run and d.reason == "shadow" and d.charged_ms == 0.1
    assert s.counts == {**{r: 0 for r in REASONS}, "reference": 1, "no_idle_placement": 2, "shadow": 1}


def test_a_reply_the_reference_served_is_counted_without_a_decision():
    s = ShadowScheduler(ShadowParams(share=1.0))
    s.reference_served()
    ask(s, 0.0, variant="float32")
    assert s.counts == {**{r: 0 for r in REASONS}, "reference": 2}


def test_no_budget_or_no_share_disables_it():
    assert ask(ShadowScheduler(ShadowParams(cpu_budget_ms_per_s=0.0)), 0.0, samples=0).reason == "disabled"
    assert ask(ShadowScheduler(ShadowParams(share=0.0, warmup_samples=0)), 0.0, samples=0).reason == "disabled"


def test_the_share_is_sampled_at_random_and_reproducibly():
    def run(seed: int) -> list[bool]:
        s = ShadowScheduler(ShadowParams(share=0.05, cpu_budget_ms_per_s=1000.0, seed=seed))
        return [ask(s, i * 0.01).run for i in range(20_000)]

    a = run(1)
    assert a == run(1) and a != run(2)
    share = np.mean(a)
    assert abs(share - 0.05) < 4 * np.sqrt(0.05 * 0.95 / len(a)), share     # about 4 sd
    # Not periodic: the gaps between shadowed requests vary like a geometric's.
    gaps = np.diff(np.flatnonzero(a))
    assert gaps.min() == 1 or gaps.std() > 0.5 * gaps.mean()


def test_every_request_is_shadowed_while_the_window_is_short():
    s = ShadowScheduler(ShadowParams(share=0.0, warmup_samples=30, cpu_budget_ms_per_s=1000.0))
    assert all(ask(s, i * 0.01, samples=i).run for i in range(30))
    assert not any(ask(s, 1 + i * 0.01, samples=30 + i).run for i in range(100))


def test_the_budget_refills_at_its_rate_and_holds_one_burst():
    s = ShadowScheduler(ShadowParams(share=1.0, cpu_budget_ms_per_s=20.0, burst_s=1.0), now_s=0.0)
    runs = [ask(s, 0.0, cost=5.0).run for _ in range(6)]
    assert runs == [True] * 4 + [False] * 2            # a full bucket holds 20 ms
    assert ask(s, 0.1, cost=5.0).reason == "cpu_budget"  # 2 ms refilled
    assert ask(s, 0.25, cost=5.0).run                   # 5 ms refilled
    assert ask(s, 100.0, cost=1.0).run and s.tokens_ms == pytest.approx(19.0)   # capped at 20


def test_a_run_dearer_than_the_whole_bucket_runs_when_the_bucket_is_full():
    s = ShadowScheduler(ShadowParams(share=1.0, cpu_budget_ms_per_s=20.0, burst_s=1.0), now_s=0.0)
    assert ask(s, 0.0, cost=50.0).run and s.tokens_ms == pytest.approx(-30.0)
    assert ask(s, 2.0, cost=50.0).reason == "cpu_budget"     # back to 10 ms only
    assert ask(s, 2.5, cost=50.0).run                        # full again


def test_settle_books_the_real_cost():
    s = ShadowScheduler(ShadowParams(share=1.0, cpu_budget_ms_per_s=20.0), now_s=0.0)
    d = ask(s, 0.0, cost=10.0)
    s.settle(d.charged_ms, 18.0)                             # it took longer than predicted
    assert s.tokens_ms == pytest.approx(2.0) and s.charged_ms == pytest.approx(18.0)
    assert ask(s, 0.0, cost=5.0).reason == "cpu_budget"
    d = ask(s, 1.0, cost=5.0)
    s.settle(d.charged_ms, None)                             # abandoned: the charge comes back
    assert s.tokens_ms == pytest.approx(20.0) and s.charged_ms == pytest.approx(18.0)
    with pytest.raises(ValueError):
        s.settle(1.0, -1.0)
    with pytest.raises(ValueError):
        ask(s, 1.0, cost=float("nan"))


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=1.0, max_value=100.0), st.floats(min_value=0.2, max_value=3.0),
       st.integers(min_value=0, max_value=2**31), st.floats(min_value=0.05, max_value=60.0))
def test_the_cpu_time_allowed_stays_within_the_budget(budget, burst, seed, mean_cost):
    """Requests at random times, each shadow's real cost off its prediction by up to 2x: the
    CPU time booked over T seconds is at most budget * (T + burst) plus one run's cost beyond
    what the bucket held for it (the bound of the module's docstring)."""
    rng = np.random.default_rng(seed)
    s = ShadowScheduler(ShadowParams(share=1.0, cpu_budget_ms_per_s=budget, burst_s=burst, seed=seed))
    t, worst = 0.0, 0.0
    for _ in range(2000):
        t += float(rng.exponential(0.01))
        predicted = float(rng.exponential(mean_cost))
        d = ask(s, t, cost=predicted)
        if d.run:
            actual = predicted * float(rng.uniform(0.5, 2.0))
            s.settle(d.charged_ms, actual)
            worst = max(worst, actual - min(predicted, budget * burst))
    assert s.charged_ms <= budget * (t + burst) + max(0.0, worst) + 1e-6
    assert s.counts["shadow"] > 0
