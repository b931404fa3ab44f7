"""ADPT/1's request headers: validated into a :class:`Request` (PROTOCOL.md §4 and §7), and made.

Contract
--------
* :func:`parse_request` validates a header as msgpack decodes it (``raw=False``: exact ``str``,
  ``list``, ``dict``, ``int``, ``float`` and ``bool``; a subclass of one may be refused); every
  problem is a :class:`~adaptd.wire.errors.ProtocolError` with the code PROTOCOL.md §6 gives it
  and, once it could be read, the request id. :func:`request_header` makes the header a client
  sends.
* An ``infer`` header has a parse of its own (:func:`_parse_infer`: any header the daemon has
  not kept takes it, a client's first two requests among them unless their header differs from
  a kept one only in its constraints); the checks it shares with ``explain`` are one function
  (``tests/test_protocol.py`` compares the two paths). Its :class:`Request` is built without
  ``__init__``, from a copy of :data:`_DEFAULTS` (checked at import: the only default made by a
  factory is the immutable ``constraints``, and no ``__post_init__`` is skipped).
* A :class:`Request` is immutable but for ``derived``, the map the daemon keeps for a repeated
  header (:mod:`adaptd.daemon.request_memo`).
* Pure: no I/O, no shared state. Any thread.
* :mod:`adaptd.wire.protocol` re-exports every public name here: callers use ``proto.X``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any

import numpy as np

from adaptd.selector.request import OBJECTIVES, ON_INFEASIBLE, Constraints, InvalidConstraintsError
from adaptd.wire.errors import (BAD_CONSTRAINTS, BAD_REQUEST, MAX_ID_BYTES, MAX_NAME_BYTES, MAX_PID, ProtocolError,
                                shown)
from adaptd.wire.tensors import ShmRef, TensorSpec, parse_shm_ref, parse_tensor_headers, tensor_header

SHM_TYPES = ("shm_register", "shm_unregister", "shm_regions")     # §11
CONTROL_TYPES = ("models", "placements", "stats", "health", "reload", "explain", "fidelity_export", *SHM_TYPES)
REQUEST_TYPES = ("infer", *CONTROL_TYPES)


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

    def with_id(self, request_id: str, constraints: Constraints | None = None) -> Request:
        """The same request under another id, and other ``constraints`` when given (a copy of
        its fields: ``dataclasses.replace`` would validate them again, at ten times the cost)."""
        twin = object.__new__(Request)
        values = twin.__dict__
        values.update(self.__dict__)
        values["id"] = request_id
        if constraints is not None:
            values["constraints"] = constraints
        return twin


# Every field's default: a parsed request is built from a copy (_request), not through the
# frozen dataclass's __init__, which sets its 17 fields one call each.
_DEFAULTS: dict[str, Any] = {f.name: f.default_factory() if f.default is MISSING else f.default
                             for f in fields(Request) if f.init and f.name not in ("type", "id")}
# (a default made by a factory is shared by every request built so: only an immutable one will do)
if [f.name for f in fields(Request) if f.default_factory is not MISSING] != ["constraints"] \
        or hasattr(Request, "__post_init__"):
    raise TypeError("a Request built from _DEFAULTS would share a mutable default or skip __post_init__")


def _request(values: dict[str, Any]) -> Request:
    """A Request whose ``__dict__`` is ``values`` (every field, checked by the caller)."""
    request = object.__new__(Request)
    object.__setattr__(request, "__dict__", values)
    return request


def request_id_of(header: Mapping[str, Any]) -> str | None:
    rid = header.get("id")
    return rid if isinstance(rid, str) else None


# A name of at most this many characters is at most MAX_NAME_BYTES in UTF-8 (4 bytes a character
# at most): checked without encoding it.
_SHORT_NAME_CHARS = MAX_NAME_BYTES // 4


def _name(value: Any, key: str, rid: str) -> str:
    """``value`` if it is a non-empty string of at most ``MAX_NAME_BYTES`` in UTF-8, else
    BAD_REQUEST naming ``key``."""
    if type(value) is str and 0 < len(value) <= _SHORT_NAME_CHARS:
        return value
    if not isinstance(value, str) or not value or len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise ProtocolError(BAD_REQUEST, f"'{key}' must be a non-empty string of at most {MAX_NAME_BYTES} bytes",
                            rid)
    return value


def _enum_error(key: str, allowed: Sequence[str], value: Any, rid: str) -> ProtocolError:
    return ProtocolError(BAD_REQUEST, f"'{key}' must be one of {', '.join(allowed)}; got {shown(value)}", rid)


CONSTRAINT_KEYS = ("min_accuracy", "max_latency_ms", "max_energy_mj", "latency_confidence")
_CONSTRAINT_KEY_SET = frozenset(CONSTRAINT_KEYS)
_NO_CONSTRAINTS = Constraints()


def parse_constraints(value: Any, rid: str | None) -> Constraints:
    """§4.2: a map of known keys; the values are judged by the selector's rules
    (:class:`adaptd.selector.request.Constraints`), whose message a ``BAD_CONSTRAINTS`` carries."""
    if value is None:
        return _NO_CONSTRAINTS
    if not isinstance(value, dict):
        raise ProtocolError(BAD_CONSTRAINTS, "'constraints' must be a map", rid)
    try:
        get = value.get
        constraints = Constraints(get("min_accuracy"), get("max_latency_ms"), get("max_energy_mj"),
                                  get("latency_confidence"))
    except InvalidConstraintsError as exc:
        raise ProtocolError(BAD_CONSTRAINTS, str(exc), rid) from None
    if not _CONSTRAINT_KEY_SET.issuperset(value):
        unknown = set(value) - _CONSTRAINT_KEY_SET
        raise ProtocolError(BAD_CONSTRAINTS, f"unknown constraint(s): {shown(sorted(map(str, unknown)))}", rid)
    return constraints


def parse_request(header: Mapping[str, Any]) -> Request:
    """Validate a request header (PROTOCOL.md §4 and §7)."""
    rid = header.get("id")
    if not isinstance(rid, str) or not rid:
        raise ProtocolError(BAD_REQUEST, "'id' must be a non-empty string")
    if len(rid) > MAX_ID_BYTES // 4 and len(rid.encode("utf-8")) > MAX_ID_BYTES:
        raise ProtocolError(BAD_REQUEST, f"'id' is longer than {MAX_ID_BYTES} bytes")
    rtype = header.get("type")
    if rtype == "infer":
        return _parse_infer(header, rid)
    if rtype not in REQUEST_TYPES:
        raise ProtocolError(BAD_REQUEST, f"'type' must be one of {', '.join(REQUEST_TYPES)}; got {shown(rtype)}", rid)
    if rtype in SHM_TYPES:
        return _parse_shm_control(rtype, rid, header)
    if rtype not in ("explain", "fidelity_export"):
        return Request(type=rtype, id=rid)
    model, version = _model_version(header, rid)
    if rtype == "fidelity_export":   # §7.8: a model (and version) only
        return Request(type=rtype, id=rid, model=model, version=version)
    return _request({**_DEFAULTS, "type": rtype, "id": rid, "model": model, "version": version,
                     **_choice_fields(header, rid), "explain": True})


def _parse_infer(header: Mapping[str, Any], rid: str) -> Request:
    """An ``infer`` header (§4): any header the daemon has not kept takes this path, a client's
    first two requests among them (a repeated header, or one repeated but for its constraints,
    is kept from its second sight: adaptd.daemon.request_memo). Its checks are ``explain``'s,
    with its inputs checked after the model and its ``outputs_to`` last."""
    model, version = _model_version(header, rid)
    if "inputs" not in header:
        raise ProtocolError(BAD_REQUEST, "'inputs' is required", rid)
    inputs = tuple(parse_tensor_headers(header["inputs"], "inputs", rid))
    choice = _choice_fields(header, rid)
    outputs_to = header.get("outputs_to")
    return _request({**_DEFAULTS, "type": "infer", "id": rid, "model": model, "version": version, "inputs": inputs,
                     **choice,
                     "outputs_to": None if outputs_to is None else parse_shm_ref(outputs_to, "outputs_to", rid)})


def _choice_fields(header: Mapping[str, Any], rid: str) -> dict[str, Any]:
    """The fields that shape the choice and the client's name, checked in this order: the pin
    map, ``explain``, the constraints, the objective, ``on_infeasible``, the pins, the client."""
    pin = header.get("pin")
    if pin is None:
        pin = _NO_PIN
    elif not isinstance(pin, dict):
        raise ProtocolError(BAD_REQUEST, "'pin' must be a map", rid)
    explain = header.get("explain", False)
    if explain is not False and explain is not True:   # (msgpack's booleans are these two)
        raise ProtocolError(BAD_REQUEST, "'explain' must be a boolean", rid)
    constraints = parse_constraints(header.get("constraints"), rid)
    objective = header.get("objective")
    if objective is None:
        objective = "latency"
    elif objective not in OBJECTIVES:
        raise _enum_error("objective", OBJECTIVES, objective, rid)
    on_infeasible = header.get("on_infeasible")
    if on_infeasible is None:
        on_infeasible = "reject"
    elif on_infeasible not in ON_INFEASIBLE:
        raise _enum_error("on_infeasible", ON_INFEASIBLE, on_infeasible, rid)
    variant, placement, client = pin.get("variant"), pin.get("placement"), header.get("client")
    return {"constraints": constraints, "objective": objective, "on_infeasible": on_infeasible,
            "pin_variant": None if variant is None else _name(variant, "variant", rid),
            "pin_placement": None if placement is None else _name(placement, "placement", rid),
            "explain": explain, "client": None if client is None else _name(client, "client", rid)}


def _model_version(header: Mapping[str, Any], rid: str) -> tuple[str, str | None]:
    """A request's ``model`` (required) and ``version`` (optional; an integer is read as its digits)."""
    model = header.get("model")
    if model is None:
        raise ProtocolError(BAD_REQUEST, "'model' must be a non-empty string", rid)
    model = _name(model, "model", rid)
    version = header.get("version")
    if version is None:
        return model, None
    if not isinstance(version, str):
        if isinstance(version, int) and not isinstance(version, bool) and 0 <= version < 2**63:
            version = str(version)
        else:
            raise ProtocolError(BAD_REQUEST, "'version' must be a string", rid)
    if len(version) > MAX_NAME_BYTES:
        raise ProtocolError(BAD_REQUEST, f"'version' is longer than {MAX_NAME_BYTES} bytes", rid)
    return model, version


_NO_PIN: Mapping[str, Any] = MappingProxyType({})


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
    header: dict[str, Any] = {"type": request_type, "id": request_id}
    if constraints:   # (third: a daemon keeps a header that differs only in these for its repeats)
        header["constraints"] = {k: float(v) for k, v in constraints.items() if v is not None}
    header["model"] = model
    if request_type == "infer":
        header["inputs"] = ([dict(h) for h in input_headers] if input_headers is not None
                            else [tensor_header(a) for a in inputs])
        if outputs_to is not None:
            header["outputs_to"] = outputs_to.to_dict()
    if version is not None:
        header["version"] = version
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
