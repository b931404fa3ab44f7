"""The client's protocol core without a socket: messages built, replies matched by id, stale
replies, timeouts and BUSY answered by resends, error replies mapped to exceptions, undecodable
replies, regions and the close budget. Replies are real ADPT/1 frames made by the wire codec;
regions map real files. Time is whatever ``now`` the test passes: the core reads no clock."""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

import numpy as np
import pytest

from adaptd.clients import core as core_module
from adaptd.clients import errors as e
from adaptd.clients.core import ClientCore, Done, Failed, Send, Stale, Unattributed, Undecodable
from adaptd.clients.regions import Region
from adaptd.clients.results import Explanation, InferResult
from adaptd.clients.settings import BUSY_BACKOFF_MAX_MS, CLOSE_TIMEOUT_MS, ClientSettings
from adaptd.wire import protocol as p
from adaptd.wire.replies import ok_header, result_header

ENDPOINT = "ipc:///nowhere/adaptd.sock"


def new_core(**settings) -> ClientCore:
    return ClientCore(ClientSettings(ENDPOINT, **settings), jitter=random.Random(7))


def image(fill: float = 1.0) -> np.ndarray:
    return np.full((1, 16, 16, 1), fill, np.float32)


def result_reply(request_id: str, outputs: list[np.ndarray], **extra) -> list:
    """The frames of a §5 result reply, as a daemon sends them (outputs as bytearray frames)."""
    header = result_header(
        request_id=request_id, model="tiny", version="1", variant="int8_full", placement="cpu:0-1",
        outputs=[p.tensor_header(o) for o in outputs], queue_ms=0.02, compute_ms=0.11, total_ms=0.31,
        energy_mj=0.9, energy_source="estimated:generic", energy_estimated=True,
        predicted={"latency_ms": 0.3, "accuracy": 0.96}, constraints_met={}, reason_code="selected",
        reason_text="least latency")
    header.update(extra)
    return p.encode(header, [bytearray(o.tobytes()) for o in outputs])


def error_reply(request_id: str | None, code: str, details: dict | None = None) -> list:
    return p.encode(p.error_header(code, f"no can do ({code})", request_id, details))


def sent(core: ClientCore, call, now: float = 0.0) -> Send:
    """Start ``call`` and mark its first attempt sent at ``now``."""
    event = core.start(call, now)
    core.sending(call.request_id, now)
    return event


# --- building messages -------------------------------------------------------------------------

def test_an_inference_is_built_as_spec_frames_with_the_arrays_themselves_as_bodies():
    core = new_core(name="tester")
    x = image(0.5)
    call = core.infer("tiny", x, min_accuracy=0.9, max_latency_ms=5.0, objective="energy",
                      on_infeasible="best_effort", variant="int8_full", request_id="r1", latency_confidence=0.95)
    header, bodies = p.decode(call.frames)
    request = p.parse_request(header)
    assert (request.type, request.id, request.model, request.client) == ("infer", "r1", "tiny", "tester")
    assert request.constraints == p.Constraints(0.9, 5.0, None, 0.95)
    assert (request.objective, request.on_infeasible, request.pin_variant) == ("energy", "best_effort", "int8_full")
    assert header["inputs"] == [{"dtype": "float32", "shape": [1, 16, 16, 1]}]
    assert call.frames[3] is x                        # zero copy: the array is the body frame
    assert (call.timeout_ms, call.retries, call.busy_retries) == (30_000.0, 2, 0)


def test_float64_inputs_go_as_float32_and_unsendable_dtypes_are_refused():
    core = new_core()
    call = core.infer("tiny", np.ones((1, 4), np.float64))
    header, bodies = p.decode(call.frames)
    assert header["inputs"] == [{"dtype": "float32", "shape": [1, 4]}] and bodies[0].nbytes == 16
    with pytest.raises(ValueError, match="cannot be sent"):
        core.infer("tiny", np.ones((1, 4), np.complex64))


