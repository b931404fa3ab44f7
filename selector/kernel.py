"""The feasibility kernel: the one definition of whether a prediction meets a request's bounds,
and of how the arms that meet them rank.

Contract
--------
* Two tables: ``CHECKS`` says, per bound of a request, which of an arm's predicted figures it
  bounds and how; ``KEYS`` says, per objective, the (primary, secondary) figures arms rank by,
  lower first, ties by the lower arm index. Whatever judges or ranks arms is built from them:

  - :func:`meets`, compiled from CHECKS, applies them to one arm's figures (floats: a decision's
    ``Met``, a pinned arm, the baseline's prediction) or to a model's columns (numpy arrays:
    masks) by the same expressions;
  - :func:`scan_columns` (numpy) and the loops :func:`scanner` compiles from the tables (Python
    floats) find the candidates that meet the request and the best of them. They give the same
    answers; the loop is cheaper where a model has few arms, since numpy's cost per call
    dominates there, the more so with the cold caches a daemon decides with (BENCHMARKS.md, "How
    long does the selector take to decide?", bench/bench_decision.py ``--cold``).
* Figures (see :data:`FIGURES`): ``accuracy`` (NaN: unknown), ``accuracy_key`` (minus the
  accuracy; 1 when unknown), ``latency_ms`` and ``latency_bound_ms`` (queue wait included),
  ``energy_mj``, ``energy_judged_mj`` (what an energy bound is judged on: the mean or the bound).
  A NaN meets no bound. As a key, NaN and infinities rank after every known figure (as ``BIG``)
  and before an arm that is not a candidate (inf).
* Pure, no state but the cache of compiled loops (one per bounds set x objective x queueing:
  at most 48, built on first use).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .request import CONSTRAINT_NAMES

BIG = 1e300   # an unknown (NaN) or infinite key: after every known one, before non-candidates (inf)

# bound -> (the figure it bounds, the comparison the figure must pass)
CHECKS = (
    ("min_accuracy", "accuracy", ">="),
    ("max_latency_ms", "latency_bound_ms", "<="),
    ("max_energy_mj", "energy_judged_mj", "<="),
)
# objective -> (primary key, secondary key); lower is better
KEYS = {
    "latency": ("latency_ms", "energy_mj"),
    "energy": ("energy_mj", "latency_ms"),
    "accuracy": ("accuracy_key", "latency_ms"),
}
# figure -> how the compiled loop reads it for arm j of a model (``w``: the wait on its placement)
FIGURES = {
    "accuracy": "acc[j]",
    "accuracy_key": "acc_key[j]",
    "latency_ms": "est[j] + w",
    "latency_bound_ms": "bnd[j] + w",
    "energy_mj": "energy[j]",
    "energy_judged_mj": "judged[j]",
}
assert tuple(c for c, _, _ in CHECKS) == CONSTRAINT_NAMES


def meets_source() -> str:
    """The source of :func:`meets`: CHECKS, one expression per bound."""
    params = ", ".join(figure for _, figure, _ in CHECKS)
    judged = ", ".join(f"None if c.{name} is None else {figure} {op} c.{name}" for name, figure, op in CHECKS)
    return (f"def meets(request, {params}):\n"
            f"    c = request.constraints\n"
            f"    return ({judged})\n")


def _compile(source: str, name: str, namespace: dict):
    exec(compile(source, f"<kernel {name}>", "exec"), namespace)
    return namespace[name]


meets = _compile(meets_source(), "meets", {})
meets.__doc__ = """meets(request, accuracy, latency_bound_ms, energy_judged_mj): per bound of CONSTRAINT_NAMES,
None when the request does not set it, else whether the figure meets it (a bool for floats, a
boolean mask for numpy columns)."""


def figure_columns(est, bnd, energy, judged, acc, acc_key, arm_wait) -> dict[str, np.ndarray]:
    """The figures of a model's arms as numpy columns (``arm_wait``: per arm, or None: no queue);
    the same definitions as :data:`FIGURES`."""
    if arm_wait is not None:
        est, bnd = est + arm_wait, bnd + arm_wait
    return {"accuracy": acc, "accuracy_key": acc_key, "latency_ms": est, "latency_bound_ms": bnd,
            "energy_mj": energy, "energy_judged_mj": judged}


def finite(x: np.ndarray) -> np.ndarray:
    """NaN (unknown) and +inf -> ``BIG``, so they rank after known costs but before non-candidates
    (inf): an infinite prior must not tie with an excluded arm."""
    bad = ~(x < BIG)
    if bad.any():
        return np.where(bad, BIG, x)
    return x


def conjunction(masks, candidates: np.ndarray | None = None) -> np.ndarray | None:
    """The arms among ``candidates`` (None: all) that pass every set bound's mask (None: all)."""
    out = candidates
    for m in masks:
        if m is not None:
            out = m if out is None else out & m
    return out


