"""The estimated source: what this machine (no power sensors) uses, and every figure it
produces must say ``estimated``. The daemon-level end-to-end check (replies and stats) belongs
to the daemon's tests; here the meter is driven the way the daemon drives it."""
import os
import time
from types import SimpleNamespace

import pytest

from adaptd.daemon.power import EnergyMeter, EnergyReading, PowerConfig, PowerProfile

A57 = SimpleNamespace(name="a57x2", kind="cpu", cores=(0, 3), threads=2)
DENVER = SimpleNamespace(name="denver", kind="cpu", cores=(1,), threads=1)
GPU = SimpleNamespace(name="gpu", kind="gpu", cores=(0,), threads=1)


def _meter(tmp_path, profile="auto"):
    m = EnergyMeter.from_config(PowerConfig(source="estimated", profile=profile, sysfs_root=str(tmp_path)))
    m.start()
    return m


def test_estimated_readings_follow_the_tx2_profile_and_are_labelled(tmp_path):
    m = _meter(tmp_path, "tx2")
    try:
        r = m.attribute(A57, 0, 10_000_000, cpu_time_s=0.018)
        assert r == EnergyReading(pytest.approx(0.018 * 500.0), "estimated:tx2", True)
        r = m.attribute(DENVER, 0, 10_000_000, cpu_time_s=0.010)
        assert r.energy_mj == pytest.approx(9.0) and r.estimated
        r = m.attribute(GPU, 0, 4_000_000, cpu_time_s=0.001)
        assert r.energy_mj == pytest.approx(0.001 * 500.0 + 0.004 * 5000.0)
        assert r.source == "estimated:tx2" and r.estimated
    finally:
        m.close()


def test_a_placements_second_reading_is_its_first_ones_rule(tmp_path):
    """After a CPU placement's first estimate the meter keeps its power (the daemon asks once a
    request): the readings that follow are the same rule, per placement, and a GPU placement's
    still add the GPU's power; a negative CPU time still counts as none, a reversed span still
    raises."""
    m = _meter(tmp_path, "tx2")
    try:
        for _ in range(3):
            assert m.attribute(A57, 0, 10_000_000, cpu_time_s=0.018) == \
                EnergyReading(pytest.approx(0.018 * 500.0), "estimated:tx2", True)
            assert m.attribute(DENVER, 0, 10_000_000, cpu_time_s=0.010).energy_mj == pytest.approx(9.0)
            assert m.attribute(GPU, 0, 4_000_000, cpu_time_s=0.001).energy_mj == \
                pytest.approx(0.001 * 500.0 + 0.004 * 5000.0)
        assert m.attribute(DENVER, 0, 10, cpu_time_s=-1.0).energy_mj == 0.0
        with pytest.raises(ValueError):
            m.attribute(DENVER, 10, 0, cpu_time_s=0.001)
        # Another object under the same name on other cores (a reload's): its own power, not the
        # one kept for the first.
        moved = SimpleNamespace(name="denver", kind="cpu", cores=(0, 3), threads=1)
        assert m.attribute(moved, 0, 10_000_000, cpu_time_s=0.010).energy_mj == pytest.approx(0.010 * 500.0)
        assert m.attribute(DENVER, 0, 10_000_000, cpu_time_s=0.010).energy_mj == pytest.approx(9.0)
    finally:
        m.close()


def test_estimated_meter_describes_itself_as_estimated(tmp_path):
    m = _meter(tmp_path)
    try:
        d = m.describe()
        assert d["source"] == "estimated:generic" and d["estimated"] is True
        assert d["profile"] == "generic" and d["profile_approximate"] is True
        assert d["roles"] == {"cpu": "estimated:generic", "gpu": "estimated:generic"}
        assert d["rails"] == [] and d["sampler_cpu_share"] == 0.0 and d["sample_hz"] == 0.0
    finally:
        m.close()


def test_this_machine_in_auto_mode_labels_everything_estimated():
    """On the development machine (no INA3221, no readable RAPL, no NVML) auto = estimated.
    Skipped where a real sensor exists (then the sensor tests' trees are what stands in)."""
    m = EnergyMeter.from_config(PowerConfig(idle_window_s=0.1))
    if m.detection.sources:
        m.close()
        pytest.skip(f"this machine has a power sensor: {m.describe()['source']}")
    m.start()
    try:
        t0 = time.monotonic_ns()
        c0 = os.times()
        sum(i * i for i in range(200_000))  # some real CPU work, timed like the worker does
        c1 = os.times()
        t1 = time.monotonic_ns()
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        for p in (A57, GPU):
            r = m.attribute(p, t0, t1, cpu)
            assert r.estimated and r.source.startswith("estimated:") and r.energy_mj >= 0
        d = m.describe()
        assert d["estimated"] and d["source"].startswith("estimated:")
    finally:
        m.close()


def test_estimated_attribute_never_blocks(tmp_path):
    m = _meter(tmp_path)
    try:
        t = time.perf_counter()
        for _ in range(1000):
            m.attribute(A57, 0, 1_000_000, 0.001)
        assert (time.perf_counter() - t) / 1000 < 0.001
    finally:
        m.close()


def test_unknown_cores_use_the_default_power(tmp_path):
    prof = PowerProfile.load("tx2")
    assert prof.busy_core_mw((7,)) == prof.default_busy_core_mw
    assert prof.busy_core_mw(()) == prof.default_busy_core_mw
