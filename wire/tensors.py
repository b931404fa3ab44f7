"""ADPT/1's tensors: their headers (PROTOCOL.md §5 and §11), parsed and made, and their bodies.

Contract
--------
* :func:`parse_tensor_headers` validates a request's tensor headers, as msgpack decodes them
  (exact ``list``, ``dict``, ``str``, ``int``), into :class:`TensorSpec` (inline, or in a
  shared-memory region: :class:`ShmRef`), each built from its fields without ``__init__`` (it
  has no ``__post_init__``); every problem is a :class:`~adaptd.wire.errors.ProtocolError`
  (BAD_REQUEST or BAD_INPUT).
* Zero copy: :func:`tensors_from_frames` returns read-only numpy views over the body frames'
  buffers; :func:`tensor_body` passes a C-contiguous array through as its own buffer.
* Pure: no I/O, no shared state. Any thread.
* :mod:`adaptd.wire.protocol` re-exports every public name here: callers use ``proto.X``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adaptd.wire.errors import BAD_INPUT, BAD_REQUEST, MAX_NAME_BYTES, ProtocolError, shown

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name)
    for name in ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
}
DTYPE_NAMES: dict[np.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


def tensor_header(array: np.ndarray, name: str | None = None) -> dict[str, Any]:
    header: dict[str, Any] = {"dtype": array.dtype.name, "shape": list(array.shape)}
    if name is not None:
        header["name"] = name
    return header


def tensor_body(array: np.ndarray) -> Any:
    """A buffer for the array's bytes: the array itself when C-contiguous (no copy)."""
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array if array.ndim else array.reshape(1)


@dataclass(frozen=True)
class ShmRef:
    """Where a tensor lies in a registered shared-memory region (§11)."""

    region: str
    offset: int

    def to_dict(self) -> dict[str, Any]:
        return {"region": self.region, "offset": self.offset}


@dataclass(frozen=True)
class TensorSpec:
    dtype: np.dtype
    shape: tuple[int, ...]
    name: str | None = None
    shm: ShmRef | None = None      # in a region: no body frame

    @property
    def nbytes(self) -> int:
        return int(math.prod(self.shape)) * self.dtype.itemsize

    @property
    def dtype_name(self) -> str:
        """The protocol's name of the dtype (a dict lookup: ``np.dtype.name`` is Python code)."""
        return DTYPE_NAMES[self.dtype]


def parse_tensor_headers(value: Any, what: str, request_id: str | None) -> list[TensorSpec]:
    if not isinstance(value, list):
        raise ProtocolError(BAD_REQUEST, f"'{what}' must be an array of tensor headers", request_id)
    specs = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ProtocolError(BAD_REQUEST, f"{what}[{i}] must be a map", request_id)
        dtype_name = item.get("dtype")
        dtype = DTYPES.get(dtype_name) if type(dtype_name) is str else None
        if dtype is None:
            raise ProtocolError(BAD_INPUT, f"{what}[{i}]: unsupported dtype {shown(dtype_name)}", request_id,
                                {"supported": sorted(DTYPES)})
        shape = item.get("shape")
        dims_ok = type(shape) is list and len(shape) <= 16
        for d in shape if dims_ok else ():   # (a loop, not all() over a generator: a call per dimension)
            if type(d) is not int or not 0 <= d < 2**31:   # (bool is not int's type)
                dims_ok = False
                break
        if not dims_ok:
            raise ProtocolError(BAD_INPUT, f"{what}[{i}]: shape must be an array of non-negative ints", request_id)
        name = item.get("name")
        if type(name) is not str or len(name) > MAX_NAME_BYTES:
            name = None   # informational only (inputs are matched by position)
        shm = item.get("shm")
        if shm is not None:
            shm = parse_shm_ref(shm, f"{what}[{i}].shm", request_id)
        # (built as a copy of its fields, not through the frozen dataclass's __init__: one call
        # where that makes five, on every header the daemon has not seen)
        spec = object.__new__(TensorSpec)
        object.__setattr__(spec, "__dict__", {"dtype": dtype, "shape": tuple(shape), "name": name, "shm": shm})
        specs.append(spec)
    return specs


def parse_shm_ref(value: Any, what: str, request_id: str | None) -> ShmRef:
    """``{"region": str, "offset": int >= 0}`` (§11); BAD_REQUEST otherwise."""
    if not isinstance(value, dict):
        raise ProtocolError(BAD_REQUEST, f"'{what}' must be a map with region and offset", request_id)
    region, offset = value.get("region"), value.get("offset", 0)
    if not isinstance(region, str) or not region or len(region) > MAX_NAME_BYTES:
        raise ProtocolError(BAD_REQUEST, f"'{what}.region' must be a region name", request_id)
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < 2**63:
        raise ProtocolError(BAD_REQUEST, f"'{what}.offset' must be a non-negative int; got {shown(offset)}",
                            request_id)
    return ShmRef(region, offset)


def shm_tensor_header(dtype: Any, shape: Sequence[int], region: str, offset: int,
                      name: str | None = None) -> dict[str, Any]:
    """The header of a tensor that lies in a region (§11): it has no body frame."""
    # (a dict lookup for a numpy dtype: np.dtype.name is Python code, 2 us hot, ten times that cold)
    name_of_dtype = DTYPE_NAMES.get(dtype) or np.dtype(dtype).name
    header: dict[str, Any] = {"dtype": name_of_dtype, "shape": [int(d) for d in shape],
                              "shm": {"region": region, "offset": int(offset)}}
    if name is not None:
        header["name"] = name
    return header


def tensors_from_frames(specs: Sequence[TensorSpec], bodies: Sequence[memoryview],
                        request_id: str | None = None, what: str = "input") -> list[np.ndarray]:
    """Zero-copy numpy views of the body frames, checked against their headers.

    Every spec must be inline here (no ``shm``); a client resolves region tensors itself."""
    for spec in specs:
        if spec.shm is not None:
            raise ProtocolError(BAD_INPUT, f"a shared-memory {what} cannot be read from frames", request_id)
    if len(bodies) != len(specs):
        raise ProtocolError(BAD_INPUT, f"{len(specs)} {what} header(s) but {len(bodies)} body frame(s)", request_id)
    arrays = []
    for i, (spec, body) in enumerate(zip(specs, bodies)):
        if len(body) != spec.nbytes:
            raise ProtocolError(
                BAD_INPUT,
                f"{what} {i}: body is {len(body)} bytes but dtype {spec.dtype.name} and shape "
                f"{list(spec.shape)} need {spec.nbytes}",
                request_id,
            )
        arrays.append(np.frombuffer(body, dtype=spec.dtype).reshape(spec.shape))
    return arrays

