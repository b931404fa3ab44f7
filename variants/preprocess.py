"""What a caller may send for each input of a variant, and turning it into what the variant takes.

Contract
--------
* Admission (pure, cheap; the daemon calls it per request): :func:`accepts` says whether a
  variant takes inputs of the given protocol dtypes, :func:`accepted_dtypes` lists what a set
  of variants takes. An input accepts ``float32`` always (quantized for integer variants), its
  own dtype (passed as it is), and, when the model declares preprocessing for it, frames of the
  declared dtype (``uint8``), whichever variant runs.
* Preparation: :class:`InputPreparer` (one per input of a loaded variant) turns one array into
  the dtype and layout the interpreter takes:

  - the variant's own dtype: unchanged (no copy when C-contiguous);
  - a float array: cast to a float input, or quantized for an integer input
    (``q = clip(round(x / scale) + zero_point)``);
  - a frame (the declared ``uint8``) for a float input: ``x = frame * scale + offset`` computed
    straight into one new float array (no intermediate copy);
  - a frame for an integer input: preprocessing and quantization in one affine step,
    ``q = clip(round(frame * scale / s_q + (offset / s_q + zero_point)))``, through a float
    scratch buffer the preparer keeps per shape, so no float array is allocated per call.

  Anything else raises ``ValueError`` naming the input (position and name), the dtype or shape
  received and what it takes. The returned array is a new one or the caller's own; it is never
  the scratch buffer.
* Thread safety: an ``InputPreparer`` is NOT thread-safe (its scratch buffer); a loaded variant
  owns its preparers and is itself single-caller. The admission functions are pure.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .tensors import Preprocessing, Quantization, TensorSpec

FLOAT_WIRE = "float32"   # what every variant accepts


_F32 = np.dtype(np.float32)


def _takes(spec: TensorSpec, dtype_name: str) -> bool:
    if dtype_name == FLOAT_WIRE or dtype_name == spec.dtype:
        return True
    return spec.preprocessing is not None and dtype_name == spec.preprocessing.source_dtype


def accepts(record: Any, dtype_names: Sequence[str]) -> bool:
    """Whether the variant ``record`` (a ``VariantRecord``) takes inputs of ``dtype_names``, by
    position. A count mismatch is not decided here (the caller checks counts first)."""
    return all(_takes(spec, n) for spec, n in zip(record.inputs, dtype_names))


def accepted_dtypes(records: Iterable[Any]) -> list[str]:
    """Sorted dtype names that at least one input of one of ``records`` takes."""
    names = {FLOAT_WIRE}
    for r in records:
        for spec in r.inputs:
            names.add(spec.dtype)
            if spec.preprocessing is not None:
                names.add(spec.preprocessing.source_dtype)
    return sorted(names)


@functools.cache
def _limits(dtype: np.dtype) -> tuple[int, int]:
    """An integer dtype's range (``np.iinfo`` costs more than quantizing a small tensor)."""
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def quantize(x: np.ndarray, q: Quantization, dtype: np.dtype) -> np.ndarray:
    """Float -> integer with ``q`` (round half to even, saturating); in place on one float32
    temporary, the request path's cost for a quantized variant's input."""
    lo, hi = _limits(np.dtype(dtype))
    v = np.divide(np.asarray(x, dtype=np.float32), np.float32(q.scale))
    np.rint(v, out=v)
    v += np.float32(q.zero_point)
    np.clip(v, lo, hi, out=v)
    return v.astype(dtype)


def dequantize(x: np.ndarray, q: Quantization | None) -> np.ndarray:
    """Integer -> float32 with ``q``; float arrays are returned as float32."""
    if q is None or x.dtype.kind not in "iu":   # (np.issubdtype costs more than the arithmetic here)
        return x if x.dtype is _F32 else np.asarray(x, dtype=np.float32)
    out = x.astype(np.float32)
    out -= np.float32(q.zero_point)
    out *= np.float32(q.scale)
    return out


def _as_f32(v: float | tuple[float, ...]) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


