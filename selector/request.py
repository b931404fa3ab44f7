"""What one request asks of the selector, and what a placement's queue looks like right now.

Contract
--------
* This module is the one place the rules for a request's terms live. ``Constraints`` is an
  immutable, validated value: a bound that is not a number, not finite, negative, zero (latency,
  energy), above 1 (accuracy), or a ``latency_confidence`` outside [0.5, 1), raises
  :class:`InvalidConstraintsError` (a ``ValueError``; the protocol answers ``BAD_CONSTRAINTS``).
  ``Request`` holds a ``Constraints`` (valid by construction, so never checked again) with the
  model, the objective, ``on_infeasible`` and the pins; an unknown objective or ``on_infeasible``,
  or an empty pin, raises :class:`InvalidRequestError` (``BAD_REQUEST``). A constructed value is
  always valid. The protocol parser (:mod:`adaptd.wire.requests`) builds ``Constraints`` and
  checks the enumerations against ``OBJECTIVES`` and ``ON_INFEASIBLE``; it keeps no rules of its
  own.
* ``QueueSnapshot`` is what the caller knows of one placement's queue when it asks: the arm ids of
  the queued jobs (in any order), the arm id of the job in flight (or None) and how long it has
  been running. Arm ids are the selector's own (``Selector.arm_id``).
* Units: accuracy is a share in [0, 1]; latency in ms; energy in mJ.
* Plain values, no I/O, no third-party imports (the protocol parser imports this module), safe to
  share between threads once built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

OBJECTIVES = ("latency", "energy", "accuracy")
ON_INFEASIBLE = ("reject", "best_effort")
CONSTRAINT_NAMES = ("min_accuracy", "max_latency_ms", "max_energy_mj")   # the bounds, in this order


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


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        shown = f"{value!r}" if isinstance(value, (int, float)) else type(value).__name__
        raise InvalidConstraintsError(f"constraint {name} must be a finite number; got {shown}")
    return float(value)


def _positive(name: str, value: Any) -> float:
    v = _number(name, value)
    if not v > 0.0:
        raise InvalidConstraintsError(f"{name} must be greater than 0; got {v:g}")
    return v


@dataclass(frozen=True, slots=True)
class Constraints:
    """The bounds of a request (PROTOCOL.md §4.2); ``None`` means unbounded.

    ``min_accuracy``: share in [0, 1]; an arm whose accuracy is unknown never meets it.
    ``max_latency_ms`` (> 0): queue wait + compute, judged on the latency bound at the selector's
    confidence, or at ``latency_confidence`` (in [0.5, 1), a qualifier of ``max_latency_ms``, not
    a bound of its own): the lowest level the selector keeps at or above it. ``max_energy_mj``
    (> 0): the predicted mean energy (or its bound, ``SelectorConfig.energy_at_confidence``); an
    arm with no energy estimate never meets it.
    """

    min_accuracy: float | None = None
    max_latency_ms: float | None = None
    max_energy_mj: float | None = None
    latency_confidence: float | None = None

    def __post_init__(self) -> None:
        # A float already within its range (a decoded header's usual bound) passes without a
        # call; anything else is judged by _number and the range, and stored as a float.
        set_ = object.__setattr__
        v = self.min_accuracy
        if v is not None and (type(v) is not float or not 0.0 <= v <= 1.0):
            v = _number("min_accuracy", v)
            if not 0.0 <= v <= 1.0:
                raise InvalidConstraintsError(f"min_accuracy must be within [0, 1]; got {v:g}")
            set_(self, "min_accuracy", v)
        v = self.max_latency_ms
        if v is not None and (type(v) is not float or not 0.0 < v < math.inf):
            set_(self, "max_latency_ms", _positive("max_latency_ms", v))
        v = self.max_energy_mj
        if v is not None and (type(v) is not float or not 0.0 < v < math.inf):
            set_(self, "max_energy_mj", _positive("max_energy_mj", v))
        v = self.latency_confidence
        if v is not None and (type(v) is not float or not 0.5 <= v < 1.0):
            v = _number("latency_confidence", v)
            if not 0.5 <= v < 1.0:
                raise InvalidConstraintsError(f"latency_confidence must be within [0.5, 1); got {v:g}")
            set_(self, "latency_confidence", v)

    def as_dict(self) -> dict[str, float]:
        """The fields that are set (``latency_confidence`` included), as a plain dict."""
        return {k: v for k, v in (("min_accuracy", self.min_accuracy), ("max_latency_ms", self.max_latency_ms),
                                  ("max_energy_mj", self.max_energy_mj),
                                  ("latency_confidence", self.latency_confidence)) if v is not None}


NO_CONSTRAINTS = Constraints()


@dataclass(frozen=True, slots=True, init=False)
class Request:
    """One request's model, constraints, objective and pins (PROTOCOL.md §4).

    ``Request(model, min_accuracy=..., max_latency_ms=..., ...)`` builds its ``Constraints`` from
    the bounds given; ``Request(model, constraints=c, ...)`` takes a ``Constraints`` already built
    (then no bound may be given beside it). ``variant``/``placement`` pin the choice: both pinned,
    that arm is returned whatever the predictions (code ``pinned``).
    """

    model: str
    constraints: Constraints
    objective: str
    on_infeasible: str
    variant: str | None
    placement: str | None

    def __init__(self, model: str, min_accuracy: float | None = None, max_latency_ms: float | None = None,
                 max_energy_mj: float | None = None, objective: str = "latency", on_infeasible: str = "reject",
                 variant: str | None = None, placement: str | None = None,
                 latency_confidence: float | None = None, *, constraints: Constraints | None = None) -> None:
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("model must be a non-empty string")
        if constraints is None:
            constraints = NO_CONSTRAINTS if min_accuracy is None and max_latency_ms is None \
                and max_energy_mj is None and latency_confidence is None else \
                Constraints(min_accuracy, max_latency_ms, max_energy_mj, latency_confidence)
        elif not isinstance(constraints, Constraints) or not (
                min_accuracy is None and max_latency_ms is None and max_energy_mj is None
                and latency_confidence is None):
            raise TypeError("constraints must be a Constraints, and the only bounds given")
        if objective not in OBJECTIVES:
            raise InvalidRequestError(f"objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")
        if on_infeasible not in ON_INFEASIBLE:
            raise InvalidRequestError(f"on_infeasible must be one of {', '.join(ON_INFEASIBLE)}; "
                                      f"got {on_infeasible!r}")
        if variant is not None and (not isinstance(variant, str) or not variant):
            raise InvalidRequestError("pin.variant must be a non-empty string")
        if placement is not None and (not isinstance(placement, str) or not placement):
            raise InvalidRequestError("pin.placement must be a non-empty string")
        set_ = object.__setattr__
        set_(self, "model", model)
        set_(self, "constraints", constraints)
        set_(self, "objective", objective)
        set_(self, "on_infeasible", on_infeasible)
        set_(self, "variant", variant)
        set_(self, "placement", placement)

    # the bounds, read through (``request.max_latency_ms`` is ``request.constraints.max_latency_ms``)
    min_accuracy = property(attrgetter("constraints.min_accuracy"))
    max_latency_ms = property(attrgetter("constraints.max_latency_ms"))
    max_energy_mj = property(attrgetter("constraints.max_energy_mj"))
    latency_confidence = property(attrgetter("constraints.latency_confidence"))

    @property
    def pinned(self) -> bool:
        """Both variant and placement pinned: one arm, whatever the predictions."""
        return self.variant is not None and self.placement is not None

    def replace(self, **changes: Any) -> Request:
        """A copy with some fields (any constructor argument but ``constraints``) changed."""
        fields = {"model": self.model, **self.constraints.as_dict(), "objective": self.objective,
                  "on_infeasible": self.on_infeasible, "variant": self.variant, "placement": self.placement}
        return Request(**{**fields, **changes})

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
        return cls(d.get("model"), c.get("min_accuracy"), c.get("max_latency_ms"),  # type: ignore[arg-type]
                   c.get("max_energy_mj"), d.get("objective") or "latency", d.get("on_infeasible") or "reject",
                   pin.get("variant"), pin.get("placement"), c.get("latency_confidence"))


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """One placement's queue as the caller sees it when it asks (selector arm ids)."""

    queued_arm_ids: tuple[int, ...] = field(default_factory=tuple)
    inflight_arm_id: int | None = None
    inflight_elapsed_ms: float = 0.0

    @property
    def empty(self) -> bool:
        return self.inflight_arm_id is None and not self.queued_arm_ids
