"""The latency the selector learns covers what a caller's bound is judged on: the reply's
``total_ms`` (from the daemon receiving the request to the reply), not only the worker's service
time. For a small model the daemon's own request path (decode, choice, dispatch, result
handling) is a large part of that, and leaving it out made the "95% bound" an underestimate for
most replies (bench/bench_selection.py measured 70% of replies above it).
"""

from __future__ import annotations

import numpy as np
import pytest

from adaptd.clients.client import Client
from adaptd.selector.priors import OVERHEAD_WEIGHT
from adaptd.tools.launch import DaemonProcess

pytestmark = pytest.mark.slow


def test_learned_latency_covers_the_daemons_request_path(tiny_repository, tmp_path):
    repo, model, _ = tiny_repository
    x = np.zeros((1, 8, 8, 1), np.float32)
    with DaemonProcess.start(repo, tmp_path / "d", config={"placements": {"load": "eager"}}) as d, \
            Client(d.endpoint) as client:
        placement = client.placements()["placements"][0]["name"]
        totals = []
        for _ in range(60):   # one request at a time: no queue wait, the whole total is the path
            s = client.infer(model, x, variant="float32", placement=placement).selection
            totals.append(s.timing.total_ms)
        e = client.explain(model, variant="float32", placement=placement)
    measured = float(np.median(totals[20:]))
    # The estimate (an EWMA of what was learned) is at least most of the median total; learning
    # the worker's service time alone gave about half of it for this model.
    assert e.predicted.latency_ms >= 0.8 * measured, (e.predicted, measured, totals[20:])


def _learn_on_one_arm(tiny_repository, tmp_path, n=60):
    """Serve ``n`` requests on one arm of the first placement; return what the daemon predicted
    for that arm and for another arm of the same placement before and after (``explain``), the
    replies' selections, and how often that other arm ran (it never should)."""
    repo, model, _ = tiny_repository
    x = np.zeros((1, 8, 8, 1), np.float32)
    with DaemonProcess.start(repo, tmp_path / "d", config={"placements": {"load": "eager"}}) as d, \
            Client(d.endpoint) as client:
        placement = client.placements()["placements"][0]["name"]
        variants = [v["name"] for v in client.models()["models"][0]["variants"] if v.get("runtime", "litert") == "litert"]
        run, other = variants[0], variants[1]
        run_before = client.explain(model, variant=run, placement=placement).predicted
        before = client.explain(model, variant=other, placement=placement).predicted
        selections = [client.infer(model, x, variant=run, placement=placement).selection for _ in range(n)]
        after = client.explain(model, variant=other, placement=placement).predicted
        stats = {(a["variant"], a["placement"]): a for a in client.stats()["arms"]}
    return run_before, before, after, selections, stats.get((other, placement), {}).get("count", 0)


def test_a_never_measured_arm_is_predicted_with_its_placements_path(tiny_repository, tmp_path):
    """The structural prior knows the interpreter, not the daemon's path around it. After
    requests on one arm, another arm of the same placement, never run, is predicted with the
    path that placement's executions paid (learnt as latency minus execution), while its own
    execution part stays the prior's."""
    _, before, after, selections, other_runs = _learn_on_one_arm(tiny_repository, tmp_path)
    assert other_runs == 0
    path = float(np.median([s.timing.total_ms - s.timing.compute_ms for s in selections[30:]]))
    before, after = before.latency_ms, after.latency_ms
    assert before < 0.5 * path, (before, path)   # the prior alone lacked most of the path
    assert after >= 0.7 * path, (before, after, path)
    assert after <= before + 2.0 * path, (before, after, path)


