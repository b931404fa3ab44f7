"""Structure-aware ADPT01 requests, valid and near-valid, for every request type of PROTOCOL.md.

Contract
--------
* :func:`make_draft` builds one :class:`Draft` (a request header, usually a map, its body frames
  and a frame-level defect) against a :class:`Target` (the daemon's models, placements and one
  registered region, as its ``models`` and ``shm_register`` replies describe them), using a
  ``draw`` callable: Hypothesis' own (:data:`drafts` is the Hypothesis strategy) or a
  :class:`~.stream.PooledDraw`, which takes each value from a pool Hypothesis drew once.
  Every ``draw`` here is of a strategy of :mod:`.values` or of one whose ``repr`` holds all its
  parameters (no filters with closures), so pools can be keyed by ``repr``; choices between
  alternatives go through ``values.pick``, ``flag`` and ``between``.
* A draft is valid, or near-valid: valid but for one field of its request type, set to a value
  PROTOCOL.md rules out (a wrong type, a list or map where a string is expected, a huge,
  negative or NaN number, a long string, a wrong count of tensors, bodies of the wrong size,
  unknown models, variants, placements and regions, ...), or broken at the frame level
  (delimiter, signature, header not msgpack or not a map, too few frames).
* ``Draft.valid`` is the protocol's verdict: False when the message breaks a rule PROTOCOL.md
  states (any success reply to it is wrong); True when a success reply is allowed (the reply may
  still be an error the protocol allows: INFEASIBLE, BUSY, ...). Where the protocol leaves a
  value's treatment open (``null`` for an optional field, an int ``version`` naming a loaded
  version) the value is never used as a defect, so a daemon is never faulted for a choice the
  protocol leaves to it.
* The request id is a slot (:data:`ID_SLOT`) filled by :func:`encode`, so every message gets a
  fresh unique id; a defect of the id field replaces the slot.
* Bodies are described (:class:`Body`: a length and a seed), not drawn byte by byte.
* Valid ``shm_register`` sizes stay at most 4 KiB and ``reload`` is never sent with a readable
  id, so a fuzz run neither fills ``/dev/shm`` nor reloads the repository.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import msgpack
from hypothesis import strategies as st

from .values import (BINARY, EXT, FLOATS, HEX_NAME, INTS, LISTS, MAPS, MAX_ID_BYTES, NAN_INF, NEGATIVE_INTS,
                     NON_INTS, NON_STRINGS, SCALARS, TEXT, VALUES, any_of, between, flag, not_one_of, other_text,
                     pick)

SIGNATURE = b"ADPT01"
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
ITEMSIZE = {"float32": 4, "float16": 2, "float64": 8, "int8": 1, "uint8": 1, "int16": 2, "int32": 4,
            "int64": 8, "bool": 1}
OBJECTIVES = ("latency", "energy", "accuracy")
ON_INFEASIBLE = ("reject", "best_effort")
PLAIN_CONTROL = ("models", "placements", "stats", "health", "shm_regions")
REQUEST_TYPES = ("infer", "explain", "shm_register", "shm_unregister", "reload", *PLAIN_CONTROL)
PID_NEVER = 1 << 22      # above Linux's largest pid_max: never a running process


class _IdSlot:
    def __repr__(self) -> str:
        return "ID_SLOT"


ID_SLOT = _IdSlot()


@dataclass(frozen=True)
class Body:
    nbytes: int
    seed: int

    def make(self) -> bytes:
        return random.Random(self.seed).randbytes(self.nbytes)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    versions: tuple[str, ...]
    inputs: tuple[tuple[int, ...], ...]          # each input's shape (batch first)
    input_dtypes: tuple[str, ...]                # dtypes some variant takes natively, besides float32
    output_elems: int                            # float32 elements per batch item, all outputs
    variants: tuple[str, ...]


@dataclass(frozen=True)
class Target:
    models: tuple[ModelInfo, ...]
    placements: tuple[str, ...]
    region: tuple[str, int] | None = None        # (name, size) of a region registered for the run
    owner_pid: int | None = None                 # a live process to name as a region's owner

    @classmethod
    def from_models_reply(cls, body: dict[str, Any], region: tuple[str, int] | None = None,
                          owner_pid: int | None = None) -> Target:
        models = []
        for m in body["models"]:
            variants = m["variants"]
            dtypes = sorted({t["dtype"] for v in variants for t in v["inputs"]} - {"float32"})
            elems = sum(math.prod(o["shape"][1:]) for o in variants[0]["outputs"])
            models.append(ModelInfo(m["name"], tuple(str(v) for v in m.get("versions") or [m["version"]]),
                                    tuple(tuple(t["shape"]) for t in variants[0]["inputs"]), tuple(dtypes),
                                    elems, tuple(v["name"] for v in variants)))
        return cls(tuple(models), tuple(p["name"] for p in body["placements"]), region, owner_pid)


@dataclass
class Draft:
    header: Any
    bodies: list[Any] = field(default_factory=list)     # Body or bytes
    valid: bool = True
    defect: str = "valid"                               # "<type>.<field>[.<what>]" or "frame:<what>"
    frame: tuple[str, Any] = ("none", None)             # frame-level defect and its parameter


# --- valid requests ------------------------------------------------------------------------

def tensor(draw, shape: tuple[int, ...], dtypes: tuple[str, ...], target: Target) -> tuple[dict, Any]:
    """A valid input tensor header for ``shape`` (any batch 1..4) and its body (or shm ref)."""
    dtype = pick(draw, ("float32", "float32", *dtypes))
    dims = [between(draw, 1, 4), *shape[1:]]
    nbytes = math.prod(dims) * ITEMSIZE[dtype]
    header: dict[str, Any] = {"dtype": dtype, "shape": dims}
    if between(draw, 0, 3) == 0:
        header["name"] = draw(TEXT)
    if target.region and nbytes <= target.region[1] and between(draw, 0, 5) == 0:
        slots = (target.region[1] - nbytes) // ITEMSIZE[dtype]
        header["shm"] = {"region": target.region[0], "offset": between(draw, 0, slots) * ITEMSIZE[dtype]}
        return header, None
    return header, Body(nbytes, between(draw, 0, 2**32))


def constraints(draw) -> dict[str, Any]:
    c: dict[str, Any] = {}
    for key, low, high in (("min_accuracy", 0.0, 1.0), ("max_latency_ms", 0.001, 1e6),
                           ("max_energy_mj", 0.001, 1e6), ("latency_confidence", 0.5, 0.999)):
        if flag(draw):
            c[key] = draw(st.floats(low, high))
    return c


def selection_fields(draw, model: ModelInfo, target: Target) -> dict[str, Any]:
    """The optional fields shared by ``infer`` and ``explain``, all valid."""
    h: dict[str, Any] = {}
    if flag(draw):
        h["version"] = pick(draw, model.versions)
    if flag(draw):
        h["constraints"] = constraints(draw)
    if flag(draw):
        h["objective"] = pick(draw, OBJECTIVES)
    if flag(draw):
        h["on_infeasible"] = pick(draw, ON_INFEASIBLE)
    if between(draw, 0, 3) == 0:
        pin = {}
        if flag(draw):
            pin["variant"] = pick(draw, model.variants)
        if flag(draw):
            pin["placement"] = pick(draw, target.placements)
        h["pin"] = pin
    if flag(draw):
        h["explain"] = flag(draw)
    if flag(draw):
        h["client"] = "c" + draw(TEXT)
    if between(draw, 0, 4) == 0:   # unknown keys are ignored (§3)
        for _ in range(between(draw, 1, 2)):
            h["x-" + draw(TEXT)] = draw(VALUES)
    return h


def valid_request(draw, target: Target) -> tuple[dict, list[Any]]:
    """A header PROTOCOL.md accepts, of any type but ``reload``, and its bodies."""
    rtype = pick(draw, ("infer",) * 5 + ("explain",) * 2 + ("shm_register",) * 2 + ("shm_unregister",) + PLAIN_CONTROL)
    h: dict[str, Any] = {"type": rtype, "id": ID_SLOT}
    bodies: list[Any] = []
    if rtype in ("infer", "explain"):
        model = pick(draw, target.models)
        h["model"] = model.name
        h.update(selection_fields(draw, model, target))
        if rtype == "infer":
            inputs = [tensor(draw, shape, model.input_dtypes, target) for shape in model.inputs]
            h["inputs"] = [t for t, _ in inputs]
            bodies = [b for _, b in inputs if b is not None]
            need = 4 * h["inputs"][0]["shape"][0] * model.output_elems
            if target.region and need <= target.region[1] and between(draw, 0, 5) == 0:
                h["outputs_to"] = {"region": target.region[0],
                                   "offset": 4 * between(draw, 0, (target.region[1] - need) // 4)}
    elif rtype == "shm_register":
        h["size"] = between(draw, 1, 4096)
        if target.owner_pid is not None and flag(draw):
            h["owner_pid"] = target.owner_pid
    elif rtype == "shm_unregister":   # never the run's own region: UNKNOWN_REGION, a valid exchange
        h["region"] = "adaptd-0-" + draw(HEX_NAME)
    return h, bodies


# --- near-valid requests: one field broken -------------------------------------------------------

REQUIRED = {"infer": ("model", "inputs"), "explain": ("model",), "shm_register": ("size",),
            "shm_unregister": ("region",)}
SELECTION_FIELDS = ("version", "constraints", "objective", "on_infeasible", "pin", "explain", "client")
FIELDS = {
    "infer": ("id", "type", "model", *SELECTION_FIELDS, "inputs", "inputs", "inputs", "inputs", "bodies",
              "outputs_to"),
    "explain": ("id", "type", "model", *SELECTION_FIELDS),
    "shm_register": ("id", "type", "size", "size", "owner_pid", "owner_pid"),
    "shm_unregister": ("id", "type", "region"),
}


def break_field(draw, h: dict, bodies: list[Any], target: Target) -> str:
    """Break one field of ``h`` (in place) so that PROTOCOL.md rules the message out; return
    what was broken, as ``<type>.<field>[.<what>]``."""
    rtype = h["type"]
    model = next((m for m in target.models if m.name == h.get("model")), None)
    what = pick(draw, FIELDS.get(rtype, ("id", "type")))
    if what in REQUIRED.get(rtype, ()) and between(draw, 0, 5) == 0:
        del h[what]
        return f"{rtype}.{what}.missing"
    if what == "id":    # an empty string is a string: the protocol does not rule it out
        kind = pick(draw, ("missing", "long", "type"))
        if kind == "missing":
            del h["id"]
        elif kind == "long":
            h["id"] = "i" * between(draw, MAX_ID_BYTES + 1, 4096)
        else:
            h["id"] = any_of(draw, st.none(), *NON_STRINGS)
        return f"{rtype}.id.{kind}"
    if what == "type":
        h["type"] = not_one_of(draw, REQUEST_TYPES)
        return f"{rtype}.type"
    if what == "model":
        h["model"] = not_one_of(draw, tuple(m.name for m in target.models))
        return f"{rtype}.model"
    if what == "version":
        # an int naming a loaded version is left out: the daemon may read it as that version
        h["version"] = (other_text(draw, model.versions if model else ()) if flag(draw)
                        else any_of(draw, st.booleans(), FLOATS, BINARY, LISTS, MAPS, EXT))
        return f"{rtype}.version"
    if what == "constraints":
        key = pick(draw, ("min_accuracy", "max_latency_ms", "max_energy_mj", "latency_confidence", "map"))
        if key == "map":
            h["constraints"] = any_of(draw, TEXT, INTS, FLOATS, LISTS)
        else:
            out_of_range = {"min_accuracy": (st.floats(max_value=-1e-9), st.floats(min_value=1.000001)),
                            "latency_confidence": (st.floats(max_value=0.4999), st.floats(min_value=1.0)),
                            }.get(key, (st.floats(max_value=0.0),))
            h["constraints"] = {**(h.get("constraints") or {}),
                                key: any_of(draw, NAN_INF, st.booleans(), TEXT, LISTS, MAPS, *out_of_range)}
        return f"{rtype}.constraints.{key}"
    if what in ("objective", "on_infeasible"):
        h[what] = not_one_of(draw, OBJECTIVES if what == "objective" else ON_INFEASIBLE)
        return f"{rtype}.{what}"
    if what == "pin":
        kind = pick(draw, ("map", "variant", "placement"))
        if kind == "map":
            h["pin"] = any_of(draw, TEXT, INTS, LISTS)
        elif kind == "variant":
            h["pin"] = {"variant": not_one_of(draw, model.variants if model else ())}
        else:
            h["pin"] = {"placement": not_one_of(draw, target.placements)}
        return f"{rtype}.pin.{kind}"
    if what == "explain":
        h["explain"] = any_of(draw, INTS, FLOATS, TEXT, BINARY, LISTS, MAPS, EXT)
        return f"{rtype}.explain"
    if what == "client":
        h["client"] = any_of(draw, *NON_STRINGS)
        return f"{rtype}.client"
    if what == "inputs":
        return "infer.inputs." + break_inputs(draw, h, bodies, target, model)
    if what == "bodies":
        kind = pick(draw, ("short", "long", "extra", "missing"))
        inline = [i for i, b in enumerate(bodies) if isinstance(b, Body)]
        if kind in ("short", "long") and inline:
            i = pick(draw, inline)
            n = bodies[i].nbytes + (1 if kind == "long" else -1) * between(draw, 1, 64)
            if n < 0:
                bodies.pop(i)
            else:
                bodies[i] = Body(n, bodies[i].seed)
        elif kind == "missing" and bodies:
            bodies.pop()
        else:
            kind = "extra"
            bodies.append(Body(between(draw, 0, 4096), between(draw, 0, 2**32)))
        return f"infer.bodies.{kind}"
    if what == "outputs_to":
        kind, h["outputs_to"] = bad_shm_ref(draw, target, itemsize=4)
        return f"infer.outputs_to.{kind}"
    if what == "size":
        h["size"] = any_of(draw, st.integers(-2**63, 0), st.integers((1 << 30) + 1, 2**64 - 1), *NON_INTS)
        return "shm_register.size"
    if what == "owner_pid":
        h["owner_pid"] = any_of(draw, st.integers(-2**63, 0), st.integers(PID_NEVER + 1, 2**64 - 1),
                                st.sampled_from((2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1)), *NON_INTS)
        return "shm_register.owner_pid"
    if what == "region":
        h["region"] = any_of(draw, st.just(""), *NON_STRINGS)
        return "shm_unregister.region"
    raise AssertionError(what)


def bad_shm_ref(draw, target: Target, itemsize: int) -> tuple[str, Any]:
    """A region reference §11 rules out: not a map, a region that is not a name or not
    registered, an offset that is not a non-negative int, out of the region, or misaligned."""
    region = target.region or ("adaptd-0-0", 0)
    kind = pick(draw, ("map", "region", "offset", "unknown", "bounds", "misaligned"))
    ref: Any = {"region": region[0], "offset": 0}
    if kind == "map":
        ref = any_of(draw, TEXT, INTS, LISTS)
    elif kind == "region":
        ref["region"] = any_of(draw, st.just(""), *NON_STRINGS)
    elif kind == "offset":
        ref["offset"] = any_of(draw, NEGATIVE_INTS, st.integers(2**63, 2**64 - 1), *NON_INTS)
    elif kind == "unknown":
        ref["region"] = "adaptd-0-" + draw(HEX_NAME)
    elif kind == "bounds" or itemsize == 1:
        ref["offset"] = region[1] - region[1] % 8 + 8 * between(draw, 0, 1 << 20)
    else:
        ref["offset"] = itemsize * between(draw, 0, 64) + between(draw, 1, itemsize - 1)
    return kind, ref


def break_inputs(draw, h: dict, bodies: list[Any], target: Target, model: ModelInfo | None) -> str:
    inputs = h["inputs"]
    kind = pick(draw, ("list", "count", "item", "dtype", "dtype", "shape", "shape", "shm"))
    i = between(draw, 0, len(inputs) - 1)
    if kind == "list":
        h["inputs"] = any_of(draw, st.none(), TEXT, INTS, MAPS)
    elif kind == "count":
        h["inputs"] = inputs + [dict(inputs[0])] * between(draw, 1, 3) if flag(draw) else []
    elif kind == "item":
        inputs[i] = any_of(draw, st.none(), TEXT, INTS, LISTS)
    elif kind == "dtype":
        untaken = sorted(set(DTYPES) - {"float32", *(model.input_dtypes if model else ())})
        how = pick(draw, ("untaken", "string", "list", "map", "other"))
        inputs[i] = {**inputs[i], "dtype": {
            "untaken": lambda: pick(draw, untaken) if untaken else "complex64",
            "string": lambda: other_text(draw, DTYPES),
            "list": lambda: draw(st.lists(st.sampled_from(DTYPES), max_size=3)),
            "map": lambda: draw(st.dictionaries(st.sampled_from(DTYPES), SCALARS, max_size=2)),
            "other": lambda: any_of(draw, st.none(), INTS, FLOATS, BINARY, EXT),
        }[how]()}
        kind = f"dtype.{how}"
    elif kind == "shape":
        shape = list(inputs[i]["shape"])
        j = between(draw, 0, len(shape) - 1)
        bad = pick(draw, ("type", "negative", "huge", "rank", "dims", "zero_batch", "element"))
        if bad == "type":
            shape = any_of(draw, st.none(), TEXT, INTS, MAPS)
        elif bad == "negative":
            shape[j] = draw(NEGATIVE_INTS)
        elif bad == "huge":
            shape[j] = pick(draw, (2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1))
        elif bad == "dims" and len(shape) > 1:
            j = between(draw, 1, len(shape) - 1)
            shape[j] += between(draw, 1, 7)
        elif bad == "zero_batch" and "shm" not in inputs[i]:   # inline: its body no longer fits either
            shape[0] = 0
        elif bad == "element":
            shape[j] = any_of(draw, st.none(), *NON_INTS)
        else:
            bad = "rank"
            shape = shape + [1] * between(draw, 1, 20) if flag(draw) else shape[:-1]
        inputs[i] = {**inputs[i], "shape": shape}
        kind = f"shape.{bad}"
    else:
        spec = dict(inputs[i])
        if "shm" not in spec and bodies:
            bodies.pop(min(i, len(bodies) - 1))   # the tensor moves to a region: no body for it
        bad, spec["shm"] = bad_shm_ref(draw, target, ITEMSIZE.get(spec.get("dtype"), 1))
        inputs[i] = spec
        kind = f"shm.{bad}"
    return kind


# --- frame-level breakage and whole drafts --------------------------------------------------------

FRAME_DEFECTS = ("delimiter", "no_delimiter", "signature", "version", "header_bytes", "header_truncated",
                 "header_not_map", "header_key_types", "too_few_frames")


def break_frames(draw) -> tuple[str, Any]:
    kind = pick(draw, FRAME_DEFECTS)
    param: Any = {
        "delimiter": lambda: draw(st.binary(min_size=1, max_size=16)),
        "no_delimiter": lambda: None,
        "signature": lambda: b"AD" + draw(st.binary(max_size=10)) if flag(draw) else draw(st.binary(max_size=12)),
        "version": lambda: b"ADPT" + draw(st.sampled_from(("00", "02", "10", "99", "1", "001", "xx"))).encode(),
        "header_bytes": lambda: draw(st.binary(max_size=64)),
        "header_truncated": lambda: between(draw, 0, 1 << 16),
        "header_not_map": lambda: any_of(draw, SCALARS, LISTS),
        "header_key_types": lambda: draw(st.dictionaries(st.one_of(INTS, st.booleans(), FLOATS), SCALARS,
                                                         min_size=1, max_size=3)),
        "too_few_frames": lambda: between(draw, 0, 2),
    }[kind]()
    if kind == "signature" and param == SIGNATURE:
        param = b"ADPT0"
    return kind, param


def make_draft(draw, target: Target) -> Draft:
    """Near-valid, valid and frame-broken requests in about 3 : 1 : 1."""
    h, bodies = valid_request(draw, target)
    mode = pick(draw, ("defect", "defect", "defect", "valid", "frame"))
    if mode == "valid":
        return Draft(h, bodies)
    if mode == "frame":
        kind, param = break_frames(draw)
        return Draft(h, bodies, valid=False, defect=f"frame:{kind}", frame=(kind, param))
    name = break_field(draw, h, bodies, target)
    return Draft(h, bodies, valid=False, defect=name)


@st.composite
def drafts(draw, target: Target) -> Draft:
    """The Hypothesis strategy of :func:`make_draft`."""
    return make_draft(draw, target)


# --- encoding ----------------------------------------------------------------------------

def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def encode(draft: Draft, request_id: str) -> tuple[list[bytes], bool]:
    """The frames of ``draft`` with ``request_id`` in its id slot, and whether the daemon can
    read that id back (the slot was used and the frames let the header be read)."""
    h = draft.header
    slot = isinstance(h, dict) and h.get("id") is ID_SLOT
    if slot:
        h = {**h, "id": request_id}
    header = pack(h)
    bodies = [b.make() if isinstance(b, Body) else b for b in draft.bodies]
    kind, param = draft.frame
    if kind == "none":
        return [b"", SIGNATURE, header, *bodies], slot
    frames = {
        "delimiter": lambda: [param, SIGNATURE, header, *bodies],
        "no_delimiter": lambda: [SIGNATURE, header, *bodies],
        "signature": lambda: [b"", param, header, *bodies],
        "version": lambda: [b"", param, header, *bodies],
        "header_bytes": lambda: [b"", SIGNATURE, param, *bodies],
        "header_truncated": lambda: [b"", SIGNATURE, header[:param % max(1, len(header))], *bodies],
        "header_not_map": lambda: [b"", SIGNATURE, pack(param), *bodies],
        # keys that are not strings, and no type or id: whether such keys are ignored or
        # refused, the message is not a request
        "header_key_types": lambda: [b"", SIGNATURE, pack(param), *bodies],
        "too_few_frames": lambda: [b"", SIGNATURE, header][:param],
    }[kind]()
    return frames or [b""], False
