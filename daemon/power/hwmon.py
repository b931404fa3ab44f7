"""Jetson INA3221 power monitors through the mainline hwmon driver (``ina3221``, JetPack 5+).

Layout read: ``<root>/sys/bus/i2c/drivers/ina3221/<bus>-<addr>/hwmon/hwmon<H>/`` holding, per
channel N (1..3), ``in{N}_label`` (e.g. ``VDD_IN``, ``VDD_CPU_GPU_CV``, ``VDD_SOC``),
``in{N}_input`` (bus voltage, mV) and ``curr{N}_input`` (mA); optional ``in{N}_enable`` (0 =
channel disabled). Power = mV x mA / 1000 -> mW, as jtop computes it. Labels such as
``sum of shunt voltages`` (Orin's in7) have no current file and are skipped.

Contract: see ``source.PowerSource``; two ``pread`` calls a rail a sample.
"""
from __future__ import annotations

import glob
import os
import re

import numpy as np

from .source import PowerSource, Rail, SysfsFile, classify_label, read_text, sampled_rails, sys_path

SENSOR = "hwmon"
DRIVER_DIR = "sys/bus/i2c/drivers/ina3221"


class HwmonSource(PowerSource):
    sensor = SENSOR
    spec_key = "channels"

    def __init__(self, channels: list[dict]) -> None:
        # channel: {"label", "role", "voltage": path (mV), "current": path (mA)}
        self._channels = channels
        self._rails = tuple(Rail(c["label"], SENSOR, c["role"]) for c in channels)
        self._files: list[tuple[SysfsFile, SysfsFile]] = []

    def open(self) -> None:
        self._files = []
        for c in self._channels:
            v, i = SysfsFile(c["voltage"]), SysfsFile(c["current"])
            v.open()
            i.open()
            self._files.append((v, i))

    def read(self, out: np.ndarray) -> None:
        for k, (v, i) in enumerate(self._files):
            mv, ma = v.read_int(), i.read_int()
            out[k] = np.nan if mv is None or ma is None else mv * ma / 1000.0

    def close(self) -> None:
        for v, i in self._files:
            v.close()
            i.close()
        self._files = []


_LABEL = re.compile(r"in(\d+)_label$")


def discover(root: str) -> tuple[HwmonSource | None, str]:
    base = sys_path(root, DRIVER_DIR)
    if not os.path.isdir(base):
        return None, f"no {os.path.join('/', DRIVER_DIR)}"
    channels: list[dict] = []
    for hw in sorted(glob.glob(os.path.join(base, "*", "hwmon", "hwmon*"))):
        for label_file in sorted(glob.glob(os.path.join(hw, "in*_label"))):
            m = _LABEL.search(label_file)
            label = read_text(label_file)
            if not m or not label or label.lower().startswith("sum of"):
                continue
            n = m.group(1)
            if read_text(os.path.join(hw, f"in{n}_enable")) == "0":
                continue
            volt, curr = os.path.join(hw, f"in{n}_input"), os.path.join(hw, f"curr{n}_input")
            if not (os.access(volt, os.R_OK) and os.access(curr, os.R_OK)):
                continue
            channels.append({"label": label, "role": classify_label(label), "voltage": volt, "current": curr})
    if not channels:
        return None, f"{os.path.join('/', DRIVER_DIR)} has no readable labelled channels"
    rails = [Rail(c["label"], SENSOR, c["role"]) for c in channels]
    keep = {r.name for r in sampled_rails(rails)}
    if not keep:
        return None, "ina3221 hwmon channels found but none feeds the CPU, GPU or board input"
    skipped = [c["label"] for c in channels if c["label"] not in keep]
    reason = f"not sampled (unused by attribution): {', '.join(skipped)}" if skipped else ""
    return HwmonSource([c for c in channels if c["label"] in keep]), reason
