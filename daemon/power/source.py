"""The one interface every power sensor implements, and the sysfs reading helper they share.

Contract
--------
- A ``PowerSource`` describes a set of rails of one sensor family (``sensor``: ``ina3221``,
  ``hwmon``, ``rapl``, ``nvml``). Construction only records paths/indices (cheap, picklable to a
  JSON-able ``spec()``); ``open()`` acquires file descriptors or library handles and is called in
  the sampler process; ``close()`` releases them and may be called more than once.
- ``read(out)`` fills ``out[i]`` for rail ``i``:
  * ``Rail.kind == "power"``: instantaneous power in **mW**;
  * ``Rail.kind == "counter"``: cumulative energy in **mJ** since ``open()``, already unwrapped
    (monotonic, never negative; the source owns the wrap-around handling).
  A rail whose read failed is set to NaN (the sampler holds its previous value and counts the
  error). ``read`` never raises for a single failed rail.
- A source is used by one thread of one process (the sampler); it is not thread-safe.
- ``discover(root)`` functions in each source module return ``(source or None, reason)``: the
  reason says why nothing usable was found (missing tree, permission, no labelled rails).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

ROLES = ("cpu", "gpu", "cpu+gpu", "board", "other")


@dataclass(frozen=True)
class Rail:
    """One measured supply rail: ``name`` is the sensor's label (e.g. ``VDD_SYS_CPU``)."""

    name: str
    sensor: str
    role: str  # one of ROLES: what the rail feeds, used to pick rails for a placement
    kind: str = "power"  # "power" (mW samples) or "counter" (cumulative mJ)


def classify_label(label: str) -> str:
    """Role of a Jetson INA3221 rail from its label (TX1/TX2/Nano/Xavier/Orin conventions).

    ``VDD_SYS_CPU`` / ``POM_5V_CPU`` / ``CPU`` / ``VDD_CPU_CV`` -> cpu; ``VDD_SYS_GPU`` /
    ``VDD_GPU_SOC`` / ``GPU`` -> gpu; ``VDD_CPU_GPU_CV`` -> cpu+gpu (one rail feeds both);
    ``VDD_IN`` / ``POM_5V_IN`` / ``VIN_SYS_5V0`` -> board (module input); anything else -> other.
    """
    up = label.upper()
    has_cpu, has_gpu = "CPU" in up, "GPU" in up
    if has_cpu and has_gpu:
        return "cpu+gpu"
    if has_cpu:
        return "cpu"
    if has_gpu:
        return "gpu"
    if up in ("VDD_IN", "POM_5V_IN", "5V_IN", "VIN", "VIN_SYS_5V0") or up.endswith("_IN"):
        return "board"
    return "other"


def sampled_rails(rails: list[Rail]) -> list[Rail]:
    """The rails worth sampling: those feeding the CPU or GPU; the board input if there are none.

    On Jetson boards every sysfs read is an I2C transaction (~0.1-0.3 ms), so reading rails that
    attribution never uses (SoC, DDR, Wi-Fi) would cap the reachable rate below 1 kHz.
    """
    used = [r for r in rails if r.role in ("cpu", "gpu", "cpu+gpu")]
    return used or [r for r in rails if r.role == "board"]


class PowerSource(ABC):
    """A family of rails read together by the sampler (see the module contract)."""

    sensor: str = ""
    spec_key: str = ""             # the constructor's one argument, kept as ``_<spec_key>``
    _rails: tuple[Rail, ...] = ()  # set by the constructor

    @property
    def rails(self) -> tuple[Rail, ...]:
        return self._rails

    def spec(self) -> dict:
        """JSON-able description from which ``source_from_spec`` rebuilds this source."""
        return {"sensor": self.sensor, self.spec_key: getattr(self, f"_{self.spec_key}")}

    @classmethod
    def from_spec(cls, spec: dict) -> "PowerSource":
        return cls(spec[cls.spec_key])

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self, out: np.ndarray) -> None: ...

    def close(self) -> None:  # pragma: no cover - trivial default
        pass


class SysfsFile:
    """A sysfs attribute kept open and re-read with ``pread`` at offset 0 (one syscall a read).

    Sysfs regenerates the value on every read at offset 0, so the descriptor can stay open.
    ``read_int`` returns None on any I/O or parse error (the caller marks the rail NaN).
    """

    __slots__ = ("path", "fd")

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def open(self) -> None:
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    def read_int(self) -> int | None:
        try:
            data = os.pread(self.fd, 64, 0)
            return int(data.split(b"\n", 1)[0])
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            finally:
                self.fd = -1


def read_text(path: str) -> str | None:
    """Whole small text file stripped, or None if absent/unreadable."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def sys_path(root: str, *parts: str) -> str:
    """``root`` joined with a path written as if from ``/`` (``sys_path(r, "sys/class")``)."""
    return os.path.join(root, *parts)
