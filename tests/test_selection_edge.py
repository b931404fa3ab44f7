"""The daemon's edge of selection (adaptd.daemon.selection): the parsed request converted once
into the selector's, the daemon's candidates passed as arm ids, the typed decision turned into
the wire's maps (PROTOCOL.md §5, §6, §7.6) in one place. Real repository, registry, placements
and selector; no daemon."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from adaptd.daemon.config import PlacementsConfig
from adaptd.daemon.placements import discover
from adaptd.daemon.registry import load_registry
from adaptd.daemon.selection import SelectorPolicy, selector_request
from adaptd.selector import SelectorConfig
from adaptd.wire import protocol as proto

PROTOCOL = Path(__file__).resolve().parents[1] / "PROTOCOL.md"


def _fields(text: str) -> list[str]:
    """The backquoted names in ``text``, each once, in order."""
    return list(dict.fromkeys(re.findall(r"`(\w+)`", text)))


def _request(model: str, **extra) -> proto.Request:
    return proto.parse_request({"type": "explain", "id": "r1", "model": model, **extra})


def test_the_request_is_converted_once_its_constraints_passed_as_parsed():
    wire = _request("m", constraints={"max_latency_ms": 3, "latency_confidence": 0.95}, objective="energy",
                    on_infeasible="best_effort", pin={"variant": "v", "placement": "p"})
    r = selector_request("m:1", wire)
    assert r.constraints is wire.constraints
    assert (r.model, r.objective, r.on_infeasible, r.variant, r.placement) == ("m:1", "energy", "best_effort", "v", "p")


@pytest.fixture(scope="module")
def served(tiny_repository):
    repo, _, _ = tiny_repository
    registry = load_registry(repo, discover(PlacementsConfig()), generation=1)
    return registry, registry.newest()[0]


def test_a_choice_names_registry_arms_and_speaks_the_protocol(served):
    registry, model = served
    policy = SelectorPolicy(SelectorConfig(), calibration=None)
    policy.reset(registry)
    text = PROTOCOL.read_text()
    predicted_fields = _fields(text[text.index("| `predicted` | map |"):].splitlines()[0].split("|")[3])
    alt = text[text.index("`alternatives`: an array over every arm considered"):]
    listed = alt[alt.index("`{") + 2:alt.index("}`")]   # {variant, placement, ..., rank (int, ...)}
    alternative_fields = [f.strip() for f in re.sub(r"\([^)]*\)", "", listed).split(",")]
    choice = policy.choose(model, _request(model.name, constraints={"max_latency_ms": 1e-6}), model.arms, None, 0.0)
    assert choice.arm is None and choice.closest in model.arms and choice.code == "infeasible"
    assert list(choice.predicted) == predicted_fields
    assert list(choice.violations) == ["max_latency_ms"] and set(choice.violations["max_latency_ms"]) == {
        "predicted", "bound", "by"}
    assert choice.predicted_met == {"max_latency_ms": False} and choice.feasible is False
    assert all(list(a) == alternative_fields for a in choice.alternatives)
    json.dumps([choice.predicted, choice.violations, choice.predicted_met, choice.alternatives])
    # the daemon's candidates (here: one arm, as its registry resolved a pin) are the only ones
    arm = model.arms[-1]
    pinned = policy.choose(model, _request(model.name, pin={"variant": arm.variant.name,
                                                            "placement": arm.placement.name}), [arm], None, 0.0)
    assert pinned.arm is arm and pinned.code == "pinned" and pinned.violations is None
    two = [a for a in model.arms if a.variant.name == arm.variant.name][:2]
    assert policy.choose(model, _request(model.name), two, None, 0.0).arm in two


def test_the_baseline_is_a_policy_like_the_others(served, tmp_path):
    from adaptd.daemon.config import Config

    registry, model = served
    config = Config.from_dict({"repository": str(tmp_path), "selector": {"policy": "most_accurate"}})
    policy = SelectorPolicy.from_config(config)
    policy.reset(registry)
    choice = policy.choose(model, _request(model.name, constraints={"latency_confidence": 0.999 - 0.009}),
                           model.arms, None, 0.0)
    best = max(a.accuracy or 0.0 for a in model.arms)
    assert choice.arm.accuracy == best and choice.code == "selected" and choice.alternatives is None
    assert choice.predicted["latency_confidence"] is None and choice.predicted["energy_bound_mj"] is None
    policy.observe(model, choice.arm, 5.0, None, True, 1.0, compute_ms=1.0)
    again = policy.choose(model, _request(model.name), model.arms, None, 2.0)
    assert again.arm is choice.arm and again.predicted["latency_ms"] == pytest.approx(5.0)


def test_each_measurement_lands_on_its_own_arm_and_a_reloads_on_the_same_names(served, tiny_repository):
    """``observe_many`` finds a measured arm's selector id by the arm itself for the registry the
    policy was reset on, and by its names for an arm of a registry a reload replaced (the same
    version served again): each measurement counts on its own arm and nowhere else."""
    from adaptd.daemon.selection import Observation

    registry, model = served
    policy = SelectorPolicy(SelectorConfig(), calibration=None)
    policy.reset(registry)
    counts = lambda: [policy.selector.cost_model.arm_stats(i)["count"] for i in range(policy.selector.n_arms)]  # noqa: E731
    before = counts()
    measured = [model.arms[0], model.arms[-1], model.arms[-1]]
    policy.observe_many([Observation(model, arm, 2.0, None, True, 1.0, 1.0) for arm in measured])
    ids = [policy.selector.arm_id(model.key, a.variant.name, a.placement.name) for a in measured]
    assert [n - b for n, b in zip(counts(), before)] == [ids.count(i) for i in range(policy.selector.n_arms)]
    reloaded = load_registry(tiny_repository[0], discover(PlacementsConfig()), generation=2)
    policy.reset(reloaded)
    before = counts()
    policy.observe_many([Observation(model, model.arms[0], 2.0, None, True, 3.0, 1.0)])   # the old registry's arm
    changed = [i for i, (n, b) in enumerate(zip(counts(), before)) if n != b]
    new_arm = reloaded.newest()[0].arms[0]
    assert changed == [policy.selector.arm_id(model.key, new_arm.variant.name, new_arm.placement.name)]
