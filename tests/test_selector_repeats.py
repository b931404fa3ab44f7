"""A repeated request object's decision is kept by the selector (adaptd.selector.policy,
``Selector.choose``): these tests hold it to what a fresh copy of the request gets from a twin
selector that never keeps one, through every change the estimates and accuracies can undergo."""

from __future__ import annotations

import pytest
from adaptd.selector import ArmSpec, QueueSnapshot, Request, Selector, SelectorConfig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PLACEMENTS = ("cpu:0", "cpu:1", "cpu:0-1")


def copy(r: Request) -> Request:
    """An equal request that is another object (the selector keeps decisions by object)."""
    return Request(r.model, constraints=r.constraints, objective=r.objective, on_infeasible=r.on_infeasible,
                   variant=r.variant, placement=r.placement)


def twins(arms, pls, **cfg) -> tuple[Selector, Selector]:
    return Selector(arms, pls, SelectorConfig(**cfg)), Selector(arms, pls, SelectorConfig(**cfg))


@st.composite
def arm_sets(draw):
    n_var, n_pl = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    arms = [ArmSpec("m", f"v{v}", p, draw(st.one_of(st.none(), st.floats(0.0, 1.0))),
                    draw(st.one_of(st.none(), st.floats(0.1, 50.0))), None,
                    draw(st.one_of(st.none(), st.floats(0.1, 100.0))))
            for v in range(n_var) for p in PLACEMENTS[:n_pl]]
    return arms, list(PLACEMENTS[:n_pl]), n_var


def requests(n_var: int, pls: list[str]):
    free = st.builds(lambda acc, lat, en, obj, inf: Request("m", min_accuracy=acc, max_latency_ms=lat, max_energy_mj=en,
                                                           objective=obj, on_infeasible=inf),
                     st.one_of(st.none(), st.floats(0.0, 1.0)), st.one_of(st.none(), st.floats(0.5, 80.0)),
                     st.one_of(st.none(), st.floats(0.5, 100.0)), st.sampled_from(["latency", "energy", "accuracy"]),
                     st.sampled_from(["reject", "best_effort"]))
    pinned = st.builds(lambda v, p, lat: Request("m", max_latency_ms=lat, variant=f"v{v}", placement=p),
                       st.integers(0, n_var - 1), st.sampled_from(pls), st.one_of(st.none(), st.floats(0.5, 80.0)))
    return st.one_of(free, pinned)


