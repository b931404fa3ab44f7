"""The ``[fidelity]`` configuration table: shadow runs, agreement statistics, alarm, reservoir.

Contract
--------
* ``FidelityConfig.from_dict(table)`` validates a mapping (the TOML table) and raises
  :class:`adaptd.daemon.config.ConfigError` naming the key, unknown keys included, like every
  other table; defaults are the documented ones (docs/fidelity.md, and the commented
  ``[fidelity]`` section of ``systemd/adaptd.toml``). Frozen, holds no resources: safe to share.
* ``fidelity_params()``, ``shadow_params()`` give the pure selector-side parameter objects
  (``adaptd.selector.fidelity.FidelityParams``, ``adaptd.selector.shadow.ShadowParams``).
* Units are in the names: ``*_s`` seconds, ``*_bytes`` bytes, ``cpu_budget_ms_per_s`` ms of
  CPU time per second of wall time (20 = 2 % of one core).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from adaptd.daemon.config import ConfigError, _check_keys, _typed
from adaptd.selector.fidelity import LIVE_BOUNDS, FidelityParams
from adaptd.selector.shadow import ShadowParams


@dataclass(frozen=True)
class FidelityConfig:
    enabled: bool = True                  # shadow runs of the reference at all
    reference: str = "float32"            # the reference variant where the manifest names none
    share: float = 0.05                   # of served requests shadowed (after the warm-up)
    cpu_budget_ms_per_s: float = 20.0     # CPU time of shadow runs per second, at most
    window: int = 200                     # comparisons per variant in the sliding window
    window_max_age_s: float = 600.0       # ... none older than this (0: no age limit)
    min_samples: int = 30                 # comparisons before the window is used; shadow all until then
    confidence: float = 0.95              # of intervals, bounds and tests
    alarm_agreement: float = 0.90         # drift alarm when agreement is confidently below this
    alarm_hysteresis: float = 0.01        # cleared when confidently above alarm_agreement + this
    rel_error_tolerance: float = 0.05     # regression outputs agree when rel. error <= this
    live_bound: str = "on_drift"          # the live bound replaces validation: on_drift | always
    reservoir: bool = False               # keep a sample of disagreeing inputs
    reservoir_items: int = 256            # per model version, at most this many inputs ...
    reservoir_bytes: int = 16 * 1024 * 1024   # ... and this many bytes of them

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FidelityConfig:
        w = "fidelity"
        if not isinstance(d, Mapping):
            raise ConfigError(f"{w}: expected a table")
        _check_keys(d, {f.name for f in fields(cls)}, w)
        out = cls(**{f.name: _typed(d, f.name, _KIND[f.name], f.default, w) for f in fields(cls)})
        for f in fields(cls):
            value = getattr(out, f.name)
            if _KIND[f.name] is float and not math.isfinite(value):
                raise ConfigError(f"{w}.{f.name}: must be a finite number, got {value}")
        if not out.reference:
            raise ConfigError(f"{w}.reference: must name a variant")
        if not 0.0 <= out.share <= 1.0:
            raise ConfigError(f"{w}.share: must be in [0, 1], got {out.share}")
        if not 0.0 <= out.cpu_budget_ms_per_s <= 1000.0:
            raise ConfigError(f"{w}.cpu_budget_ms_per_s: must be in [0, 1000] (ms per s), got "
                              f"{out.cpu_budget_ms_per_s}")
        if out.window < 1:
            raise ConfigError(f"{w}.window: must be at least 1, got {out.window}")
        if out.window_max_age_s < 0:
            raise ConfigError(f"{w}.window_max_age_s: must be 0 (no limit) or more, got {out.window_max_age_s}")
        if not 1 <= out.min_samples <= out.window:
            raise ConfigError(f"{w}.min_samples: must be in 1..window ({out.window}), got {out.min_samples}")
        if not 0.5 <= out.confidence < 1.0:
            raise ConfigError(f"{w}.confidence: must be in [0.5, 1), got {out.confidence}")
        if not 0.0 < out.alarm_agreement <= 1.0:
            raise ConfigError(f"{w}.alarm_agreement: must be in (0, 1], got {out.alarm_agreement}")
        if not (0.0 <= out.alarm_hysteresis and out.alarm_agreement + out.alarm_hysteresis <= 1.0):
            raise ConfigError(f"{w}.alarm_hysteresis: must be >= 0 with alarm_agreement + "
                              f"alarm_hysteresis <= 1, got {out.alarm_hysteresis}")
        if out.rel_error_tolerance < 0:
            raise ConfigError(f"{w}.rel_error_tolerance: must be >= 0, got {out.rel_error_tolerance}")
        if out.live_bound not in LIVE_BOUNDS:
            raise ConfigError(f"{w}.live_bound: expected {' or '.join(LIVE_BOUNDS)}, got {out.live_bound!r}")
        if out.reservoir_items < 1:
            raise ConfigError(f"{w}.reservoir_items: must be at least 1, got {out.reservoir_items}")
        if out.reservoir_bytes < 1:
            raise ConfigError(f"{w}.reservoir_bytes: must be at least 1, got {out.reservoir_bytes}")
        return out

    def fidelity_params(self) -> FidelityParams:
        return FidelityParams(window=self.window, window_max_age_s=self.window_max_age_s or None,
                              min_samples=self.min_samples, confidence=self.confidence,
                              alarm_agreement=self.alarm_agreement, alarm_hysteresis=self.alarm_hysteresis,
                              rel_error_tolerance=self.rel_error_tolerance, live_bound=self.live_bound)

    def shadow_params(self, seed: int = 0) -> ShadowParams:
        """Disabled (no budget) when ``enabled`` is false."""
        return ShadowParams(share=self.share,
                            cpu_budget_ms_per_s=self.cpu_budget_ms_per_s if self.enabled else 0.0,
                            warmup_samples=self.min_samples, seed=seed)


_KIND: dict[str, type] = {f.name: {"bool": bool, "str": str, "float": float, "int": int}[f.type]
                          for f in fields(FidelityConfig)}
