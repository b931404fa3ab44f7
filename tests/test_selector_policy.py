"""Property tests of the selection policy (adaptd.selector.policy), against a brute-force
reference computed from the selector's own published estimates."""

from __future__ import annotations

import math

import pytest
from adaptd.selector import (
    ArmSpec,
    InvalidConstraintsError,
    InvalidRequestError,
    QueueSnapshot,
    Request,
    Selector,
    SelectorConfig,
    UnknownModelError,
    UnknownPlacementError,
    UnknownVariantError,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PLACEMENTS = ("cpu:0", "cpu:1", "cpu:0-1", "gpu:0")


@st.composite
def scenarios(draw):
    n_var = draw(st.integers(1, 5))
    n_pl = draw(st.integers(1, 4))
    pls = PLACEMENTS[:n_pl]
    arms = []
    for v in range(n_var):
        acc = draw(st.one_of(st.none(), st.floats(0.0, 1.0)))
        for p in pls:
            lat = draw(st.one_of(st.none(), st.floats(0.1, 50.0)))
            en = draw(st.one_of(st.none(), st.floats(0.1, 100.0)))
            arms.append(ArmSpec("m", f"v{v}", p, acc, lat, None, en))
    # a few measurements
    meas = draw(st.lists(st.tuples(st.integers(0, len(arms) - 1), st.floats(0.1, 60.0),
                                   st.one_of(st.none(), st.floats(0.0, 100.0)), st.floats(0.0, 0.5)),
                         max_size=12))
    queues = {}
    for p in pls:
        if draw(st.booleans()):
            queued = tuple(draw(st.lists(st.integers(0, len(arms) - 1), max_size=3)))
            inflight = draw(st.one_of(st.none(), st.integers(0, len(arms) - 1)))
            queues[p] = QueueSnapshot(queued, inflight, draw(st.floats(0.0, 20.0)))
    req = Request(
        "m",
        min_accuracy=draw(st.one_of(st.none(), st.floats(0.0, 1.0))),
        max_latency_ms=draw(st.one_of(st.none(), st.floats(0.5, 80.0))),
        max_energy_mj=draw(st.one_of(st.none(), st.floats(0.5, 100.0))),
        objective=draw(st.sampled_from(["latency", "energy", "accuracy"])),
        on_infeasible=draw(st.sampled_from(["reject", "best_effort"])),
        latency_confidence=draw(st.one_of(st.none(), st.floats(0.5, 0.99))),
    )
    return arms, list(pls), meas, queues, req


def build(arms, pls, meas, **cfg):
    s = Selector(arms, pls, SelectorConfig(**cfg))
    t = 0.0
    for a, lat, en, dt in meas:
        t += dt
        s.update(a, lat, en, True, t)
    return s, t


def reference(s: Selector, req: Request, queues):
    """Per arm: (arm id, lat_mean, lat_bound, energy, accuracy, feasible, violation) by brute force;
    feasibility by the latency bound and the energy the config judges (the model's own estimates)."""
    om = s.cost_model
    level = om.level_for(req.latency_confidence)
    wait = {}
    for p, q in queues.items():
        w = 0.0
        if q.inflight_arm_id is not None:
            w += max(0.0, om.est_latency_ms_[q.inflight_arm_id] - q.inflight_elapsed_ms)
        w += sum(om.est_latency_ms_[j] for j in q.queued_arm_ids)
        wait[p] = 0.0 if math.isnan(w) else w
    rows = []
    for a, arm in enumerate(s.arms):
        if arm.model != req.model:
            continue
        if req.variant is not None and arm.variant != req.variant:
            continue
        if req.placement is not None and arm.placement != req.placement:
            continue
        w = wait.get(arm.placement, 0.0)
        mean = om.est_latency_ms_[a] + w
        bound = om.latency_bounds_ms_[level, a] + w
        en = om.est_energy_mj_[a]
        acc = arm.accuracy
        ok = True
        viol = 0.0
        if req.min_accuracy is not None:
            ok &= acc is not None and acc >= req.min_accuracy
            m = req.min_accuracy   # relative violation; with m == 0 a known accuracy never violates
            viol += 1.0 if acc is None else (max(0.0, (m - acc) / m) if m > 0 else 0.0)
        if req.max_latency_ms is not None:
            ok &= bool(bound <= req.max_latency_ms)
            viol += 1e300 if math.isnan(bound) else max(0.0, (bound - req.max_latency_ms) / req.max_latency_ms)
        if req.max_energy_mj is not None:   # the mean, or the energy bound like latency's
            eb = om.energy_bound_mj_[a] if s.config.energy_at_confidence else om.est_energy_mj_[a]
            ok &= bool(eb <= req.max_energy_mj)
            viol += 1e300 if math.isnan(eb) else max(0.0, (eb - req.max_energy_mj) / req.max_energy_mj)
        rows.append(dict(a=a, mean=mean, bound=bound, energy=en, acc=acc, ok=ok, viol=min(viol, 1e300)))
    return rows


def objective_key(row, objective):
    nan_big = lambda x: 1e300 if math.isnan(x) else x
    if objective == "latency":
        return (nan_big(row["mean"]), nan_big(row["energy"]), row["a"])
    if objective == "energy":
        return (nan_big(row["energy"]), nan_big(row["mean"]), row["a"])
    return (1.0 if row["acc"] is None else -row["acc"], nan_big(row["mean"]), row["a"])


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("energy_at_confidence", [False, True])
@FAST
@given(sc=scenarios())
def test_feasible_when_possible_and_optimal(sc, energy_at_confidence):
    arms, pls, meas, queues, req = sc
    s, t = build(arms, pls, meas, probe_share=0.0, energy_at_confidence=energy_at_confidence)
    d = s.choose(req, t + 1.0, queues)
    rows = reference(s, req, queues)
    feasible = [r for r in rows if r["ok"]]
    if feasible:
        assert d.code == "selected"
        best = min(feasible, key=lambda r: objective_key(r, req.objective))
        assert d.arm_id == best["a"]
        # every set constraint met by the model's own estimates
        assert d.feasible and d.met.all
        if req.max_latency_ms is not None:
            assert d.predicted.latency_bound_ms <= req.max_latency_ms
        # the bound is at the confidence asked for, or a stricter one, never a weaker one
        assert d.predicted.latency_confidence >= (req.latency_confidence or s.config.confidence)
        if req.max_energy_mj is not None:
            judged = "energy_bound_mj" if energy_at_confidence else "energy_mj"
            assert getattr(d.predicted, judged) <= req.max_energy_mj
        if req.min_accuracy is not None:
            assert d.predicted.accuracy >= req.min_accuracy
    else:
        closest = min(rows, key=lambda r: (r["viol"], r["a"]))
        assert not d.feasible
        assert d.closest_id == closest["a"]
        assert d.violations  # names what fails, by how much
        if req.on_infeasible == "reject":
            assert d.code == "infeasible" and d.arm_id is None and d.variant is None
        else:
            assert d.code == "best_effort" and d.arm_id == closest["a"]


@FAST
@given(scenarios(), st.floats(0.5, 0.99), st.floats(0.5, 0.99))
def test_a_stricter_latency_confidence_never_admits_more_arms(sc, q1, q2):
    """Each arm's latency bound rises with the confidence, so the feasible set at a stricter
    confidence is a subset of the one at a looser confidence."""
    arms, pls, meas, queues, req = sc
    s, t = build(arms, pls, meas, probe_share=0.0)
    lo_q, hi_q = sorted((q1, q2))
    om = s.cost_model
    assert (om.latency_bounds_ms_[om.level_for(hi_q)] >= om.latency_bounds_ms_[om.level_for(lo_q)]).all() \
        or any(math.isnan(x) for x in om.latency_bounds_ms_.ravel())
    loose = {r["a"] for r in reference(s, req.replace(latency_confidence=lo_q), queues) if r["ok"]}
    strict = {r["a"] for r in reference(s, req.replace(latency_confidence=hi_q), queues) if r["ok"]}
    assert strict <= loose
    d = s.explain(req.replace(latency_confidence=hi_q), t + 1.0, queues)
    assert d.n_feasible == len(strict)


def test_latency_confidence_picks_the_arm_whose_tail_meets_the_bound():
    """Two arms: a steady one and a cheaper one with a slow tail. At the configured 0.9 the tail
    is beyond the window's quantile and the cheaper arm wins; at 0.99 its tail rules it out and
    the steady arm is chosen; above the highest kept level the request is refused."""
    arms = [ArmSpec("m", "steady", "cpu:0", 0.9, 1.0, 0.1, 1.0), ArmSpec("m", "tail", "cpu:1", 0.9, 1.0, 0.1, 1.0)]
    s = Selector(arms, ["cpu:0", "cpu:1"], SelectorConfig(probe_share=0.0))
    t = 0.0
    for i in range(16):
        t += 0.01
        s.update(0, 1.0, 1.0, True, t)
        s.update(1, 5.0 if i == 7 else 0.9, 0.5, True, t)   # one slow execution in 16
    loose = s.choose(Request("m", max_latency_ms=2.0, objective="energy"), t)
    strict = s.choose(Request("m", max_latency_ms=2.0, objective="energy", latency_confidence=0.97), t)
    assert loose.variant == "tail" and loose.predicted.latency_confidence == 0.9
    assert strict.variant == "steady" and strict.predicted.latency_confidence == 0.99
    assert strict.predicted.latency_bound_ms <= 2.0
    with pytest.raises(InvalidConstraintsError, match="above the highest"):
        s.choose(Request("m", max_latency_ms=2.0, objective="energy", latency_confidence=0.995), t)
    stats = s.stats()[1]["latency_ms"]
    assert stats["bounds"]["0.99"] > 4.0 > stats["bounds"]["0.9"]


@FAST
@given(scenarios())
def test_deterministic(sc):
    arms, pls, meas, queues, req = sc
    s1, t = build(arms, pls, meas, probe_share=0.5, probe_interval_s=0.1)
    s2, _ = build(list(reversed(arms)), pls, meas, probe_share=0.5, probe_interval_s=0.1)
    for k in range(6):
        d1 = s1.choose(req, t + k, queues, explain=True)
        d2 = s2.choose(req, t + k, queues, explain=True)
        assert d1 == d2


@FAST
@given(scenarios(), st.data())
def test_pins(sc, data):
    arms, pls, meas, queues, req = sc
    s, t = build(arms, pls, meas, probe_share=0.0)
    arm = data.draw(st.sampled_from(s.arms))
    pin_v = data.draw(st.booleans())
    pin_p = data.draw(st.booleans())
    r = Request("m", req.min_accuracy, req.max_latency_ms, req.max_energy_mj, req.objective, req.on_infeasible,
                variant=arm.variant if pin_v else None, placement=arm.placement if pin_p else None)
    d = s.choose(r, t, queues)
    if pin_v and pin_p:
        assert d.code == "pinned" and (d.variant, d.placement) == (arm.variant, arm.placement)
        rows = reference(s, r, queues)
        assert d.feasible == rows[0]["ok"]  # honest about the constraints
    elif d.arm_id is not None:
        if pin_v:
            assert d.variant == arm.variant
        if pin_p:
            assert d.placement == arm.placement


@FAST
@given(scenarios(), st.data())
def test_a_pinned_arm_is_judged_as_the_model_judges_it_among_the_others(sc, data):
    """Pinning both variant and placement applies the kernel to that one arm: its prediction and
    what it meets are those the model's columns give the same arm in an unpinned explanation."""
    arms, pls, meas, queues, req = sc
    s, t = build(arms, pls, meas, energy_at_confidence=data.draw(st.booleans()))
    arm = data.draw(st.sampled_from(s.arms))
    pinned = s.choose(req.replace(variant=arm.variant, placement=arm.placement), t, queues)
    assert pinned.code == "pinned" and (pinned.variant, pinned.placement) == (arm.variant, arm.placement)
    alt = next(a for a in s.explain(req, t, queues).alternatives if (a.variant, a.placement) == (arm.variant, arm.placement))
    assert alt.predicted == pinned.predicted
    assert alt.excluded_by == tuple(name for name, ok in pinned.met.items() if not ok)
    assert pinned.n_candidates == 1 and pinned.n_feasible == int(pinned.feasible)


def _ids(s: Selector, variants=None, variant=None, placement=None) -> list[int]:
    """Arm ids of model m: of ``variants`` (None: all), restricted by the pins."""
    return [i for i, a in enumerate(s.arms) if a.model == "m" and (variants is None or a.variant in variants)
            and variant in (None, a.variant) and placement in (None, a.placement)]


@FAST
@given(scenarios(), st.data())
def test_small_model_scalar_path_equals_the_masked_path(sc, data):
    """Decisions among at most ``scalar_max_arms`` candidates are scanned by a loop compiled from the kernel,
    larger ones by numpy over columns: the same decisions, probes (and the probe budget)
    included, call after call, with and without pins and candidates."""
    arms, pls, meas, queues, req = sc
    cfg = dict(energy_at_confidence=data.draw(st.booleans()), probe_share=data.draw(st.sampled_from([0.0, 0.3, 1.0])),
               probe_interval_s=data.draw(st.sampled_from([0.0, 0.2, 100.0])), probe_closest=data.draw(st.booleans()))
    scalar, t = build(arms, pls, meas, **cfg)
    masked, _ = build(arms, pls, meas, **cfg)
    masked.scalar_max_arms = 0
    assert scalar.scalar_max_arms >= len(scalar.arms)
    arm = data.draw(st.sampled_from(scalar.arms))
    pin_v, pin_p = data.draw(st.booleans()), data.draw(st.booleans())
    r = req.replace(variant=arm.variant if pin_v else None, placement=arm.placement if pin_p else None)
    variants = sorted({a.variant for a in scalar.arms})
    allowed = data.draw(st.one_of(st.none(), st.lists(st.sampled_from(variants), min_size=1, unique=True)))
    candidates = None if allowed is None else _ids(scalar, allowed, r.variant, r.placement) or None
    # the request alternates with an unconstrained one, so that a probe of the arm closest to an
    # infeasible request (probe_closest) can follow it
    free = Request("m", objective=req.objective, variant=r.variant, placement=r.placement)
    for k in range(6):
        outcomes = [s.choose(r if k % 3 != 1 else free, t + 0.1 * k, queues, candidates=candidates, dry_run=k == 3)
                    for s in (scalar, masked)]
        assert outcomes[0] == outcomes[1]
        if outcomes[0].arm_id is not None and k % 2:
            for s in (scalar, masked):   # both learn the same measurement
                s.update(outcomes[0].arm_id, 1.0 + k, 2.0, True, t + 0.1 * k)


def _closest_probe_scenario(path="scalar", **cfg):
    """Arms of one model on one placement, every decision a probe look: ``fast`` measured a
    little slower than 2 ms; known only by their priors, ``near`` (2.2 ms), ``frugal`` (the least
    energy) and ``mid``. For a 4 ms bound and the energy objective every arm is feasible,
    ``frugal`` is chosen and a best-first probe goes to ``mid``, the next by energy. ``path``:
    the loop over floats that a model this small gets, or the masked arrays of larger ones."""
    arms = [ArmSpec("m", "fast", "cpu:0", 0.9, 1.0, 0.0, 9.0),
            ArmSpec("m", "frugal", "cpu:0", 0.9, 3.0, 0.0, 1.0),
            ArmSpec("m", "mid", "cpu:0", 0.9, 3.5, 0.0, 3.0),
            ArmSpec("m", "near", "cpu:0", 0.8, 2.2, 0.0, 6.0)]
    s = Selector(arms, ["cpu:0"], SelectorConfig(probe_share=1.0, probe_interval_s=10.0, **cfg))
    if path == "masked":
        s.scalar_max_arms = 0
    t = 100.0
    for k in range(8):
        s.update(0, 2.5 + 0.01 * k, 9.0, True, t + 0.01 * k)
    return s, t + 1.0


TIGHT = Request("m", max_latency_ms=2.0, objective="energy")   # closest: near, its prior 10% over
LOOSE = Request("m", max_latency_ms=4.0, objective="energy")
PATHS = pytest.mark.parametrize("path", ["scalar", "masked"])


@PATHS
@pytest.mark.parametrize("probe_closest", [True, False])
def test_the_stale_arm_closest_to_an_infeasible_request_is_probed_first(path, probe_closest):
    """A rejection teaches the cost model nothing: with probe_closest, the arm closest to the
    rejected request, known only by its prior, is the next probe (on a request it is predicted
    to meet); without it, probes go best-first by the request's objective."""
    s, t = _closest_probe_scenario(path, probe_closest=probe_closest)
    d = s.choose(TIGHT, t)
    assert d.code == "infeasible" and s.arm(d.closest_id).variant == "near"
    d = s.choose(LOOSE, t + 0.1)
    assert d.code == "probe"
    assert d.variant == ("near" if probe_closest else "mid")
    s.update(d.arm_id, 2.1, 6.0, True, t + 0.1)
    assert s.choose(LOOSE, t + 0.2).variant == ("mid" if probe_closest else "near")   # then best-first


@PATHS
def test_a_dry_run_leaves_no_pending_closest_probe(path):
    s, t = _closest_probe_scenario(path)
    assert s.arm(s.choose(TIGHT, t, dry_run=True).closest_id).variant == "near"
    d = s.choose(LOOSE, t + 0.1)
    assert (d.code, d.variant) == ("probe", "mid")


@PATHS
@pytest.mark.parametrize("later_s", [0.1, 20.0])
def test_a_pending_closest_probe_is_dropped_once_the_arm_is_measured(path, later_s):
    """Measured after the rejection, the arm has nothing left to tell, even once its estimate is
    stale again (``later_s`` past ``probe_interval_s``)."""
    s, t = _closest_probe_scenario(path)
    assert s.arm(s.choose(TIGHT, t).closest_id).variant == "near"
    s.update(s.arm_id("m", "near", "cpu:0"), 2.4, 6.0, True, t + 0.05)   # still too slow for TIGHT
    d = s.choose(LOOSE, t + later_s)
    assert (d.code, d.variant) == ("probe", "mid")


@PATHS
def test_an_arm_failing_only_the_accuracy_bound_is_not_made_a_pending_probe(path):
    """Accuracy is the manifest's: measuring the arm cannot make it feasible."""
    s, t = _closest_probe_scenario(path)
    picky = Request("m", min_accuracy=0.85, max_latency_ms=2.0, objective="energy")
    d = s.choose(picky, t)
    assert d.code == "infeasible" and s.arm(d.closest_id).variant == "near"   # closest, at accuracy 0.8
    assert {v.constraint for v in d.violations} == {"min_accuracy", "max_latency_ms"}
    d = s.choose(LOOSE, t + 0.1)
    assert (d.code, d.variant) == ("probe", "mid")


@FAST
@given(scenarios())
def test_probes_only_feasible_and_bounded(sc):
    arms, pls, meas, queues, req = sc
    share = 0.05
    s, t = build(arms, pls, meas, probe_share=share, probe_interval_s=1.0)
    n = 200
    probes = 0
    for k in range(n):
        now = t + 0.05 * k
        d = s.choose(req, now, queues)
        if d.code == "probe":
            probes += 1
            rows = {r["a"]: r for r in reference(s, req, queues)}
            if any(r["ok"] for r in rows.values()):
                assert rows[d.arm_id]["ok"]   # predicted feasible on its measurements
            else:   # no arm is: a stale arm whose latency prior meets the request (_stale_probe)
                om, a = s.cost_model, d.arm_id
                level = om.level_for(req.latency_confidence)
                wait = rows[a]["bound"] - om.latency_bounds_ms_[level, a]
                prior_bound = om.prior_bounds_ms_[level, a] + wait
                assert req.max_latency_ms is not None and prior_bound <= req.max_latency_ms
                assert d.predicted.latency_bound_ms == pytest.approx(prior_bound)
                assert req.min_accuracy is None or (rows[a]["acc"] is not None and rows[a]["acc"] >= req.min_accuracy)
                if req.max_energy_mj is not None:
                    judged = om.energy_bound_mj_[a] if s.config.energy_at_confidence else om.est_energy_mj_[a]
                    assert judged <= req.max_energy_mj
            assert d.feasible
            assert now - s.cost_model.last_update_s_[d.arm_id] > 1.0
    assert probes <= share * n + 2   # +1 per budget: feasible decisions' and the stale-arm probe's


def test_a_stream_of_one_tight_bound_recovers_after_a_slow_spell():
    """Every request bounded at 2 ms; a slow spell puts both arms' bounds at 3 ms. Rejections
    measure nothing, so before the stale-arm probe every later request was rejected for good
    (3,000 of 3,000 over a minute). Now, once the arms have gone unmeasured for
    probe_interval_s, one is probed on its prior within the probe budget, and when it is fast
    again the stream is served again."""
    arms = [ArmSpec("m", "a", "cpu:0", 0.9, 0.5, 0.05, 1.0), ArmSpec("m", "b", "cpu:1", 0.9, 0.6, 0.05, 1.0)]
    s = Selector(arms, ["cpu:0", "cpu:1"], SelectorConfig(probe_interval_s=10.0, probe_share=0.02))
    t = 0.0
    for _ in range(20):   # the slow spell
        t += 0.05
        s.update(0, 3.0, 1.0, True, t)
        s.update(1, 3.0, 1.0, True, t)
    codes: list[str] = []
    probe_at = None
    for _ in range(3000):   # a minute of requests, one every 20 ms
        t += 0.02
        d = s.choose(Request("m", max_latency_ms=2.0), t)
        codes.append(d.code)
        if d.code == "probe":
            probe_at = probe_at or t
            assert d.predicted.latency_bound_ms <= 2.0 and "by its prior" in d.text
            s.update(d.arm_id, 0.55, 1.0, True, t)   # the spell is over
        elif d.code == "selected":
            s.update(d.arm_id, 0.55, 1.0, True, t)
    # stale 10 s after the spell (t = 1 s), then within one probe credit (50 decisions, 1 s)
    assert probe_at is not None and 11.0 < probe_at <= 11.0 + 50 * 0.02 + 0.02
    assert codes.count("probe") <= 0.02 * 3000 + 1
    assert codes[-1000:].count("selected") >= 990   # served again
    # without the stale-arm probe (probe_stale_prior = false) the stream stays rejected
    off = Selector(arms, ["cpu:0", "cpu:1"], SelectorConfig(probe_interval_s=10.0, probe_share=1.0,
                                                            probe_stale_prior=False))
    for k in range(20):
        off.update(0, 3.0, 1.0, True, 0.05 * k)
        off.update(1, 3.0, 1.0, True, 0.05 * k)
    assert off.choose(Request("m", max_latency_ms=2.0), 1.0).code == "infeasible"   # the spell, seen
    assert off.choose(Request("m", max_latency_ms=2.0), 30.0).code == "infeasible"
    # a request that the prior cannot meet either is still rejected, never probed (every decision looks here)
    s = Selector(arms, ["cpu:0", "cpu:1"], SelectorConfig(probe_interval_s=10.0, probe_share=1.0))
    for k in range(20):
        s.update(0, 3.0, 1.0, True, 0.05 * k)
        s.update(1, 3.0, 1.0, True, 0.05 * k)
    assert s.choose(Request("m", max_latency_ms=2.0), 1.0).code == "infeasible"   # not stale yet
    assert s.choose(Request("m", max_latency_ms=0.1), 30.0).code == "infeasible"
    assert s.choose(Request("m", max_latency_ms=2.0), 30.0).code == "probe"


def test_explain_changes_nothing_and_ranks():
    arms = [ArmSpec("m", f"v{v}", p, 0.5 + 0.1 * v, 2.0 + v, 0.1, 1.0 + v) for v in range(4) for p in PLACEMENTS[:2]]
    s = Selector(arms, list(PLACEMENTS[:2]), SelectorConfig(probe_share=1.0, probe_interval_s=0.0))
    r = Request("m", min_accuracy=0.6, max_latency_ms=4.5, objective="latency")
    d = s.explain(r, 100.0)
    assert d.code == "selected" and d.variant == "v1"
    alts = d.alternatives
    assert len(alts) == 8
    assert alts[0].rank == 0 and (alts[0].variant, alts[0].placement) == (d.variant, d.placement)
    excluded = {(a.variant, a.placement): a.excluded_by for a in alts}
    assert excluded[("v0", "cpu:0")] == ("min_accuracy",)
    assert "max_latency_ms" in excluded[("v3", "cpu:0")]
    assert all(a.rank is None for a in alts if a.excluded_by)
    # a dry run spends no probe credit; the real call probes (probe_share=1 and all arms stale)
    assert s.explain(r, 100.0).code == "selected"
    assert s.choose(r, 100.0).code == "probe"
    assert "4 of 8 arms" in d.text


@pytest.mark.parametrize("path", ["scalar", "masked"])
def test_a_probe_refreshes_the_stale_arm_that_would_be_chosen_not_the_oldest(path):
    """Among stale feasible arms the probe goes to the best by the objective: ``b``, measured
    slower than ``a`` once, before ``c``, measured long ago and hopeless; then by age."""
    arms = [ArmSpec("m", v, "cpu:0", 0.9, 1.0, 0.1, 1.0) for v in ("a", "b", "c", "d")]
    s = Selector(arms, ["cpu:0"], SelectorConfig(probe_share=1.0, probe_interval_s=1.0, full_trust_n=1))
    if path == "masked":
        s.scalar_max_arms = 0
    ids = {v: s.arm_id("m", v, "cpu:0") for v in "abcd"}
    s.update(ids["c"], 50.0, None, True, 0.0)   # oldest, hopeless
    s.update(ids["d"], 3.0, None, True, 1.0)
    s.update(ids["b"], 2.0, None, True, 2.0)    # one slow-ish measurement
    s.update(ids["a"], 1.0, None, True, 9.5)    # fresh: the choice
    r = Request("m", max_latency_ms=100.0, objective="latency")
    d = s.choose(r, 10.0)
    assert d.code == "probe" and d.variant == "b"
    s.update(ids["b"], 2.0, None, True, 10.0)
    d = s.choose(r, 10.5)
    assert d.code == "probe" and d.variant == "d"   # b is fresh now; d beats c
    # an arm the request's own constraint rules out is never probed
    d = s.choose(Request("m", max_latency_ms=2.5, objective="latency"), 11.0)
    assert d.code == "selected" and d.variant == "a"


@pytest.mark.parametrize("path", ["scalar", "masked"])
def test_an_infinite_cost_never_ties_with_an_excluded_arm(path):
    """An arm whose energy prior is infinite is still a candidate (ranked last among the
    feasible), never confused with an arm the constraints exclude; and allowed variants may
    come as a one-shot iterator."""
    arms = [ArmSpec("m", "a", "cpu:0", 0.5, 1.0, 0.1, float("inf")),
            ArmSpec("m", "b", "cpu:0", 0.9, 1.0, 0.1, float("inf"))]
    s = Selector(arms, ["cpu:0"], SelectorConfig(probe_share=0.0))
    if path == "masked":
        s.scalar_max_arms = 0
    d = s.choose(Request("m", min_accuracy=0.8, objective="energy"), 0.0)
    assert d.variant == "b" and d.feasible
    d = s.choose(Request("m", max_latency_ms=0.01, on_infeasible="best_effort"), 0.0,
                 candidates=iter([s.arm_id("m", "a", "cpu:0")]))
    assert d.code == "best_effort" and d.variant == "a"


def test_queue_wait_moves_choice():
    arms = [ArmSpec("m", "a", "cpu:0", 0.9, 2.0, 0.0, None), ArmSpec("m", "a", "cpu:1", 0.9, 3.0, 0.0, None)]
    s = Selector(arms, ["cpu:0", "cpu:1"], SelectorConfig(probe_share=0.0))
    r = Request("m", max_latency_ms=5.0)
    assert s.choose(r, 0.0).placement == "cpu:0"
    a0 = s.arm_id("m", "a", "cpu:0")
    # in flight 2.0 ms job started 0.5 ms ago + one queued 2.0 ms job -> wait 3.5 ms on cpu:0
    q = {"cpu:0": QueueSnapshot((a0,), a0, 0.5)}
    d = s.choose(r, 0.0, q, explain=True)
    assert d.placement == "cpu:1" and d.predicted.queue_ms == 0.0
    alt = {a.placement: a for a in d.alternatives}
    assert alt["cpu:0"].predicted.queue_ms == pytest.approx(3.5)
    assert alt["cpu:0"].predicted.latency_bound_ms == pytest.approx(5.5)
    assert alt["cpu:0"].excluded_by == ("max_latency_ms",)


def test_unknown_accuracy_fails_min_accuracy_and_ranks_last():
    arms = [ArmSpec("m", "zoo", "cpu:0", None, 1.0, 0.0, None), ArmSpec("m", "known", "cpu:0", 0.3, 5.0, 0.0, None)]
    s = Selector(arms, ["cpu:0"], SelectorConfig(probe_share=0.0))
    assert s.choose(Request("m", min_accuracy=0.0), 0.0).variant == "known"
    assert s.choose(Request("m", objective="accuracy"), 0.0).variant == "known"
    assert s.choose(Request("m"), 0.0).variant == "zoo"
    d = s.choose(Request("m", min_accuracy=0.5), 0.0)
    assert d.code == "infeasible" and s.arm(d.closest_id).variant == "known"
    assert "accuracy 0.3 is below 0.5 by 0.2" in d.text


@pytest.mark.parametrize("kw", [
    dict(min_accuracy=1.5), dict(min_accuracy=-0.1), dict(max_latency_ms=-1.0), dict(max_latency_ms=0.0),
    dict(max_energy_mj=float("nan")), dict(max_latency_ms=float("inf")), dict(max_energy_mj="3"),
    dict(min_accuracy=True), dict(latency_confidence=0.4), dict(latency_confidence=1.0),
    dict(latency_confidence="0.9"),
])
def test_invalid_constraints(kw):
    with pytest.raises(InvalidConstraintsError) as e:
        Request("m", **kw)
    assert isinstance(e.value, ValueError) and e.value.code == "BAD_CONSTRAINTS"
    assert str(e.value)


def test_invalid_request_and_unknowns():
    with pytest.raises(InvalidRequestError):
        Request("m", objective="speed")
    with pytest.raises(InvalidRequestError):
        Request("m", on_infeasible="maybe")
    with pytest.raises(InvalidConstraintsError):
        Request.from_dict({"model": "m", "constraints": {"max_latency_ms": -3}})
    r = Request.from_dict({"model": "m", "constraints": {"max_latency_ms": 3}, "pin": {"variant": "a"},
                           "objective": "energy", "extra": 1})
    assert (r.max_latency_ms, r.variant, r.objective) == (3.0, "a", "energy")
    s = Selector([ArmSpec("m", "a", "cpu:0", 0.9, 1.0)], ["cpu:0", "gpu:0"])
    with pytest.raises(UnknownModelError):
        s.choose(Request("x"), 0.0)
    with pytest.raises(UnknownVariantError):
        s.choose(Request("m", variant="b"), 0.0)
    with pytest.raises(UnknownPlacementError):
        s.choose(Request("m", placement="gpu:0"), 0.0)


def test_from_manifests_pairs_runtimes_and_uses_priors():
    manifest = {"schema": "adaptd.manifest/1", "model": "digits", "version": "1", "variants": [
        {"name": "float32", "runtime": "litert", "quantization": "none", "metrics": {"accuracy": 0.96},
         "latency_ms_1thread": {"median": 2.0, "p90": 2.2, "n": 20}},
        {"name": "float32_tf", "runtime": "tensorflow", "quantization": "none", "metrics": None,
         "latency_ms_1thread": {"median": 4.0, "p90": 4.4, "n": 20}},
    ]}
    pls = [{"name": "cpu:0", "kind": "cpu", "cores": (0,), "threads": 1, "runtime": "litert"},
           {"name": "cpu:0-1", "kind": "cpu", "cores": (0, 1), "threads": 2, "runtime": "litert"},
           {"name": "tf:cpu", "kind": "cpu", "cores": (0, 1), "threads": 2, "runtime": "tensorflow"}]
    s = Selector.from_manifests([manifest], pls)
    assert [(a.variant, a.placement) for a in s.arms] == [
        ("float32", "cpu:0"), ("float32", "cpu:0-1"), ("float32_tf", "tf:cpu")]
    assert s.arms[0].prior_latency_ms == 2.0 and s.arms[0].accuracy == 0.96
    assert s.arms[1].prior_latency_ms == pytest.approx(2.0 * 2 ** -0.75)
    assert s.arms[2].accuracy is None
    d = s.choose(Request("digits", objective="latency"), 0.0)
    assert (d.variant, d.placement) == ("float32", "cpu:0-1")


def test_from_manifests_accepts_objects_and_predictor_priors():
    from types import SimpleNamespace

    from adaptd.selector import StructuralPredictor

    structure = {"flops": 2_000_000, "params": 10, "nonzero_params": 10, "weight_bytes": 40,
                 "activation_bytes": 1000, "ops": {"CONV_2D": 2}, "op_flops": {"CONV_2D": 2_000_000},
                 "compute_dtype": "float32"}
    recs = [{"structure": structure, "quantization": q, "placement": "cpu:0", "placement_kind": "cpu",
             "threads": 1, "latency_ms": lat, "energy_mj": 2.0 * lat} for q, lat in (("none", 1.0), ("full_int8", 0.5))]
    pred = StructuralPredictor().fit(recs)

    class Manifest:  # e.g. adaptd.variants.manifest.Manifest
        def to_dict(self):
            return {"model": "m", "version": "3", "variants": [
                {"name": "f32", "runtime": "litert", "quantization": "none", "structure": structure,
                 "metrics": {"accuracy": 0.9}},
                {"name": "i8", "runtime": "litert", "quantization": "full_int8", "structure": structure,
                 "metrics": {"accuracy": 0.85}}]}

    pl = SimpleNamespace(name="cpu:0", kind="cpu", cores=(0,), threads=1, runtime="litert")
    s = Selector.from_manifests([Manifest()], [pl], predictor=pred)
    assert [a.prior_latency_ms for a in s.arms] == pytest.approx([1.0, 0.5], rel=0.05)
    assert s.arms[0].version == "3"
    d = s.choose(Request("m", objective="energy"), 0.0)
    assert d.variant == "i8" and d.predicted.energy_mj == pytest.approx(1.0, rel=0.05)
    assert d.predicted.energy_estimated is True


@FAST
@given(scenarios(), st.data())
def test_candidates_restrict_like_a_filtered_repository(sc, data):
    """The caller's candidates (e.g. the variants an input's dtype allows) are the arms chosen
    among: the best of them, or the closest of them."""
    arms, pls, meas, queues, req = sc
    s, t = build(arms, pls, meas, probe_share=0.0)
    names = sorted({a.variant for a in s.arms})
    allowed = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    d = s.choose(req, t + 1.0, queues, candidates=_ids(s, allowed))
    rows = [r for r in reference(s, req, queues) if s.arms[r["a"]].variant in allowed]
    feasible = [r for r in rows if r["ok"]]
    if feasible:
        assert d.arm_id == min(feasible, key=lambda r: objective_key(r, req.objective))["a"]
    else:
        assert d.closest_id == min(rows, key=lambda r: (r["viol"], r["a"]))["a"]
        assert d.n_candidates == len(rows)


def test_candidates_are_trusted_and_pins_resolved_only_without_them():
    s = Selector([ArmSpec("m", "a", "cpu:0", 0.9, 1.0), ArmSpec("m", "b", "cpu:0", 0.9, 2.0),
                  ArmSpec("n", "a", "cpu:0", 0.9, 1.0)], ["cpu:0"])
    b = s.arm_id("m", "b", "cpu:0")
    assert s.choose(Request("m"), 0.0, candidates=[b]).variant == "b"
    # the caller resolved the pins (to b): the pins only make the decision "pinned"
    assert s.choose(Request("m", variant="x", placement="y"), 0.0, candidates=[b]).code == "pinned"
    for bad in ([], [s.arm_id("n", "a", "cpu:0")]):
        with pytest.raises(ValueError, match="candidates"):
            s.choose(Request("m"), 0.0, candidates=bad)


def test_a_live_accuracy_replaces_the_validation_one_for_every_placement_of_the_variant():
    """``set_accuracy`` (live fidelity) moves a request off a variant whose figure no longer meets
    its bound, on both decision paths, and the decision says where the figure came from."""
    arms = [ArmSpec("m", v, p, acc, lat) for v, acc, lat in (("float32", 0.97, 0.3), ("int8_full", 0.97, 0.1),
                                                             ("int8_dynamic", 0.969, 0.2))
            for p in ("cpu:0", "cpu:1")]
    sel = Selector(arms, ["cpu:0", "cpu:1"], SelectorConfig(probe_share=0.0))
    req = Request("m", min_accuracy=0.96)
    d = sel.choose(req, 0.0)
    assert d.variant == "int8_full" and d.predicted.accuracy_source == "validation"
    assert sel.set_accuracy("m", "int8_full", 0.42, "live") == 2
    assert sel.set_accuracy("m", "nope", 0.1, "live") == 0 and sel.set_accuracy("x", "int8_full", 0.1, "live") == 0
    for explain in (False, True):
        d = sel.choose(req, 0.0, explain=explain, dry_run=explain)
        assert d.variant == "int8_dynamic" and d.predicted.accuracy == 0.969
    pinned = sel.choose(Request("m", variant="int8_full", placement="cpu:1", min_accuracy=0.96), 0.0)
    assert pinned.predicted.accuracy == 0.42 and pinned.predicted.accuracy_source == "live"
    assert pinned.met.min_accuracy is False
    assert sel.choose(Request("m", variant="int8_full", placement="cpu:0"), 0.0).predicted.accuracy == 0.42
    sel.set_accuracy("m", "int8_full", 0.97, "validation")
    assert sel.choose(req, 0.0).variant == "int8_full"
