"""The selector's hyper-parameters (the ``[selector]`` table of the daemon's config, less
``policy`` and ``calibration``).

Contract: an immutable value, validated when built (ValueError naming the field); units s, ms.
"""

from __future__ import annotations

from dataclasses import dataclass

from .online import DEFAULT_CONFIDENCE


@dataclass(frozen=True)
class SelectorConfig:
    """Hyper-parameters of the selector and its online cost model."""

    confidence: float = DEFAULT_CONFIDENCE   # latency bound quantile (see online.py)
    half_life_s: float = 2.0          # time decay of the latency/energy EWMA
    min_update_weight: float = 0.1    # each sample's weight at least this (bounded reaction in requests)
    window: int = 16                  # sliding window for the empirical quantile
    min_window: int = 4               # samples before the window quantile is used
    window_max_age_s: float = 10.0    # window samples older than this (s) no longer count
    # once the window holds min_window samples, the latency bound is its quantile (False, the
    # default) or max(mean + z sd, quantile) (True): in paired runs of bench/bench_selection.py
    # the floor, inflated by rare slow samples, rejected more and met fewer constraints
    gaussian_floor: bool = False
    prior_weight: float = 1.0         # prior counts as this many samples ...
    full_trust_n: int = 5             # ... until this many measurements
    probe_interval_s: float = 10.0    # an arm unmeasured this long may be probed
    probe_share: float = 0.02         # at most this share of decisions are probes (+1 per budget)
    probe_closest: bool = True        # a stale arm closest to an infeasible request is probed first
    probe_stale_prior: bool = True    # with no arm feasible, a stale arm whose prior meets the request is probed
    prior_rel_sd: float = 0.25        # relative spread of a prior that comes without one
    # max_energy_mj judged on the energy bound at ``confidence`` (True) or on the mean (False, the
    # default): paired runs of bench/bench_selection.py were split, and full runs with the bound
    # rejected hundreds of feasible requests (docs/decisions.md, "Energy bounds on the mean")
    energy_at_confidence: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.probe_share <= 1.0:
            raise ValueError(f"probe_share must be in [0, 1], got {self.probe_share}")
        if not self.probe_interval_s >= 0:
            raise ValueError(f"probe_interval_s must be >= 0, got {self.probe_interval_s}")
        if not self.prior_rel_sd >= 0:
            raise ValueError(f"prior_rel_sd must be >= 0, got {self.prior_rel_sd}")
