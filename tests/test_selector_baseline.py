"""The baseline policy (adaptd.selector.MostAccurate) decides with the request's rules and the
kernel like the selector does."""

from __future__ import annotations

import pytest
from adaptd.selector import ArmSpec, MostAccurate, Request, UnknownVariantError

ARMS = [ArmSpec("m", "f32", "gpu:0", 0.95, size_bytes=400, manifest_latency_ms=2.0),
        ArmSpec("m", "f32", "cpu:0", 0.95, size_bytes=400, manifest_latency_ms=2.0),
        ArmSpec("m", "f16", "cpu:0", 0.95, size_bytes=200, manifest_latency_ms=2.5),
        ArmSpec("m", "f16", "gpu:0", 0.95, size_bytes=200, manifest_latency_ms=2.5),
        ArmSpec("m", "i8", "cpu:0", 0.90, size_bytes=100, manifest_latency_ms=1.0),
        ArmSpec("m", "zoo", "cpu:0", None, size_bytes=10, manifest_latency_ms=0.5)]


def test_the_most_accurate_then_smallest_variant_on_the_first_placement_given():
    b = MostAccurate(ARMS, ["gpu:0", "cpu:0"])
    d = b.choose(Request("m", max_latency_ms=2.6), 0.0)
    assert (d.code, d.variant, d.placement) == ("selected", "f16", "gpu:0")
    assert d.predicted.latency_ms == d.predicted.latency_bound_ms == 2.5 and d.predicted.latency_confidence is None
    assert d.met.max_latency_ms is True and d.feasible
    assert MostAccurate(ARMS, ["cpu:0", "gpu:0"]).choose(Request("m"), 0.0).placement == "cpu:0"
    # candidates restrict, pins make it "pinned"; nothing is rejected, whatever the bounds
    i8 = b.arm_id("m", "i8", "cpu:0")
    d = b.choose(Request("m", min_accuracy=0.99, variant="i8", placement="cpu:0"), 0.0, candidates=[i8])
    assert (d.code, d.variant, d.arm_id) == ("pinned", "i8", i8) and not d.feasible
    assert [v.constraint for v in d.violations] == ["min_accuracy"]
    with pytest.raises(UnknownVariantError):
        b.choose(Request("m", variant="nope"), 0.0)


def test_the_baseline_learns_an_average_latency_and_knows_no_energy():
    b = MostAccurate(ARMS, ["cpu:0", "gpu:0"])
    a = b.arm_id("m", "f16", "cpu:0")
    b.update(a, 10.0, 1.0, True, 0.0)
    b.update(a, 20.0, None, True, 0.1)
    d = b.choose(Request("m", max_energy_mj=5.0, latency_confidence=0.998), 0.0)   # above any kept level: ignored
    assert d.arm_id == a and d.predicted.latency_ms == pytest.approx(12.0)
    assert d.predicted.energy_mj is None and d.met.max_energy_mj is False   # unknown energy meets no bound
