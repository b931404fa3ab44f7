"""Fake sysfs power trees driven by a known power trace, standing in for hardware in tests and
benchmarks on machines without the sensors.

``FakeSysfs(root)`` lays out, under ``root``, exactly the files the sources read:

- ``add_tx2_iio()``: ``sys/bus/i2c/drivers/ina3221x/0-0040/iio:device0`` (VDD_SYS_GPU,
  VDD_SYS_SOC, VDD_4V0_WIFI) and ``0-0041/iio:device1`` (VDD_IN, VDD_SYS_CPU, VDD_SYS_DDR), with
  ``rail_name_N``, ``in_power{N}_input`` (mW), ``in_current{N}_input`` (mA),
  ``in_voltage{N}_input`` (mV), as the JetPack 4 ``ina3221x`` driver exposes them on a TX2;
- ``add_hwmon()``: ``sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3`` with ``in{N}_label``,
  ``in{N}_input`` (mV), ``curr{N}_input`` (mA), ``in{N}_enable``, and Orin's ``in7_label`` =
  ``sum of shunt voltages`` (JetPack 5+);
- ``add_rapl()``: ``sys/class/powercap/intel-rapl:0`` with ``name``, ``energy_uj`` and
  ``max_energy_range_uj`` (the counter wraps modulo the range), plus a ``intel-rapl:0:0`` core
  sub-domain.

A ``TraceWriter`` thread writes each rail's power ``trace(t_ns)`` (a function of the absolute
CLOCK_MONOTONIC time, mW) every ``1/hz`` seconds, in place (``pwrite`` at offset 0 then
``ftruncate``, so a reader with an open descriptor sees each new value, as with sysfs). RAPL
counters are written from the trace's exact integral, so they carry no discretisation error.
``wait_written(t_ns)`` blocks (on a condition, with a timeout) until a write at or after
``t_ns`` has happened. Values are integers, as the kernel writes them.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable


# -- traces: power (mW) as a function of absolute monotonic time (ns), with exact integrals --
@dataclass(frozen=True)
class Constant:
    mw: float

    def power_mw(self, t_ns: int) -> float:
        return self.mw

    def energy_mj(self, t0_ns: int, t1_ns: int) -> float:
        return self.mw * (t1_ns - t0_ns) / 1e9


@dataclass(frozen=True)
class Sine:
    """``base + amp * sin(2 pi (t - origin) / period)`` after ``origin_ns``; ``before_mw`` before."""

    origin_ns: int
    base_mw: float
    amp_mw: float
    period_s: float
    before_mw: float

    def power_mw(self, t_ns: int) -> float:
        if t_ns < self.origin_ns:
            return self.before_mw
        x = (t_ns - self.origin_ns) / 1e9
        return self.base_mw + self.amp_mw * math.sin(2 * math.pi * x / self.period_s)

    def _prim(self, t_ns: int) -> float:  # integral from origin, mJ
        if t_ns <= self.origin_ns:
            return self.before_mw * (t_ns - self.origin_ns) / 1e9
        x = (t_ns - self.origin_ns) / 1e9
        w = 2 * math.pi / self.period_s
        return self.base_mw * x + self.amp_mw * (1 - math.cos(w * x)) / w

    def energy_mj(self, t0_ns: int, t1_ns: int) -> float:
        return self._prim(t1_ns) - self._prim(t0_ns)


@dataclass(frozen=True)
class Ramp:
    """``start + slope * (t - origin)`` (mW, mW/s) after ``origin_ns``; ``before_mw`` before."""

    origin_ns: int
    start_mw: float
    slope_mw_per_s: float
    before_mw: float

    def power_mw(self, t_ns: int) -> float:
        if t_ns < self.origin_ns:
            return self.before_mw
        return self.start_mw + self.slope_mw_per_s * (t_ns - self.origin_ns) / 1e9

    def _prim(self, t_ns: int) -> float:
        if t_ns <= self.origin_ns:
            return self.before_mw * (t_ns - self.origin_ns) / 1e9
        x = (t_ns - self.origin_ns) / 1e9
        return self.start_mw * x + 0.5 * self.slope_mw_per_s * x * x

    def energy_mj(self, t0_ns: int, t1_ns: int) -> float:
        return self._prim(t1_ns) - self._prim(t0_ns)


class _File:
    """A fake sysfs attribute rewritten in place."""

    def __init__(self, path: str, value: int | str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        with open(path, "w") as f:
            f.write(f"{value}\n")
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, value: int) -> None:
        data = b"%d\n" % value
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))

    def close(self) -> None:
        os.close(self.fd)


def _static(path: str, value: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"{value}\n")


class FakeSysfs:
    TX2_IIO = {("0-0040", 0): ("VDD_SYS_GPU", "VDD_SYS_SOC", "VDD_4V0_WIFI"),
               ("0-0041", 1): ("VDD_IN", "VDD_SYS_CPU", "VDD_SYS_DDR")}

    def __init__(self, root: str) -> None:
        self.root = str(root)
        # rail -> writer(power_mw, energy_mj_total)
        self._rails: dict[str, Callable[[float, float], None]] = {}
        self._files: list[_File] = []

    def _p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def rails(self) -> list[str]:
        return list(self._rails)

    def add_tx2_iio(self, voltage_mv: int = 19000, initial_mw: float = 1000.0) -> None:
        for (addr, dev), names in self.TX2_IIO.items():
            d = self._p("sys/bus/i2c/drivers/ina3221x", addr, f"iio:device{dev}")
            for n, name in enumerate(names):
                _static(os.path.join(d, f"rail_name_{n}"), name)
                fp = _File(os.path.join(d, f"in_power{n}_input"), int(initial_mw))
                fc = _File(os.path.join(d, f"in_current{n}_input"), int(initial_mw * 1000 / voltage_mv))
                _File(os.path.join(d, f"in_voltage{n}_input"), voltage_mv).close()
                self._files += [fp, fc]

                def w(mw: float, _mj: float, fp=fp, fc=fc) -> None:
                    fp.write(int(round(mw)))
                    fc.write(int(round(mw * 1000 / voltage_mv)))

                self._rails[name] = w

    def add_hwmon(self, labels=("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"), voltage_mv: int = 5000,
                  initial_mw: float = 1000.0) -> None:
        d = self._p("sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3")
        _static(os.path.join(d, "name"), "ina3221")
        for n, label in enumerate(labels, start=1):
            _static(os.path.join(d, f"in{n}_label"), label)
            _static(os.path.join(d, f"in{n}_enable"), "1")
            _File(os.path.join(d, f"in{n}_input"), voltage_mv).close()
            fc = _File(os.path.join(d, f"curr{n}_input"), int(initial_mw * 1000 / voltage_mv))
            self._files.append(fc)

            def w(mw: float, _mj: float, fc=fc) -> None:
                fc.write(int(round(mw * 1000 / voltage_mv)))

            self._rails[label] = w
        _static(os.path.join(d, "in7_label"), "sum of shunt voltages")
        _File(os.path.join(d, "in7_input"), 0).close()

    def add_rapl(self, max_range_uj: int = 262_143_328_850, start_uj: int = 0, name: str = "package-0") -> None:
        d = self._p("sys/class/powercap/intel-rapl:0")
        _static(os.path.join(d, "name"), name)
        _static(os.path.join(d, "max_energy_range_uj"), str(max_range_uj))
        _static(os.path.join(d, "enabled"), "1")
        fe = _File(os.path.join(d, "energy_uj"), start_uj % max_range_uj)
        self._files.append(fe)
        sub = self._p("sys/class/powercap/intel-rapl:0:0")
        _static(os.path.join(sub, "name"), "core")
        _static(os.path.join(sub, "max_energy_range_uj"), str(max_range_uj))
        _File(os.path.join(sub, "energy_uj"), 0).close()

        def w(_mw: float, mj: float) -> None:
            fe.write(int(start_uj + mj * 1000) % max_range_uj)

        self._rails[name] = w

    def add_counter_file(self, rail: str, path: str, scale: float = 1.0) -> None:
        """A plain file holding ``int(cumulative energy mJ x scale)`` for ``rail`` (e.g. what a
        fake NVML module reads as its total-energy counter)."""
        f = _File(path, 0)
        self._files.append(f)
        self._rails[rail] = lambda _mw, mj: f.write(int(mj * scale))

    def add_power_file(self, rail: str, path: str) -> None:
        """A plain file holding ``int(power mW)`` for ``rail`` (a fake NVML power reading)."""
        f = _File(path, 0)
        self._files.append(f)
        self._rails[rail] = lambda mw, _mj: f.write(int(round(mw)))

    def write(self, rail: str, power_mw: float, energy_mj: float = 0.0) -> None:
        self._rails[rail](power_mw, energy_mj)

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []


class TraceWriter:
    """Thread writing ``traces[rail].power_mw(now)`` (and the exact cumulative energy from
    ``t_base_ns`` for counter rails) into a ``FakeSysfs`` every ``1/hz`` s."""

    def __init__(self, fake: FakeSysfs, traces: dict, hz: float = 2000.0) -> None:
        self.fake = fake
        self.traces = dict(traces)
        self.period_s = 1.0 / hz
        self.t_base_ns = time.monotonic_ns()
        self.last_write_ns = 0
        self.writes = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-sysfs-writer", daemon=True)

    def set_trace(self, rail: str, trace) -> None:
        with self._cond:
            self.traces[rail] = trace

    def start(self) -> "TraceWriter":
        self._write_once()
        self._thread.start()
        return self

    def _write_once(self) -> None:
        with self._cond:
            t = time.monotonic_ns()
            for rail, tr in self.traces.items():
                self.fake.write(rail, tr.power_mw(t), tr.energy_mj(self.t_base_ns, t))
            self.last_write_ns = t
            self.writes += 1
            self._cond.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._write_once()
            time.sleep(self.period_s)  # pacing only; readers synchronise with wait_written

    def wait_written(self, t_ns: int, timeout_s: float = 10.0) -> bool:
        """Block until the writer has written at or after ``t_ns``; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.last_write_ns >= t_ns, timeout=timeout_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