def lexmin(mask: np.ndarray | None, key1: np.ndarray, key2: np.ndarray) -> int:
    """The index of the least (key1, key2, index) among ``mask`` (None: all; at least one set),
    unknown and infinite keys as ``BIG``."""
    masked = key1 if mask is None else np.where(mask, key1, np.inf)
    i = int(masked.argmin())
    best = masked.item(i)
    if not best < BIG:
        # argmin stopped at a NaN, or the best is infinite and may tie with an excluded arm
        masked = finite(key1)
        if mask is not None:
            masked = np.where(mask, masked, np.inf)
        i = int(masked.argmin())
        best = masked.item(i)
    ties = masked == best
    if np.count_nonzero(ties) > 1:
        i = int(np.where(ties, finite(key2), np.inf).argmin())
    return i


def scan_columns(request, figures: dict[str, np.ndarray], candidates: np.ndarray | None):
    """(feasible mask or None for all, how many, the best's index or -1) over a model's columns."""
    feas = candidates
    for m in meets(request, figures["accuracy"], figures["latency_bound_ms"], figures["energy_judged_mj"]):
        if m is not None:
            feas = m if feas is None else feas & m
    n = figures["accuracy"].shape[0] if feas is None else int(np.count_nonzero(feas))
    if not n:
        return feas, 0, -1
    k1, k2 = KEYS[request.objective]
    return feas, n, lexmin(feas, figures[k1], figures[k2])


def scan_source(bounds_set: tuple[bool, bool, bool], objective: str, queued: bool) -> str:
    """The source of the loop :func:`scanner` compiles: the checks of the bounds that are set, in
    CHECKS order, then the keys of the objective, each figure as :data:`FIGURES` reads it."""
    def fig(name: str) -> str:
        expr = FIGURES[name]
        return expr if queued else expr.replace(" + w", "")

    lines = ["def scan(idx, est, bnd, energy, judged, acc, acc_key, pidx, waits, bounds):",
             "    min_accuracy, max_latency_ms, max_energy_mj = bounds",
             "    feasible = []",
             "    best = None",
             "    for j in idx:"]
    if queued:
        lines.append("        w = waits[pidx[j]]")
    for (name, figure, op), is_set in zip(CHECKS, bounds_set):
        if is_set:
            lines += [f"        if not ({fig(figure)} {op} {name}):", "            continue"]
    k1, k2 = KEYS[objective]
    lines += [f"        k1 = {fig(k1)}",
              f"        k2 = {fig(k2)}",
              "        key = (k1 if k1 < BIG else BIG, k2 if k2 < BIG else BIG, j)",
              "        feasible.append(key)",
              "        if best is None or key < best:",
              "            best = key",
              "    return best, feasible"]
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=None)
def scanner(bounds_set: tuple[bool, bool, bool], objective: str, queued: bool):
    """A loop over Python floats that applies the kernel to a model's arms: ``scan(idx, est, bnd,
    energy, judged, acc, acc_key, pidx, waits, bounds)`` with model-relative lists and indices
    ``idx``, ``waits`` per placement (when ``queued``) and ``bounds`` the request's three bounds;
    returns the least (key1, key2, j) among the arms that meet them (None if none) and all of
    theirs, in ``idx`` order."""
    return _compile(scan_source(bounds_set, objective, queued), "scan", {"BIG": BIG})


def violation_totals(request, acc0, acc_unknown, latency_bound_ms, energy_judged_mj) -> np.ndarray:
    """Per arm, the normalised total violation of the request's bounds: the sum over set bounds of
    ``max(0, (figure - bound) / bound)`` (accuracy: ``(bound - accuracy) / bound``); unknown
    accuracy counts 1 (``acc0``: accuracy with unknown as 0), an unknown latency or energy
    ``BIG``. Divisions, not products with a reciprocal: ``(m - 0) / m`` is exactly 1, as
    unknown accuracy counts, while ``m * (1 / m)`` may not be, which would break ties by rounding."""
    c = request.constraints
    total = np.zeros(acc0.shape[0])
    if c.min_accuracy is not None:
        m = c.min_accuracy
        if m > 0.0:   # unknown accuracy is 0 here: violation exactly 1
            with np.errstate(over="ignore"):   # a subnormal bound: inf, capped below
                total += np.maximum(0.0, (m - acc0) / m)
        else:
            total += acc_unknown
    if c.max_latency_ms is not None:
        total += np.maximum(0.0, (latency_bound_ms - c.max_latency_ms) / c.max_latency_ms)
    if c.max_energy_mj is not None:
        total += np.maximum(0.0, (energy_judged_mj - c.max_energy_mj) / c.max_energy_mj)
    return np.fmin(total, BIG)   # NaN (unknown estimate) and inf -> BIG
