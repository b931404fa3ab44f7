"""Linux RAPL energy counters through powercap (x86 Intel, and AMD on kernels that expose it).

Layout read: ``<root>/sys/class/powercap/intel-rapl:<P>/`` (top-level domains only; sub-domains
``intel-rapl:P:S`` such as ``core``/``uncore``/``dram`` are parts of their package and are not
summed again) holding ``name`` (``package-0``, ``psys``, ...), ``energy_uj`` (a counter in uJ)
and ``max_energy_range_uj`` (the counter wraps to 0 after this value). Since Linux 5.10
``energy_uj`` is readable by root only; an unreadable counter makes the source unavailable with
that reason.

Contract: see ``source.PowerSource``. Rails are ``Rail.kind == "counter"``: ``read`` returns the
unwrapped cumulative energy in mJ since ``open``. Unwrapping: a reading below the previous one
means exactly one wrap (delta += max_energy_range_uj); the sampler reads far faster than the
shortest wrap period (~60 s at 1 kW for a 2^36 uJ range), so at most one wrap lies between two
reads. A delta implying more than ``MAX_PLAUSIBLE_MW`` (a counter reset, not a wrap) is dropped
(NaN: the sampler holds the previous value). The result is therefore never negative or huge.
"""
from __future__ import annotations

import glob
import os
import re
import time

import numpy as np

from .source import PowerSource, Rail, read_text, sys_path

SENSOR = "rapl"
POWERCAP_DIR = "sys/class/powercap"
MAX_PLAUSIBLE_MW = 1_000_000.0  # 1 kW for one domain


def role_of(domain: str) -> str:
    if domain.startswith("package"):
        return "cpu"
    if domain == "psys":
        return "board"
    return "other"


class RaplSource(PowerSource):
    sensor = SENSOR
    spec_key = "domains"

    def __init__(self, domains: list[dict]) -> None:
        # domain: {"name", "energy": path, "max_range_uj": int}
        self._domains = domains
        self._rails = tuple(Rail(d["name"], SENSOR, role_of(d["name"]), "counter") for d in domains)
        self._fds: list[int] = []
        self._prev_uj: list[int | None] = []
        self._prev_t_ns: list[int] = []
        self._total_uj: list[int] = []

    def open(self) -> None:
        self._fds = [os.open(d["energy"], os.O_RDONLY | os.O_CLOEXEC) for d in self._domains]
        self._prev_uj = [None] * len(self._fds)
        self._prev_t_ns = [0] * len(self._fds)
        self._total_uj = [0] * len(self._fds)

    def read(self, out: np.ndarray) -> None:
        for i, fd in enumerate(self._fds):
            t_ns = time.monotonic_ns()
            try:
                cur = int(os.pread(fd, 64, 0).split(b"\n", 1)[0])
            except (OSError, ValueError):
                out[i] = np.nan
                continue
            prev = self._prev_uj[i]
            if prev is not None:
                delta = unwrap_delta_uj(prev, cur, self._domains[i]["max_range_uj"])
                dt_s = max(t_ns - self._prev_t_ns[i], 1) / 1e9
                if delta / 1000.0 > MAX_PLAUSIBLE_MW * dt_s + 1.0:
                    delta = None  # counter reset or garbage, not a wrap
                if delta is None:
                    self._prev_uj[i], self._prev_t_ns[i] = cur, t_ns
                    out[i] = np.nan
                    continue
                self._total_uj[i] += delta
            self._prev_uj[i], self._prev_t_ns[i] = cur, t_ns
            out[i] = self._total_uj[i] / 1000.0

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []


def unwrap_delta_uj(prev_uj: int, cur_uj: int, max_range_uj: int) -> int | None:
    """Energy between two counter readings, allowing one wrap at ``max_range_uj``; never < 0."""
    delta = cur_uj - prev_uj
    if delta < 0:
        if max_range_uj <= 0:
            return None
        delta += max_range_uj
        if delta < 0:  # reading above the declared range: not a wrap we understand
            return None
    return delta


_TOP = re.compile(r"intel-rapl:\d+$")


def discover(root: str) -> tuple[RaplSource | None, str]:
    base = sys_path(root, POWERCAP_DIR)
    if not os.path.isdir(base):
        return None, f"no {os.path.join('/', POWERCAP_DIR)}"
    domains: list[dict] = []
    problems: list[str] = []
    for d in sorted(glob.glob(os.path.join(base, "intel-rapl:*"))):
        if not _TOP.search(d):
            continue
        name = read_text(os.path.join(d, "name")) or os.path.basename(d)
        energy = os.path.join(d, "energy_uj")
        try:
            with open(energy, "rb") as f:
                int(f.read().split(b"\n", 1)[0])
        except PermissionError:
            problems.append(f"{name}: energy_uj not readable (root only since Linux 5.10)")
            continue
        except (OSError, ValueError) as e:
            problems.append(f"{name}: {e}")
            continue
        max_range = read_text(os.path.join(d, "max_energy_range_uj"))
        try:
            max_range_uj = int(max_range) if max_range else 0
        except ValueError:
            max_range_uj = 0
        if role_of(name) in ("cpu", "board"):
            domains.append({"name": name, "energy": energy, "max_range_uj": max_range_uj})
    if any(role_of(d["name"]) == "cpu" for d in domains):
        domains = [d for d in domains if role_of(d["name"]) == "cpu"]
    if not domains:
        why = "; ".join(problems) if problems else "no package or psys domain"
        return None, f"{os.path.join('/', POWERCAP_DIR)}: {why}"
    return RaplSource(domains), "; ".join(problems)
