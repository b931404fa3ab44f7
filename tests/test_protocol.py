"""The codec against PROTOCOL.md: the spec's examples are parsed and checked here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptd.wire import protocol as p
from adaptd.wire import records, replies

SPEC = Path(__file__).resolve().parents[1] / "PROTOCOL.md"


def spec_examples() -> dict[str, dict]:
    text = SPEC.read_text(encoding="utf-8")
    blocks = re.findall(r"```json example:(\w+)\n(.*?)```", text, flags=re.S)
    return {name: json.loads(body) for name, body in blocks}


def test_spec_has_every_example():
    assert set(spec_examples()) == {"request", "result", "error", "control", "ok", "record"}


def test_the_builders_make_the_spec_examples():
    """The daemon builds every reply and record with these functions: built from the examples'
    own values, they must give the examples back, key for key."""
    ex = spec_examples()
    result = ex["result"]
    request = p.parse_request(ex["request"])
    met = replies.met_constraints(request.constraints.as_dict(), result["predicted"]["accuracy"],
                                  result["timing"]["total_ms"], result["energy"]["energy_mj"])
    built = replies.result_header(
        request_id=result["id"], model=result["model"], version=result["version"], variant=result["variant"],
        placement=result["placement"], outputs=result["outputs"], **result["timing"],
        energy_mj=result["energy"]["energy_mj"], energy_source=result["energy"]["source"],
        energy_estimated=result["energy"]["estimated"], predicted=result["predicted"], constraints_met=met,
        reason_code=result["reason"]["code"], reason_text=result["reason"]["text"],
        runtime=replies.runtime_cost(result["runtime"]["cpu_ms"], result["runtime"]["energy_mj"],
                                     result["runtime"]["source"]))
    assert built == result
    error = ex["error"]
    assert p.error_header(error["code"], error["message"], error["id"]) == error
    ok = ex["ok"]
    assert replies.ok_header(ok["of"], ok["id"], ok["body"]) == ok
    record = ex["record"]
    assert records.selection_record(
        ts=record["ts"], request_id=request.id, client=record["client"], model=result["model"],
        version=result["version"], objective=request.objective, on_infeasible=request.on_infeasible,
        constraints=request.constraints.as_dict(), outcome="ok", error_code=None, variant=result["variant"],
        placement=result["placement"], reason_code=result["reason"]["code"], reason=result["reason"]["text"],
        predicted=result["predicted"], timing=result["timing"], energy=result["energy"],
        met=result["constraints_met"], runtime=result["runtime"]) == record
    assert set(record) == set(records.COLUMN_NAMES)


def test_spec_request_example_parses_with_its_body():
    header = spec_examples()["request"]
    image = np.zeros((1, 16, 16, 1), np.float32)
    frames = p.encode(header, [p.tensor_body(image)])
    decoded, bodies = p.decode([bytes(memoryview(f)) if not isinstance(f, bytes) else f for f in frames])
    req = p.parse_request(decoded)
    assert req.type == "infer" and req.id == "6f1c2a" and req.model == "digits"
    assert req.constraints == p.Constraints(min_accuracy=0.95, max_latency_ms=5.0)
    assert req.objective == "energy" and req.on_infeasible == "best_effort"
    (tensor,) = p.tensors_from_frames(req.inputs, bodies)
    assert tensor.shape == (1, 16, 16, 1) and tensor.dtype == np.float32
    assert len(bodies[0]) == 1024  # as the spec says


def test_spec_result_and_error_examples_use_documented_fields():
    ex = spec_examples()
    result = ex["result"]
    assert set(result["timing"]) == {"queue_ms", "compute_ms", "total_ms"}
    assert result["energy"]["estimated"] == result["energy"]["source"].startswith("estimated")
    (out,) = p.parse_tensor_headers(result["outputs"], "outputs", result["id"])
    assert out.nbytes == 40  # "one body frame of 40 bytes"
    assert ex["error"]["code"] in p.ERROR_CODES
    assert ex["ok"]["of"] == ex["control"]["type"] and ex["ok"]["id"] == ex["control"]["id"]
    assert p.parse_request(ex["control"]).type == "health"


def test_every_error_code_is_documented():
    text = SPEC.read_text(encoding="utf-8")
    for code in p.ERROR_CODES:
        assert f"`{code}`" in text, code


def test_tensor_body_is_not_copied():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    frames = p.encode({"type": "x"}, [p.tensor_body(arr)])
    assert frames[3] is arr


def test_tensors_are_views_over_the_frames():
    body = bytearray(np.arange(4, dtype=np.int32).tobytes())
    (t,) = p.tensors_from_frames([p.TensorSpec(np.dtype("int32"), (4,))], [memoryview(body)])
    body[0:4] = np.int32(7).tobytes()
    assert t[0] == 7


@pytest.mark.parametrize(
    "frames, code",
    [
        ([b"", p.SIGNATURE], p.MALFORMED),
        ([b"x", p.SIGNATURE, msgpack.packb({})], p.MALFORMED),
        ([b"", b"HTTP/1", msgpack.packb({})], p.MALFORMED),
        ([b"", b"ADPT02", msgpack.packb({})], p.UNSUPPORTED_VERSION),
        ([b"", p.SIGNATURE, b"\xc1\xc1"], p.MALFORMED),
        ([b"", p.SIGNATURE, msgpack.packb([1, 2])], p.MALFORMED),
    ],
)
def test_malformed_frames(frames, code):
    with pytest.raises(p.ProtocolError) as info:
        p.decode(frames)
    assert info.value.code == code


GOOD = {"type": "infer", "id": "a", "model": "m", "inputs": [{"dtype": "float32", "shape": [1, 2]}]}


SHAPE_MESSAGE = "inputs[0]: shape must be an array of non-negative ints"


@pytest.mark.parametrize(
    "patch, code, message",
    [
        ({"id": None}, p.BAD_REQUEST, "'id' must be a non-empty string"),
        ({"id": "x" * 200}, p.BAD_REQUEST, "'id' is longer than 128 bytes"),
        ({"type": "dance"}, p.BAD_REQUEST, "'type' must be one of infer, models, placements, stats, health, reload, "
                                           "explain, fidelity_export, shm_register, shm_unregister, shm_regions; "
                                           "got 'dance'"),
        ({"model": 3}, p.BAD_REQUEST, "'model' must be a non-empty string of at most 128 bytes"),
        ({"inputs": None}, p.BAD_REQUEST, "'inputs' is required"),
        ({"inputs": [{"dtype": "complex64", "shape": [1]}]}, p.BAD_INPUT, "inputs[0]: unsupported dtype 'complex64'"),
        ({"inputs": [{"dtype": "float32", "shape": [-1]}]}, p.BAD_INPUT, SHAPE_MESSAGE),
        ({"inputs": [{"dtype": "float32", "shape": [1, True]}]}, p.BAD_INPUT, SHAPE_MESSAGE),   # a bool is no dimension
        ({"inputs": [{"dtype": "float32", "shape": [1, 2**31]}]}, p.BAD_INPUT, SHAPE_MESSAGE),
        ({"inputs": [{"dtype": "float32", "shape": [1] * 17}]}, p.BAD_INPUT, SHAPE_MESSAGE),
        ({"inputs": [{"dtype": "float32", "shape": [1, 2.0]}]}, p.BAD_INPUT, SHAPE_MESSAGE),
        ({"inputs": [{"dtype": "float32", "shape": "1x2"}]}, p.BAD_INPUT, SHAPE_MESSAGE),
        ({"objective": "cheapness"}, p.BAD_REQUEST, "'objective' must be one of latency, energy, accuracy; got 'cheapness'"),
        ({"on_infeasible": "maybe"}, p.BAD_REQUEST, "'on_infeasible' must be one of reject, best_effort; got 'maybe'"),
        ({"constraints": {"min_accuracy": 1.5}}, p.BAD_CONSTRAINTS, "min_accuracy must be within [0, 1]; got 1.5"),
        ({"constraints": {"max_latency_ms": -1}}, p.BAD_CONSTRAINTS, "max_latency_ms must be greater than 0; got -1"),
        ({"constraints": {"max_energy_mj": float("nan")}}, p.BAD_CONSTRAINTS,
         "constraint max_energy_mj must be a finite number; got nan"),
        ({"constraints": {"max_latency_ms": "fast"}}, p.BAD_CONSTRAINTS,
         "constraint max_latency_ms must be a finite number; got str"),
        ({"constraints": {"max_power": 3}}, p.BAD_CONSTRAINTS, "unknown constraint(s): ['max_power']"),
        ({"pin": "int8"}, p.BAD_REQUEST, "'pin' must be a map"),
        ({"explain": "yes"}, p.BAD_REQUEST, "'explain' must be a boolean"),
    ],
)
def test_bad_requests(patch, code, message):
    header = {**GOOD, **patch}
    if patch.get("inputs", 0) is None:
        del header["inputs"]
    with pytest.raises(p.ProtocolError) as info:
        p.parse_request(header)
    assert (info.value.code, info.value.message) == (code, message)


_shared_values = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=40) \
    | st.sampled_from(["latency", "energy", "accuracy", "reject", "best_effort", "float32", "cpu:0"])


@settings(max_examples=400, deadline=None)
@given(fields=st.fixed_dictionaries({"model": st.sampled_from(["m", "m", "m", "m", None, 3, ""])}, optional={
    "version": _shared_values | st.integers(0, 2**64),
    "pin": st.none() | st.integers() | st.dictionaries(st.sampled_from(["variant", "placement", "other"]),
                                                        _shared_values, max_size=3),
    "explain": _shared_values,
    "constraints": st.none() | st.text(max_size=3) | st.dictionaries(
        st.sampled_from([*p.CONSTRAINT_KEYS, "max_power"]), _shared_values, max_size=4),
    "objective": _shared_values, "on_infeasible": _shared_values, "client": _shared_values}))
def test_an_infer_header_and_an_explain_header_are_judged_alike(fields):
    """``infer`` has a parse of its own (wire/requests.py), kept by hand to the generic path
    ``explain`` takes: the same fields give the same error (code, message, id, details), in the
    same order, or the same values."""
    outcomes = []
    for rtype in ("infer", "explain"):
        header = {"type": rtype, "id": "r", "inputs": GOOD["inputs"], **fields}
        try:
            request = p.parse_request(header)
        except p.ProtocolError as exc:
            outcomes.append(("error", exc.code, exc.message, exc.request_id, exc.details))
            continue
        outcomes.append(("ok", request.model, request.version, request.constraints, request.objective,
                         request.on_infeasible, request.pin_variant, request.pin_placement, request.client))
        assert request.explain is (fields.get("explain") is True or rtype == "explain")
    assert outcomes[0] == outcomes[1]


def test_body_size_mismatch_is_bad_input():
    spec = p.TensorSpec(np.dtype("float32"), (1, 4))
    with pytest.raises(p.ProtocolError) as info:
        p.tensors_from_frames([spec], [memoryview(b"\0" * 15)], "r")
    assert info.value.code == p.BAD_INPUT and "16" in info.value.message
    with pytest.raises(p.ProtocolError):
        p.tensors_from_frames([spec], [], "r")


def test_request_header_round_trip():
    x = np.ones((1, 2), np.float32)
    header = p.request_header("r1", "m", [x], version="2", constraints={"max_latency_ms": 3},
                              objective="energy", pin_variant="float16", explain=True)
    req = p.parse_request(msgpack.unpackb(p.pack(header)))
    assert req.version == "2" and req.constraints.max_latency_ms == 3.0
    assert req.pin_variant == "float16" and req.pin_placement is None and req.explain


def test_fidelity_export_names_a_model():
    req = p.parse_request({"type": "fidelity_export", "id": "e1", "model": "digits", "version": 2})
    assert (req.type, req.model, req.version) == ("fidelity_export", "digits", "2")
    with pytest.raises(p.ProtocolError) as exc:
        p.parse_request({"type": "fidelity_export", "id": "e2"})
    assert exc.value.code == p.BAD_REQUEST and "model" in exc.value.message


def test_pack_is_packb_from_every_thread_and_after_a_value_it_cannot_pack():
    """``pack`` keeps a packer per thread (cheaper than ``packb``'s fresh one per call): what it
    packs is exactly ``packb``'s, also from threads packing at once, each with a packer of its
    own; a value msgpack cannot pack, or a header larger than what a packer may keep, lets the
    thread's packer go (with the buffer it grew) and the next call packs afresh."""
    import threading

    headers = [{"type": "result", "id": f"r{i}", "outputs": [{"dtype": "float32", "shape": [1, i]}],
                "timing": {"total_ms": i / 7}, "met": bool(i % 2), "blob": bytes(range(i % 50))} for i in range(300)]
    assert p.pack(headers[0]) == msgpack.packb(headers[0], use_bin_type=True)
    with pytest.raises(TypeError):
        p.pack({"id": "x", "blob": bytes(1000), "bad": object()})
    assert not hasattr(p._PACKERS, "packer")
    assert p.pack(headers[1]) == msgpack.packb(headers[1], use_bin_type=True)
    big = {"id": "big", "blob": bytes(p.PACKER_KEPT_MAX_BYTES + 1)}
    assert p.pack(big) == msgpack.packb(big, use_bin_type=True)
    assert not hasattr(p._PACKERS, "packer")
    assert p.pack(headers[2]) == msgpack.packb(headers[2], use_bin_type=True)
    wrong: list[int] = []
    packers: list[int] = []
    go = threading.Barrier(4)

    def packs() -> None:
        go.wait()
        for _ in range(20):
            wrong.extend(i for i, h in enumerate(headers) if p.pack(h) != msgpack.packb(h, use_bin_type=True))
        packers.append(id(p._PACKERS.packer))
        go.wait()   # (all alive when their packers' ids are taken: no id reused)

    threads = [threading.Thread(target=packs) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert len(set(packers)) == 4 and id(p._PACKERS.packer) not in packers


def test_a_message_decodes_the_same_from_zeromq_frames_bytes_or_memoryviews():
    """The daemon's ZeroMQ sockets give ``zmq.Frame``s, its local stream memoryviews, tests and
    tools bytes: the header and the bodies are the same whatever the frames are, and a shape at
    the limits passes (16 dimensions, 2**31 - 1)."""
    import zmq

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = {**GOOD, "inputs": [{"dtype": "float32", "shape": [2, 3]}, {"dtype": "float32", "shape": [1] * 16}]}
    raw = [b"", p.SIGNATURE, msgpack.packb(header), x.tobytes(), np.float32(7).tobytes()]
    kinds = {"bytes": raw, "memoryview": [memoryview(f) for f in raw], "zmq.Frame": [zmq.Frame(f) for f in raw],
             "mixed": [zmq.Frame(raw[0]), raw[1], memoryview(raw[2]), zmq.Frame(raw[3]), raw[4]]}
    for kind, frames in kinds.items():
        decoded, bodies = p.decode(frames)
        assert decoded == header and [bytes(b) for b in bodies] == raw[3:], kind
        assert all(isinstance(b, memoryview) for b in bodies), kind
        request = p.parse_request(decoded)
        assert [s.shape for s in request.inputs] == [(2, 3), (1,) * 16], kind
    big = {**GOOD, "inputs": [{"dtype": "float32", "shape": [2**31 - 1]}]}
    assert p.parse_request(big).inputs[0].shape == (2**31 - 1,)