def test_inputs_of_every_layout_arrive_as_the_daemon_reads_them():
    core = new_core()
    base = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    inputs = [base.astype(">f4"), base[:, :, ::2], np.float32(7.0), np.array([True, False]), [1, 2, 3]]
    on_the_wire = [memoryview(f).tobytes() for f in core.infer("tiny", inputs).frames]
    header, bodies = p.decode(on_the_wire)
    specs = p.parse_tensor_headers(header["inputs"], "inputs", "r")
    decoded = p.tensors_from_frames(specs, bodies)
    expected = [base, base[:, :, ::2], np.array([7.0], np.float32), np.array([True, False]), np.array([1, 2, 3])]
    for got, want in zip(decoded, expected, strict=True):
        assert got.dtype == want.dtype.newbyteorder("<") and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_explain_and_control_messages_and_fresh_ids():
    core = new_core(name="n", timeout_ms=500.0, retries=1, busy_retries=4)
    explain = core.explain("tiny", max_energy_mj=2.0, placement="gpu")
    header, bodies = p.decode(explain.frames)
    assert header["type"] == "explain" and "inputs" not in header and bodies == []
    assert header["pin"] == {"placement": "gpu"} and header["constraints"] == {"max_energy_mj": 2.0}
    assert explain.busy_retries == 0                  # only inferences are resent after BUSY
    control = core.control("shm_unregister", 40.0, 0, region="r-9")
    assert p.decode(control.frames)[0] == {"type": "shm_unregister", "id": control.request_id, "region": "r-9"}
    assert (control.timeout_ms, control.retries, control.busy_retries) == (40.0, 0, 0)
    assert core.infer("tiny", image()).busy_retries == 4
    ids = {core.control("health").request_id for _ in range(100)}
    assert len(ids) == 100 and explain.request_id not in ids
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)     # 16 random bytes in hex


# --- matching replies ----------------------------------------------------------------------------

def test_replies_are_matched_by_id_in_any_order_and_outputs_are_views_of_the_frames():
    core = new_core()
    calls = [core.infer("tiny", image(i), request_id=f"r{i}") for i in range(3)]
    for i, call in enumerate(calls):
        sent(core, call, now=10.0 + i)
    replies = {c.request_id: result_reply(c.request_id, [np.full((1, 10), i, np.float32)])
               for i, c in enumerate(calls)}
    for rid in ("r2", "r0", "r1"):
        event = core.receive(replies[rid], now=12.5)
        assert type(event) is Done and event.request_id == rid
        result = event.value
        assert isinstance(result, InferResult) and result.request_id == rid
        out = result.outputs[0]
        assert out.shape == (1, 10) and float(out[0, 0]) == float(rid[1:])
        assert np.shares_memory(out, np.frombuffer(replies[rid][3], np.uint8))   # no copy
        assert result.client_ms == pytest.approx((12.5 - 10.0 - int(rid[1:])) * 1e3)
        assert result.selection.energy.estimated and result.selection.variant == "int8_full"
    assert core.in_flight() == [] and core.stale_replies == 0


def test_a_reply_nobody_awaits_is_stale_and_counted():
    core = new_core()
    call = core.infer("tiny", image(), request_id="mine")
    sent(core, call)
    assert core.receive(result_reply("long-gone", [np.zeros((1, 10), np.float32)]), 1.0) == Stale("long-gone")
    assert core.receive(p.encode({"type": "ok", "of": "health", "body": {}}), 1.0) == Stale(None)
    assert type(core.receive(result_reply("mine", [np.zeros((1, 10), np.float32)]), 1.0)) is Done
    # the same id answered twice (an attempt that timed out was answered after all): once is enough
    assert core.receive(result_reply("mine", [np.zeros((1, 10), np.float32)]), 1.0) == Stale("mine")
    assert core.stale_replies == 3


def test_the_explanation_and_control_bodies_are_the_values():
    core = new_core()
    explain = core.explain("tiny")
    sent(core, explain)
    body = {"feasible": True, "variant": "float16", "placement": "cpu:0", "reason": {"code": "selected", "text": ""},
            "predicted": {"latency_ms": 1.5}, "alternatives": [{"variant": "float32"}]}
    event = core.receive(p.encode(ok_header("explain", explain.request_id, body)), 1.0)
    assert isinstance(event.value, Explanation)
    assert (event.value.variant, event.value.predicted.latency_ms) == ("float16", 1.5)
    stats = core.control("stats")
    sent(core, stats)
    assert core.receive(p.encode(ok_header("stats", stats.request_id, {"arms": []})), 1.0).value == {"arms": []}