def test_a_never_measured_arm_is_predicted_with_what_its_siblings_priors_missed_in_energy(tiny_repository, tmp_path):
    """Energy priors come from the power model and the variant's latency prior, a hot-loop
    figure; in the daemon a tiny model's executions take longer (the demo's float32: 0.017 ms
    in the manifest, 0.045 ms served), so its energy priors were 2-3x low. After requests on one
    arm, another arm of the same model and placement, never run, is predicted with what the
    first arm's prior missed (the learner's average of it) added to its own prior.

    The reference is that average, recomputed from the energies the daemon learnt from (each
    reply carries its execution's), not a median of them: on a shared machine single executions
    take several times the usual energy (a preempted worker), and an average and a median of such
    samples differ by more than any fixed share, which made this test fail on a loaded machine."""
    run_before, before, after, selections, other_runs = _learn_on_one_arm(tiny_repository, tmp_path)
    assert other_runs == 0
    run_prior = run_before.energy_mj
    misses = [s.energy.energy_mj - run_prior for s in selections]
    learnt = misses[0]
    for miss in misses[1:]:
        learnt += OVERHEAD_WEIGHT * (miss - learnt)
    # without the correction after == before, which fails this whenever the prior missed anything;
    # the shift follows the average once it moves by over 10% (the learner's hysteresis)
    shift = after.energy_mj - before.energy_mj
    assert abs(shift - learnt) <= 0.1 * max(abs(shift), abs(learnt)) + 1e-9 * run_prior, \
        (run_prior, before, after, learnt, misses)


def test_one_slow_execution_does_not_move_the_placements_learnt_path_far(tiny_repository):
    """On a shared host one execution's path can take 20 times the usual (a preempted worker).
    Such a sample moves the placement's learnt path, and with it every never-measured arm's
    prior there, by a bounded amount; a lasting rise is still followed. Real repository,
    registry and selector; no daemon: the policy is fed executions as the daemon feeds them."""
    from adaptd.daemon.config import PlacementsConfig
    from adaptd.daemon.placements import discover
    from adaptd.daemon.registry import load_registry
    from adaptd.daemon.selection import SelectorPolicy
    from adaptd.selector import SelectorConfig

    repo, model_name, _ = tiny_repository
    registry = load_registry(repo, discover(PlacementsConfig()), generation=1)
    model = registry.newest()[0]
    policy = SelectorPolicy(SelectorConfig(), calibration=None)
    policy.reset(registry)
    run, other = model.arms[0], next(a for a in model.arms[1:] if a.placement.name == model.arms[0].placement.name)
    key = f"{model.name}:{model.version}"
    other_id = policy.selector.arm_id(key, other.variant.name, other.placement.name)
    prior_ms = policy.selector.service_estimate_ms(other_id)
    t = 0.0

    def serve(path_ms: float, compute_ms: float = 0.05) -> None:
        nonlocal t
        t += 0.01
        policy.observe(model, run, compute_ms + path_ms, None, True, t, compute_ms=compute_ms)

    for _ in range(30):
        serve(0.5)
    settled = policy.selector.service_estimate_ms(other_id) - prior_ms
    assert abs(settled - 0.5) < 0.1, settled   # the never-measured arm carries the path (its prior had ~none)
    serve(10.0)   # one execution preempted for 10 ms
    spike = policy.selector.service_estimate_ms(other_id) - prior_ms
    assert spike <= settled + 0.3 * 0.5, (settled, spike)   # an EWMA (weight 0.1) moved by ~0.95 ms
    for _ in range(40):   # a lasting rise: every path now 2 ms
        serve(2.0)
    risen = policy.selector.service_estimate_ms(other_id) - prior_ms
    assert risen > 1.8, risen


def test_a_slow_first_execution_does_not_set_the_placements_learnt_path(tiny_repository):
    """The first executions after a start (cold caches, an eager load just done) can be slow too:
    the path starts from the median of the first ones, not their mean."""
    from adaptd.daemon.config import PlacementsConfig
    from adaptd.daemon.placements import discover
    from adaptd.daemon.registry import load_registry
    from adaptd.daemon.selection import SelectorPolicy
    from adaptd.selector import SelectorConfig

    repo, _, _ = tiny_repository
    registry = load_registry(repo, discover(PlacementsConfig()), generation=1)
    model = registry.newest()[0]
    policy = SelectorPolicy(SelectorConfig(), calibration=None)
    policy.reset(registry)
    run = model.arms[0]
    for i, path_ms in enumerate([0.5, 0.5, 0.5, 10.0] + [0.5] * 6):   # one 10 ms path among the first ten
        policy.observe(model, run, 0.05 + path_ms, None, True, 0.01 * (i + 1), compute_ms=0.05)
    learnt = policy.learner.path_ms[run.placement.name]
    assert learnt < 0.5 + 0.2, learnt   # their mean: 1.45 ms
