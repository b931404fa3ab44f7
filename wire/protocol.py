"""ADPT/1 codec: ZeroMQ frames <-> headers and tensors; the wire's one front door.

Contract
--------
* Follows PROTOCOL.md field by field; ``tests/test_protocol.py`` checks it against the
  examples there.
* This module frames and packs messages (:func:`encode`, :func:`decode`, :func:`pack`). Its
  rooms hold the rest, and it re-exports their public names, so that callers write ``proto.X``
  for all of it: :mod:`adaptd.wire.errors` (error codes, :class:`ProtocolError`, limits),
  :mod:`adaptd.wire.tensors` (tensor headers and bodies), :mod:`adaptd.wire.requests`
  (request headers validated into a :class:`Request`, and made). They import one way:
  errors, then tensors, then requests, then this module.
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

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from adaptd.selector.request import Constraints  # noqa: F401  (a Request's constraints, as proto.Constraints)
from adaptd.wire.errors import (BAD_CONSTRAINTS, BAD_INPUT, BAD_REQUEST, BUSY, ERROR_CODES, FORBIDDEN,  # noqa: F401
                                INFEASIBLE, INTERNAL, MALFORMED, MAX_ID_BYTES, MAX_MESSAGE_CHARS, MAX_NAME_BYTES,
                                MAX_PID, MAX_SHOWN_CHARS, SHUTTING_DOWN, TOO_LARGE, TRANSIENT_CODES,
                                UNKNOWN_MODEL, UNKNOWN_PLACEMENT, UNKNOWN_REGION, UNKNOWN_VARIANT,
                                UNSUPPORTED_VERSION, WORKER_FAILED, ProtocolError, error_header, shown)
from adaptd.wire.requests import (CONSTRAINT_KEYS, CONTROL_TYPES, REQUEST_TYPES, SHM_TYPES, Request,  # noqa: F401
                                  parse_constraints, parse_request, request_header, request_id_of)
from adaptd.wire.tensors import (DTYPE_NAMES, DTYPES, ShmRef, TensorSpec, parse_shm_ref,  # noqa: F401
                                 parse_tensor_headers, shm_tensor_header, tensor_body, tensor_header,
                                 tensors_from_frames)

SIGNATURE = b"ADPT01"
SIGNATURE_PREFIX = b"ADPT"
SUPPORTED_VERSIONS = ("01",)

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

