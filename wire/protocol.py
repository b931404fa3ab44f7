"""ADPT/1 codec: ZeroMQ frames <-> headers and tensors, and request validation.

Contract
--------
* Follows PROTOCOL.md field by field; ``tests/test_protocol.py`` checks it against the
  examples there.
* Pure: no sockets, no I/O, no clocks. Safe to call from any thread (no shared state but
  :func:`pack`'s packer, one per thread).
* Zero copy: :func:`decode` and :func:`tensors_from_frames` return numpy views over the
  received frames' buffers (read-only); :func:`encode` passes tensor buffers through
  without copying them. A caller that keeps a decoded tensor keeps its frame alive.
* Failure: every problem with a message raises :class:`ProtocolError` carrying the
  protocol's error code, a one-line message and, when it could be read, the request id.
* Units: milliseconds (``*_ms``), millijoules (``*_mj``), shares in [0, 1].
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from adaptd.selector.request import OBJECTIVES, ON_INFEASIBLE, Constraints, InvalidConstraintsError

SIGNATURE = b"ADPT01"
SIGNATURE_PREFIX = b"ADPT"
SUPPORTED_VERSIONS = ("01",)
MAX_ID_BYTES = 128
MAX_NAME_BYTES = 128        # model, version, variant, placement, client and region names
MAX_MESSAGE_CHARS = 400     # an error reply's message; longer ones are cut (they may quote the client)
MAX_SHOWN_CHARS = 48        # a client's value quoted in an error message
MAX_PID = 1 << 22           # Linux's largest pid_max

# Error codes (PROTOCOL.md §6).
MALFORMED = "MALFORMED"
UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
BAD_REQUEST = "BAD_REQUEST"
BAD_CONSTRAINTS = "BAD_CONSTRAINTS"
BAD_INPUT = "BAD_INPUT"
TOO_LARGE = "TOO_LARGE"
UNKNOWN_MODEL = "UNKNOWN_MODEL"
UNKNOWN_VARIANT = "UNKNOWN_VARIANT"
UNKNOWN_PLACEMENT = "UNKNOWN_PLACEMENT"
INFEASIBLE = "INFEASIBLE"
BUSY = "BUSY"
WORKER_FAILED = "WORKER_FAILED"
SHUTTING_DOWN = "SHUTTING_DOWN"
INTERNAL = "INTERNAL"
UNKNOWN_REGION = "UNKNOWN_REGION"
FORBIDDEN = "FORBIDDEN"
ERROR_CODES = frozenset({
    MALFORMED, UNSUPPORTED_VERSION, BAD_REQUEST, BAD_CONSTRAINTS, BAD_INPUT, TOO_LARGE,
    UNKNOWN_MODEL, UNKNOWN_VARIANT, UNKNOWN_PLACEMENT, INFEASIBLE, BUSY, WORKER_FAILED,
    SHUTTING_DOWN, INTERNAL, UNKNOWN_REGION, FORBIDDEN,
})
# Replies with these codes are not kept for idempotent retry: a retry should run afresh.
TRANSIENT_CODES = frozenset({BUSY, SHUTTING_DOWN, WORKER_FAILED})

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name)
    for name in ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
}
DTYPE_NAMES: dict[np.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
SHM_TYPES = ("shm_register", "shm_unregister", "shm_regions")     # §11
CONTROL_TYPES = ("models", "placements", "stats", "health", "reload", "explain", "fidelity_export", *SHM_TYPES)
REQUEST_TYPES = ("infer", *CONTROL_TYPES)


class ProtocolError(Exception):
    """A message the daemon (or client) cannot accept; maps onto one error reply."""

    def __init__(self, code: str, message: str, request_id: str | None = None,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        assert code in ERROR_CODES, code
        self.code = code
        self.message = message
        self.request_id = request_id
        self.details = dict(details) if details else None

    def header(self) -> dict[str, Any]:
        return error_header(self.code, self.message, self.request_id, self.details)


# --- frames ------------------------------------------------------------------------------

def frame_buffer(frame: Any) -> memoryview:
    """The bytes of a received frame (zmq.Frame, bytes or memoryview) without copying. (Not a
    zmq.Frame's ``buffer``, the same view made with a weak reference to it, asked through
    pyzmq's ``__getattr__`` hook: 0.4 us, against 0.15 for ``memoryview()``.)"""
    return memoryview(frame)


def body_buffers(frames: Sequence[Any]) -> list[memoryview]:
    """:func:`frame_buffer` of each frame after the header (``frames[3:]``), written out: on every
    message, a call per frame less (:func:`decode` reads the first three the same way)."""
    return [memoryview(f) for f in frames[3:]]


_PACKERS = threading.local()
PACKER_KEPT_MAX_BYTES = 1 << 20   # a packer whose buffer grew past this is let go, not kept


def pack(header: Mapping[str, Any]) -> bytes:
    """``msgpack.packb(header, use_bin_type=True)``, by a packer kept for the calling thread:
    ``packb`` makes (and frees) a packer and its buffer each call, 16 µs for a reply's header
    on a request path run cold against 9 (AMD-3). A packer is not reentrant, hence one per
    thread. A packer keeps the largest buffer it has needed, so after packing more than
    ``PACKER_KEPT_MAX_BYTES`` (a large control reply), or a raise (a value msgpack cannot pack),
    the thread's packer is let go and the next call makes another."""
    try:
        packer = _PACKERS.packer
    except AttributeError:
        packer = _PACKERS.packer = msgpack.Packer(use_bin_type=True)
    try:
        packed = packer.pack(header)
    except BaseException:   # (its buffer may have grown before the raise)
        del _PACKERS.packer
        raise
    if len(packed) > PACKER_KEPT_MAX_BYTES:
        del _PACKERS.packer
    return packed


def unpack(packed: Any) -> dict[str, Any]:
    """A header that :func:`pack` made (trusted: not a client's; ``decode`` checks those)."""
    return msgpack.unpackb(packed, raw=False)


def encode(header: Mapping[str, Any], bodies: Sequence[Any] = ()) -> list[Any]:
    """Frames of one ADPT message (delimiter, signature, header, bodies).

    Bodies are passed through as given (numpy arrays, memoryviews, bytes or zmq Frames),
    so a tensor's buffer reaches ZeroMQ without a copy here.
    """
    return [b"", SIGNATURE, pack(header), *bodies]


def decode(frames: Sequence[Any]) -> tuple[dict[str, Any], list[memoryview]]:
    """Split an ADPT message (without the ROUTER envelope) into header and body buffers."""
    if len(frames) < 3:
        raise ProtocolError(MALFORMED, f"expected at least 3 frames (delimiter, signature, header), got {len(frames)}")
    if len(frames[0]) != 0:   # (a zmq.Frame's len() is its size, as a buffer's)
        raise ProtocolError(MALFORMED, "frame 0 must be the empty delimiter")
    signature = bytes(frames[1])
    if signature != SIGNATURE:
        if signature.startswith(SIGNATURE_PREFIX) and len(signature) == len(SIGNATURE):
            raise ProtocolError(
                UNSUPPORTED_VERSION,
                f"protocol version {signature[4:].decode('ascii', 'replace')} is not supported",
                details={"supported": list(SUPPORTED_VERSIONS)},
            )
        raise ProtocolError(MALFORMED, "frame 1 is not the ADPT01 signature")
    try:
        header = msgpack.unpackb(frames[2], raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for bad input
        raise ProtocolError(MALFORMED, f"header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(MALFORMED, f"header must be a map, got {type(header).__name__}")
    return header, body_buffers(frames)


def shown(value: Any) -> str:
    """A client's value for an error message: its repr, cut to ``MAX_SHOWN_CHARS``."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS - 3] + "..."


def error_header(code: str, message: str, request_id: str | None = None,
                 details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An error reply's header. The message is cut to ``MAX_MESSAGE_CHARS``: it may quote what a
    client sent, and error replies are kept for replay."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 3] + "..."
    header: dict[str, Any] = {"type": "error", "id": request_id, "code": code, "message": message}
    if details:
        header["details"] = dict(details)
    return header


# --- tensors -----------------------------------------------------------------------------

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
        if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
            raise ProtocolError(BAD_INPUT, f"{what}[{i}]: unsupported dtype {shown(dtype_name)}", request_id,
                                {"supported": sorted(DTYPES)})
        shape = item.get("shape")
        dims_ok = isinstance(shape, list) and len(shape) <= 16
        for d in shape if dims_ok else ():   # (a loop, not all() over a generator: a call per dimension)
            dims_ok = dims_ok and isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31
        if not dims_ok:
            raise ProtocolError(BAD_INPUT, f"{what}[{i}]: shape must be an array of non-negative ints", request_id)
        name = item.get("name")
        if isinstance(name, str) and len(name) > MAX_NAME_BYTES:
            name = None   # informational only (inputs are matched by position)
        shm = parse_shm_ref(item["shm"], f"{what}[{i}].shm", request_id) if item.get("shm") is not None else None
        specs.append(TensorSpec(DTYPES[dtype_name], tuple(shape), name if isinstance(name, str) else None, shm))
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


# --- requests ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """A validated request header (inference, explain or another control message)."""

    type: str
    id: str
    model: str | None = None
    version: str | None = None
    inputs: tuple[TensorSpec, ...] = ()
    constraints: Constraints = field(default_factory=Constraints)
    objective: str = "latency"
    on_infeasible: str = "reject"
    pin_variant: str | None = None
    pin_placement: str | None = None
    explain: bool = False
    client: str | None = None
    outputs_to: ShmRef | None = None     # infer: write the outputs into a region (§11)
    size: int | None = None              # shm_register
    owner_pid: int | None = None         # shm_register
    region: str | None = None            # shm_unregister
    # What the daemon derives from a repeated header (adaptd.daemon.request_memo): one map shared by
    # the memo's template and every copy of it; None for a request parsed afresh.
    derived: dict[Any, Any] | None = field(default=None, compare=False, repr=False)

    def with_id(self, request_id: str) -> Request:
        """The same request under another id (a copy of its fields: ``dataclasses.replace``
        would validate them again, at ten times the cost)."""
        twin = object.__new__(Request)
        twin.__dict__.update(self.__dict__)
        object.__setattr__(twin, "id", request_id)
        return twin


def request_id_of(header: Mapping[str, Any]) -> str | None:
    rid = header.get("id")
    return rid if isinstance(rid, str) else None


def _opt_str(header: Mapping[str, Any], key: str, rid: str) -> str | None:
    value = header.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise ProtocolError(BAD_REQUEST, f"'{key}' must be a non-empty string of at most {MAX_NAME_BYTES} bytes",
                            rid)
    return value


def _enum(header: Mapping[str, Any], key: str, allowed: Sequence[str], default: str, rid: str) -> str:
    value = header.get(key, default)
    if value is None:
        return default
    if value not in allowed:
        raise ProtocolError(BAD_REQUEST, f"'{key}' must be one of {', '.join(allowed)}; got {shown(value)}", rid)
    return value


CONSTRAINT_KEYS = ("min_accuracy", "max_latency_ms", "max_energy_mj", "latency_confidence")


def parse_constraints(value: Any, rid: str | None) -> Constraints:
    """§4.2: a map of known keys; the values are judged by the selector's rules
    (:class:`adaptd.selector.request.Constraints`), whose message a ``BAD_CONSTRAINTS`` carries."""
    if value is None:
        return Constraints()
    if not isinstance(value, dict):
        raise ProtocolError(BAD_CONSTRAINTS, "'constraints' must be a map", rid)
    try:
        constraints = Constraints(*(value.get(key) for key in CONSTRAINT_KEYS))
    except InvalidConstraintsError as exc:
        raise ProtocolError(BAD_CONSTRAINTS, str(exc), rid) from None
    unknown = set(value) - set(CONSTRAINT_KEYS)
    if unknown:
        raise ProtocolError(BAD_CONSTRAINTS, f"unknown constraint(s): {shown(sorted(map(str, unknown)))}", rid)
    return constraints


def parse_request(header: Mapping[str, Any]) -> Request:
    """Validate a request header (PROTOCOL.md §4 and §7)."""
    rid = header.get("id")
    if not isinstance(rid, str) or not rid:
        raise ProtocolError(BAD_REQUEST, "'id' must be a non-empty string")
    if len(rid.encode("utf-8")) > MAX_ID_BYTES:
        raise ProtocolError(BAD_REQUEST, f"'id' is longer than {MAX_ID_BYTES} bytes")
    rtype = header.get("type")
    if rtype not in REQUEST_TYPES:
        raise ProtocolError(BAD_REQUEST, f"'type' must be one of {', '.join(REQUEST_TYPES)}; got {shown(rtype)}", rid)
    if rtype in SHM_TYPES:
        return _parse_shm_control(rtype, rid, header)
    if rtype not in ("infer", "explain", "fidelity_export"):
        return Request(type=rtype, id=rid)

    model, version = _model_version(header, rid)
    if rtype == "fidelity_export":   # §7.8: a model (and version) only
        return Request(type=rtype, id=rid, model=model, version=version)
    inputs: tuple[TensorSpec, ...] = ()
    if rtype == "infer":
        if "inputs" not in header:
            raise ProtocolError(BAD_REQUEST, "'inputs' is required", rid)
        inputs = tuple(parse_tensor_headers(header["inputs"], "inputs", rid))
    pin = header.get("pin")
    if pin is not None and not isinstance(pin, dict):
        raise ProtocolError(BAD_REQUEST, "'pin' must be a map", rid)
    pin = pin or {}
    explain = header.get("explain", False)
    if not isinstance(explain, bool):
        raise ProtocolError(BAD_REQUEST, "'explain' must be a boolean", rid)
    return Request(
        type=rtype,
        id=rid,
        model=model,
        version=version,
        inputs=inputs,
        constraints=parse_constraints(header.get("constraints"), rid),
        objective=_enum(header, "objective", OBJECTIVES, "latency", rid),
        on_infeasible=_enum(header, "on_infeasible", ON_INFEASIBLE, "reject", rid),
        pin_variant=_opt_str(pin, "variant", rid),
        pin_placement=_opt_str(pin, "placement", rid),
        explain=explain or rtype == "explain",
        client=_opt_str(header, "client", rid),
        outputs_to=(parse_shm_ref(header["outputs_to"], "outputs_to", rid)
                    if rtype == "infer" and header.get("outputs_to") is not None else None),
    )


def _model_version(header: Mapping[str, Any], rid: str) -> tuple[str, str | None]:
    """A request's ``model`` (required) and ``version`` (optional; an integer is read as its digits)."""
    model = _opt_str(header, "model", rid)
    if model is None:
        raise ProtocolError(BAD_REQUEST, "'model' must be a non-empty string", rid)
    version = header.get("version")
    if version is not None and not isinstance(version, str):
        if isinstance(version, int) and not isinstance(version, bool) and 0 <= version < 2**63:
            version = str(version)
        else:
            raise ProtocolError(BAD_REQUEST, "'version' must be a string", rid)
    if version is not None and len(version) > MAX_NAME_BYTES:
        raise ProtocolError(BAD_REQUEST, f"'version' is longer than {MAX_NAME_BYTES} bytes", rid)
    return model, version


def _parse_shm_control(rtype: str, rid: str, header: Mapping[str, Any]) -> Request:
    def integer(key: str, required: bool, low: int, high: int) -> int | None:
        value = header.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value < high:
            raise ProtocolError(BAD_REQUEST, f"'{key}' must be an int in [{low}, {high}); got {shown(value)}", rid)
        return value

    if rtype == "shm_register":
        return Request(type=rtype, id=rid, size=integer("size", True, 1, 2**63),
                       owner_pid=integer("owner_pid", False, 1, MAX_PID))
    if rtype == "shm_unregister":
        region = header.get("region")
        if not isinstance(region, str) or not region or len(region) > MAX_NAME_BYTES:
            raise ProtocolError(BAD_REQUEST, "'region' must be a region name", rid)
        return Request(type=rtype, id=rid, region=region)
    return Request(type=rtype, id=rid)


def request_header(request_id: str, model: str, inputs: Sequence[np.ndarray], *,
                   version: str | None = None, constraints: Mapping[str, float] | None = None,
                   objective: str | None = None, on_infeasible: str | None = None,
                   pin_variant: str | None = None, pin_placement: str | None = None,
                   explain: bool = False, client: str | None = None,
                   request_type: str = "infer", input_headers: Sequence[Mapping[str, Any]] | None = None,
                   outputs_to: ShmRef | None = None) -> dict[str, Any]:
    """The header of an inference (or explain) request, as a client sends it.

    ``input_headers`` replaces the headers made from ``inputs`` (for tensors in a region, §11)."""
    header: dict[str, Any] = {"type": request_type, "id": request_id, "model": model}
    if request_type == "infer":
        header["inputs"] = ([dict(h) for h in input_headers] if input_headers is not None
                            else [tensor_header(a) for a in inputs])
        if outputs_to is not None:
            header["outputs_to"] = outputs_to.to_dict()
    if version is not None:
        header["version"] = version
    if constraints:
        header["constraints"] = {k: float(v) for k, v in constraints.items() if v is not None}
    if objective is not None:
        header["objective"] = objective
    if on_infeasible is not None:
        header["on_infeasible"] = on_infeasible
    pin = {k: v for k, v in (("variant", pin_variant), ("placement", pin_placement)) if v is not None}
    if pin:
        header["pin"] = pin
    if explain:
        header["explain"] = True
    if client is not None:
        header["client"] = client
    return header
