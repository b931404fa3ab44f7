"""What a decision says: the arm, the reason, the prediction it was based on, and per constraint
whether that prediction meets it. Typed records; how they look on the wire is the caller's
business (the daemon converts them at its edge, :mod:`adaptd.daemon.selection`).

Contract
--------
* Values built once per decision and never changed afterwards; plain Python types inside.
* ``Met`` has one field per constraint of :data:`~adaptd.selector.request.CONSTRAINT_NAMES`:
  True or False when the request sets that bound, None when it does not. It is computed by the
  kernel (:func:`adaptd.selector.kernel.meets`) and nowhere else.
* Units: ms, mJ, accuracy as a share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CODES = ("selected", "pinned", "probe", "best_effort", "infeasible")


@dataclass(slots=True)
class Prediction:
    """An arm's predicted figures at decision time; None where unknown."""

    latency_ms: float | None           # expected, queue wait included
    latency_bound_ms: float | None     # at latency_confidence, queue wait included
    latency_confidence: float | None   # the level of the bound (None: the policy keeps none)
    queue_ms: float                    # predicted wait behind the placement's queue
    energy_mj: float | None            # expected
    energy_bound_mj: float | None      # at the selector's confidence
    energy_estimated: bool             # from a model, not (only) measured
    accuracy: float | None             # the figure min_accuracy is judged against (accuracy_used)
    accuracy_source: str = "validation"   # where it came from: validation | live (docs/fidelity.md)


@dataclass(slots=True)
class Met:
    """Per bound of the request: whether the prediction meets it (None: the bound is not set)."""

    min_accuracy: bool | None
    max_latency_ms: bool | None
    max_energy_mj: bool | None

    @property
    def all(self) -> bool:
        """Every set bound met (the decision is *feasible*)."""
        return self.min_accuracy is not False and self.max_latency_ms is not False \
            and self.max_energy_mj is not False

    def items(self) -> list[tuple[str, bool]]:
        """(constraint, met) for the bounds the request sets."""
        return [(k, v) for k, v in (("min_accuracy", self.min_accuracy), ("max_latency_ms", self.max_latency_ms),
                                    ("max_energy_mj", self.max_energy_mj)) if v is not None]


@dataclass(slots=True)
class Violation:
    """A set bound the prediction fails: the figure judged (None: unknown), the bound, and by how
    much it misses it (None when the figure is unknown)."""

    constraint: str
    predicted: float | None
    bound: float
    by: float | None


@dataclass(slots=True)
class Alternative:
    """One candidate arm of an explained decision: its prediction, the bounds that exclude it, and
    its rank among the arms predicted to meet them (0: the one chosen; None: excluded)."""

    variant: str
    placement: str
    predicted: Prediction
    excluded_by: tuple[str, ...]
    rank: int | None


@dataclass(slots=True)
class Decision:
    """The outcome of one ``choose``.

    ``code``: selected | pinned | probe | best_effort | infeasible. ``arm_id``/``variant``/
    ``placement``: the arm to run (None when rejected, code ``infeasible``). ``predicted``, ``met``
    and ``violations`` are of the arm run or, when rejected, of the closest one; ``closest_id``
    names the closest arm when no arm is predicted to meet the request (infeasible, best_effort).
    ``alternatives``: every candidate, only when explained.
    """

    model: str
    code: str
    text: str
    arm_id: int | None
    variant: str | None
    placement: str | None
    predicted: Prediction
    met: Met
    violations: tuple[Violation, ...]
    closest_id: int | None
    n_candidates: int
    n_feasible: int
    alternatives: tuple[Alternative, ...] | None = None

    @property
    def feasible(self) -> bool:
        """The arm returned (or the closest) is predicted to meet every set bound."""
        return self.met.all

    def violation(self, constraint: str) -> Violation | None:
        return next((v for v in self.violations if v.constraint == constraint), None)


def violations(met: Met, bounds: Sequence[float | None], figures: Sequence[float | None]) -> tuple[Violation, ...]:
    """The Violation of each bound ``met`` says is missed: ``bounds`` and ``figures`` (the values
    judged, None when unknown) in the order of ``CONSTRAINT_NAMES``."""
    out = []
    if met.min_accuracy is False:
        x, bound = figures[0], bounds[0]
        out.append(Violation("min_accuracy", x, bound, None if x is None else bound - x))
    if met.max_latency_ms is False:
        x, bound = figures[1], bounds[1]
        out.append(Violation("max_latency_ms", x, bound, None if x is None else x - bound))
    if met.max_energy_mj is False:
        x, bound = figures[2], bounds[2]
        out.append(Violation("max_energy_mj", x, bound, None if x is None else x - bound))
    return tuple(out)


def finite_or_none(x: float) -> float | None:
    """A latency as a decision reports it: None for NaN and infinities (unknown)."""
    return x if math.isfinite(x) else None


def number_or_none(x: float) -> float | None:
    """An energy or accuracy as a decision reports it: None for NaN (unknown)."""
    return x if x == x else None


_UNIT = {"min_accuracy": "", "max_latency_ms": " ms", "max_energy_mj": " mJ"}
_WHAT = {"min_accuracy": "accuracy", "max_latency_ms": "latency bound", "max_energy_mj": "energy"}


def describe_violations(vs: Sequence[Violation]) -> str:
    """E.g. ``latency bound 7.9 ms exceeds 5.0 ms by 2.9 ms``; joined with '; '."""
    parts = []
    for v in vs:
        unit = _UNIT[v.constraint]
        if v.predicted is None:
            parts.append(f"{_WHAT[v.constraint]} unknown (bound {v.bound:.4g}{unit})")
        elif v.constraint == "min_accuracy":
            parts.append(f"accuracy {v.predicted:.4g} is below {v.bound:.4g} by {v.by:.3g}")
        else:
            parts.append(f"{_WHAT[v.constraint]} {v.predicted:.3g}{unit} exceeds {v.bound:.3g}{unit} "
                         f"by {v.by:.3g}{unit}")
    return "; ".join(parts)


def reason_text(code: str, objective: str, variant: str, placement: str, p: Prediction, n_cand: int,
                n_feas: int, vs: Sequence[Violation], age: str | None = None) -> str:
    """The one-line reason of a decision. ``age``: for a probe, how long the arm went unmeasured."""
    if code == "selected":
        if objective == "latency":
            what, val = "least latency", ("latency unknown" if p.latency_ms is None else f"{p.latency_ms:.3g} ms")
        elif objective == "energy":
            what, val = "least energy", ("energy unknown" if p.energy_mj is None else f"{p.energy_mj:.3g} mJ")
        else:
            what = "most accurate"
            val = "accuracy unknown" if p.accuracy is None else f"accuracy {p.accuracy:.4g}"
        return (f"{what} among {n_feas} of {n_cand} arms predicted to meet the constraints: "
                f"{variant} on {placement} ({val})")
    if code == "probe":
        if not n_feas:
            return (f"probe: no arm of {n_cand} predicted to meet the constraints on its measurements; "
                    f"{variant} on {placement} {age}, predicted to meet them by its prior")
        return f"probe: {variant} on {placement} {age}, predicted to meet the constraints"
    if code == "pinned":
        tail = "predicted to meet the constraints" if not vs else \
            "predicted NOT to meet the constraints: " + describe_violations(vs)
        return f"pinned: {variant} on {placement}; {tail}"
    head = f"no arm of {n_cand} predicted to meet the constraints; closest: {variant} on {placement}: "
    return head + describe_violations(vs) + ("; running it (best effort)" if code == "best_effort" else "")
