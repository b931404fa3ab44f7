"""What the daemon's replies say, as frozen dataclasses (PROTOCOL.md §5 and §7.6).

Contract
--------
* :class:`InferResult` is one inference: its outputs (numpy views over the reply's frames or a
  region, no copy), the :class:`Selection` (what ran, what it cost, what was predicted, why) and
  ``client_ms``, the time the client saw from the first send to the reply, retries included.
  :class:`Explanation` is a dry run's decision (nothing ran).
* Built from reply headers by ``from_header``/``from_dict``/``from_body``: a field that is absent
  or not a number becomes None (a newer or older daemon does not break a client); a result reply
  without ``model``, ``variant`` or ``placement`` is a :class:`~adaptd.clients.errors.ReplyError`
  when it is received. An :class:`InferResult`'s selection is read from its header when first
  asked for; a field of another kind than the protocol's (a ``timing`` that is not a map) is a
  ``ReplyError`` then.
* Immutable after construction (the outputs' arrays are views: see above); safe to share
  between threads.
* Units: ``*_ms`` milliseconds, ``*_mj`` millijoules, accuracy a share in [0, 1]. Energy that
  was estimated (no power sensor) has ``Energy.estimated`` true and a ``source`` starting with
  ``estimated``; present it as an estimate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from adaptd.clients.errors import ReplyError


def _f(value: Any) -> float | None:
    """A number as a float; None for anything else (a bool included). A reply's floats are
    returned as they are (the common case, checked first: every reply reads a dozen)."""
    kind = type(value)
    if kind is float:
        return value
    if kind is int or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return float(value)
    return None


@dataclass(frozen=True)
class Timing:
    queue_ms: float | None
    compute_ms: float | None
    total_ms: float | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Timing:
        d = d or {}
        return cls(_f(d.get("queue_ms")), _f(d.get("compute_ms")), _f(d.get("total_ms")))


@dataclass(frozen=True)
class Energy:
    """Energy of one execution, idle power deducted. ``estimated``: from a power model, not a sensor."""

    energy_mj: float | None
    source: str | None
    estimated: bool

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Energy:
        d = d or {}
        source = d.get("source") if isinstance(d.get("source"), str) else None
        estimated = bool(d.get("estimated")) or (source or "").startswith("estimated")
        return cls(_f(d.get("energy_mj")), source, estimated)

    def describe(self) -> str:
        if self.energy_mj is None:
            return "n/a"
        return f"{self.energy_mj:.3f} mJ ({'estimated' if self.estimated else 'measured'}, {self.source})"


@dataclass(frozen=True)
class RuntimeCost:
    """The daemon's own cost for one request, outside the execution: its CPU time and that time's
    energy, which is always estimated (PROTOCOL.md §5)."""

    cpu_ms: float | None
    energy_mj: float | None
    source: str | None
    estimated: bool = True

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RuntimeCost | None:
        if not d:
            return None
        return cls(_f(d.get("cpu_ms")), _f(d.get("energy_mj")), d.get("source") if isinstance(d.get("source"), str)
                   else None, True)


@dataclass(frozen=True)
class Predicted:
    latency_ms: float | None = None
    latency_bound_ms: float | None = None
    queue_ms: float | None = None
    energy_mj: float | None = None
    energy_estimated: bool = False
    accuracy: float | None = None
    latency_confidence: float | None = None   # the confidence latency_bound_ms is at (None: not said)
    # where ``accuracy`` (the figure min_accuracy was judged on) came from: validation | live
    # (PROTOCOL.md §5.3); None from a daemon that does not say
    accuracy_source: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Predicted:
        d = d or {}
        source = d.get("accuracy_source")
        return cls(_f(d.get("latency_ms")), _f(d.get("latency_bound_ms")), _f(d.get("queue_ms")),
                   _f(d.get("energy_mj")), bool(d.get("energy_estimated")), _f(d.get("accuracy")),
                   _f(d.get("latency_confidence")), source if isinstance(source, str) else None)


@dataclass(frozen=True)
class Reason:
    code: str
    text: str

    @classmethod
    def from_value(cls, value: Any) -> Reason:
        if isinstance(value, Mapping):
            return cls(str(value.get("code", "")), str(value.get("text", "")))
        return cls(str(value or ""), "")


@dataclass(frozen=True)
class Selection:
    """What the daemon chose for one request, what it predicted and what it measured."""

    REQUIRED: ClassVar[frozenset[str]] = frozenset(("model", "variant", "placement"))   # in every result

    model: str
    version: str | None
    variant: str
    placement: str
    timing: Timing
    energy: Energy
    predicted: Predicted
    constraints_met: dict[str, bool]
    met: bool
    reason: Reason
    replayed: bool = False
    alternatives: list[dict[str, Any]] | None = None
    runtime: RuntimeCost | None = None

    @classmethod
    def from_header(cls, h: Mapping[str, Any]) -> Selection:
        try:
            return cls(
                model=str(h["model"]), version=None if h.get("version") is None else str(h["version"]),
                variant=str(h["variant"]), placement=str(h["placement"]),
                timing=Timing.from_dict(h.get("timing")), energy=Energy.from_dict(h.get("energy")),
                predicted=Predicted.from_dict(h.get("predicted")),
                constraints_met={str(k): bool(v) for k, v in (h.get("constraints_met") or {}).items()},
                met=bool(h.get("met", True)), reason=Reason.from_value(h.get("reason")),
                replayed=bool(h.get("replayed", False)), alternatives=h.get("alternatives"),
                runtime=RuntimeCost.from_dict(h.get("runtime")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ReplyError(f"result reply lacks a valid field: {exc}", request_id=h.get("id")) from None


@dataclass(frozen=True)
class InferResult:
    request_id: str
    outputs: list[np.ndarray]
    client_ms: float          # as the client saw it: first send to reply, retries included
    header: dict[str, Any] = field(repr=False, default_factory=dict)

    @cached_property
    def selection(self) -> Selection:
        """The reply's :class:`Selection`, read from ``header`` when first asked for: a caller
        that reads only the outputs does not pay for it (about a third of a reply's handling)."""
        return Selection.from_header(self.header)


@dataclass(frozen=True)
class Explanation:
    """The daemon's dry-run decision (PROTOCOL.md §7.6); nothing ran."""

    feasible: bool
    variant: str | None
    placement: str | None
    reason: Reason
    predicted: Predicted
    predicted_met: dict[str, bool]
    violations: dict[str, Any]
    alternatives: list[dict[str, Any]]
    body: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Explanation:
        return cls(
            feasible=bool(b.get("feasible", b.get("placement") is not None)),
            variant=b.get("variant"), placement=b.get("placement"),
            reason=Reason.from_value(b.get("reason")), predicted=Predicted.from_dict(b.get("predicted")),
            predicted_met={str(k): bool(v) for k, v in (b.get("predicted_met") or {}).items()},
            violations=dict(b.get("violations") or {}), alternatives=list(b.get("alternatives") or []),
            body=dict(b),
        )
