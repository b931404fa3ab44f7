"""Live statistics per arm (variant x placement): latency and energy of recent executions.

Contract
--------
* Owned and updated by the daemon's main thread; :meth:`ArmStats.record` is O(1) (a ring buffer
  write and an EWMA step) so it can sit on the request path; percentiles are computed only when
  :meth:`ArmStats.snapshot` is asked for them (the ``stats`` control message).
* Latency is the worker's measured execution time in ms, model load excluded; energy is in mJ
  with its source (``measured:...`` or ``estimated...``) kept beside it.
* Time stamps are Unix seconds (``last_at``) so staleness is visible from outside; ``age_s`` is
  computed from the ``now`` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Series:
    """count, last, EWMA and a sliding window of one metric."""

    window: int
    alpha: float
    count: int = 0
    last: float | None = None
    ewma: float | None = None
    _ring: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._ring = np.empty(self.window, dtype=np.float64)

    def add(self, value: float) -> None:
        self._ring[self.count % self.window] = value
        self.count += 1
        self.last = value
        self.ewma = value if self.ewma is None else self.ewma + self.alpha * (value - self.ewma)

    def summary(self) -> dict[str, float | None]:
        n = min(self.count, self.window)
        if n == 0:
            return {"last": None, "ewma": None, "p50": None, "p95": None, "p99": None}
        p50, p95, p99 = np.percentile(self._ring[:n], (50, 95, 99))
        return {"last": self.last, "ewma": self.ewma, "p50": float(p50), "p95": float(p95), "p99": float(p99)}


@dataclass
class ArmStats:
    model: str
    version: str
    variant: str
    placement: str
    window: int = 256
    alpha: float = 0.2
    errors: int = 0
    last_at: float | None = None
    energy_source: str | None = None
    energy_estimated: bool = False
    latency_ms: Series = field(init=False)
    energy_mj: Series = field(init=False)

    def __post_init__(self) -> None:
        self.latency_ms = Series(self.window, self.alpha)
        self.energy_mj = Series(self.window, self.alpha)

    def record(self, latency_ms: float, energy_mj: float | None, energy_source: str | None,
               energy_estimated: bool, now: float) -> None:
        self.latency_ms.add(latency_ms)
        if energy_mj is not None and math.isfinite(energy_mj):
            self.energy_mj.add(energy_mj)
            self.energy_source = energy_source
            self.energy_estimated = energy_estimated
        self.last_at = now

    def snapshot(self, now: float, loaded: bool, memory_bytes: int | None) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "variant": self.variant,
            "placement": self.placement, "count": self.latency_ms.count, "errors": self.errors,
            "window": self.window, "loaded": loaded, "memory_bytes": memory_bytes,
            "latency_ms": self.latency_ms.summary(), "energy_mj": self.energy_mj.summary(),
            "energy_source": self.energy_source, "energy_estimated": self.energy_estimated,
            "last_at": self.last_at, "age_s": None if self.last_at is None else max(0.0, now - self.last_at),
        }
