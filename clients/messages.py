"""ADPT/1 requests built and replies read for a client: pure functions, no socket, no state.

Contract
--------
* :func:`infer_message` and :func:`control_message` return a request's frames ready to send
  (PROTOCOL.md §4, §7, §11): input arrays are body frames themselves, not copies (C-contiguous
  little-endian arrays pass through; others are made so once). :func:`reply_id` decodes a reply;
  :func:`result_from_reply` and :func:`body_from_reply` turn its header into the caller's value
  or raise the :mod:`adaptd.clients.errors` exception it names.
* Outputs are numpy views over the reply's frames (or the named region), no copy.
* No state; safe from any thread.
* Units: constraints in ms and mJ, accuracy a share in [0, 1], ``client_ms`` milliseconds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adaptd.clients.errors import ReplyError, error_from_header
from adaptd.clients.regions import Region, ShmTensor, outputs_ref, region_tensor_header
from adaptd.clients.results import InferResult, Selection
from adaptd.wire import protocol as p


def new_request_id() -> str:
    """A fresh request id: 16 random bytes as 32 lowercase hex digits (as long as a uuid4's hex,
    at a third of the cost)."""
    return os.urandom(16).hex()


def inline_tensor(value: Any) -> tuple[dict[str, Any], Any]:
    """(tensor header, body frame) of one input sent inline: the array itself when it is
    C-contiguous and little-endian (no copy); float64 becomes float32. ValueError for a dtype
    the protocol does not carry."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    body = p.tensor_body(array)
    # a dict lookup: np.dtype.name is Python code, and costs more than the rest of this function
    name = p.DTYPE_NAMES.get(body.dtype)
    if name is None:
        raise ValueError(f"dtype {array.dtype} cannot be sent; supported: {', '.join(p.DTYPES)}")
    return {"dtype": name, "shape": list(body.shape)}, body


def as_input_arrays(inputs: Any) -> list[np.ndarray]:
    """One array or a sequence of arrays -> C-contiguous arrays; float64 becomes float32."""
    return input_frames(inputs)[1]


def constraints_dict(min_accuracy: float | None, max_latency_ms: float | None,
                     max_energy_mj: float | None, latency_confidence: float | None = None) -> dict[str, float]:
    return {k: float(v) for k, v in (("min_accuracy", min_accuracy), ("max_latency_ms", max_latency_ms),
                                     ("max_energy_mj", max_energy_mj), ("latency_confidence", latency_confidence))
            if v is not None}


def infer_message(request_id: str, model: str, inputs: Any, *, version: str | None = None,
                  min_accuracy: float | None = None, max_latency_ms: float | None = None,
                  max_energy_mj: float | None = None, objective: str = "latency",
                  on_infeasible: str = "reject", variant: str | None = None, placement: str | None = None,
                  explain: bool = False, client: str | None = None,
                  request_type: str = "infer", regions: Sequence[Region] = (),
                  outputs_to: Any = None, latency_confidence: float | None = None) -> list[Any]:
    """The frames of an inference (or explain) request; bodies are the arrays themselves.

    Inputs in ``regions`` (or given as ShmTensor) are sent by reference (PROTOCOL.md §11)."""
    headers, arrays = input_frames(inputs, regions) if request_type == "infer" else (None, [])
    header = p.request_header(
        request_id, model, arrays, version=version,
        constraints=constraints_dict(min_accuracy, max_latency_ms, max_energy_mj, latency_confidence),
        objective=objective, on_infeasible=on_infeasible, pin_variant=variant, pin_placement=placement,
        explain=explain, client=client, request_type=request_type, input_headers=headers,
        outputs_to=outputs_ref(outputs_to) if request_type == "infer" else None)
    return p.encode(header, arrays)


def control_message(request_id: str, request_type: str, **fields: Any) -> list[Any]:
    return p.encode({"type": request_type, "id": request_id, **fields})


def input_frames(inputs: Any, regions: Sequence[Region] = ()) -> tuple[list[dict[str, Any]], list[Any]]:
    """(tensor headers, body frames) of a request's inputs: one array, or a sequence of them.
    Region tensors (ShmTensor, or arrays inside ``regions``) get a ``shm`` header and no frame;
    the others are inline (:func:`inline_tensor`)."""
    if isinstance(inputs, np.ndarray):
        items: Sequence[Any] = (inputs,)
    elif isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
        items = inputs
    else:
        items = (inputs,)
    headers: list[dict[str, Any]] = []
    bodies: list[Any] = []
    for x in items:
        if isinstance(x, ShmTensor):
            headers.append(p.shm_tensor_header(x.dtype, x.shape, x.region_name, x.offset))
            continue
        if regions and isinstance(x, np.ndarray):
            h = region_tensor_header(x, regions)
            if h is not None:
                headers.append(h)
                continue
        header, body = inline_tensor(x)
        headers.append(header)
        bodies.append(body)
    return headers, bodies


def reply_id(frames: Sequence[Any]) -> tuple[str | None, dict[str, Any] | None, list[memoryview]]:
    """(id, header, bodies) of a reply; (None, None, []) if it cannot be decoded at all."""
    try:
        header, bodies = p.decode(frames)
    except p.ProtocolError:
        return None, None, []
    return p.request_id_of(header), header, bodies


def result_from_reply(header: Mapping[str, Any], bodies: Sequence[memoryview], client_ms: float,
                      regions: Mapping[str, Region] | None = None) -> InferResult:
    """The InferResult of a ``result`` reply (outputs are views over ``bodies`` or ``regions``), or
    the exception an ``error`` reply names; ``ReplyError`` for anything else."""
    kind = header.get("type")
    if kind == "error":
        raise error_from_header(header)
    rid = str(header.get("id"))
    if kind != "result":
        raise ReplyError(f"expected a 'result' reply, got {kind!r}", request_id=rid)
    try:
        specs = p.parse_tensor_headers(header.get("outputs"), "outputs", rid)
        inline = p.tensors_from_frames([s for s in specs if s.shm is None], bodies, rid, what="output")
    except p.ProtocolError as exc:
        raise ReplyError(f"reply outputs: {exc.message}", request_id=rid) from None
    outputs = []
    for spec in specs:
        if spec.shm is None:
            outputs.append(inline.pop(0))
            continue
        region = (regions or {}).get(spec.shm.region)
        if region is None or region.closed:
            raise ReplyError(f"reply output in region {spec.shm.region}, which this client has not mapped",
                             request_id=rid)
        try:
            outputs.append(region.ndarray(spec.shape, spec.dtype, spec.shm.offset))
        except ValueError as exc:
            raise ReplyError(f"reply outputs: {exc}", request_id=rid) from None
    if not Selection.REQUIRED <= header.keys():   # (the rest of the selection is read when first asked for)
        raise ReplyError("result reply lacks its model, variant or placement", request_id=rid)
    return InferResult(rid, outputs, client_ms, dict(header))


def body_from_reply(header: Mapping[str, Any], of: str) -> dict[str, Any]:
    """The body of an ``ok`` reply to ``of``, or the exception an ``error`` reply names."""
    kind = header.get("type")
    if kind == "error":
        raise error_from_header(header)
    if kind != "ok" or not isinstance(header.get("body"), Mapping):
        raise ReplyError(f"expected an 'ok' reply with a body to {of!r}, got {kind!r}",
                         request_id=p.request_id_of(header))
    return dict(header["body"])
