"""What the daemon says about itself: the CLI's tables for `stats`, `models` and `explain`, and the
registry's account of variants that no placement can run (real manifests of the tiny model)."""

from __future__ import annotations

import logging

import pytest

from adaptd.clients.client import Explanation
from adaptd.cli.commands import arm_energy_kind, describe_explanation, describe_models, describe_stats
from adaptd.daemon.placements import Placement
from adaptd.daemon.registry import load_registry, unservable_reason

LITERT = [Placement("cpu:0", "cpu", "litert", (0,), 1, None, "one core"),
          Placement("cpu:1", "cpu", "litert", (1,), 1, None, "one core")]
TF_CPU = Placement("tf:cpu", "cpu", "tensorflow", (0, 1), 2, "/CPU:0", "TensorFlow on the CPU")


def arm(variant: str, *, ran: bool, estimated: bool | None, source: str | None = None) -> dict:
    series = ({"last": 2.0, "ewma": 2.0, "p50": 2.0, "p95": 2.5, "p99": 2.6} if ran
              else {"last": None, "ewma": None, "p50": None, "p95": None, "p99": None})
    return {"model": "m", "version": "1", "variant": variant, "placement": "cpu:0", "count": 3 if ran else 0,
            "errors": 0, "loaded": ran, "latency_ms": series, "energy_mj": series,
            "energy_source": source, "energy_estimated": estimated, "age_s": 1.0 if ran else None}


def energy_column(text: str, variant: str) -> str:
    row = next(line.split() for line in text.splitlines() if line.split()[1:2] == [variant])
    return row[12]


def test_an_arm_without_an_energy_figure_is_labelled_na_not_measured():
    # What the daemon's stats snapshot holds for an arm that never ran: energy_estimated False.
    never = arm("never", ran=False, estimated=False)
    est = arm("est", ran=True, estimated=True, source="estimated:generic")
    meas = arm("meas", ran=True, estimated=False, source="ina3221:VDD_IN")
    assert [arm_energy_kind(a) for a in (never, est, meas)] == ["n/a", "estimated", "measured"]
    # the source alone marks an estimate, for a reply that leaves the flag out
    assert arm_energy_kind(arm("src", ran=True, estimated=None, source="estimated:tx2")) == "estimated"
    text = describe_stats({"arms": [never, est, meas], "energy": {"source": "estimated:generic", "estimated": True}})
    assert energy_column(text, "never") == "n/a"
    assert energy_column(text, "est") == "estimated"
    assert energy_column(text, "meas") == "measured"
    assert "energy 'n/a'" in text and "ESTIMATED" in text
    assert "n/a" not in describe_stats({"arms": [est]})


def test_unservable_reason_says_what_to_change():
    with_tf = unservable_reason("tensorflow", LITERT, tensorflow_installed=True)
    without_tf = unservable_reason("tensorflow", LITERT, tensorflow_installed=False)
    for text in (with_tf, without_tf):
        assert "no placement runs its runtime 'tensorflow'" in text and "cpu:0, cpu:1" in text and "litert" in text
    assert "not installed" in without_tf and "[placements] tensorflow" not in without_tf
    assert "[placements] tensorflow" in with_tf and "not installed" not in with_tf


def test_models_and_explain_tables_show_unservable_variants():
    body = {"models": [{"name": "m", "version": "1", "variants": [
        {"name": "float32", "kind": "float32", "runtime": "litert", "servable": True, "unservable_reason": None},
        {"name": "float32_tf", "kind": "float32_tf", "runtime": "tensorflow", "servable": False,
         "unservable_reason": "no placement runs its runtime 'tensorflow'"},
        {"name": "old", "kind": "float16", "runtime": "litert"},   # a daemon predating the field
    ]}]}
    text = describe_models(body)
    served = {line.split()[2]: line.split()[-1] for line in text.splitlines()[2:5]}
    assert served == {"float32": "yes", "float32_tf": "below)", "old": "yes"}
    assert "m:1 float32_tf is not served: no placement runs its runtime 'tensorflow'" in text
    e = Explanation.from_body({"feasible": True, "variant": "float32", "placement": "cpu:0",
                               "reason": {"code": "selected", "text": "least latency"}, "alternatives": [],
                               "unservable": [{"variant": "float32_tf", "reason": "no placement runs it"}]})
    assert "not considered: float32_tf: no placement runs it" in describe_explanation(e, "m")


@pytest.mark.slow
def test_the_registry_knows_which_variants_no_placement_runs(tiny_repository, caplog):
    repo, model, version = tiny_repository
    with caplog.at_level(logging.WARNING, logger="adaptd.registry"):
        reg = load_registry(repo, LITERT, generation=1)
    entry = reg.get(model, version)
    assert set(entry.unservable) == {"float32_tf"}
    assert all(a.variant.name != "float32_tf" for a in entry.arms)
    warned = [r.getMessage() for r in caplog.records if "will not be served" in r.getMessage()]
    assert len(warned) == 1 and "float32_tf" in warned[0]
    listed = {v["name"]: v for v in entry.describe([version])["variants"]}
    assert listed["float32_tf"]["servable"] is False
    assert listed["float32_tf"]["unservable_reason"] == entry.unservable["float32_tf"]
    assert entry.describe_unservable() == [{"variant": "float32_tf", "reason": entry.unservable["float32_tf"]}]
    assert "cannot be served" in entry.no_arm_reason("float32_tf", None)
    assert "runtimes differ" in entry.no_arm_reason("float32_tf", "cpu:0")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="adaptd.registry"):
        with_tf = load_registry(repo, [*LITERT, TF_CPU], generation=2)
    assert with_tf.get(model, version).unservable == {}
    assert not [r for r in caplog.records if "will not be served" in r.getMessage()]
    assert all(v["servable"] for v in with_tf.get(model, version).describe([version])["variants"])
