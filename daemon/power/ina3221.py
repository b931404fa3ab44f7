"""Jetson INA3221 power monitors through the JetPack 4 iio driver (``ina3221x``), as on the TX2.

Layout read (as NVIDIA documents it for the Jetson TX2, and as the tools Jetson users trust read it, e.g. jtop, energymon):
``<root>/sys/bus/i2c/drivers/ina3221x/<bus>-<addr>/iio:device<D>/`` holding, per channel N,
``rail_name_N`` (label, e.g. ``VDD_SYS_GPU``), ``in_power{N}_input`` (mW),
``in_current{N}_input`` (mA) and ``in_voltage{N}_input`` (mV). On the TX2: 0-0040 = VDD_SYS_GPU,
VDD_SYS_SOC, VDD_4V0_WIFI; 0-0041 = VDD_IN, VDD_SYS_CPU, VDD_SYS_DDR.

Contract: see ``source.PowerSource``. Power is read from ``in_power{N}_input``; where a kernel
lacks that file, power = voltage x current / 1000 (mV x mA -> mW). Each read is one ``pread`` per
file (an I2C transaction on the board). Only rails that feed the CPU or GPU are sampled (see
``source.sampled_rails``); the others are listed in ``discover``'s reason.
"""
from __future__ import annotations

import glob
import os
import re

import numpy as np

from .source import PowerSource, Rail, SysfsFile, classify_label, read_text, sampled_rails, sys_path

SENSOR = "ina3221"
DRIVER_DIR = "sys/bus/i2c/drivers/ina3221x"


class Ina3221Source(PowerSource):
    sensor = SENSOR
    spec_key = "channels"

    def __init__(self, channels: list[dict]) -> None:
        # channel: {"label", "role", "power": path|None, "current": path|None, "voltage": path|None}
        self._channels = channels
        self._rails = tuple(Rail(c["label"], SENSOR, c["role"]) for c in channels)
        self._files: list[tuple[SysfsFile | None, SysfsFile | None, SysfsFile | None]] = []

    def open(self) -> None:
        self._files = []
        for c in self._channels:
            files = tuple(SysfsFile(c[k]) if c.get(k) else None for k in ("power", "current", "voltage"))
            for f in files:
                if f is not None:
                    f.open()
            self._files.append(files)  # type: ignore[arg-type]

    def read(self, out: np.ndarray) -> None:
        for i, (p, c, v) in enumerate(self._files):
            if p is not None:
                mw = p.read_int()
                out[i] = np.nan if mw is None else mw
            else:
                ma = c.read_int() if c is not None else None
                mv = v.read_int() if v is not None else None
                out[i] = np.nan if ma is None or mv is None else ma * mv / 1000.0

    def close(self) -> None:
        for files in self._files:
            for f in files:
                if f is not None:
                    f.close()
        self._files = []


_RAIL_NAME = re.compile(r"rail_name_(\d+)$")


def discover(root: str) -> tuple[Ina3221Source | None, str]:
    base = sys_path(root, DRIVER_DIR)
    if not os.path.isdir(base):
        return None, f"no {os.path.join('/', DRIVER_DIR)}"
    channels: list[dict] = []
    for dev in sorted(glob.glob(os.path.join(base, "*", "iio:device*"))):
        for name_file in sorted(glob.glob(os.path.join(dev, "rail_name_*"))):
            m = _RAIL_NAME.search(name_file)
            label = read_text(name_file)
            if not m or not label or label.upper() in ("NC", "UNUSED"):
                continue
            n = m.group(1)
            paths = {
                "power": os.path.join(dev, f"in_power{n}_input"),
                "current": os.path.join(dev, f"in_current{n}_input"),
                "voltage": os.path.join(dev, f"in_voltage{n}_input"),
            }
            paths = {k: (p if os.access(p, os.R_OK) else None) for k, p in paths.items()}
            if paths["power"] is None and (paths["current"] is None or paths["voltage"] is None):
                continue
            channels.append({"label": label, "role": classify_label(label), **paths})
    if not channels:
        return None, f"{os.path.join('/', DRIVER_DIR)} has no readable labelled rails"
    rails = [Rail(c["label"], SENSOR, c["role"]) for c in channels]
    keep = {r.name for r in sampled_rails(rails)}
    if not keep:
        return None, "ina3221x rails found but none feeds the CPU, GPU or board input"
    skipped = [c["label"] for c in channels if c["label"] not in keep]
    chosen = [c for c in channels if c["label"] in keep]
    reason = f"not sampled (unused by attribution): {', '.join(skipped)}" if skipped else ""
    return Ina3221Source(chosen), reason
