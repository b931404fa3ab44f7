"""Tensor specs of the manifest: a tensor's name, dtype, shape, quantization and preprocessing.

Plain immutable data (safe to share between threads), validated from JSON by ``from_dict``
(``ManifestError`` naming the field); no TensorFlow, no LiteRT. ``adaptd.variants.manifest``
re-exports every name here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .fields import ManifestError, boolean, choice, finite, integer, number, req, string

FRAME_DTYPES = ("uint8",)          # what a preprocessing spec may turn into a float input


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of a tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Quantization:
        return cls(
            scale=number(req(d, "scale", where), f"{where}.scale", lo=0.0),
            zero_point=integer(req(d, "zero_point", where), f"{where}.zero_point", minimum=None),
        )


def _values(v: Any, where: str, positive: bool) -> float | tuple[float, ...]:
    """One finite number, or a non-empty list of them (one per channel)."""
    items = v if isinstance(v, list) else [v]
    if not items:
        raise ManifestError(f"{where}: expected a number or a non-empty list of numbers")
    out = tuple(finite(x, f"{where}[{i}]" if isinstance(v, list) else where) for i, x in enumerate(items))
    if positive and any(x <= 0 for x in out):
        raise ManifestError(f"{where}: must be > 0, got {v!r}")
    return out if isinstance(v, list) else out[0]


@dataclass(frozen=True)
class Preprocessing:
    """How a frame of ``source_dtype`` (uint8) becomes a float input: ``x = frame * scale + offset``.

    ``scale``/``offset`` are one number or one per channel (the input's last axis).
    ``in_model``: the model's own graph scales its input, so a frame goes in at its values
    (scale 1, offset 0); the flag says so for the reader."""

    scale: float | tuple[float, ...]
    offset: float | tuple[float, ...]
    source_dtype: str = "uint8"
    in_model: bool = False

    @classmethod
    def included(cls) -> Preprocessing:
        """The model includes its preprocessing: frames go in as they are (as float)."""
        return cls(1.0, 0.0, "uint8", True)

    @property
    def channels(self) -> int | None:
        """Per-channel length, or None when scale and offset are single numbers."""
        lengths = {len(v) for v in (self.scale, self.offset) if isinstance(v, tuple)}
        return lengths.pop() if lengths else None

    def problem(self, dtype: str, shape: tuple[int, ...]) -> str | None:
        """Why this spec cannot apply to an input of ``dtype`` and ``shape`` (None: it fits)."""
        if self.source_dtype not in FRAME_DTYPES:
            return f"frames of {self.source_dtype} are not supported (only {', '.join(FRAME_DTYPES)})"
        if not dtype.startswith("float"):
            return (f"the input is {dtype}, not float: preprocessing turns {self.source_dtype} frames into a "
                    f"float input (an integer input takes its own dtype as it is)")
        scales = self.scale if isinstance(self.scale, tuple) else (self.scale,)
        offsets = self.offset if isinstance(self.offset, tuple) else (self.offset,)
        if not all(math.isfinite(v) and v > 0 for v in scales) or not all(math.isfinite(v) for v in offsets):
            return "the scale must be finite and > 0, the offset finite"
        lengths = {len(v) for v in (self.scale, self.offset) if isinstance(v, tuple)}
        if len(lengths) > 1:
            return "scale and offset have different lengths"
        if lengths and (not shape or shape[-1] != next(iter(lengths))):
            return (f"{next(iter(lengths))} per-channel values, but the input's last axis has "
                    f"{shape[-1] if shape else 0} entries")
        if self.in_model and (self.scale != 1.0 or self.offset != 0.0):
            return "in_model means scale 1 and offset 0"
        return None

    def to_dict(self) -> dict[str, Any]:
        def plain(v: float | tuple[float, ...]) -> float | list[float]:
            return list(v) if isinstance(v, tuple) else v

        return {"from": self.source_dtype, "scale": plain(self.scale), "offset": plain(self.offset),
                "in_model": self.in_model}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Preprocessing:
        return cls(
            source_dtype=choice(req(d, "from", where), FRAME_DTYPES, f"{where}.from"),
            scale=_values(req(d, "scale", where), f"{where}.scale", positive=True),
            offset=_values(req(d, "offset", where), f"{where}.offset", positive=False),
            in_model=boolean(req(d, "in_model", where), f"{where}.in_model"),
        )


@dataclass(frozen=True)
class TensorSpec:
    """One input or output (of the model, or of a variant). ``shape`` is as recorded (batch 1
    for LiteRT). ``preprocessing`` (inputs only; omitted from JSON when None): see above."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    quantization: Quantization | None = None
    preprocessing: Preprocessing | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "quantization": None if self.quantization is None else self.quantization.to_dict(),
        }
        if self.preprocessing is not None:
            d["preprocessing"] = self.preprocessing.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TensorSpec:
        shape = req(d, "shape", where)
        if not isinstance(shape, list):
            raise ManifestError(f"{where}.shape: expected a list of integers")
        q = req(d, "quantization", where)
        pre = d.get("preprocessing")
        return cls(
            name=string(req(d, "name", where), f"{where}.name"),
            dtype=string(req(d, "dtype", where), f"{where}.dtype"),
            shape=tuple(integer(s, f"{where}.shape[{i}]", minimum=-1) for i, s in enumerate(shape)),
            quantization=None if q is None else Quantization.from_dict(q, f"{where}.quantization"),
            preprocessing=None if pre is None else Preprocessing.from_dict(pre, f"{where}.preprocessing"),
        )
