"""Admission: what an inference request may run on, checked before anything is chosen or queued.

Contract
--------
* :meth:`Admission.admit` takes a parsed request (``adaptd.wire.protocol.Request``), its inline
  body frames and the peer it came from, and returns an :class:`Admitted`: the model version,
  the candidate arms (the pins applied, set-aside arms removed, only variants that take the
  input's dtypes), and the shared-memory references the executor needs. Every problem is a
  ``ProtocolError`` with the code PROTOCOL.md §6 gives it (UNKNOWN_MODEL, UNKNOWN_VARIANT,
  UNKNOWN_PLACEMENT, BAD_INPUT, UNKNOWN_REGION, WORKER_FAILED when every candidate is set aside).
  Client values quoted in messages are cut (``protocol.shown``).
* A repeated header (one with a ``derived`` map, :mod:`adaptd.daemon.request_memo`) admitted
  once keeps what depends on the header and the registry alone (the model, the candidates, the
  inputs' shapes checked, the body sizes they need) with the registry's generation (an entry of
  an older one is replaced), while no arm is set aside; each repeat still checks its bodies, so
  its errors are those a first request gets. 10 us of the daemon's 80 per request in its hot
  loop, then 1. Its region references are kept too, for copies from the same peer while every
  region they name is live (not unregistered, its owner not gone): the same regions at the same
  offsets and sizes pass the same checks; a copy from another peer, or after a region ended, is
  checked afresh (UNKNOWN_REGION, as a first request).
* The arms every pins leave (one tuple per model version, variant pin and placement pin: none, a
  variant, a placement, or both; every arm's own) and the placements that can run each model
  version are worked out once per registry generation, by :meth:`Admission.prepare` (the daemon
  calls it at start and after a reload, off the request path; a first call with a newer
  registry does it too): a new header, a client's first request or the first on an arm say,
  filters no arms (set-aside ones are removed per request), and the policy keeps its candidate
  ids for that tuple. Pins that leave no arm are not kept: they raise, each time.
* :meth:`Admission.refuse_early` answers, before a request is parsed, whether its model is known
  and every placement that could run it (the pinned one, when the request pins a placement of
  the model) has a full queue: under overload such requests are refused BUSY for the price of a
  header decode.
* Admission reads the registry, the regions and the queues and changes nothing but the regions'
  bounds checks (none of which touch tensor bytes). The daemon's main thread only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from adaptd.daemon.arms import ArmHealth
from adaptd.daemon.placements import Placement
from adaptd.daemon.registry import Arm, ModelVersion, Registry
from adaptd.daemon.shm import RegionError, RegionTable
from adaptd.variants.preprocess import accepted_dtypes
from adaptd.variants.preprocess import accepts as accepts_dtypes
from adaptd.wire import protocol as proto


def busy_reply(placement: str, queue_limit: int) -> tuple[str, dict[str, Any]]:
    """BUSY's message and details for a placement whose queue is full (PROTOCOL.md §6)."""
    return (f"placement {placement} has {queue_limit} requests queued; retry later",
            {"placement": placement, "queue_limit": queue_limit})


@dataclass(slots=True)
class Admitted:
    model: ModelVersion
    candidates: Sequence[Arm]
    shm_inputs: dict[int, dict[str, Any]]        # input index -> {region, offset, size}
    outputs_to: dict[str, Any] | None            # {region, offset, size}

    @property
    def regions(self) -> tuple[str, ...]:
        """The regions the execution reads or writes (held until its outcome)."""
        if not self.shm_inputs and not self.outputs_to:   # (inputs inline: most requests)
            return ()
        names = [ref["region"] for ref in self.shm_inputs.values()]
        if self.outputs_to:
            names.append(self.outputs_to["region"])
        return tuple(names)