def test_a_request_id_already_in_flight_is_refused():
    core = new_core()
    sent(core, core.infer("tiny", image(), request_id="same"))
    with pytest.raises(ValueError, match="already outstanding"):
        core.start(core.infer("tiny", image(), request_id="same"), 0.0)
    core.forget("same")
    core.start(core.infer("tiny", image(), request_id="same"), 0.0)   # forgotten: free again


# --- timeouts and BUSY ----------------------------------------------------------------------------

def test_a_timeout_resends_the_same_frames_under_the_same_id_up_to_retries():
    core = new_core(timeout_ms=200.0, retries=2)
    call = core.infer("tiny", image(), request_id="slow")
    first = core.start(call, 0.0)
    assert first == Send("slow", call.frames) and first.wait_s == 0.0
    assert core.sending("slow", 5.0) == pytest.approx(5.2)       # the attempt's deadline
    resends = []
    for attempt in range(2):
        event = core.timed_out("slow")
        assert type(event) is Send and event.frames is call.frames and event.wait_s == 0.0
        resends.append(event)
        core.sending("slow", 5.2 + 0.2 * attempt)
    assert core.retried == 2
    gave_up = core.timed_out("slow")
    assert type(gave_up) is Failed and isinstance(gave_up.error, e.RequestTimeout)
    assert isinstance(gave_up.error, TimeoutError) and gave_up.error.request_id == "slow"
    assert "within 200 ms (3 attempts, same id)" in str(gave_up.error) and ENDPOINT in str(gave_up.error)
    assert core.in_flight() == [] and core.retried == 2


def test_a_reply_between_a_timeout_and_the_resend_is_stale_and_the_resend_is_answered():
    core = new_core(timeout_ms=100.0, retries=1)
    call = core.infer("tiny", image(), request_id="late")
    sent(core, call)
    core.timed_out("late")                                         # not awaiting until resent
    out = [np.zeros((1, 10), np.float32)]
    assert core.receive(result_reply("late", out), 0.15) == Stale("late")
    core.sending("late", 0.2)
    assert type(core.receive(result_reply("late", out, replayed=True), 0.25)) is Done


def test_busy_is_resent_after_a_seeded_jittered_doubling_wait_then_raises():
    core = new_core(busy_retries=3, busy_backoff_ms=2.0, retries=1)
    twin = random.Random(7)                                        # the core's jitter, seeded alike
    call = core.infer("tiny", image(), request_id="b")
    sent(core, call)
    for retry in range(3):
        event = core.receive(error_reply("b", "BUSY"), 1.0)
        cap_ms = min(2.0 * 2 ** retry, BUSY_BACKOFF_MAX_MS)
        assert type(event) is Send and event.frames is call.frames and event.request_id == "b"
        assert event.wait_s == pytest.approx(cap_ms * (0.5 + 0.5 * twin.random()) / 1e3)
        assert cap_ms / 2e3 <= event.wait_s < cap_ms / 1e3
        assert core.busy_retried == retry + 1
        # each BUSY resend starts a new round of timeout retries
        core.sending("b", 2.0)
        assert type(core.timed_out("b")) is Send
        core.sending("b", 3.0)
    event = core.receive(error_reply("b", "BUSY"), 4.0)
    assert type(event) is Failed and isinstance(event.error, e.BusyError) and core.busy_retried == 3
    assert core.retried == 3 and core.in_flight() == []


def test_busy_is_not_resent_by_default_nor_for_control_requests():
    core = new_core()
    sent(core, core.infer("tiny", image(), request_id="i"))
    event = core.receive(error_reply("i", "BUSY"), 1.0)
    assert isinstance(event.error, e.BusyError) and isinstance(event.error, e.TransientError)
    patient = new_core(busy_retries=5)
    health = patient.control("health")
    sent(patient, health)
    assert isinstance(patient.receive(error_reply(health.request_id, "BUSY"), 1.0).error, e.BusyError)
    assert core.busy_retried == patient.busy_retried == 0


