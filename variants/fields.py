"""Validators for the JSON fields of a manifest: each returns the value or raises ``ManifestError``.

Pure functions, no state; ``where`` is the field's path in the document (``variants[x].sparsity``)
and appears in every message.
"""

from __future__ import annotations

import math
from typing import Any


class ManifestError(ValueError):
    """A manifest that does not follow the schema (the message names the field)."""


def req(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict):
        raise ManifestError(f"{where}: expected an object, got {type(d).__name__}")
    if key not in d:
        raise ManifestError(f"{where}.{key}: missing")
    return d[key]


def string(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise ManifestError(f"{where}: expected a string, got {v!r}")
    return v


def opt_string(v: Any, where: str) -> str | None:
    return None if v is None else string(v, where)


def integer(v: Any, where: str, minimum: int | None = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ManifestError(f"{where}: expected an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise ManifestError(f"{where}: must be >= {minimum}, got {v}")
    return v


def number(v: Any, where: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ManifestError(f"{where}: expected a number, got {v!r}")
    v = float(v)
    if v != v:  # NaN
        raise ManifestError(f"{where}: is NaN")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ManifestError(f"{where}: {v} outside [{lo}, {hi}]")
    return v


def boolean(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ManifestError(f"{where}: expected true/false, got {v!r}")
    return v


def choice(v: Any, choices: tuple[str, ...], where: str) -> str:
    if v not in choices:
        raise ManifestError(f"{where}: expected one of {', '.join(choices)}, got {v!r}")
    return v


def finite(v: Any, where: str) -> float:
    v = number(v, where)
    if not math.isfinite(v):
        raise ManifestError(f"{where}: must be finite, got {v}")
    return v
