"""The feasibility kernel (adaptd.selector.kernel): its two tables are the only definition of
feasibility and ranking; the compiled loop is built from them, and both ways of applying them
give the same answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from adaptd.selector import ProbeBudget, Request
from adaptd.selector import kernel
from hypothesis import given, settings
from hypothesis import strategies as st

COMBOS = [(bs, objective, queued) for bs in itertools.product((False, True), repeat=3)
          for objective in kernel.KEYS for queued in (False, True)]


@pytest.mark.parametrize("bounds_set, objective, queued", COMBOS)
def test_the_compiled_loop_is_the_tables_checks_and_keys(bounds_set, objective, queued):
    """Structure, not samples: the loop tests exactly the set bounds, in CHECKS order, each on
    its figure as FIGURES reads it, and ranks by the objective's KEYS."""
    src = kernel.scan_source(bounds_set, objective, queued)
    tests = [line.strip() for line in src.splitlines() if line.strip().startswith("if not (")]
    expected = []
    for (name, figure, op), is_set in zip(kernel.CHECKS, bounds_set):
        if is_set:
            expr = kernel.FIGURES[figure] if queued else kernel.FIGURES[figure].replace(" + w", "")
            expected.append(f"if not ({expr} {op} {name}):")
    assert tests == expected
    k1, k2 = kernel.KEYS[objective]
    fig = (lambda f: kernel.FIGURES[f]) if queued else (lambda f: kernel.FIGURES[f].replace(" + w", ""))
    assert f"k1 = {fig(k1)}" in src and f"k2 = {fig(k2)}" in src
    assert ("w = waits[pidx[j]]" in src) == queued
    assert callable(kernel.scanner(bounds_set, objective, queued))


FIG = st.one_of(st.floats(-1.0, 60.0), st.just(float("nan")), st.just(float("inf")))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 12), st.data())
def test_the_loop_and_the_columns_give_the_same_best_and_feasible_arms(n, data):
    col = lambda: data.draw(st.lists(FIG, min_size=n, max_size=n))  # noqa: E731
    est, bnd, energy, acc = col(), col(), col(), col()
    judged = data.draw(st.one_of(st.just(energy), st.lists(FIG, min_size=n, max_size=n)))
    acc_key = [1.0 if a != a else -a for a in acc]
    n_pl = data.draw(st.integers(1, 3))
    pidx = data.draw(st.lists(st.integers(0, n_pl - 1), min_size=n, max_size=n))
    waits = data.draw(st.one_of(st.none(), st.lists(st.floats(0.0, 10.0), min_size=n_pl, max_size=n_pl)))
    idx = data.draw(st.one_of(st.none(), st.lists(st.integers(0, n - 1), min_size=1, unique=True).map(sorted)))
    r = Request("m", min_accuracy=data.draw(st.one_of(st.none(), st.floats(0.0, 1.0))),
                max_latency_ms=data.draw(st.one_of(st.none(), st.floats(0.5, 50.0))),
                max_energy_mj=data.draw(st.one_of(st.none(), st.floats(0.5, 50.0))),
                objective=data.draw(st.sampled_from(sorted(kernel.KEYS))))
    c = r.constraints
    bounds = (c.min_accuracy, c.max_latency_ms, c.max_energy_mj)
    scan = kernel.scanner(tuple(b is not None for b in bounds), r.objective, waits is not None)
    best, feasible = scan(range(n) if idx is None else idx, est, bnd, energy, judged, acc, acc_key, pidx, waits, bounds)
    arm_wait = None if waits is None else np.array(waits)[np.array(pidx)]
    figures = kernel.figure_columns(np.array(est), np.array(bnd), np.array(energy), np.array(judged),
                                    np.array(acc), np.array(acc_key), arm_wait)
    cand = None
    if idx is not None:
        cand = np.zeros(n, dtype=bool)
        cand[idx] = True
    feas, n_feas, i = kernel.scan_columns(r, figures, cand)
    assert n_feas == len(feasible)
    assert sorted(j for _, _, j in feasible) == ([] if not n_feas else list(np.flatnonzero(feas)) if feas is not None
                                                 else list(range(n)))
    assert (best is None and i == -1) or best[2] == i


def test_meets_judges_one_arm_as_it_judges_a_column():
    r = Request("m", min_accuracy=0.8, max_latency_ms=5.0, max_energy_mj=2.0)
    acc, lat, en = [0.9, float("nan"), 0.8, 0.7], [5.0, 1.0, float("inf"), float("nan")], [2.0, 1.0, 3.0, 0.0]
    columns = kernel.meets(r, np.array(acc), np.array(lat), np.array(en))
    for j in range(4):
        one = kernel.meets(r, acc[j], lat[j], en[j])
        assert one == tuple(bool(m[j]) for m in columns) and all(type(x) is bool for x in one)
    assert kernel.meets(Request("m"), 0.1, 1.0, 1.0) == (None, None, None)
    assert [bool(x) for x in kernel.conjunction(columns)] == [True, False, False, False]


def test_lexmin_ranks_unknown_and_infinite_keys_after_known_ones_and_ties_by_index():
    nan, inf = float("nan"), float("inf")
    assert kernel.lexmin(None, np.array([nan, 2.0, 1.0]), np.zeros(3)) == 2
    assert kernel.lexmin(None, np.array([nan, inf, nan]), np.array([3.0, 2.0, 1.0])) == 2   # all BIG: key2
    assert kernel.lexmin(np.array([True, False, True]), np.array([inf, 0.0, inf]), np.array([1.0, 0.0, 1.0])) == 0
    assert kernel.lexmin(None, np.array([1.0, 1.0]), np.array([2.0, 2.0])) == 0


def test_violation_counts_unknown_accuracy_as_one_and_unknown_estimates_as_big():
    r = Request("m", min_accuracy=0.5, max_latency_ms=2.0)
    acc = np.array([np.nan, 0.25, 0.9])
    total = kernel.violation_totals(r, np.nan_to_num(acc), np.isnan(acc).astype(float), np.array([1.0, 3.0, np.nan]),
                                    np.zeros(3))
    assert total.tolist() == [1.0, 0.5 + 0.5, kernel.BIG]
    assert math.isfinite(kernel.violation_totals(Request("m", min_accuracy=5e-324), np.array([0.9]), np.zeros(1),
                                                 np.ones(1), np.ones(1))[0])


def test_the_probe_budget_keeps_a_credit_per_kind():
    b = ProbeBudget(0.25)
    spent = {ProbeBudget.FEASIBLE: 0, ProbeBudget.STALE_PRIOR: 0}
    for k in range(40):
        kind = ProbeBudget.FEASIBLE if k % 4 else ProbeBudget.STALE_PRIOR   # 30 and 10 decisions
        b.earn(kind)
        spent[kind] += b.spend(kind)
    assert spent == {ProbeBudget.FEASIBLE: 7, ProbeBudget.STALE_PRIOR: 2}   # 30 x 0.25 and 10 x 0.25, floored
    assert not ProbeBudget(0.0).enabled and not ProbeBudget(0.0).spend(ProbeBudget.FEASIBLE)
    with pytest.raises(ValueError):
        ProbeBudget(1.5)