def steps(n_arms: int, n_var: int, pls: list[str]):
    """Each step: one change (or none), then a decision (with a queue or not, a dry run or not)."""
    change = st.one_of(
        st.tuples(st.just("none")),
        st.tuples(st.just("update"), st.integers(0, n_arms - 1), st.floats(0.1, 60.0),
                  st.one_of(st.none(), st.floats(0.0, 100.0))),
        st.tuples(st.just("update_many"), st.lists(st.tuples(st.integers(0, n_arms - 1), st.floats(0.1, 60.0)),
                                                   min_size=2, max_size=4)),
        st.tuples(st.just("accuracy"), st.integers(0, n_var - 1), st.one_of(st.none(), st.floats(0.0, 1.0))),
        st.tuples(st.just("shift"), st.sampled_from(pls), st.floats(-5.0, 60.0)),
        st.tuples(st.just("shift_energy"), st.sampled_from(pls), st.floats(-5.0, 100.0)),
        st.tuples(st.just("wait"), st.floats(0.0, 20.0)),
    )
    # then: which of two requests, with a queue or not, a dry run or not, the candidates given or not
    return st.lists(st.tuples(change, st.integers(0, 1), st.booleans(), st.booleans(), st.booleans()),
                    min_size=1, max_size=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_repeated_requests_are_decided_as_fresh_copies_are(data):
    """Two request objects interleaved, each with or without a tuple of candidates, through the
    loop over floats or (``scalar_max_arms = 0``) numpy's columns."""
    arms, pls, n_var = data.draw(arm_sets())
    requests_ = [data.draw(requests(n_var, pls)) for _ in range(2)]
    subset = tuple(sorted(data.draw(st.sets(st.integers(0, len(arms) - 1), min_size=1))))
    kept, fresh = twins(arms, pls, probe_share=data.draw(st.sampled_from([0.0, 0.3, 1.0])), probe_interval_s=2.0)
    if data.draw(st.booleans()):
        kept.scalar_max_arms = fresh.scalar_max_arms = 0
    queue = {pls[0]: QueueSnapshot((0,), None, 0.0)}
    t = 0.0
    for step, which, queued, dry_run, restricted in data.draw(steps(len(arms), n_var, pls)):
        kind = step[0]
        if kind == "update":
            for s in (kept, fresh):
                s.update(step[1], step[2], step[3], True, t, compute_ms=step[2] / 2)
        elif kind == "update_many":
            for s in (kept, fresh):
                s.update_many([(a, lat, None, True, t, None) for a, lat in step[1]])
        elif kind == "accuracy":
            for s in (kept, fresh):
                s.set_accuracy("m", f"v{step[1]}", step[2], "live")
        elif kind == "shift":
            for s in (kept, fresh):
                s.shift_placement_priors(step[1], step[2])
        elif kind == "shift_energy":
            for s in (kept, fresh):
                s.shift_energy_priors("m", step[1], step[2])
        elif kind == "wait":
            t += step[1]
        request = requests_[which]
        queues = queue if queued else None
        candidates = subset if restricted and request.variant is None else None   # (a pinned one: its pins')
        assert kept.choose(request, t, queues, candidates=candidates, dry_run=dry_run) == \
            fresh.choose(copy(request), t, queues, candidates=None if candidates is None else list(candidates),
                         dry_run=dry_run)


def test_a_repeat_with_nothing_learnt_between_gets_the_decision_kept():
    arms = [ArmSpec("m", "v0", "cpu:0", 0.9, 2.0, None, 1.0), ArmSpec("m", "v1", "cpu:0", 0.8, 1.0, None, 0.5)]
    s = Selector(arms, ["cpu:0"], SelectorConfig(probe_share=0.0))
    r = Request("m", max_latency_ms=10.0)
    first = s.choose(r, 0.0)
    assert s.choose(r, 1.0) is first                 # kept
    assert s.choose(copy(r), 1.0) is not first       # another request object: decided afresh
    s.update(1, 20.0, None, True, 2.0)               # v1 measured far slower: a new decision
    second = s.choose(r, 3.0)
    assert second is not first and second.variant == "v0"
    s.set_accuracy("m", "v0", 0.1, "live")
    assert s.choose(r, 4.0) is not second


def two_arms(**cfg) -> Selector:
    """v0 on cpu:0 is faster and cheaper than v1 on cpu:1, by their priors; nothing measured."""
    return Selector([ArmSpec("m", "v0", "cpu:0", 0.9, 2.0, None, 1.0), ArmSpec("m", "v1", "cpu:1", 0.8, 3.0, None, 2.0)],
                    ["cpu:0", "cpu:1"], SelectorConfig(probe_share=0.0, **cfg))


@pytest.mark.parametrize("objective, change", [
    ("latency", lambda s: s.update(0, 50.0, None, True, 1.0)),
    ("latency", lambda s: s.update_many([(0, 50.0, None, True, 1.0, None), (0, 60.0, None, True, 1.1, None)])),
    ("latency", lambda s: s.shift_placement_priors("cpu:0", 5.0)),
    ("energy", lambda s: s.shift_energy_priors("m", "cpu:0", 5.0)),
    ("accuracy", lambda s: s.set_accuracy("m", "v0", 0.5, "live")),
], ids=["update", "update_many", "shift", "shift_energy", "accuracy"])
def test_every_change_a_kept_decision_rests_on_is_seen(objective, change):
    s = two_arms()
    r = Request("m", objective=objective)
    first = s.choose(r, 0.0)
    assert first.variant == "v0" and s.choose(r, 0.5) is first
    change(s)
    assert s.choose(r, 2.0).variant == "v1"


def test_kept_decisions_go_with_their_candidates_and_their_request():
    s = two_arms()
    r, other = Request("m"), Request("m", objective="energy")
    only_v1, only_v0 = (1,), (0,)
    assert s.choose(r, 0.0, candidates=only_v1).variant == "v1"
    assert s.choose(r, 0.0, candidates=only_v0).variant == "v0"          # other candidates: decided afresh
    kept = s.choose(r, 0.0, candidates=only_v0)
    assert s.choose(r, 0.0, candidates=only_v0) is kept                  # the same tuple: kept
    assert s.choose(r, 0.0, candidates=[0]) is not kept                   # a list may change: never kept
    assert s.choose(other, 0.0) is not s.choose(r, 0.0)                   # each request its own
    busy = {"cpu:0": QueueSnapshot((0, 0, 0), 0, 0.0)}                    # a queue: decided afresh
    assert s.choose(r, 0.0, busy).variant == "v1" and s.choose(r, 0.0).variant == "v0"


@pytest.mark.parametrize("share", [0.25, 0.5])
def test_a_kept_decision_still_spends_the_probe_budget(share):
    """Probes come at the same requests whether the decision was kept or made afresh."""
    arms = [ArmSpec("m", f"v{i}", "cpu:0", 0.9, 1.0 + i, None, 1.0) for i in range(3)]
    kept, fresh = twins(arms, ["cpu:0"], probe_share=share, probe_interval_s=0.5)
    r = Request("m", max_latency_ms=50.0)
    codes_kept = [kept.choose(r, float(i)).code for i in range(12)]
    codes_fresh = [fresh.choose(copy(r), float(i)).code for i in range(12)]
    assert codes_kept == codes_fresh
    assert "probe" in codes_kept and "selected" in codes_kept
