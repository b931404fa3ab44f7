"""What one request asks of the selector, and what a placement's queue looks like right now.

Contract
--------
* ``Request`` is an immutable, validated value: constructing one with a bound that is negative,
  zero (latency, energy), above 1 (accuracy), not finite, or of the wrong type raises
  :class:`InvalidConstraintsError` (a ``ValueError``; the daemon answers ``BAD_CONSTRAINTS``).
  Unknown enumeration values (objective, on_infeasible) raise :class:`InvalidRequestError`
  (``BAD_REQUEST``). A constructed ``Request`` is always valid.
* ``QueueSnapshot`` is what the daemon knows of one placement's queue when it asks: the arm ids
  of the queued jobs (in any order), the arm id of the job in flight (or None) and how long it has
  been running. Arm ids are the selector's own (``Selector.arm_id``).
* Units: accuracy is a share in [0, 1]; latency in ms; energy in mJ.
* Plain values, no I/O, safe to share between threads once built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

OBJECTIVES = ("latency", "energy", "accuracy")
ON_INFEASIBLE = ("reject", "best_effort")
CONSTRAINT_NAMES = ("min_accuracy", "max_latency_ms", "max_energy_mj")


class SelectorError(ValueError):
    """Base of the errors the selector raises for a request it cannot take; ``code`` is the
    protocol's error code (PROTOCOL.md §6)."""

    code = "BAD_REQUEST"


class InvalidRequestError(SelectorError):
    code = "BAD_REQUEST"


class InvalidConstraintsError(SelectorError):
    code = "BAD_CONSTRAINTS"


class UnknownModelError(SelectorError):
    code = "UNKNOWN_MODEL"


class UnknownVariantError(SelectorError):
    code = "UNKNOWN_VARIANT"


class UnknownPlacementError(SelectorError):
    code = "UNKNOWN_PLACEMENT"


def _check_bound(name: str, value: Any, *, low: float, low_open: bool, high: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidConstraintsError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise InvalidConstraintsError(f"{name} must be finite, got {value!r}")
    if v < low or (low_open and v == low):
        rel = ">" if low_open else ">="
        raise InvalidConstraintsError(f"{name} must be {rel} {low:g}, got {v:g}")
    if high is not None and v > high:
        raise InvalidConstraintsError(f"{name} must be <= {high:g}, got {v:g}")
    return v


@dataclass(frozen=True, slots=True)
class Request:
    """One request's constraints, objective and pins (PROTOCOL.md §4).

    ``min_accuracy``: share in [0, 1]; an arm whose variant's accuracy is unknown (None, e.g. a
    latency-only zoo model) never meets it. ``max_latency_ms`` (> 0): queue wait + compute, at the
    selector's configured confidence, or at ``latency_confidence`` (in [0.5, 1)) when given: the
    selector judges it on the lowest confidence it keeps at or above that one. ``max_energy_mj`` (> 0): the predicted mean energy (or its
    bound at the same confidence, ``SelectorConfig.energy_at_confidence``); an arm with no energy
    estimate never meets it. ``None`` means unbounded.
    """

    model: str
    min_accuracy: float | None = None
    max_latency_ms: float | None = None
    max_energy_mj: float | None = None
    objective: str = "latency"
    on_infeasible: str = "reject"
    variant: str | None = None  # pin
    placement: str | None = None  # pin
    latency_confidence: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise InvalidRequestError("model must be a non-empty string")
        set_ = object.__setattr__
        set_(self, "min_accuracy", _check_bound("min_accuracy", self.min_accuracy, low=0.0, low_open=False, high=1.0))
        set_(self, "max_latency_ms", _check_bound("max_latency_ms", self.max_latency_ms, low=0.0, low_open=True, high=None))
        set_(self, "max_energy_mj", _check_bound("max_energy_mj", self.max_energy_mj, low=0.0, low_open=True, high=None))
        conf = _check_bound("latency_confidence", self.latency_confidence, low=0.5, low_open=False, high=None)
        if conf is not None and not conf < 1.0:
            raise InvalidConstraintsError(f"latency_confidence must be < 1, got {conf:g}")
        set_(self, "latency_confidence", conf)
        if self.objective not in OBJECTIVES:
            raise InvalidRequestError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.on_infeasible not in ON_INFEASIBLE:
            raise InvalidRequestError(
                f"on_infeasible must be one of {', '.join(ON_INFEASIBLE)}, got {self.on_infeasible!r}")
        for pin in ("variant", "placement"):
            v = getattr(self, pin)
            if v is not None and (not isinstance(v, str) or not v):
                raise InvalidRequestError(f"pin.{pin} must be a non-empty string")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Request:
        """Build from a decoded protocol header (``model``, ``constraints``, ``objective``,
        ``on_infeasible``, ``pin``); absent keys take their defaults, unknown keys are ignored."""
        c = d.get("constraints") or {}
        pin = d.get("pin") or {}
        if not isinstance(c, Mapping):
            raise InvalidConstraintsError("constraints must be a map")
        if not isinstance(pin, Mapping):
            raise InvalidRequestError("pin must be a map")
        return cls(
            model=d.get("model"),  # type: ignore[arg-type]
            min_accuracy=c.get("min_accuracy"),
            max_latency_ms=c.get("max_latency_ms"),
            max_energy_mj=c.get("max_energy_mj"),
            objective=d.get("objective") or "latency",
            on_infeasible=d.get("on_infeasible") or "reject",
            variant=pin.get("variant"),
            placement=pin.get("placement"),
            latency_confidence=c.get("latency_confidence"),
        )

    def constraints(self) -> dict[str, float]:
        """The constraints that are set, as a plain dict."""
        return {k: getattr(self, k) for k in CONSTRAINT_NAMES if getattr(self, k) is not None}


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """One placement's queue as the daemon sees it when it asks (selector arm ids)."""

    queued_arm_ids: tuple[int, ...] = field(default_factory=tuple)
    inflight_arm_id: int | None = None
    inflight_elapsed_ms: float = 0.0

    @property
    def empty(self) -> bool:
        return self.inflight_arm_id is None and not self.queued_arm_ids
