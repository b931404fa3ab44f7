"""The ``[power]`` table of the daemon's TOML config.

Contract
--------
- ``PowerConfig`` is immutable and always valid: ``__post_init__`` checks every field, and
  ``PowerConfig.from_dict`` additionally rejects unknown keys. Both raise ``ValueError`` whose
  message names the offending key and the accepted values.
- Units are in the field names' suffixes: ``*_hz`` hertz, ``*_s`` seconds.
- Nothing here touches the file system; ``sysfs_root`` and ``profile`` paths are checked when the
  meter is built (``EnergyMeter.from_config``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

SOURCES = ("auto", "ina3221", "hwmon", "rapl", "nvml", "estimated")
MAX_SAMPLE_HZ = 1000.0
MIN_SAMPLE_HZ = 1.0


@dataclass(frozen=True)
class PowerConfig:
    """Power measurement settings (the daemon config's ``[power]`` table).

    source: ``auto`` picks the best available source per rail (ina3221 > hwmon > rapl/nvml >
        estimated); any other value forces that source and makes the meter fail if it is absent.
    sample_hz: sampler rate, 1..1000 (the seeds sampled at 1 kHz).
    idle_window_s: quiet window at start-up over which idle (static) power is averaged.
    idle_remeasure_s: re-measure idle once the board has been idle this long (0 = never).
    profile: power profile of the estimated source: ``auto`` | ``tx2`` | ``generic`` | a path.
    sysfs_root: root under which ``sys/...`` and ``proc/...`` are looked up (tests use a fake tree).
    ring_seconds: span of the shared-memory ring buffer of samples.
    """

    source: str = "auto"
    sample_hz: float = 1000.0
    idle_window_s: float = 1.0
    idle_remeasure_s: float = 300.0
    profile: str = "auto"
    sysfs_root: str = "/"
    ring_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"power.source must be one of {', '.join(SOURCES)}; got {self.source!r}")
        _number(self, "sample_hz", MIN_SAMPLE_HZ, MAX_SAMPLE_HZ)
        _number(self, "idle_window_s", 0.01, 600.0)
        _number(self, "idle_remeasure_s", 0.0, 7 * 24 * 3600.0)
        _number(self, "ring_seconds", 0.1, 3600.0)
        if self.ring_seconds < self.idle_window_s:
            raise ValueError(
                f"power.ring_seconds ({self.ring_seconds}) must be >= power.idle_window_s "
                f"({self.idle_window_s}): idle power is averaged from the ring buffer"
            )
        if self.ring_seconds * self.sample_hz > 10_000_000:
            raise ValueError("power.ring_seconds * power.sample_hz must be <= 10,000,000 samples")
        for key in ("profile", "sysfs_root"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"power.{key} must be a non-empty string; got {value!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PowerConfig":
        """Build from a parsed TOML table; unknown keys and bad values raise ``ValueError``."""
        if not isinstance(d, Mapping):
            raise ValueError(f"[power] must be a table; got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown key(s) in [power]: {', '.join(unknown)}; accepted: {', '.join(sorted(known))}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            default = getattr(cls, key)
            if isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"power.{key} must be a number; got {value!r}")
                value = float(value)
            elif not isinstance(value, str):
                raise ValueError(f"power.{key} must be a string; got {value!r}")
            kwargs[key] = value
        return cls(**kwargs)


def _number(cfg: PowerConfig, key: str, lo: float, hi: float) -> None:
    value = getattr(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"power.{key} must be a finite number; got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"power.{key} must be in [{lo:g}, {hi:g}]; got {value!r}")