class Admission:
    def __init__(self, registry: Callable[[], Registry], placements: list[Placement], health: ArmHealth,
                 regions: Callable[[], RegionTable], queue_length: Callable[[str], int], queue_limit: int,
                 max_batch: int) -> None:
        self._registry = registry
        self._placements = {p.name: p for p in placements}
        self._runtimes = {p.runtime for p in placements}
        self._health = health
        self._regions = regions
        self._queue_length = queue_length
        self._queue_limit = queue_limit
        self._max_batch = max_batch
        # Worked out per model version for one registry generation (see prepare): the placements
        # that can run it, and the arms each pins leave (see candidates).
        self._placements_of: dict[str, set[str]] = {}
        self._pinned: dict[tuple[str, str | None, str | None], tuple[Arm, ...]] = {}
        self._kept_generation: int | None = None

    def prepare(self, registry: Registry) -> None:
        """Work out, for a registry generation not seen before, the arms every pins leave and the
        placements of each model version (what was kept for an older one is let go)."""
        if self._kept_generation != registry.generation:
            self._placements_of, self._pinned = _by_pins(registry)
            self._kept_generation = registry.generation

    # --- before parsing ------------------------------------------------------------------------
    def refuse_early(self, header: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The BUSY reply's message and details if an inference request's model is known and
        every placement that could run it (the pinned one, if it pins one of the model's) has a
        full queue (see the module contract); else None. The caller checks retries and replays
        first."""
        model_name, version = header.get("model"), header.get("version")
        if not isinstance(model_name, str) or not (version is None or isinstance(version, str)):
            return None
        registry = self._registry()
        model = registry.get(model_name, version)
        if model is None:
            return None
        self.prepare(registry)
        places = self._placements_of.get(model.version_dir)
        if places is None:   # (a registry of a generation prepared before under another object)
            places = {a.placement.name for a in model.arms}
        if not places:   # no placement runs it: the request's own error, from its parse on
            return None
        limit = self._queue_limit
        pin = header.get("pin")
        if isinstance(pin, dict):   # a request pinned to one placement waits only for that one's queue
            pinned = pin.get("placement")
            if isinstance(pinned, str) and pinned in places:
                if self._queue_length(pinned) <= limit:
                    return None
                return busy_reply(pinned, limit)
        if all(self._queue_length(name) > limit for name in places):
            return ("every placement that can run this model has a full queue; retry later", {"queue_limit": limit})
        return None

    # --- admission ------------------------------------------------------------------------------
    def admit(self, request: proto.Request, bodies: list[memoryview], peer: bytes) -> Admitted:
        # A repeated header admitted before, against this registry, with no arm set aside: what
        # depends on the header alone is kept with it (its ``derived`` map); the bodies are
        # checked afresh, and the regions unless the same peer's last copy passed with every
        # region it names still live, so every error is the one a first request gets.
        generation = None
        if request.derived is not None and not self._health.any():
            generation = self._registry().generation
            kept = request.derived.get("admitted")
            if kept is not None and kept[0] == generation:
                _, model, candidates, accepting, nbytes, names_regions = kept
                if len(bodies) != len(nbytes) or _sizes_differ(bodies, nbytes):
                    self._check_inputs(request, candidates, bodies)   # raises: the bodies' error
                if not names_regions:
                    return Admitted(model, accepting, {}, None)
                regions = request.derived.get("regions")   # (the last copy's, kept below)
                if regions is not None and regions[0] == peer:
                    for region in regions[1]:
                        if region.ended:
                            break
                    else:
                        return Admitted(model, accepting, regions[2], regions[3])
                shm_inputs, outputs_to = self._check_regions(request, candidates, peer)
                self._keep_regions(request, peer, shm_inputs, outputs_to)
                return Admitted(model, accepting, shm_inputs, outputs_to)
        model, candidates = self.candidates(request)
        self._check_inputs(request, candidates, bodies)
        shm_inputs, outputs_to = self._check_regions(request, candidates, peer)
        accepting = self._accepting(request, candidates)
        if generation is not None:   # (an older generation's entry replaced: its registry is gone)
            request.derived["admitted"] = (generation, model, candidates, accepting,
                                           tuple(s.nbytes for s in request.inputs if s.shm is None),
                                           bool(shm_inputs) or outputs_to is not None)
            request.derived.pop("regions", None)   # (checked against that registry's outputs: again)
        return Admitted(model, accepting, shm_inputs, outputs_to)

    def candidates(self, request: proto.Request) -> tuple[ModelVersion, Sequence[Arm]]:
        """The model version and the arms the request's pins leave, set-aside arms removed. The
        arms a model's pins leave are worked out per registry generation (``prepare``): one
        tuple per pins, which the policy's candidate ids are kept for in turn."""
        registry = self._registry()
        model = registry.get(request.model, request.version)
        if model is None:
            known = ", ".join(sorted(registry.models)) or "none"
            what = f"model {proto.shown(request.model)}" + (f" version {proto.shown(request.version)}"
                                                             if request.version else "")
            raise proto.ProtocolError(proto.UNKNOWN_MODEL, f"{what} is not loaded; models: {known}", request.id)
        self.prepare(registry)
        pins = (model.version_dir, request.pin_variant, request.pin_placement)   # (a str: a Path hashes in Python)
        arms = self._pinned.get(pins)
        if arms is None:   # pins that leave no arm: the error that says why
            arms = self._pinned_arms(model, request)
        if self._health.any():
            now = time.monotonic()
            usable = [a for a in arms if self._health.why(model, a, now) is None]
            if not usable:
                why = self._health.why(model, arms[0], now)
                raise proto.ProtocolError(proto.WORKER_FAILED, f"no arm can serve this request now: {why}",
                                          request.id, {"set_aside": [{"variant": a.variant.name,
                                                                       "placement": a.placement.name} for a in arms]})
            arms = usable
        return model, arms

    def _pinned_arms(self, model: ModelVersion, request: proto.Request) -> tuple[Arm, ...]:
        """The model's arms that the request's pins leave (UNKNOWN_VARIANT or UNKNOWN_PLACEMENT
        when a pin names none)."""
        arms = list(model.arms)
        if request.pin_variant is not None:
            if request.pin_variant not in model.variants:
                raise proto.ProtocolError(proto.UNKNOWN_VARIANT,
                                          f"{model.name}:{model.version} has no variant {proto.shown(request.pin_variant)}; "
                                          f"variants: {', '.join(model.variants)}", request.id)
            runtime = model.variants[request.pin_variant].runtime
            if request.pin_variant in model.unservable and runtime in self._runtimes:
                # refused for its file (a runtime no placement has is UNKNOWN_PLACEMENT, below)
                raise proto.ProtocolError(proto.UNKNOWN_VARIANT, f"variant {request.pin_variant} is not served: "
                                          f"{model.unservable[request.pin_variant]}", request.id)
            arms = [a for a in arms if a.variant.name == request.pin_variant]
        if request.pin_placement is not None:
            if request.pin_placement not in self._placements:
                raise proto.ProtocolError(proto.UNKNOWN_PLACEMENT,
                                          f"no placement {proto.shown(request.pin_placement)}; placements: "
                                          f"{', '.join(self._placements)}", request.id)
            arms = [a for a in arms if a.placement.name == request.pin_placement]
        if not arms:
            raise proto.ProtocolError(proto.UNKNOWN_PLACEMENT,
                                      model.no_arm_reason(request.pin_variant, request.pin_placement), request.id)
        return tuple(arms)

    @staticmethod
    def _accepting(request: proto.Request, candidates: Sequence[Arm]) -> Sequence[Arm]:
        """The candidates that take the request's input dtypes (float32 goes to every variant;
        another dtype only to those that take it: adaptd.variants.preprocess.accepts)."""
        names = [s.dtype_name for s in request.inputs]
        if all(n == "float32" for n in names):
            return candidates
        accepted = [a for a in candidates if accepts_dtypes(a.variant, names)]
        if not accepted:
            dtypes = accepted_dtypes(a.variant for a in candidates)
            raise proto.ProtocolError(proto.BAD_INPUT, f"no variant takes input dtype(s) {names}; "
                                      f"send one of {dtypes}", request.id)
        return accepted

    def _check_inputs(self, request: proto.Request, candidates: Sequence[Arm], bodies: list[memoryview]) -> None:
        want = candidates[0].variant.inputs
        if len(request.inputs) != len(want):
            raise proto.ProtocolError(proto.BAD_INPUT, f"the model takes {len(want)} input(s); the request has "
                                      f"{len(request.inputs)}", request.id)
        inline = [s for s in request.inputs if s.shm is None]
        if len(bodies) != len(inline):
            raise proto.ProtocolError(proto.BAD_INPUT, f"{len(inline)} inline input header(s) but {len(bodies)} "
                                      "body frame(s)", request.id)
        frames = iter(bodies)
        for i, (spec, w) in enumerate(zip(request.inputs, want)):
            expected = tuple(w.shape)
            if len(spec.shape) != len(expected) or tuple(spec.shape[1:]) != expected[1:] or spec.shape[0] < 1:
                raise proto.ProtocolError(proto.BAD_INPUT, f"input {i}: shape {list(spec.shape)} does not match the "
                                          f"model's {list(expected)}", request.id)
            if spec.shape[0] > self._max_batch:
                raise proto.ProtocolError(proto.BAD_INPUT, f"input {i}: a batch of {spec.shape[0]}; the limit is "
                                          f"{self._max_batch} (server.max_batch)", request.id,
                                          {"max_batch": self._max_batch})
            if spec.shm is not None:
                continue
            body = next(frames)
            if len(body) != spec.nbytes:
                raise proto.ProtocolError(proto.BAD_INPUT, f"input {i}: body is {len(body)} bytes but dtype "
                                          f"{spec.dtype.name} and shape {list(spec.shape)} need {spec.nbytes}",
                                          request.id)

    def _keep_regions(self, request: proto.Request, peer: bytes, shm_inputs: dict[int, dict[str, Any]],
                      outputs_to: dict[str, Any] | None) -> None:
        """A repeat's region references, kept for its next copies from the same peer while every
        region they name is live: the copies name the same regions at the same offsets and sizes,
        and a region's size and owner never change, so the checks would give the same answer."""
        table = self._regions().regions
        live = tuple(table[ref["region"]] for ref in (*shm_inputs.values(), *([outputs_to] if outputs_to else [])))
        request.derived["regions"] = (peer, live, shm_inputs, outputs_to)

    def _check_regions(self, request: proto.Request, candidates: Sequence[Arm], peer: bytes
                       ) -> tuple[dict[int, dict[str, Any]], dict[str, Any] | None]:
        """Bounds-check every region a request names (§11.3), without touching the bytes.

        Returns the executor's references: ``{input index: {region, offset, size}}`` and the
        outputs' ``{region, offset, size}`` (or None)."""
        shm_inputs: dict[int, dict[str, Any]] = {}
        if request.outputs_to is None and all(spec.shm is None for spec in request.inputs):
            return shm_inputs, None
        regions = self._regions()
        try:
            for i, spec in enumerate(request.inputs):
                if spec.shm is None:
                    continue
                if spec.shm.offset % spec.dtype.itemsize:
                    raise proto.ProtocolError(proto.BAD_INPUT, f"input {i}: offset {spec.shm.offset} is not a multiple "
                                              f"of {spec.dtype.name}'s {spec.dtype.itemsize} bytes", request.id)
                region = regions.check(spec.shm.region, spec.shm.offset, spec.nbytes, peer)
                shm_inputs[i] = {"region": region.name, "offset": spec.shm.offset, "size": region.size}
            outputs_to = None
            if request.outputs_to is not None:
                ref = request.outputs_to
                if ref.offset % 4:
                    raise proto.ProtocolError(proto.BAD_INPUT, f"outputs_to: offset {ref.offset} is not a multiple "
                                              "of 4 bytes (outputs are float32)", request.id)
                batch = request.inputs[0].shape[0] if request.inputs else 1
                need = sum(4 * batch * math.prod(o.shape[1:]) for o in candidates[0].variant.outputs)
                region = regions.check(ref.region, ref.offset, need, peer)
                outputs_to = {"region": region.name, "offset": ref.offset, "size": region.size}
        except RegionError as exc:
            code = proto.UNKNOWN_REGION if exc.kind == "unknown" else proto.BAD_INPUT
            raise proto.ProtocolError(code, exc.message, request.id) from None
        return shm_inputs, outputs_to


def _by_pins(registry: Registry) -> tuple[dict[str, set[str]], dict[tuple[str, str | None, str | None],
                                                                     tuple[Arm, ...]]]:
    """For each model version of ``registry``: the placements that can run it, and the arms each
    pins that leave some arm leave ((version dir, variant pin or None, placement pin or None) ->
    the arms, in the version's order)."""
    placements: dict[str, set[str]] = {}
    pinned: dict[tuple[str, str | None, str | None], list[Arm]] = {}
    for versions in registry.models.values():
        for model in versions.values():
            vd = model.version_dir
            placements[vd] = {a.placement.name for a in model.arms}
            for a in model.arms:
                variant, placement = a.variant.name, a.placement.name
                for pins in ((vd, None, None), (vd, variant, None), (vd, None, placement), (vd, variant, placement)):
                    pinned.setdefault(pins, []).append(a)
    return placements, {pins: tuple(arms) for pins, arms in pinned.items()}


def _sizes_differ(bodies: list[memoryview], nbytes: tuple[int, ...]) -> bool:
    """Whether a body's length is not its header's size (a loop: ``any`` over a generator resumes
    it once a body, each a call on a path run cold)."""
    for body, n in zip(bodies, nbytes):
        if len(body) != n:
            return True
    return False