def test_busy_waits_double_are_capped_and_differ_between_clients():
    waits = [[new_core(busy_backoff_ms=3.0).busy_wait_s(r) for r in range(8)] for _ in range(2)]
    assert waits[0] == waits[1]                                    # the same seed, the same waits
    a, b = (ClientCore(ClientSettings(ENDPOINT), jitter=random.Random(s)) for s in (1, 2))
    assert a.busy_wait_s(0) != b.busy_wait_s(0)                    # refused together, back apart
    for retry, wait_s in enumerate(waits[0]):
        cap_ms = min(3.0 * 2 ** retry, BUSY_BACKOFF_MAX_MS)
        assert cap_ms / 2e3 <= wait_s < cap_ms / 1e3


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", sorted(e.ERRORS_BY_CODE) + ["FORBIDDEN", "FROM_A_NEWER_DAEMON"])
def test_error_replies_become_their_exception_classes(code):
    core = new_core()
    sent(core, core.infer("tiny", image(), request_id="x"))
    details = {"closest": {"variant": "float32"}, "violations": {"max_latency_ms": {"by": 4.0}}}
    event = core.receive(error_reply("x", code, details), 1.0)
    assert type(event) is Failed and type(event.error) is e.ERRORS_BY_CODE.get(code, e.AdaptdError)
    assert (event.error.code, event.error.request_id, event.error.details) == (code, "x", details)
    assert core.retried == core.busy_retried == 0


def test_replies_that_break_the_protocol_are_reply_errors():
    core = new_core()
    cases = {
        "wrong-type": p.encode({"type": "ok", "id": "wrong-type", "of": "infer", "body": {}}),
        "short-body": result_reply("short-body", [np.zeros((1, 10), np.float32)])[:3] + [b"\0" * 8],
        "no-variant": p.encode({k: v for k, v in p.decode(result_reply("no-variant", []))[0].items()
                                if k != "variant"}),
        "unmapped-region": p.encode({**p.decode(result_reply("unmapped-region", []))[0], "outputs": [
            p.shm_tensor_header(np.float32, [1, 10], "r-unknown", 0)]}),
    }
    for rid, frames in cases.items():
        sent(core, core.infer("tiny", image(), request_id=rid))
        event = core.receive(frames, 1.0)
        assert type(event) is Failed and type(event.error) is e.ReplyError, (rid, event)
        assert event.error.request_id == rid
    health = core.control("health")
    sent(core, health)
    assert type(core.receive(p.encode({"type": "ok", "id": health.request_id}), 1.0).error) is e.ReplyError


def test_a_results_selection_is_read_when_first_asked_for_and_a_bad_field_fails_then():
    """The selection is parsed lazily (most callers read only the outputs); what the protocol
    requires of a result is still checked on receipt, and a field of the wrong kind is a
    ReplyError where the selection is read."""
    core = new_core()
    sent(core, core.infer("tiny", image(), request_id="ok"))
    result = core.receive(result_reply("ok", [np.ones((1, 10), np.float32)]), 1.0).value
    header = p.decode(result_reply("ok", []))[0]
    assert "selection" not in vars(result)                    # not parsed yet
    selection = result.selection
    assert (selection.model, selection.variant, selection.placement) == (
        header["model"], header["variant"], header["placement"])
    assert selection.timing.total_ms == header["timing"]["total_ms"] and result.selection is selection
    sent(core, core.infer("tiny", image(), request_id="bad-timing"))
    bad = core.receive(p.encode({**p.decode(result_reply("bad-timing", []))[0], "timing": "soon"}), 1.0).value
    assert bad.request_id == "bad-timing"
    with pytest.raises(e.ReplyError, match="valid field"):
        bad.selection


