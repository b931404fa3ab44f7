"""The daemon's request path end to end: a real daemon process, real ZeroMQ sockets, real workers.

One daemon (with the TensorFlow-runtime placement ``tf:cpu``) is shared by the module's tests;
none of them changes its configuration. Every bad input gets an error reply with its code, and the
daemon goes on serving; concurrent clients get exactly one reply per request.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from adaptd.wire import protocol as proto
from adaptd.tools.launch import DaemonProcess
from adaptd.wire.records import read_selections

MAX_MESSAGE_BYTES = 4096          # small, so TOO_LARGE and ZeroMQ's backstop are cheap to reach
REPLY_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def daemon(tiny_repository, tmp_path_factory):
    repo, _, _ = tiny_repository
    d = DaemonProcess.start(repo, tmp_path_factory.mktemp("daemon"), tcp=True, config={
        "server": {"max_message_bytes": MAX_MESSAGE_BYTES},
        "placements": {"tensorflow": "on", "queue_limit": 512, "load": "lazy"},   # no BUSY here (see test_daemon_lifecycle); first loads are tested
    })
    yield d
    assert d.stop() == 0, d.log()


@pytest.fixture(scope="module")
def model(daemon, tiny_repository):
    """``{name, version, variants: {name: variant}, placements: {name: placement}, input}``."""
    _, name, version = tiny_repository
    body = control(daemon, "models")
    entry = next(m for m in body["models"] if m["name"] == name)
    assert entry["version"] == version
    spec = entry["variants"][0]["inputs"][0]
    return {"name": name, "version": version,
            "variants": {v["name"]: v for v in entry["variants"]},
            "placements": {p["name"]: p for p in body["placements"]},
            "shape": [1, *spec["shape"][1:]]}


def control(d: DaemonProcess, kind: str) -> dict:
    reply, bodies = d.request({"type": kind, "id": f"{kind}-{uuid.uuid4().hex}"})
    assert reply["type"] == "ok" and reply["of"] == kind and bodies == [], reply
    return reply["body"]


def sample(model, batch: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random([batch, *model["shape"][1:]], dtype=np.float32)


def infer(d: DaemonProcess, model, x: np.ndarray | None = None, **kw) -> tuple[dict, list[bytes]]:
    x = sample(model) if x is None else x
    header = proto.request_header(kw.pop("rid", uuid.uuid4().hex), model["name"], [x], **kw)
    return d.request(header, [x])


def arms(model) -> list[tuple[str, str]]:
    return [(v, p) for v, var in model["variants"].items() for p, pl in model["placements"].items()
            if var["runtime"] == pl["runtime"]]


def assert_serving(d: DaemonProcess, model) -> None:
    reply, bodies = infer(d, model)
    assert reply["type"] == "result", reply
    assert len(bodies) == 1


def dealer(d: DaemonProcess, ctx: zmq.Context | None = None, endpoint: str | None = None) -> zmq.Socket:
    sock = (ctx or zmq.Context.instance()).socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint or d.endpoint)
    return sock


def recv(sock: zmq.Socket, timeout_ms: int = REPLY_TIMEOUT_MS) -> tuple[dict, list[bytes]]:
    assert sock.poll(timeout_ms), "no reply"
    header, bodies = proto.decode(sock.recv_multipart())
    return header, [bytes(b) for b in bodies]


def wait_for_record(d: DaemonProcess, rid: str, timeout_s: float = 10.0) -> dict:
    """The request's selection record, once the store has committed it (within its flush interval)."""
    deadline = time.monotonic() + timeout_s
    while not (rows := [r for r in read_selections(d.store_path) if r["request_id"] == rid]):
        assert time.monotonic() < deadline, "the record never reached the store"
    return rows[0]


