"""NVML source against a fake ``pynvml`` module (nvidia-ml-py's import name).

The fake module stands in for an NVIDIA driver and GPU this machine lacks: it serves
``nvmlDeviceGetTotalEnergyConsumption`` (mJ) or ``nvmlDeviceGetPowerUsage`` (mW) from files a
writer thread fills from a known trace. It is put on ``sys.path`` here and on ``PYTHONPATH`` for
the sampler process.
"""
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest

from adaptd.daemon.power import EnergyMeter, PowerConfig
from adaptd.daemon.power.testing import FakeSysfs, Sine, TraceWriter

GPU = SimpleNamespace(name="gpu0", kind="gpu", cores=(0,), threads=1)
MS, S = 1_000_000, 1_000_000_000

FAKE = textwrap.dedent('''
    import os
    class NVMLError(Exception):
        pass
    def nvmlInit(): pass
    def nvmlShutdown(): pass
    def nvmlDeviceGetCount(): return 1
    def nvmlDeviceGetHandleByIndex(i): return i
    def _read(name):
        with open(os.path.join(os.environ["FAKE_NVML_DIR"], name)) as f:
            return int(f.read())
    def nvmlDeviceGetTotalEnergyConsumption(h):
        if os.environ.get("FAKE_NVML_NO_ENERGY"):
            raise NVMLError("Not Supported")
        return _read("energy_mj")
    def nvmlDeviceGetPowerUsage(h):
        return _read("power_mw")
''')


@pytest.fixture
def fake_nvml(tmp_path, monkeypatch):
    mod = tmp_path / "mod"
    mod.mkdir()
    (mod / "pynvml.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(mod))
    monkeypatch.setenv("PYTHONPATH", str(mod))
    monkeypatch.setenv("FAKE_NVML_DIR", str(tmp_path))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    yield tmp_path
    sys.modules.pop("pynvml", None)


@pytest.mark.parametrize("counter", [True, False], ids=["total-energy", "power-usage"])
def test_nvml_gpu_energy_within_2_percent(fake_nvml, monkeypatch, counter):
    """The fake pynvml stands in for an NVIDIA GPU and driver this machine lacks."""
    if not counter:
        monkeypatch.setenv("FAKE_NVML_NO_ENERGY", "1")
    fake = FakeSysfs(fake_nvml / "sysfs")
    fake.add_counter_file("gpu0", str(fake_nvml / "energy_mj"))
    fake.add_power_file("gpu0p", str(fake_nvml / "power_mw"))
    origin = time.monotonic_ns() + int(1.5 * S)
    trace = Sine(origin, base_mw=60000, amp_mw=20000, period_s=0.3, before_mw=20000)
    writer = TraceWriter(fake, {"gpu0": trace, "gpu0p": trace}).start()
    m = EnergyMeter.from_config(PowerConfig(source="nvml", sysfs_root=str(fake_nvml / "sysfs"),
                                            idle_window_s=0.3, idle_remeasure_s=0))
    try:
        m.start()
        d = m.describe()
        assert d["rails"][0]["kind"] == ("counter" if counter else "power")
        assert d["idle_mw"]["gpu0"] == pytest.approx(20000, rel=0.01)
        t0 = origin + 10 * MS
        t1 = t0 + 600 * MS
        assert writer.wait_written(t1 + 2 * MS) and m.wait_for_sample(t1)
        r = m.attribute(GPU, t0, t1, cpu_time_s=0.01)
        # CPU part has no sensor here: estimated (generic profile) -> labelled estimated
        assert r.estimated and r.source == "estimated:generic+measured:nvml:gpu0"
        est_cpu = 0.01 * 1500.0
        exp = trace.energy_mj(t0, t1) - 20000 * 0.6
        assert r.energy_mj - est_cpu == pytest.approx(exp, rel=0.02)
    finally:
        m.close()
        writer.stop()
        fake.close()