class InputPreparer:
    """Prepares one input of one variant (see the module contract)."""

    def __init__(self, spec: TensorSpec, position: int) -> None:
        self.spec = spec
        self.position = position
        self.want = np.dtype(spec.dtype)
        self._tail = tuple(int(d) for d in spec.shape[1:])
        self._ndim = len(spec.shape)
        self._scratch: dict[tuple[int, ...], np.ndarray] = {}
        pre: Preprocessing | None = spec.preprocessing
        self.frame_dtype = np.dtype(pre.source_dtype) if pre is not None else None
        self._scale = self._offset = None
        self._quantized = self.want.kind in "iu" and spec.quantization is not None   # float32 -> quantize()
        if pre is None:
            return
        scale, offset = _as_f32(pre.scale), _as_f32(pre.offset)
        if np.issubdtype(self.want, np.integer):
            if spec.quantization is None:   # an integer input without parameters takes only itself
                self.frame_dtype = None
                return
            s_q = np.float32(spec.quantization.scale)
            # one affine step from frame to quantized value (float32 throughout)
            scale, offset = scale / s_q, offset / s_q + np.float32(spec.quantization.zero_point)
        self._scale, self._offset = scale.astype(np.float32), offset.astype(np.float32)

    def _label(self) -> str:
        return f"input {self.position} ({self.spec.name})"

    def _takes(self) -> str:
        extra = [n for n in (self.frame_dtype.name if self.frame_dtype is not None else None,) if n]
        return " or ".join(dict.fromkeys([FLOAT_WIRE, self.want.name, *extra]))

    def __call__(self, x: Any) -> np.ndarray:
        if type(x) is not np.ndarray:
            x = np.asarray(x)
        if x.shape[1:] == self._tail and x.ndim == self._ndim and x.flags.c_contiguous:
            if x.dtype is self.want or x.dtype == self.want:
                return x   # the common case, what a client sends for a float variant: nothing to do
            if x.dtype == _F32 and self._quantized:   # the common case for a quantized one
                return quantize(x, self.spec.quantization, self.want)
        if self.frame_dtype is not None and x.dtype == self.frame_dtype:
            out = self._frame(x)
        elif x.dtype == self.want:
            out = x
        elif np.issubdtype(x.dtype, np.floating):
            if np.issubdtype(self.want, np.integer):
                if self.spec.quantization is None:
                    raise ValueError(f"{self._label()} is {self.want.name} without quantization parameters; "
                                     f"send {self.want.name}")
                out = quantize(x, self.spec.quantization, self.want)
            else:
                out = x.astype(self.want)
        else:
            raise ValueError(f"{self._label()}: got {x.dtype.name}, expected {self._takes()}")
        if out.ndim != len(self.spec.shape) or tuple(out.shape[1:]) != tuple(self.spec.shape[1:]):
            raise ValueError(f"{self._label()}: shape {tuple(out.shape)} does not match "
                             f"(N, {', '.join(map(str, self.spec.shape[1:]))})")
        return np.ascontiguousarray(out)

    def _frame(self, frame: np.ndarray) -> np.ndarray:
        if tuple(frame.shape[1:]) != tuple(self.spec.shape[1:]) or frame.ndim != len(self.spec.shape):
            return frame   # the shape check in __call__ names the problem
        if not np.issubdtype(self.want, np.integer):
            out = np.multiply(frame, self._scale, dtype=self.want)
            out += self._offset.astype(self.want)
            return out
        buf = self._scratch.get(frame.shape)
        if buf is None:
            self._scratch.clear()            # one shape kept: a batch size rarely alternates
            buf = self._scratch[frame.shape] = np.empty(frame.shape, np.float32)
        np.multiply(frame, self._scale, out=buf, dtype=np.float32)
        buf += self._offset
        np.rint(buf, out=buf)
        np.clip(buf, *_limits(self.want), out=buf)
        out = np.empty(frame.shape, self.want)
        np.copyto(out, buf, casting="unsafe")
        return out
