"""PowerConfig validation, profiles, and auto-detection of sources."""
import pytest

from adaptd.daemon.power import EnergyMeter, PowerConfig, PowerProfile, PowerSourceUnavailable
from adaptd.daemon.power.detect import detect
from adaptd.daemon.power.estimated import detect_profile
from adaptd.daemon.power.source import classify_label
from adaptd.daemon.power.testing import FakeSysfs


def test_defaults_match_the_contract():
    c = PowerConfig()
    assert (c.source, c.sample_hz, c.idle_window_s, c.idle_remeasure_s, c.profile, c.sysfs_root, c.ring_seconds) == (
        "auto", 1000.0, 1.0, 300.0, "auto", "/", 10.0)
    assert PowerConfig.from_dict({}) == c
    assert PowerConfig.from_dict({"source": "rapl", "sample_hz": 100}).sample_hz == 100.0


@pytest.mark.parametrize("d, needle", [
    ({"sorce": "auto"}, "unknown key(s) in [power]: sorce"),
    ({"source": "ina219"}, "power.source must be one of"),
    ({"sample_hz": 2000}, "power.sample_hz must be in [1, 1000]"),
    ({"sample_hz": 0}, "power.sample_hz"),
    ({"sample_hz": "fast"}, "power.sample_hz must be a number"),
    ({"sample_hz": True}, "power.sample_hz must be a number"),
    ({"idle_remeasure_s": -1}, "power.idle_remeasure_s"),
    ({"ring_seconds": 0.5, "idle_window_s": 1.0}, "ring_seconds"),
    ({"profile": 3}, "power.profile must be a string"),
])
def test_bad_config_is_a_clear_value_error(d, needle):
    with pytest.raises(ValueError) as e:
        PowerConfig.from_dict(d)
    assert needle in str(e.value)


def test_builtin_profiles_load_and_estimate():
    tx2 = PowerProfile.load("tx2")
    assert tx2.name == "tx2" and tx2.approximate
    assert tx2.busy_core_mw((0, 3)) == 500.0  # A57 cluster
    assert tx2.busy_core_mw((1, 2)) == 900.0  # Denver cluster
    assert tx2.cpu_energy_mj((0,), 0.010) == pytest.approx(5.0)
    assert tx2.gpu_energy_mj(0.004) == pytest.approx(20.0)
    assert PowerProfile.load("generic").name == "generic"