def maps_of(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as fh:
        return fh.read()


def has_tensorflow(pid: int) -> bool:
    maps = maps_of(pid)
    return "libtensorflow" in maps or "_pywrap_tensorflow" in maps


# --- placements, models, every arm --------------------------------------------------------------

def thread_affinities(pid: int) -> list[list[int]]:
    """The CPU affinity of every thread of a process."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out.append(sorted(os.sched_getaffinity(int(tid))))
        except OSError:   # a thread that ended meanwhile
            pass
    return out


def test_placements_each_have_a_live_pinned_executor(daemon, model):
    """LiteRT placements run on a thread of the daemon pinned to their cores (isolation =
    "thread", the default); the TensorFlow placement in a worker process pinned to its own."""
    placements = control(daemon, "placements")["placements"]
    names = [p["name"] for p in placements]
    assert "tf:cpu" in names and any(n.startswith("cpu:") for n in names)
    for p in placements:
        assert p["runtime"] == ("tensorflow" if p["name"] == "tf:cpu" else "litert")
        assert p["queue_limit"] > 0 and p["queued"] == 0 and p["restarts"] == 0
        assert p["isolation"] == ("process" if p["runtime"] == "tensorflow" else "thread")
        pid = p["worker_pid"]
        if p["isolation"] == "process":
            assert pid and pid != daemon.proc.pid
            assert sorted(os.sched_getaffinity(pid)) == sorted(p["cores"]), p
        else:
            assert pid == daemon.proc.pid
            assert sorted(p["cores"]) in thread_affinities(pid), p


def test_measured_latency_excludes_the_model_load(daemon, model):
    # Runs before any other inference in this module, so the tf:cpu worker has not loaded the
    # TensorFlow SavedModel yet: loading takes far longer than running it. The load shows in the
    # first reply's queue time, never in compute_ms or the arm's statistics.
    def tf_arm():
        return next(a for a in control(daemon, "stats")["arms"] if (a["variant"], a["placement"]) == ("float32_tf", "tf:cpu"))

    if tf_arm()["loaded"]:
        pytest.skip("float32_tf was loaded by an earlier test (run this module in file order)")
    x = sample(model)
    reply, _ = infer(daemon, model, x, pin_variant="float32_tf", pin_placement="tf:cpu")
    assert reply["type"] == "result", reply
    t = reply["timing"]
    assert t["compute_ms"] < t["queue_ms"], t
    arm = tf_arm()
    assert arm["loaded"] and arm["count"] == 1
    assert arm["latency_ms"]["last"] == pytest.approx(t["compute_ms"])
    # The second execution has nothing to load: no queue time to speak of.
    reply, _ = infer(daemon, model, x, pin_variant="float32_tf", pin_placement="tf:cpu")
    assert reply["timing"]["queue_ms"] < t["queue_ms"]


def test_every_arm_runs_and_the_runtimes_match_the_placements(daemon, model):
    x = sample(model)
    outputs = {}
    for variant, placement in arms(model):
        reply, bodies = infer(daemon, model, x, pin_variant=variant, pin_placement=placement)
        assert reply["type"] == "result", reply
        assert (reply["variant"], reply["placement"]) == (variant, placement)
        assert (reply["model"], reply["version"]) == (model["name"], model["version"])
        assert reply["reason"]["code"] == "pinned" and reply["replayed"] is False
        [out] = reply["outputs"]
        assert out["dtype"] == "float32"
        y = np.frombuffer(bodies[0], np.float32).reshape(out["shape"])
        assert y.shape[0] == 1 and np.all(np.isfinite(y))
        outputs[(variant, placement)] = y
        t = reply["timing"]
        assert 0 <= t["compute_ms"] <= t["total_ms"] and t["queue_ms"] >= 0
        assert reply["energy"]["estimated"] is True and reply["energy"]["source"].startswith("estimated")
    # LiteRT variants on CPU placements, the TensorFlow variant on tf:cpu: both runtimes were used.
    runtimes = {model["placements"][p]["runtime"] for _, p in outputs}
    assert runtimes == {"litert", "tensorflow"}
    # The same variant gives the same answer wherever it runs.
    for (v, p), y in outputs.items():
        for (v2, p2), y2 in outputs.items():
            if v == v2:
                np.testing.assert_allclose(y, y2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [2, 5])
def test_a_batch_runs_in_one_request(daemon, model, batch):
    x = sample(model, batch)
    for variant, placement in [("float32", "cpu:0-1"), ("float32_tf", "tf:cpu")]:
        if placement not in model["placements"]:
            placement = next(p for v, p in arms(model) if v == variant)
        reply, bodies = infer(daemon, model, x, pin_variant=variant, pin_placement=placement)
        assert reply["type"] == "result", reply
        assert reply["outputs"][0]["shape"][0] == batch


def test_an_unpinned_request_runs_a_valid_arm(daemon, model):
    reply, _ = infer(daemon, model, objective="accuracy")
    assert reply["type"] == "result", reply
    assert (reply["variant"], reply["placement"]) in arms(model)
    assert reply["reason"]["code"] in ("selected", "probe", "best_effort")
    assert set(reply["predicted"]) >= {"latency_ms", "latency_bound_ms", "queue_ms", "energy_mj", "accuracy"}


def test_explain_is_a_dry_run(daemon, model):
    before = control(daemon, "health")["requests"]
    header = proto.request_header("explain-1", model["name"], [], request_type="explain")
    reply, _ = daemon.request(header)
    assert reply["type"] == "ok" and reply["of"] == "explain", reply
    body = reply["body"]
    assert (body["variant"], body["placement"]) in arms(model)
    assert body["feasible"] is True and isinstance(body["alternatives"], list)
    stats = control(daemon, "health")
    assert stats["requests"] == before + 2   # the explain and the first health, nothing ran


def test_float32_inputs_are_quantized_and_native_integer_inputs_pass_through(daemon, model):
    native = [(v, var["inputs"][0]) for v, var in model["variants"].items()
              if var["inputs"][0]["dtype"] in ("int8", "uint8")]
    if not native:
        pytest.skip("the repository has no full-integer variant")
    v, spec = native[0]
    p = next(pp for vv, pp in arms(model) if vv == v)
    x = sample(model)
    reply_f, out_f = infer(daemon, model, x, pin_variant=v, pin_placement=p)
    assert reply_f["type"] == "result", reply_f
    # The same input already quantized with the variant's own scale and zero point.
    q = spec["quantization"]
    info = np.iinfo(spec["dtype"])
    xq = np.clip(np.round(x / q["scale"] + q["zero_point"]), info.min, info.max).astype(spec["dtype"])
    reply_q, out_q = infer(daemon, model, xq, pin_variant=v, pin_placement=p)
    assert reply_q["type"] == "result", reply_q
    assert out_q == out_f
    # Unpinned (or the placement alone pinned), an integer input goes only to a variant that
    # takes that dtype: the candidates the policy chooses among are narrowed to those.
    takes = {vv for vv, var in model["variants"].items() if var["inputs"][0]["dtype"] == spec["dtype"]}
    for pins in ({}, {"pin_placement": p}):
        for _ in range(3):
            reply_u, _ = infer(daemon, model, xq, **pins)
            assert reply_u["type"] == "result", reply_u
            assert reply_u["variant"] in takes, (reply_u["variant"], takes)
    # Integer inputs to a float variant: no such variant takes them.
    reply, _ = infer(daemon, model, xq, pin_variant="float32")
    assert reply["code"] == "BAD_INPUT", reply


# --- bad input: every case gets its code, and the daemon keeps serving ---------------------------

def _good(model) -> dict:
    return proto.request_header("x", model["name"], [sample(model)])


def _frames(model, mutate=None, bodies=None) -> list[bytes]:
    header = _good(model)
    header["id"] = f"bad-{uuid.uuid4().hex}"
    if mutate:
        mutate(header)
    if bodies is None:
        bodies = [sample(model).tobytes()]
    return [b"", proto.SIGNATURE, msgpack.packb(header), *bodies]


def _set(**kv):
    def f(h):
        for k, v in kv.items():
            if v is _DEL:
                h.pop(k, None)
            else:
                h[k] = v
    return f


_DEL = object()

BAD_CASES = {
    # frames
    "no delimiter": ("MALFORMED", lambda m: _frames(m)[1:]),
    "no signature": ("MALFORMED", lambda m: [b"", msgpack.packb(_good(m)), sample(m).tobytes()]),
    "garbage signature": ("MALFORMED", lambda m: [b"", b"HELLO!", msgpack.packb(_good(m))]),
    "one frame": ("MALFORMED", lambda m: [b""]),
    "header not msgpack": ("MALFORMED", lambda m: [b"", proto.SIGNATURE, b"\xc1\xc1\xc1"]),
    "truncated msgpack": ("MALFORMED", lambda m: [b"", proto.SIGNATURE, msgpack.packb(_good(m))[:-3]]),
    "header not a map": ("MALFORMED", lambda m: [b"", proto.SIGNATURE, msgpack.packb([1, 2, 3])]),
    "future version": ("UNSUPPORTED_VERSION", lambda m: [b"", b"ADPT02", msgpack.packb(_good(m))]),
    # fields
    "missing id": ("BAD_REQUEST", lambda m: _frames(m, _set(id=_DEL))),
    "id too long": ("BAD_REQUEST", lambda m: _frames(m, _set(id="x" * 129))),
    "missing type": ("BAD_REQUEST", lambda m: _frames(m, _set(type=_DEL))),
    "unknown type": ("BAD_REQUEST", lambda m: _frames(m, _set(type="fly"))),
    "missing model": ("BAD_REQUEST", lambda m: _frames(m, _set(model=_DEL))),
    "model not a string": ("BAD_REQUEST", lambda m: _frames(m, _set(model=7))),
    "missing inputs": ("BAD_REQUEST", lambda m: _frames(m, _set(inputs=_DEL))),
    "inputs not a list": ("BAD_REQUEST", lambda m: _frames(m, _set(inputs={"dtype": "float32"}))),
    "bad objective": ("BAD_REQUEST", lambda m: _frames(m, _set(objective="speed"))),
    "bad on_infeasible": ("BAD_REQUEST", lambda m: _frames(m, _set(on_infeasible="maybe"))),
    "pin not a map": ("BAD_REQUEST", lambda m: _frames(m, _set(pin="float32"))),
    "explain not a bool": ("BAD_REQUEST", lambda m: _frames(m, _set(explain="yes"))),
    # constraints
    "constraints not a map": ("BAD_CONSTRAINTS", lambda m: _frames(m, _set(constraints=[0.9]))),
    "accuracy above 1": ("BAD_CONSTRAINTS", lambda m: _frames(m, _set(constraints={"min_accuracy": 1.5}))),
    "negative latency": ("BAD_CONSTRAINTS", lambda m: _frames(m, _set(constraints={"max_latency_ms": -1.0}))),
    "zero energy": ("BAD_CONSTRAINTS", lambda m: _frames(m, _set(constraints={"max_energy_mj": 0.0}))),
    "nan latency": ("BAD_CONSTRAINTS", lambda m: _frames(m, _set(constraints={"max_latency_ms": float("nan")}))),
    "inf energy": ("BAD_CONSTRAINTS", lambda m: _frames(m, _set(constraints={"max_energy_mj": float("inf")}))),
    "string constraint": ("BAD_CONSTRAINTS", lambda m: _frames(m, _set(constraints={"min_accuracy": "high"}))),
    "bool constraint": ("BAD_CONSTRAINTS", lambda m: _frames(m, _set(constraints={"max_latency_ms": True}))),
    "unknown constraint": ("BAD_CONSTRAINTS", lambda m: _frames(m, _set(constraints={"max_cost": 1.0}))),
    "latency confidence of 1": ("BAD_CONSTRAINTS", lambda m: _frames(m, _set(constraints={"latency_confidence": 1.0}))),
    "latency confidence below 0.5": ("BAD_CONSTRAINTS",
                                     lambda m: _frames(m, _set(constraints={"latency_confidence": 0.4}))),
    # tensors
    "unknown dtype": ("BAD_INPUT", lambda m: _frames(m, _set(inputs=[{"dtype": "complex64", "shape": m["shape"]}]))),
    "wrong dtype size": ("BAD_INPUT", lambda m: _frames(m, _set(inputs=[{"dtype": "float64", "shape": m["shape"]}]))),
    "dtype no variant takes": ("BAD_INPUT", lambda m: _frames(
        m, _set(inputs=[{"dtype": "int32", "shape": m["shape"]}]))),
    "wrong rank": ("BAD_INPUT", lambda m: _frames(m, _set(inputs=[{"dtype": "float32", "shape": m["shape"][1:]}]))),
    "wrong shape": ("BAD_INPUT", lambda m: _frames(
        m, _set(inputs=[{"dtype": "float32", "shape": [1, *[d + 1 for d in m["shape"][1:]]]}]))),
    "empty batch": ("BAD_INPUT", lambda m: _frames(m, _set(inputs=[{"dtype": "float32", "shape": [0, *m["shape"][1:]]}]),
                                                   bodies=[b""])),
    "negative dim": ("BAD_INPUT", lambda m: _frames(m, _set(inputs=[{"dtype": "float32", "shape": [-1, *m["shape"][1:]]}]))),
    "body too short": ("BAD_INPUT", lambda m: _frames(m, bodies=[sample(m).tobytes()[:-4]])),
    "body too long": ("BAD_INPUT", lambda m: _frames(m, bodies=[sample(m).tobytes() + b"\0\0\0\0"])),
    "no body": ("BAD_INPUT", lambda m: _frames(m, bodies=[])),
    "two bodies": ("BAD_INPUT", lambda m: _frames(m, bodies=[sample(m).tobytes()] * 2)),
    "two inputs": ("BAD_INPUT", lambda m: _frames(
        m, _set(inputs=[{"dtype": "float32", "shape": m["shape"]}] * 2), bodies=[sample(m).tobytes()] * 2)),
    # names
    "unknown model": ("UNKNOWN_MODEL", lambda m: _frames(m, _set(model="no-such-model"))),
    "unknown version": ("UNKNOWN_MODEL", lambda m: _frames(m, _set(version="999"))),
    "unknown variant": ("UNKNOWN_VARIANT", lambda m: _frames(m, _set(pin={"variant": "int3_magic"}))),
    "unknown placement": ("UNKNOWN_PLACEMENT", lambda m: _frames(m, _set(pin={"placement": "npu:0"}))),
    "litert variant on the tf placement": ("UNKNOWN_PLACEMENT", lambda m: _frames(
        m, _set(pin={"variant": "float32", "placement": "tf:cpu"}))),
    "tf variant on a cpu placement": ("UNKNOWN_PLACEMENT", lambda m: _frames(
        m, _set(pin={"variant": "float32_tf", "placement": next(p for p in m["placements"] if p.startswith("cpu:"))}))),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_gets_its_error_code_and_the_daemon_keeps_serving(daemon, model, case):
    code, make = BAD_CASES[case]
    frames = make(model)
    sock = dealer(daemon)
    try:
        sock.send_multipart(frames)
        reply, bodies = recv(sock)
        assert reply["type"] == "error", reply
        assert reply["code"] == code, reply
        assert isinstance(reply["message"], str) and reply["message"]
        assert bodies == []
        if code not in ("MALFORMED", "UNSUPPORTED_VERSION", "BAD_REQUEST"):
            assert reply["id"] == msgpack.unpackb(frames[2])["id"]      # the id is echoed
        if code == "UNSUPPORTED_VERSION":
            assert reply["details"]["supported"] == ["01"]
        assert not sock.poll(0), "a second reply"
    finally:
        sock.close()
    assert_serving(daemon, model)


def test_infeasible_constraints_are_rejected_with_the_closest_arm(daemon, model):
    try:
        import adaptd.daemon.selection  # noqa: F401
    except ImportError:
        pytest.skip("the trivial policy never rejects; INFEASIBLE needs the selector policy")
    best = max(v["accuracy"] or 0.0 for v in model["variants"].values())
    reply, _ = infer(daemon, model, constraints={"min_accuracy": min(1.0, best + 0.01), "max_latency_ms": 1e-6})
    assert reply["type"] == "error" and reply["code"] == "INFEASIBLE", reply
    closest = reply["details"]["closest"]
    assert (closest["variant"], closest["placement"]) in arms(model)
    assert "min_accuracy" in reply["details"]["violations"]
    reply, _ = infer(daemon, model, constraints={"min_accuracy": min(1.0, best + 0.01)}, on_infeasible="best_effort")
    assert reply["type"] == "result" and reply["met"] is False, reply
    assert reply["constraints_met"] == {"min_accuracy": False} and reply["reason"]["code"] == "best_effort"


def test_constraints_met_is_reported_per_set_constraint(daemon, model):
    reply, _ = infer(daemon, model, pin_variant="float32", pin_placement="cpu:0-1",
                     constraints={"min_accuracy": 0.0, "max_latency_ms": 60_000.0})
    assert reply["type"] == "result", reply
    assert reply["constraints_met"] == {"min_accuracy": True, "max_latency_ms": True} and reply["met"] is True


def test_latency_confidence_is_judged_at_a_kept_level_and_recorded(daemon, model):
    """A request's latency_confidence is served at the lowest kept level at or above it, said in
    the reply and recorded in the selection store; above the highest kept level it is refused."""
    try:
        import adaptd.daemon.selection  # noqa: F401
    except ImportError:
        pytest.skip("the trivial policy has no latency bounds")
    rid = f"conf-{uuid.uuid4().hex}"
    pin = {"pin_variant": "float32", "pin_placement": "cpu:0-1"}
    reply, _ = infer(daemon, model, rid=rid, constraints={"max_latency_ms": 60_000.0, "latency_confidence": 0.97},
                     **pin)
    assert reply["type"] == "result", reply
    assert reply["predicted"]["latency_confidence"] == 0.99
    assert reply["constraints_met"] == {"max_latency_ms": True}   # a qualifier, not a constraint of its own
    default, _ = infer(daemon, model, constraints={"max_latency_ms": 60_000.0}, **pin)
    assert default["predicted"]["latency_confidence"] == 0.9   # [selector] confidence
    refused, _ = infer(daemon, model, constraints={"max_latency_ms": 60_000.0, "latency_confidence": 0.995}, **pin)
    assert refused["type"] == "error" and refused["code"] == "BAD_CONSTRAINTS", refused
    assert "0.99" in refused["message"]
    assert_serving(daemon, model)
    record = wait_for_record(daemon, rid)
    assert record["latency_confidence"] == 0.97 and record["predicted_latency_confidence"] == 0.99


def test_a_burst_is_learnt_before_the_next_request_comes(daemon, model):
    """The loop's idle moments hold a steady client's executions for the policy in batches
    (adaptd.daemon.bookkeeping), but the loop wakes for them once the oldest has waited
    LEARN_MAX_AGE_S: a request sent well after a burst is chosen on estimates that include the
    burst's last execution. (The wait is the behaviour under test, the hold's age, not a
    synchronisation. On a machine too slow to send the burst within LEARN_GAP_S nothing is held,
    and the test holds trivially.)"""
    from adaptd.daemon.bookkeeping import LEARN_MAX_AGE_S

    x = sample(model)
    sock = dealer(daemon)
    try:
        predicted = []
        for k in range(4):
            if k == 3:
                time.sleep(10 * LEARN_MAX_AGE_S)
            header = proto.request_header(uuid.uuid4().hex, model["name"], [x], pin_variant="float32",
                                          pin_placement="cpu:0-1")
            sock.send_multipart(proto.encode(header, [x]))
            reply, _ = recv(sock)
            assert reply["type"] == "result", reply
            predicted.append(reply["predicted"]["latency_ms"])
    finally:
        sock.close()
    assert predicted[3] != predicted[2], predicted


# --- size limits ---------------------------------------------------------------------------------

def test_a_request_over_max_message_bytes_gets_too_large(daemon, model):
    per_item = int(np.prod(model["shape"])) * 4
    batch = MAX_MESSAGE_BYTES // per_item + 1          # just over the limit, under ZeroMQ's 2x
    x = sample(model, batch)
    assert MAX_MESSAGE_BYTES < x.nbytes < 2 * MAX_MESSAGE_BYTES
    reply, _ = infer(daemon, model, x)
    assert reply["code"] == "TOO_LARGE", reply
    assert reply["details"]["limit_bytes"] == MAX_MESSAGE_BYTES
    assert_serving(daemon, model)


def test_a_frame_over_twice_the_limit_is_answered_too_large_on_ipc_and_the_connection_serves_on(daemon, model):
    """The daemon's own ZMTP engine (PROTOCOL.md §2.4) skips what libzmq's ROUTER would drop the
    connection for (next test): the request gets its error reply with its id, the next its answer."""
    sock = dealer(daemon)
    try:
        good = _good(model)
        sock.send_multipart([b"", proto.SIGNATURE, msgpack.packb(good), b"\0" * (2 * MAX_MESSAGE_BYTES + 1)])
        reply, _ = recv(sock)
        assert reply["code"] == "TOO_LARGE" and reply["id"] == good["id"], reply
        sock.send_multipart(proto.encode({"type": "health", "id": "after"}))
        ipc = recv(sock)[0]["body"]["ipc"]
        assert ipc["engine"] == "adaptd" and ipc["connections"] >= 1
    finally:
        sock.close()


def test_a_frame_over_twice_the_limit_is_dropped_by_zeromq_and_others_are_served(daemon, model):
    ctx = zmq.Context.instance()
    sock = dealer(daemon, endpoint=daemon.tcp_endpoint)   # a ROUTER of libzmq's
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        # The connection is up once a reply came back on it.
        sock.send_multipart(proto.encode({"type": "health", "id": "before"}))
        assert recv(sock)[0]["type"] == "ok"
        sock.send_multipart([b"", proto.SIGNATURE, msgpack.packb(_good(model)), b"\0" * (2 * MAX_MESSAGE_BYTES + 1)])
        # ZeroMQ drops the connection (the only case without a reply) ...
        assert monitor.poll(REPLY_TIMEOUT_MS), "the daemon kept the connection of an oversized sender"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        assert not sock.poll(0)
        # ... and goes on serving everybody else.
        other = dealer(daemon, ctx, daemon.tcp_endpoint)
        try:
            other.send_multipart(proto.encode({"type": "health", "id": "after"}))
            assert recv(other)[0]["body"]["status"] == "serving"
        finally:
            other.close()
        assert_serving(daemon, model)
    finally:
        sock.disable_monitor()
        monitor.close()
        sock.close()


# --- concurrency, exactly one reply, retries -----------------------------------------------------

def test_a_burst_longer_than_a_rounds_intake_is_all_answered(daemon, model):
    """Requests left over from one round's intake (INTAKE_BATCH), and any that arrive while
    replies go out on the same socket, are taken in the next rounds: each gets its reply, and the
    socket serves on one request at a time afterwards."""
    from adaptd.daemon.request_path import INTAKE_BATCH

    x = sample(model)
    sock = dealer(daemon)
    try:
        ids = [f"burst-{k}-{uuid.uuid4().hex[:6]}" for k in range(3 * INTAKE_BATCH + 1)]
        for rid in ids:
            sock.send_multipart(proto.encode(proto.request_header(rid, model["name"], [x]), [x]), copy=False)
        got = [recv(sock)[0] for _ in ids]
        assert sorted(r["id"] for r in got) == sorted(ids)
        assert all(r["type"] == "result" for r in got), [r for r in got if r["type"] != "result"][:1]
        for k in range(3):   # then one at a time, each reply awaited, on the same socket
            rid = f"after-{k}"
            sock.send_multipart(proto.encode(proto.request_header(rid, model["name"], [x]), [x]))
            assert recv(sock)[0]["id"] == rid
    finally:
        sock.close()


def test_concurrent_clients_each_get_exactly_one_reply_per_request(daemon, model):
    clients, per_client = 6, 30
    candidates = arms(model)
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            ctx = zmq.Context.instance()
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            # Over TCP and ipc both: the daemon serves every endpoint it binds.
            sock.connect(daemon.tcp_endpoint if k % 2 else daemon.endpoint)
            expected: dict[str, str] = {}
            for i in range(per_client):
                rid = f"c{k}-{i}-{uuid.uuid4().hex[:6]}"
                x = sample(model, 1, seed=k * 1000 + i)
                if i % 7 == 3:      # a bad one among the good ones
                    header = proto.request_header(rid, "no-such-model", [x])
                    expected[rid] = "UNKNOWN_MODEL"
                else:
                    v, p = candidates[(k + i) % len(candidates)] if i % 2 else (None, None)
                    header = proto.request_header(rid, model["name"], [x], pin_variant=v, pin_placement=p)
                    expected[rid] = "result"
                sock.send_multipart(proto.encode(header, [x]), copy=False)
            got: dict[str, list[str]] = {}
            while len(got) < len(expected):
                reply, bodies = recv(sock)
                got.setdefault(reply["id"], []).append(reply.get("code", reply["type"]))
                if reply["type"] == "result":
                    assert len(bodies) == 1
            # A sentinel on the same connection: any duplicate would have been sent before its reply.
            sock.send_multipart(proto.encode({"type": "health", "id": f"sentinel-{k}"}))
            reply, _ = recv(sock)
            assert reply["id"] == f"sentinel-{k}", f"an extra reply: {reply}"
            assert got == {rid: [code] for rid, code in expected.items()}
            sock.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]


def test_a_retried_id_runs_once_and_replays_the_reply(daemon, model):
    x = sample(model, 1, seed=42)
    rid = f"retry-{uuid.uuid4().hex}"
    header = proto.request_header(rid, model["name"], [x], pin_variant="float32_tf", pin_placement="tf:cpu")
    before = control(daemon, "stats")
    sock = dealer(daemon)
    try:
        # Two copies back to back: the second joins the first while it runs (or is replayed).
        sock.send_multipart(proto.encode(header, [x]))
        sock.send_multipart(proto.encode(header, [x]))
        first, b1 = recv(sock)
        second, b2 = recv(sock)
        assert first["type"] == second["type"] == "result"
        assert b1 == b2 and first["timing"] == second["timing"]
        # Later, within the window: the stored reply, marked as replayed, even for a different body.
        other = sample(model, 1, seed=43)
        sock.send_multipart(proto.encode(header, [other]))
        third, b3 = recv(sock)
        assert third["replayed"] is True and b3 == b1 and third["timing"] == first["timing"]
    finally:
        sock.close()

    def count(stats):
        return next(a["count"] for a in stats["arms"] if (a["variant"], a["placement"]) == ("float32_tf", "tf:cpu"))

    assert count(control(daemon, "stats")) == count(before) + 1


def test_an_error_reply_is_replayed_on_the_same_connection(daemon, model):
    rid = f"err-{uuid.uuid4().hex}"
    x = sample(model)
    sock = dealer(daemon)
    try:
        sock.send_multipart(proto.encode(proto.request_header(rid, model["name"], [x], pin_variant="no-such-variant"),
                                         [x]))
        reply, _ = recv(sock)
        assert reply["code"] == "UNKNOWN_VARIANT"
        sock.send_multipart(proto.encode(proto.request_header(rid, model["name"], [x]), [x]))
        reply, _ = recv(sock)
        assert reply["code"] == "UNKNOWN_VARIANT" and reply.get("replayed") is True
    finally:
        sock.close()


def test_another_client_resending_an_id_never_gets_the_first_clients_reply(daemon, model):
    """The selection stream publishes request ids: knowing one must not reach its outputs. A
    second connection sending the same id (with other input) runs its own request."""
    rid = f"victim-{uuid.uuid4().hex}"
    secret = sample(model, 1, seed=7)
    victim = dealer(daemon)
    thief = dealer(daemon)
    try:
        victim.send_multipart(proto.encode(proto.request_header(rid, model["name"], [secret]), [secret]))
        first, outputs = recv(victim)
        assert first["type"] == "result"
        zeros = np.zeros_like(secret)
        thief.send_multipart(proto.encode(proto.request_header(rid, model["name"], [zeros]), [zeros]))
        stolen, their_outputs = recv(thief)
        assert stolen["type"] == "result" and stolen["replayed"] is False
        assert their_outputs != outputs
    finally:
        victim.close()
        thief.close()


def test_records_name_a_client_by_an_opaque_tag_not_its_routing_identity(daemon, model):
    sock = dealer(daemon)
    sock.setsockopt(zmq.ROUTING_ID, b"secret-identity-1234")
    rid = f"tag-{uuid.uuid4().hex}"
    try:
        x = sample(model)
        sock.send_multipart(proto.encode(proto.request_header(rid, model["name"], [x]), [x]))
        reply, _ = recv(sock)
        assert reply["type"] == "result"
    finally:
        sock.close()
    record = wait_for_record(daemon, rid)
    assert record["client"].startswith("peer-")
    assert "secret" not in record["client"] and b"secret-identity-1234".hex() not in record["client"]


def test_a_req_socket_works_too(daemon, model):
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.tcp_endpoint)
    try:
        x = sample(model)
        header = proto.request_header("req-1", model["name"], [x])
        sock.send_multipart(proto.encode(header, [x])[1:])     # REQ adds the delimiter itself
        assert sock.poll(REPLY_TIMEOUT_MS)
        frames = sock.recv_multipart()
        reply, bodies = proto.decode([b"", *frames])
        assert reply["type"] == "result" and len(bodies) == 1
    finally:
        sock.close()


# --- statistics and health -----------------------------------------------------------------------

def test_stats_per_arm_count_latency_percentiles_and_staleness(daemon, model):
    import time

    arm = ("float32", next(p for v, p in arms(model) if v == "float32"))
    def snapshot():
        return next(a for a in control(daemon, "stats")["arms"] if (a["variant"], a["placement"]) == arm)

    before = snapshot()
    n = 12
    compute = []
    for i in range(n):
        reply, _ = infer(daemon, model, sample(model, 1, i), pin_variant=arm[0], pin_placement=arm[1])
        compute.append(reply["timing"]["compute_ms"])
    t_after = time.time()
    s = snapshot()
    assert s["count"] == before["count"] + n
    assert s["model"] == model["name"] and s["version"] == model["version"]
    assert s["loaded"] is True and isinstance(s["memory_bytes"], int) and s["memory_bytes"] >= 0
    lat = s["latency_ms"]
    assert lat["last"] == pytest.approx(compute[-1])          # the interpreter's time: load excluded
    assert min(compute) <= lat["p50"] <= lat["p95"] <= lat["p99"] or before["count"]
    assert lat["ewma"] is not None and lat["ewma"] > 0
    assert s["energy_mj"]["last"] is not None and s["energy_estimated"] is True
    assert s["energy_source"].startswith("estimated")
    assert s["last_at"] <= t_after and 0 <= s["age_s"] < 60
    # An arm nobody ran shows no numbers, not zeros.
    body = control(daemon, "stats")
    assert "energy" in body and body["energy"]["estimated"] is True
    for a in body["arms"]:
        assert (a["variant"], a["placement"]) in arms(model)
        if a["count"] == 0:
            assert a["latency_ms"]["p50"] is None and a["last_at"] is None and a["age_s"] is None


def test_health_counts_requests_and_errors(daemon, model):
    h0 = control(daemon, "health")
    assert h0["status"] == "serving" and h0["pid"] == daemon.proc.pid and h0["in_flight"] == 0
    assert h0["rss_bytes"] > 0 and h0["workers_rss_bytes"] > 0 and h0["generation"] == 1
    assert Path(h0["repository"]).is_dir()
    assert_serving(daemon, model)
    reply, _ = infer(daemon, model, pin_variant="nope")
    assert reply["code"] == "UNKNOWN_VARIANT"
    h1 = control(daemon, "health")
    # health (h0), one result, one error: three replies before h1's own.
    assert h1["requests"] == h0["requests"] + 3
    assert h1["errors"] == h0["errors"] + 1


# --- TensorFlow stays out of the daemon ----------------------------------------------------------

def test_tensorflow_is_only_in_the_tf_worker(daemon, model):
    assert not has_tensorflow(daemon.proc.pid)
    for p in control(daemon, "placements")["placements"]:
        assert has_tensorflow(p["worker_pid"]) == (p["runtime"] == "tensorflow"), p["name"]   # the daemon's own pid for a thread placement


def test_without_a_tf_placement_no_process_imports_tensorflow_and_eager_load_reports_memory(
        tiny_repository, tmp_path):
    repo, name, version = tiny_repository
    with DaemonProcess.start(repo, tmp_path, config={"placements": {"tensorflow": "off", "load": "eager"}}) as d:
        placements = control(d, "placements")["placements"]
        assert all(p["runtime"] == "litert" for p in placements)
        assert not has_tensorflow(d.proc.pid)
        for p in placements:
            assert not has_tensorflow(p["worker_pid"])
        # Eager: every arm gets loaded without a request; the footprint shows in stats.
        body = {}
        for _ in range(600):
            body = control(d, "stats")
            if all(a["loaded"] for a in body["arms"]):
                break
            _wait_a_little(d)
        assert body["arms"] and all(a["loaded"] for a in body["arms"]), body["arms"]
        assert all(isinstance(a["memory_bytes"], int) and a["memory_bytes"] >= 0 for a in body["arms"])
        assert all(a["count"] == 0 for a in body["arms"])
        # The TensorFlow variant has no placement to run on here.
        x = np.zeros([1, *control(d, "models")["models"][0]["variants"][0]["inputs"][0]["shape"][1:]], np.float32)
        reply, _ = d.request(proto.request_header("tf", name, [x], pin_variant="float32_tf"), [x])
        assert reply["code"] == "UNKNOWN_PLACEMENT", reply
        assert not has_tensorflow(d.proc.pid)


def _wait_a_little(d: DaemonProcess) -> None:
    """Wait on the daemon process itself (it must not exit) instead of sleeping blind."""
    import subprocess

    try:
        d.proc.wait(0.05)
    except subprocess.TimeoutExpired:
        return
    raise AssertionError(f"the daemon exited: {d.log()}")


# --- what the daemon itself costs -----------------------------------------------------------------

def test_every_reply_says_what_the_daemon_itself_spent_and_stats_sum_it_up(daemon, model):
    """The daemon's own CPU per request, outside the execution, with its (always estimated)
    energy: per reply and record, and per inference in stats."""
    rid = f"runtime-{uuid.uuid4().hex}"
    before = control(daemon, "stats")["runtime"]["executions_cpu_ms"]
    reply, _ = infer(daemon, model, rid=rid)
    runtime = reply["runtime"]
    assert runtime["cpu_ms"] > 0 and runtime["energy_mj"] > 0
    assert runtime["estimated"] is True and runtime["source"].startswith("estimated")
    record = wait_for_record(daemon, rid)
    assert record["runtime_cpu_ms"] == runtime["cpu_ms"] and record["runtime_energy_mj"] == runtime["energy_mj"]
    overall = control(daemon, "stats")["runtime"]
    assert overall["inferences"] >= 1 and overall["cpu_ms_per_request"] > 0 and overall["estimated"] is True
    assert overall["executions_cpu_ms"] > before   # the execution's own CPU, counted apart