def test_undecodable_replies_and_errors_without_an_id():
    core = new_core()
    waiting = core.infer("tiny", image(), request_id="w")
    sent(core, waiting)
    for junk in ([b"", b"HTTP/1.1", b"x"], [b"only one frame"], [b"", p.SIGNATURE, b"\xc1"]):
        assert core.receive(junk, 1.0) == Undecodable()
    assert core.stale_replies == 0 and core.in_flight() == ["w"]
    failed = core.undecodable("w")           # a shell that knows whose it was
    assert type(failed.error) is e.ReplyError and failed.error.request_id == "w" and core.in_flight() == []
    # An error reply without an id: every request awaiting a reply fails with it; one waiting
    # out a BUSY backoff (not awaiting) is not.
    busy_core = new_core(busy_retries=1)
    a, b = busy_core.infer("tiny", image(), request_id="a"), busy_core.infer("tiny", image(), request_id="b")
    sent(busy_core, a)
    sent(busy_core, b)
    assert type(busy_core.receive(error_reply("b", "BUSY"), 1.0)) is Send
    event = busy_core.receive(error_reply(None, "MALFORMED"), 1.0)
    assert type(event) is Unattributed and type(event.error) is e.MalformedError
    assert [f.request_id for f in busy_core.fail_awaiting(event.error)] == ["a"]
    assert busy_core.in_flight() == ["b"]


# --- regions and close -------------------------------------------------------------------------

def region_file(tmp_path: Path, name: str, size: int = 4096) -> Path:
    path = tmp_path / name
    path.write_bytes(b"\0" * size)
    return path


def drive(operation, replies):
    """Run a core operation, answering its calls with ``replies`` (values, or exceptions to raise)."""
    calls = []
    try:
        call = next(operation)
        for reply in replies:
            calls.append(call)
            call = operation.throw(reply) if isinstance(reply, BaseException) else operation.send(reply)
        raise AssertionError(f"the operation asked for more: {call}")
    except StopIteration as done:
        return done.value, calls


def test_register_maps_the_region_and_inputs_inside_it_go_by_reference(tmp_path):
    core = new_core()
    path = region_file(tmp_path, "adaptd-1-a")
    region, calls = drive(core.register_region(4096), [{"region": "r-a", "size": 4096, "path": str(path)}])
    assert isinstance(region, Region) and core.regions == {"r-a": region}
    header = p.decode(calls[0].frames)[0]
    assert header["type"] == "shm_register" and header["size"] == 4096 and header["owner_pid"] > 0
    view = region.ndarray((1, 16, 16, 1), offset=1024)
    view[...] = 2.0
    call = core.infer("tiny", [view, image()], outputs_to=(region, 2048), request_id="shm")
    header, bodies = p.decode(call.frames)
    assert header["inputs"][0]["shm"] == {"region": "r-a", "offset": 1024} and len(bodies) == 1
    assert header["outputs_to"] == {"region": "r-a", "offset": 2048}
    sent(core, call)
    reply = p.decode(result_reply("shm", []))[0]
    reply["outputs"] = [p.shm_tensor_header(np.float32, [1, 10], "r-a", 2048)]
    region.ndarray((1, 10), offset=2048)[...] = 3.0
    out = core.receive(p.encode(reply), 1.0).value.outputs[0]
    assert float(out.sum()) == 30.0 and np.shares_memory(out, region.bytes)   # a view of the region


def test_a_region_that_cannot_be_mapped_is_ended_again(tmp_path):
    core = new_core()
    op = core.register_region(4096)
    next(op)
    cleanup = op.send({"region": "r-gone", "size": 4096, "path": str(tmp_path / "missing")})
    assert p.decode(cleanup.frames)[0] == {"type": "shm_unregister", "id": cleanup.request_id, "region": "r-gone"}
    with pytest.raises(FileNotFoundError):
        op.send({})
    assert core.regions == {}