def test_profile_from_path_and_bad_profile(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('[profile]\nname = "mine"\n[cpu]\ndefault_busy_core_mw = 10\n')
    assert PowerProfile.load(str(p)).cpu_energy_mj((), 2.0) == 20.0
    p.write_text('[profile]\nname = "mine"\n[cpu]\ndefault_busy_core_mw = -1\n')
    with pytest.raises(ValueError, match="default_busy_core_mw"):
        PowerProfile.load(str(p))
    with pytest.raises(ValueError, match="neither"):
        PowerProfile.load(str(tmp_path / "absent.toml"))


def test_profile_auto_detects_a_tx2_device_tree(tmp_path):
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("quill\x00")
    assert detect_profile(str(tmp_path)) == "tx2"
    assert detect_profile(str(tmp_path / "nothing")) == "generic"


@pytest.mark.parametrize("label, role", [
    ("VDD_SYS_CPU", "cpu"), ("VDD_SYS_GPU", "gpu"), ("VDD_IN", "board"), ("VDD_SYS_DDR", "other"),
    ("VDD_CPU_GPU_CV", "cpu+gpu"), ("POM_5V_CPU", "cpu"), ("POM_5V_IN", "board"), ("VDD_GPU_SOC", "gpu"),
])
def test_jetson_rail_labels_map_to_roles(label, role):
    assert classify_label(label) == role


def test_tx2_iio_tree_wins_over_estimated(tmp_path):
    """The fake iio tree stands in for a TX2's INA3221 monitors, which this machine lacks."""
    fake = FakeSysfs(tmp_path)
    fake.add_tx2_iio()
    fake.add_rapl()
    d = detect(PowerConfig(sysfs_root=str(tmp_path)))
    assert [s.sensor for s in d.sources] == ["ina3221"]
    assert [d.rails[i].name for i in d.cpu_rails] == ["VDD_SYS_CPU"]
    assert [d.rails[i].name for i in d.gpu_rails] == ["VDD_SYS_GPU"]
    assert "better source" in d.notes["rapl"]
    assert "VDD_SYS_DDR" in d.notes["ina3221"]  # listed as not sampled
    fake.close()


def test_hwmon_combined_rail_serves_both_roles(tmp_path):
    """The fake hwmon tree stands in for a JetPack 5 board's INA3221, which this machine lacks."""
    fake = FakeSysfs(tmp_path)
    fake.add_hwmon()
    d = detect(PowerConfig(sysfs_root=str(tmp_path)))
    assert [s.sensor for s in d.sources] == ["hwmon"]
    assert d.combined and [d.rails[i].name for i in d.cpu_rails] == ["VDD_CPU_GPU_CV"]
    assert all("sum of" not in r.name for r in d.rails)
    fake.close()


def test_forced_source_is_used_alone(tmp_path):
    """The fake trees stand in for INA3221 and RAPL hardware this machine lacks."""
    fake = FakeSysfs(tmp_path)
    fake.add_tx2_iio()
    fake.add_rapl()
    d = detect(PowerConfig(source="rapl", sysfs_root=str(tmp_path)))
    assert [s.sensor for s in d.sources] == ["rapl"] and not d.gpu_rails
    m = EnergyMeter.from_config(PowerConfig(source="estimated", sysfs_root=str(tmp_path)))
    assert m.describe()["source"] == "estimated:generic" and m.describe()["estimated"]
    fake.close()


@pytest.mark.parametrize("source", ["ina3221", "hwmon", "rapl", "nvml"])
def test_missing_forced_source_is_a_clear_error(tmp_path, source):
    with pytest.raises(PowerSourceUnavailable) as e:
        EnergyMeter.from_config(PowerConfig(source=source, sysfs_root=str(tmp_path)))
    msg = str(e.value)
    assert f"power.source = {source!r}" in msg and "not available" in msg


def test_this_machine_auto_detects_something_and_says_what():
    """On the development machine (no sensors) auto falls back to the estimate; on a board it
    finds the sensor. Either way describe() names the source and whether it is estimated."""
    m = EnergyMeter.from_config(PowerConfig())
    d = m.describe()
    assert d["estimated"] == d["source"].startswith("estimated")
    m.close()


def test_unreadable_rapl_counter_is_reported(tmp_path):
    """Stands in for Linux >= 5.10, where energy_uj is readable by root only."""
    import os

    fake = FakeSysfs(tmp_path)
    fake.add_rapl()
    path = tmp_path / "sys/class/powercap/intel-rapl:0/energy_uj"
    os.chmod(path, 0)
    if os.access(path, os.R_OK):  # running as root: permissions do not apply
        pytest.skip("root can read a mode-000 file")
    with pytest.raises(PowerSourceUnavailable, match="root only"):
        detect(PowerConfig(source="rapl", sysfs_root=str(tmp_path)))
    fake.close()


def test_the_runtimes_own_energy_is_its_cpu_time_at_the_profiles_core_power_and_estimated(tmp_path):
    """A request's runtime cost (PROTOCOL.md §5 ``runtime``): the daemon's CPU time on no
    placement's cores in particular, at the profile's default busy core, labelled estimated."""
    m = EnergyMeter.from_config(PowerConfig(source="estimated", sysfs_root=str(tmp_path)))
    profile = m.detection.profile
    energy_mj, label = m.runtime_energy_mj(0.002)
    assert energy_mj == pytest.approx(0.002 * profile.default_busy_core_mw) == pytest.approx(
        profile.cpu_energy_mj((), 0.002)) and energy_mj > 0
    assert label == profile.source_label and label.startswith("estimated")
    assert m.runtime_energy_mj(-1e-6)[0] == 0.0   # (a clock read out of order: nothing, not negative)
    m.close()