def test_unregister_unmaps_whatever_the_daemon_answers(tmp_path):
    core = new_core()
    regions = [drive(core.register_region(4096), [{"region": f"r{i}", "size": 4096,
                                                   "path": str(region_file(tmp_path, f"f{i}"))}])[0]
               for i in range(2)]
    _, calls = drive(core.unregister_region("r0", timeout_ms=50.0, retries=0), [{}])
    assert p.decode(calls[0].frames)[0]["region"] == "r0" and (calls[0].timeout_ms, calls[0].retries) == (50.0, 0)
    op = core.unregister_region(regions[1])
    next(op)
    with pytest.raises(e.UnknownRegionError):
        op.throw(e.UnknownRegionError("gone"))
    assert core.regions == {} and all(r.closed for r in regions)


def test_close_asks_for_each_region_once_within_the_budget_then_unmaps_the_rest(tmp_path):
    core = new_core(timeout_ms=30_000.0)
    for i in range(4):
        drive(core.register_region(4096), [{"region": f"r{i}", "size": 4096,
                                            "path": str(region_file(tmp_path, f"f{i}"))}])
    mapped = list(core.regions.values())
    deadline = core.close_deadline(100.0)
    assert deadline == pytest.approx(100.0 + CLOSE_TIMEOUT_MS / 1e3)   # the budget, not the timeout
    first = core.next_region_to_end(deadline, 100.0)
    assert first[0] is mapped[0] and first[1] == pytest.approx(CLOSE_TIMEOUT_MS)
    second = core.next_region_to_end(deadline, 101.5)                   # the first took 1.5 s
    assert second[0] is mapped[1] and second[1] == pytest.approx(500.0)
    assert core.next_region_to_end(deadline, deadline - 0.0005) is None  # under 1 ms left: stop asking
    assert set(core.regions) == {"r2", "r3"}
    core.unmap_regions()
    assert core.regions == {} and all(r.closed for r in mapped[2:])
    short = new_core(timeout_ms=300.0)
    assert short.close_deadline(0.0) == pytest.approx(0.3)             # a shorter timeout is the budget
    assert short.next_region_to_end(0.3, 0.0) is None                   # no regions: nothing to ask


# --- settings and purity -----------------------------------------------------------------------

def test_settings_are_frozen_validated_once_and_resolved_from_the_environment(monkeypatch):
    s = ClientSettings(ENDPOINT, timeout_ms=10, retries=1)
    assert (s.timeout_ms, type(s.timeout_ms), s.retries) == (10.0, float, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.timeout_ms = 5.0
    for bad in ({"timeout_ms": 0}, {"timeout_ms": float("nan")}, {"retries": -1}, {"busy_retries": -1},
                {"busy_backoff_ms": 0.0}, {"busy_backoff_ms": 2 * BUSY_BACKOFF_MAX_MS}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ClientSettings(ENDPOINT, **bad)
    with pytest.raises(ValueError, match="endpoint"):
        ClientSettings("")
    monkeypatch.setenv("ADAPTD_ENDPOINT", "tcp://127.0.0.1:5999")
    monkeypatch.delenv("ADAPTD_CURVE_CLIENT_KEY", raising=False)
    monkeypatch.delenv("ADAPTD_CURVE_SERVER_KEY", raising=False)
    resolved = ClientSettings.resolve(name="me")
    assert (resolved.endpoint, resolved.name, resolved.curve) == ("tcp://127.0.0.1:5999", "me", None)
    assert ClientSettings.resolve("ipc:///x").endpoint == "ipc:///x"


def test_the_core_reads_no_clock_and_sleeps_never(monkeypatch):
    def forbidden(*args):
        raise AssertionError("the core read a clock or slept")
    for name in ("monotonic", "perf_counter", "time", "sleep", "monotonic_ns", "perf_counter_ns", "time_ns"):
        monkeypatch.setattr(time, name, forbidden)
    core = new_core(busy_retries=1, retries=1)
    call = core.infer("tiny", image(), request_id="pure")
    sent(core, call)
    assert type(core.receive(error_reply("pure", "BUSY"), 1.0)) is Send
    core.sending("pure", 2.0)
    assert type(core.timed_out("pure")) is Send
    core.sending("pure", 3.0)
    assert type(core.receive(result_reply("pure", [np.zeros((1, 10), np.float32)]), 3.5)) is Done
    assert not {"zmq", "socket", "asyncio", "time"} & set(vars(core_module))
