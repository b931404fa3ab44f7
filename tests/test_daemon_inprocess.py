"""The daemon built in-process, with fakes for its pool, meter, store and sockets: the request path
driven with frames and outcomes, no process started.

The fakes stand in for the parts whose real versions start processes or bind sockets (and are
tested through real daemons elsewhere); they offer exactly the methods the daemon calls. The
registry, the policy, admission, replay, bookkeeping and the wire are the real ones.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from adaptd.daemon.config import Config
from adaptd.daemon.inline_rule import InlineRule
from adaptd.daemon.peers import peer_of
from adaptd.daemon.placements import Placement
from adaptd.daemon.power.meter import EnergyReading
from adaptd.daemon.registry import load_registry
from adaptd.daemon.selection import model_key
from adaptd.daemon.server import Daemon
from adaptd.daemon.streams import StreamServer
from adaptd.daemon.jobs import Outcome
from adaptd.wire import protocol as proto
from adaptd.wire import records

PLACEMENT = Placement("cpu:0", "cpu", "litert", (0,), 1, None, "one core")


class FakePool:
    """The worker pool's interface, holding submitted jobs instead of running them."""

    queue_limit = 2

    def __init__(self) -> None:
        self.jobs: list[Any] = []
        self.tried_inline: list[str] = []
        self.stall_checks: list[float] = []
        self.on_load_failed = self.on_down = self.on_change = None

    def submit(self, placement: str, job: Any) -> bool:
        if len(self.jobs) > self.queue_limit:
            return False
        job.dispatched_ns = time.monotonic_ns()
        self.jobs.append(job)
        return True

    def run_inline(self, placement: str, job: Any) -> None:
        self.tried_inline.append(job.request_id)
        return None   # held, like every job here: the test finishes it

    def running(self) -> bool:
        return bool(self.jobs)

    def in_process(self, placement: str) -> bool:
        return True   # as a placement's thread: the request path screens inline inputs for NaN

    def queue_length(self, placement: str) -> int:
        return len(self.jobs)

    def down_reason(self, placement: str) -> str | None:
        return None

    def snapshots(self) -> list[dict]:
        return [{**PLACEMENT.to_dict(), "queued": len(self.jobs), "busy": bool(self.jobs)}]

    def loaded_bytes(self, placement: str, version_dir: str, variant: str) -> int | None:
        return None

    def is_loaded(self, placement: str, version_dir: str, variant: str) -> bool:
        return False   # nothing runs here: live fidelity finds no placement for a shadow run

    def workers_rss_bytes(self) -> int:
        return 0

    def broadcast(self, verb: str, header: dict) -> None:
        pass

    def kill_stalled(self, now: float) -> None:
        self.stall_checks.append(now)   # (no worker process here)

    def finish(self, job: Any, outputs: list[np.ndarray]) -> Outcome:
        self.jobs.remove(job)
        t0 = time.monotonic_ns()
        header = {"job": 1, "t0_ns": t0, "t1_ns": t0 + 50_000, "compute_ms": 0.05, "cpu_time_s": 5e-5,
                  "idle_since_ns": t0, "outputs": [proto.tensor_header(o) for o in outputs]}
        return Outcome(job, header, outputs, True, time.monotonic_ns())


class FakeMeter:
    def attribute(self, placement, t0_ns, t1_ns, cpu_time_s, wait=True) -> EnergyReading:
        return EnergyReading(0.25, "estimated:generic", True)

    def describe(self) -> dict:
        return {"source": "estimated:generic", "estimated": True}

    def predict_mj(self, placement, latency_ms) -> float:
        return 0.1 * latency_ms

    def runtime_energy_mj(self, cpu_s) -> tuple[float, str]:
        return 1000.0 * cpu_s, "estimated:generic"


class FakeStore:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def submit(self, record) -> None:   # a map, or a row (as the real store takes them): kept as maps
        self.records.append(records.row_record(record) if type(record) is tuple else record)

    def describe(self) -> dict:
        return {"rows_written": len(self.records)}


class FakeFrontend:
    """The request sockets: replies are kept, decoded, per route."""

    def __init__(self) -> None:
        self.sockets, self.admin = [], set()
        self.sent: list[tuple[Any, dict, list[bytes]]] = []
        self.replies_unread_dropped = self.replies_to_departed = 0
        self.streams = StreamServer(max_message_bytes=1 << 20, send_hwm=10, ipc_mode=0o600)   # none bound

    def send(self, route, frames) -> bool:
        header = msgpack.unpackb(frames[2], raw=False)
        self.sent.append((route[1][0] if route[1] else route[0], header, [bytes(memoryview(f)) for f in frames[3:]]))
        return True


def message(peer: bytes, header: dict, bodies=()) -> list[zmq.Frame]:
    """A request as a ROUTER receives it: real ``zmq.Frame``s, the peer's identity first."""
    frames = proto.encode(header, bodies)
    return [zmq.Frame(peer), *(zmq.Frame(bytes(memoryview(f))) for f in frames)]


@pytest.fixture
def daemon(tiny_repository, tmp_path):
    return build(tiny_repository, tmp_path)


def build(tiny_repository, tmp_path, **tables):
    repo, model, _ = tiny_repository
    config = Config.from_dict({"repository": str(repo), "state_dir": str(tmp_path), "runtime_dir": str(tmp_path),
                               "selector": {"policy": "most_accurate"}, **tables})
    d = Daemon(config)
    pool, store, frontend = FakePool(), FakeStore(), FakeFrontend()
    d.assemble(registry=load_registry(repo, [PLACEMENT], 1), placements=[PLACEMENT], pool=pool, meter=FakeMeter(),
               store=store, frontend=frontend)
    d.policy.reset(d.registry)
    return SimpleNamespace(d=d, pool=pool, store=store, frontend=frontend, model=model)


def x() -> np.ndarray:
    return np.zeros((1, 8, 8, 1), np.float32)


def test_a_request_is_queued_then_answered_with_its_record(daemon):
    d, pool, frontend = daemon.d, daemon.pool, daemon.frontend
    header = proto.request_header("r1", daemon.model, [x()], constraints={"min_accuracy": 0.5})
    d.path.on_request(None, message(b"peer-a", header, [x()]))
    assert frontend.sent == [] and len(pool.jobs) == 1
    (job,) = pool.jobs
    d.path.on_outcome(pool.finish(job, [np.full((1, 10), 0.1, np.float32)]))
    (peer, reply, bodies), = frontend.sent
    assert bytes(peer.buffer) == b"peer-a" and reply["type"] == "result" and reply["id"] == "r1"
    assert reply["energy"] == {"energy_mj": 0.25, "source": "estimated:generic", "estimated": True}
    assert reply["constraints_met"] == {"min_accuracy": True} and len(bodies) == 1
    runtime = reply["runtime"]   # the daemon's own cost: measured CPU, estimated energy
    assert runtime["cpu_ms"] > 0 and runtime["estimated"] is True
    assert runtime["energy_mj"] == pytest.approx(runtime["cpu_ms"])   # 1 W generic prior
    d.books.flush()
    (record,) = daemon.store.records
    assert record["request_id"] == "r1" and record["outcome"] == "ok" and record["energy_estimated"] is True
    assert record["runtime_cpu_ms"] == runtime["cpu_ms"]
    assert record["client"].startswith("peer-")


def test_a_retry_from_the_same_peer_is_replayed_and_another_peers_runs_afresh(daemon):
    d, pool, frontend = daemon.d, daemon.pool, daemon.frontend
    header = proto.request_header("same-id", daemon.model, [x()])
    d.path.on_request(None, message(b"peer-a", header, [x()]))
    d.path.on_outcome(pool.finish(pool.jobs[0], [np.ones((1, 10), np.float32)]))
    d.path.on_request(None, message(b"peer-a", header, [x()]))
    assert frontend.sent[-1][1]["replayed"] is True and not pool.jobs
    d.path.on_request(None, message(b"peer-b", header, [x()]))
    assert len(pool.jobs) == 1, "another peer's request with the same id runs"


def test_bad_input_is_refused_before_anything_runs_and_a_full_queue_is_busy(daemon):
    d, pool, frontend = daemon.d, daemon.pool, daemon.frontend
    bad = np.zeros((1, 9, 9, 1), np.float32)
    d.path.on_request(None, message(b"p", proto.request_header("bad", daemon.model, [bad]), [bad]))
    assert frontend.sent[-1][1]["code"] == "BAD_INPUT" and not pool.jobs
    for i in range(5):
        d.path.on_request(None, message(b"p", proto.request_header(f"q{i}", daemon.model, [x()]), [x()]))
    # the fourth finds the queue full (a job running, two waiting); once one has, the next is
    # refused before it is even parsed
    assert [h["code"] for _, h, _ in frontend.sent[1:]] == ["BUSY", "BUSY"] and len(pool.jobs) == 3
    assert d.path.busy_early == 1


def test_control_replies_come_from_the_same_parts(daemon):
    d, frontend = daemon.d, daemon.frontend
    d.path.on_request(None, message(b"p", {"type": "health", "id": "h"}))
    d.path.on_request(None, message(b"p", {"type": "reload", "id": "r"}))
    health, reload = frontend.sent[0][1], frontend.sent[1][1]
    assert health["type"] == "ok" and health["body"]["status"] == "serving"
    assert reload["code"] == "FORBIDDEN"


def test_one_flush_hands_the_policy_its_executions_in_one_batch(daemon, caplog):
    """Deferred bookkeeping: the answered requests' executions reach the policy in one
    ``observe_many`` call, in the order they finished; a policy that fails there is logged and
    the records are still written."""
    d, pool = daemon.d, daemon.pool
    batches = []
    real = d.policy.observe_many
    d.policy.observe_many = lambda observations: (batches.append(list(observations)), real(observations))
    for k in range(3):
        d.path.on_request(None, message(b"peer-a", proto.request_header(f"r{k}", daemon.model, [x()]), [x()]))
        d.path.on_outcome(pool.finish(pool.jobs[-1], [np.ones((1, 10), np.float32)]))
    assert batches == [] and daemon.store.records == []   # nothing yet: deferred
    d.books.flush()
    (batch,) = batches
    assert [o.arm.variant.name for o in batch] == [r["variant"] for r in daemon.store.records]
    assert [o.now_s for o in batch] == sorted(o.now_s for o in batch) and len(batch) == 3

    def broken(observations):
        raise RuntimeError("policy bug")
    d.policy.observe_many = broken
    d.path.on_request(None, message(b"peer-a", proto.request_header("r9", daemon.model, [x()]), [x()]))
    d.path.on_outcome(pool.finish(pool.jobs[-1], [np.ones((1, 10), np.float32)]))
    d.books.flush()
    assert daemon.store.records[-1]["request_id"] == "r9"
    assert "the policy's update from 1 executions failed" in caplog.text


def test_a_steady_clients_repeated_header_is_kept_on_either_transport(daemon):
    """ZeroMQ's frames (``.buffer``) and a local stream's memoryviews both reach the memo of
    repeated headers (adaptd.daemon.request_memo), and a repeat is served like the first."""
    d, pool, frontend = daemon.d, daemon.pool, daemon.frontend
    out = [np.ones((1, 10), np.float32)]
    for k in range(3):
        d.path.on_request(None, message(b"peer-a", proto.request_header(f"z{k}", daemon.model, [x()]), [x()]))
        d.path.on_outcome(pool.finish(pool.jobs[-1], out))
    assert d.path._memo.hits == 1   # kept on its second sight
    connection = SimpleNamespace(peer=b"stream-peer")
    for k in range(3):
        frames = [memoryview(bytes(memoryview(f))) for f in proto.encode(
            proto.request_header(f"s{k}", daemon.model, [x()]), [x()])[1:]]
        d.path.on_stream_request(connection, (), frames, sum(len(f) for f in frames))
        d.path.on_outcome(pool.finish(pool.jobs[-1], out))
    assert d.path._memo.hits == 4   # one header layout for both: the stream's first is a repeat too
    replies = [h for _, h, _ in frontend.sent]
    assert [r["id"] for r in replies] == ["z0", "z1", "z2", "s0", "s1", "s2"]
    assert all(r["type"] == "result" and r["variant"] == replies[0]["variant"] for r in replies)
    assert [route for route, _, _ in frontend.sent[3:]] == [connection] * 3


def test_a_bound_of_its_own_on_each_request_is_judged_on_that_bound(tiny_repository, tmp_path):
    """A client that sets its constraints per request (a deadline per frame) gets the memo's
    template less them (adaptd.daemon.request_memo): the decision, the reply's constraints met
    and the record follow each request's own constraints, not the template's."""
    daemon = build(tiny_repository, tmp_path, selector={"policy": "adaptive"})
    d, pool, frontend = daemon.d, daemon.pool, daemon.frontend
    pool.workers = {}   # (the selector reads the placements' queues there: none here)
    accuracy = max(a.accuracy for a in d.registry.get(daemon.model, None).arms)
    asked = [0.1, 0.2, 0.3, accuracy + 0.001, 0.4, 0.999, 0.5]   # the fourth and sixth: no arm is that accurate
    for k, min_accuracy in enumerate(asked):
        header = proto.request_header(f"b{k}", daemon.model, [x()], constraints={"min_accuracy": min_accuracy})
        d.path.on_request(None, message(b"peer-a", header, [x()]))
        if pool.jobs:
            d.path.on_outcome(pool.finish(pool.jobs[-1], [np.ones((1, 10), np.float32)]))
    assert d.path._memo.hits == len(asked) - 2   # kept on the second sight of the header less its bounds
    replies = {h["id"]: h for _, h, _ in frontend.sent}
    for k, min_accuracy in enumerate(asked):
        reply = replies[f"b{k}"]
        if min_accuracy > accuracy:
            assert reply["type"] == "error" and reply["code"] == "INFEASIBLE", reply
        else:
            assert reply["type"] == "result" and reply["constraints_met"] == {"min_accuracy": True}, reply
    d.books.flush()
    recorded = {r["request_id"]: (r["min_accuracy"], r["outcome"]) for r in daemon.store.records}
    assert recorded == {f"b{k}": (m, "ok" if m <= accuracy else "rejected") for k, m in enumerate(asked)}


def test_a_repeated_header_gets_the_errors_a_first_request_gets(daemon, tmp_path):
    """What admission keeps for a repeated header (adaptd.daemon.admission) leaves the bodies, the
    arms set aside and the registry to be checked afresh for each repeat."""
    d, pool, frontend = daemon.d, daemon.pool, daemon.frontend

    def send(rid, bodies):
        d.path.on_request(None, message(b"peer-a", proto.request_header(rid, daemon.model, [x()]), bodies))
        if pool.jobs:
            d.path.on_outcome(pool.finish(pool.jobs[-1], [np.ones((1, 10), np.float32)]))
        return frontend.sent[-1][1]

    assert all(send(f"r0{k}", [x()])["type"] == "result" for k in range(3))
    assert d.path._memo.hits == 1   # kept on its second sight
    short = send("r2", [np.zeros(10, np.float32)])
    assert (short["code"], short["message"]) == ("BAD_INPUT", "input 0: body is 40 bytes but dtype float32 and "
                                                 "shape [1, 8, 8, 1] need 256")
    two = send("r3", [x(), x()])
    assert (two["code"], two["message"]) == ("BAD_INPUT", "1 inline input header(s) but 2 body frame(s)")
    model = d.registry.get(daemon.model, None)
    for arm in model.arms:
        d.health.set_aside(model, arm)
    aside = send("r4", [x()])
    assert aside["code"] == "WORKER_FAILED" and "set aside" in aside["message"]
    d.health._aside.clear()
    assert send("r5", [x()])["type"] == "result"
    (tmp_path / "empty").mkdir()
    d.registry = load_registry(tmp_path / "empty", [PLACEMENT], d.registry.generation + 1)   # a reload
    gone = send("r6", [x()])
    assert gone["code"] == "UNKNOWN_MODEL"
    assert d.path._memo.hits == 6   # every one after the second a repeat


def test_the_arms_a_pin_leaves_are_kept_for_any_header_until_a_reload(daemon):
    """Admission keeps the arms a model's pins leave per registry generation (adaptd.daemon.admission):
    headers that differ but for their pins get one list, which the policy's candidate ids are kept
    for; a pin that names nothing is refused every time, set-aside arms are still removed per
    request, and a reload makes the lists afresh."""
    d = daemon.d
    model = d.registry.get(daemon.model, None)
    variant = model.arms[0].variant.name

    def request(rid, **fields):
        return proto.parse_request(proto.request_header(rid, daemon.model, [x()], **fields))

    one = d.admission.candidates(request("a", pin_variant=variant, constraints={"max_latency_ms": 5.0}))[1]
    other = d.admission.candidates(request("b", pin_variant=variant, constraints={"max_latency_ms": 6.0},
                                           client="another"))[1]
    assert one is other and [a.variant.name for a in one] == [variant] * len(one)
    assert d.policy._ids(model_key(model), one) is d.policy._ids(model_key(model), other)   # kept for the tuple
    unpinned = d.admission.candidates(request("c"))[1]
    assert unpinned is not one and len(unpinned) == len(model.arms)
    for rid in ("d", "e"):
        with pytest.raises(proto.ProtocolError) as err:
            d.admission.candidates(request(rid, pin_variant="no-such-variant"))
        assert err.value.code == proto.UNKNOWN_VARIANT
    d.health.set_aside(model, one[0])
    try:
        usable = d.admission.candidates(request("f"))[1]
        assert one[0] not in usable and one[0] in unpinned   # removed from this request's, not from the kept list
        kept_ids = dict(d.policy._candidate_ids)
        assert len(d.policy._ids(model_key(model), usable)) == len(usable)
        assert d.policy._candidate_ids == kept_ids   # a list made for one request: its ids are not kept
        with pytest.raises(proto.ProtocolError) as err:
            d.admission.candidates(request("f2", pin_variant=variant))
        assert err.value.code == proto.WORKER_FAILED
    finally:
        d.health._aside.clear()
    assert d.admission.candidates(request("g", pin_variant=variant))[1] is one
    d.registry = load_registry(d.registry.root, [PLACEMENT], d.registry.generation + 1)   # a reload, the same repository
    again = d.admission.candidates(request("h", pin_variant=variant))[1]
    assert again is not one and [(a.variant.name, a.placement.name) for a in again] == \
        [(a.variant.name, a.placement.name) for a in one]


def test_every_pins_arms_are_worked_out_before_the_first_request_and_match_the_filter(tiny_repository, tmp_path):
    """``Admission.prepare`` (run at start and after a reload, adaptd.daemon.admission) works out
    the arms of every pins up front, so that a request pinned to an arm for the first time finds
    them: over every pin a request can name (none, each variant, each placement, each pair, names
    the repository lacks, a TensorFlow variant no placement runs), the arms are those the model's
    arms filtered by the pins give, in their order, or the same error as before."""
    repo, model_name, _ = tiny_repository
    placements = [PLACEMENT, Placement("cpu:1", "cpu", "litert", (1,), 1, None, "another core")]
    registry = load_registry(repo, placements, 1)
    d = Daemon(Config.from_dict({"repository": str(repo), "state_dir": str(tmp_path), "runtime_dir": str(tmp_path)}))
    d.assemble(registry=registry, placements=placements, pool=FakePool(), meter=FakeMeter(), store=FakeStore(),
               frontend=FakeFrontend())
    admission = d.admission
    admission.prepare(registry)
    model = registry.get(model_name, None)
    kept = len(admission._pinned)   # (every pins that leaves an arm, before any request)
    assert kept == 1 + len({a.variant.name for a in model.arms}) + len(placements) + len(model.arms)
    assert model.unservable, "the tiny repository has a TensorFlow variant, which no placement here runs"
    variants = [None, *model.variants, "no-such-variant"]
    names = [None, *(p.name for p in placements), "gpu:9"]
    for variant in variants:
        for placement in names:
            header = proto.request_header("r", model_name, [x()], pin_variant=variant, pin_placement=placement)
            request = proto.parse_request(header)
            expected = [a for a in model.arms if (variant is None or a.variant.name == variant)
                        and (placement is None or a.placement.name == placement)]
            if expected:
                got = admission.candidates(request)[1]
                assert list(got) == expected and got is admission.candidates(request)[1]
            else:
                with pytest.raises(proto.ProtocolError) as err:
                    admission.candidates(request)
                want = proto.UNKNOWN_VARIANT if variant == "no-such-variant" else proto.UNKNOWN_PLACEMENT
                assert err.value.code == want, (variant, placement, err.value.message)
    assert len(admission._pinned) == kept   # (pins that leave no arm are not kept)
    # a model no placement runs is not BUSY under overload: its own error comes from the full path
    none_runs = [Placement("npu:0", "npu", "no-such-runtime", (0,), 1, None, "runs nothing here")]
    bare = Daemon(Config.from_dict({"repository": str(repo), "state_dir": str(tmp_path), "runtime_dir": str(tmp_path)}))
    bare.assemble(registry=load_registry(repo, none_runs, 1), placements=none_runs, pool=FakePool(),
                  meter=FakeMeter(), store=FakeStore(), frontend=FakeFrontend())
    assert not bare.registry.get(model_name, None).arms
    assert bare.admission.refuse_early({"type": "infer", "id": "r", "model": model_name}) is None
    d.registry = reloaded = load_registry(repo, placements, 2)
    admission.prepare(reloaded)
    assert admission.candidates(proto.parse_request(proto.request_header("r", model_name, [x()])))[1][0] \
        is reloaded.get(model_name, None).arms[0]


def test_a_repeat_keeps_its_region_checks_only_for_its_peer_while_the_region_lives(daemon):
    """Admission keeps a repeat's region references (adaptd.daemon.admission): the same peer's next
    copies skip the checks, but the same header from another peer, or after the region ended, is
    refused UNKNOWN_REGION as a first request is."""
    import os

    d, pool, frontend = daemon.d, daemon.pool, daemon.frontend
    d.path.on_request(None, message(b"peer-a", {"type": "shm_register", "id": "reg", "size": 1024,
                                                "owner_pid": os.getpid()}))
    region = frontend.sent[-1][1]["body"]["region"]
    shm = [proto.shm_tensor_header(np.dtype(np.float32), (1, 8, 8, 1), region, 0)]

    def send(peer, rid):
        d.path.on_request(None, message(peer, proto.request_header(rid, daemon.model, [x()], input_headers=shm)))
        if pool.jobs:
            job = pool.jobs[-1]
            d.path.on_outcome(pool.finish(job, [np.ones((1, 10), np.float32)]))
            assert job.input_headers[0]["shm"]["region"] == region
        return frontend.sent[-1][1]

    assert all(send(b"peer-a", f"a{k}")["type"] == "result" for k in range(3))
    assert d.path._memo.hits == 1   # kept on its second sight
    other = send(b"peer-b", "b0")
    assert other["code"] == "UNKNOWN_REGION" and region in other["message"]
    assert send(b"peer-a", "a3")["type"] == "result"
    d.path.on_request(None, message(b"peer-a", {"type": "shm_unregister", "id": "unreg", "region": region}))
    assert frontend.sent[-1][1]["type"] == "ok"
    ended = send(b"peer-a", "a4")
    assert ended["code"] == "UNKNOWN_REGION" and d.path._memo.hits == 4   # every one after the second a repeat


def test_only_a_reply_another_variant_served_waits_for_live_fidelity(daemon):
    """The reference's own replies have nothing to be compared with: live fidelity counts them
    and nothing is deferred for it; another variant's reply defers its shadow decision."""
    d, pool = daemon.d, daemon.pool
    d.fidelity.reset(d.registry)
    counts = d.fidelity.scheduler.counts
    for variant, deferred in (("float32", 1), ("int8_full", 2)):
        header = proto.request_header(f"r-{variant}", daemon.model, [x()], pin_variant=variant, pin_placement="cpu:0")
        d.path.on_request(None, message(b"peer-a", header, [x()]))
        d.path.on_outcome(pool.finish(pool.jobs[-1], [np.ones((1, 10), np.float32)]))
        assert d.books.backlog == deferred   # the record's bookkeeping, and the shadow decision
        d.books.flush()
    assert counts["reference"] == 1 and sum(counts.values()) == 2


@pytest.mark.parametrize("failing", ["attribute", "runtime_energy_mj"])   # the execution's energy, the runtime's
def test_a_fault_while_its_reply_is_built_is_answered_internal_and_serving_goes_on(daemon, caplog, failing):
    """A fault in turning an outcome into its reply (here the energy meter raising) never leaves
    the daemon's loop: the request is answered INTERNAL, once, is no longer held and is not
    counted as served."""
    d, pool, frontend = daemon.d, daemon.pool, daemon.frontend
    meter, out = d.meter, [np.ones((1, 10), np.float32)]

    def fail(*args, **kwargs):
        raise OSError("sensor read failed")
    d.meter = FakeMeter()
    setattr(d.meter, failing, fail)
    d.path.on_request(None, message(b"peer-a", proto.request_header("f1", daemon.model, [x()]), [x()]))
    d.path.on_outcome(pool.finish(pool.jobs[-1], out))   # does not raise
    (_, reply, _), = frontend.sent
    assert reply["code"] == "INTERNAL" and reply["id"] == "f1" and "sensor read failed" in reply["message"]
    assert d.path.pending == {} and "internal error" in caplog.text
    assert d.path.inferences == 0 and d.path.errors_by_code == {"INTERNAL": 1}   # not counted as served
    d.meter = meter
    d.path.on_request(None, message(b"peer-a", proto.request_header("f2", daemon.model, [x()]), [x()]))
    d.path.on_outcome(pool.finish(pool.jobs[-1], out))
    assert [h.get("code", h["type"]) for _, h, _ in frontend.sent] == ["INTERNAL", "result"]


def test_a_fault_after_the_reply_went_out_is_logged_not_answered_twice(daemon, caplog):
    """The request and its retry (attached while it ran) have both had their result when the
    fault comes: neither gets a second reply."""
    d, pool, frontend = daemon.d, daemon.pool, daemon.frontend

    def broken_put(*args):
        raise RuntimeError("replay store bug")
    d.replays.put = broken_put
    header = proto.request_header("once", daemon.model, [x()])
    d.path.on_request(None, message(b"peer-a", header, [x()]))
    d.path.on_request(None, message(b"peer-a", header, [x()]))   # a retry while it runs: one job, two routes
    (job,) = pool.jobs
    requests = d.path.requests
    d.path.on_outcome(pool.finish(job, [np.ones((1, 10), np.float32)]))
    assert [(h["type"], h["id"]) for _, h, _ in frontend.sent] == [("result", "once")] * 2
    assert d.path.requests == requests + 2 and "replay store bug" in caplog.text


def test_a_fault_in_the_housekeeping_is_logged_and_the_other_steps_still_run(daemon, caplog):
    """A once-a-second step that raises (here the replay store's expiry) used to go out of the
    daemon's loop and end it. It is logged, once with its traceback and then in one line, and the
    steps after it still run at every tick (here live fidelity's expiry, counted as it runs)."""
    d = daemon.d

    def broken_expire(now):
        raise RuntimeError("expiry bug")
    d.replays.expire = broken_expire
    ran, fidelity_tick = [], d.fidelity.tick
    d.fidelity.tick = lambda now: (ran.append(now), fidelity_tick(now))
    d.housekeeping.tick(1.0)
    d.housekeeping.tick(2.0)
    assert ran == [1.0, 2.0] and d.pool.stall_checks == [1.0, 2.0]   # (the workers stopped mid-message)
    first, second = [r for r in caplog.records if "housekeeping" in r.getMessage()]   # (no other step faulted)
    assert all("housekeeping (replays)" in r.getMessage() for r in (first, second))
    assert "expiry bug" in str(first.exc_info[1]) and second.exc_info is None and "expiry bug" in second.getMessage()


def queue_then_raise(pool: FakePool):
    """Make the pool's hand-off raise once it has queued the job (a channel fault after the
    queue); returns the real ``submit``."""
    real = pool.submit

    def submit(placement, job):
        real(placement, job)
        raise RuntimeError("channel bug")
    pool.submit = submit
    return real


def test_a_job_that_runs_after_its_hand_off_raised_gets_no_second_reply(daemon):
    """A hand-off that raised once the job was queued: the request is answered INTERNAL and given
    up; when the job ends after all, its outcome finds the request gone and sends nothing."""
    d, pool, frontend = daemon.d, daemon.pool, daemon.frontend
    queue_then_raise(pool)
    d.path.on_request(None, message(b"peer-a", proto.request_header("late", daemon.model, [x()]), [x()]))
    (job,) = pool.jobs
    assert [h["code"] for _, h, _ in frontend.sent] == ["INTERNAL"] and d.path.pending == {}
    d.path.on_outcome(pool.finish(job, [np.ones((1, 10), np.float32)]))
    assert len(frontend.sent) == 1


def test_a_late_job_leaves_the_retry_that_holds_its_id_alone(tiny_repository, tmp_path):
    """The request was given up (its hand-off raised once the job was queued) and, with no
    stored reply to answer it (replay off), its retry runs as a new request under the same id:
    the first job's late outcome must neither answer nor drop the retry."""
    daemon = build(tiny_repository, tmp_path, server={"dedup_window_s": 0})
    d, pool, frontend = daemon.d, daemon.pool, daemon.frontend
    real = queue_then_raise(pool)
    header = proto.request_header("same", daemon.model, [x()])
    d.path.on_request(None, message(b"peer-a", header, [x()]))
    pool.submit = real
    d.path.on_request(None, message(b"peer-a", header, [x()]))   # the retry, run afresh
    first, retry = pool.jobs
    d.path.on_outcome(pool.finish(first, [np.zeros((1, 10), np.float32)]))
    assert [h.get("code", h["type"]) for _, h, _ in frontend.sent] == ["INTERNAL"]
    d.path.on_outcome(pool.finish(retry, [np.ones((1, 10), np.float32)]))
    assert [h.get("code", h["type"]) for _, h, _ in frontend.sent] == ["INTERNAL", "result"]
    assert d.path.pending == {}


@pytest.mark.parametrize("raising", ["run_inline", "submit"])
def test_a_run_or_hand_off_that_raises_gives_the_request_up(tiny_repository, tmp_path, raising):
    """The job never started, so nothing will answer it later: INTERNAL now, and the request is
    not left held (a retry of its id used to wait on it for ever, unanswered); the retry is
    answered from the stored reply, and the next request runs."""
    daemon = build(tiny_repository, tmp_path, placements={"inline_max_ms": 1000.0})   # every job tries inline
    d, pool, frontend = daemon.d, daemon.pool, daemon.frontend
    real = getattr(pool, raising)

    def broken(*args):
        raise RuntimeError(f"{raising} bug")
    setattr(pool, raising, broken)
    header = proto.request_header("r1", daemon.model, [x()])
    d.path.on_request(None, message(b"peer-a", header, [x()]))
    (_, reply, _), = frontend.sent
    assert reply["code"] == "INTERNAL" and f"{raising} bug" in reply["message"]
    assert d.path.pending == {} and not pool.jobs
    setattr(pool, raising, real)
    d.path.on_request(None, message(b"peer-a", header, [x()]))   # the retry
    retried = frontend.sent[-1][1]
    assert retried["code"] == "INTERNAL" and retried["replayed"] is True and not pool.jobs
    d.path.on_request(None, message(b"peer-a", proto.request_header("r2", daemon.model, [x()]), [x()]))
    d.path.on_outcome(pool.finish(pool.jobs[-1], [np.ones((1, 10), np.float32)]))
    assert frontend.sent[-1][1]["type"] == "result" and frontend.sent[-1][1]["id"] == "r2"


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_nonfinite_inline_input_for_a_thread_placement_is_refused_before_the_hand_off(tiny_repository, tmp_path,
                                                                                          value):
    """Screened on the main thread once the arm is chosen (a placement's thread then never
    screens an inline input, see adaptd.daemon.execution): BAD_INPUT naming the arm, no job, a
    record against the arm; with [server] reject_nonfinite = false the input is run."""
    bad = x()
    bad[0, 2, 2, 0] = value
    for reject in (True, False):
        daemon = build(tiny_repository, tmp_path, server={"reject_nonfinite": reject})
        d, pool, frontend = daemon.d, daemon.pool, daemon.frontend
        d.path.on_request(None, message(b"p", proto.request_header("nan", daemon.model, [bad]), [bad]))
        if reject:
            (_, reply, _), = frontend.sent
            assert reply["code"] == "BAD_INPUT" and reply["message"] == ("input 0 holds NaN or infinite values "
                                                                         "(server.reject_nonfinite)")
            assert reply["details"]["placement"] == PLACEMENT.name
            d.books.flush()
            (record,) = daemon.store.records
            assert not pool.jobs and d.path.pending == {}
            assert (record["outcome"], record["error_code"], record["placement"]) == ("error", "BAD_INPUT",
                                                                                     PLACEMENT.name)
        else:
            assert frontend.sent == [] and len(pool.jobs) == 1


def test_a_sole_callers_longer_job_is_tried_inline_and_no_other(tiny_repository, tmp_path):
    """With inline_max_ms = 0 only a sole caller's job is tried inline (the fake pool records the
    try and holds the job): not a new caller's first request (it has not been alone for the
    window), nor one while another request is in flight, nor another caller's first, nor one in a
    round of the loop with other events, nor one of several a connection sent at once; an
    operator's control request does not end the sole caller's turn. The rule is replaced where a
    test would otherwise wait out its window (tests/test_inline_rule.py covers its length)."""
    daemon = build(tiny_repository, tmp_path, placements={"inline_max_ms": 0.0, "inline_sole_caller_max_ms": 1000.0})
    d, pool = daemon.d, daemon.pool

    def send(peer: bytes, rid: str) -> None:
        d.path.on_request(None, message(peer, proto.request_header(rid, daemon.model, [x()]), [x()]))

    send(b"peer-a", "first")                 # a new caller: not alone for a window yet
    d.path.on_outcome(pool.finish(pool.jobs[-1], [np.ones((1, 10), np.float32)]))
    d.path._inline = InlineRule(0.0, 1000.0, window_s=3600.0)
    d.path._inline.seen(peer_of([zmq.Frame(b"peer-a")], None), time.monotonic_ns() - 7200 * 10**9)   # (alone for 2 h)
    d.path.on_request(None, message(b"operator", {"type": "stats", "id": "s1"}))   # control: not counted
    send(b"peer-a", "alone")
    send(b"peer-a", "behind")                # "alone" still in flight
    assert pool.tried_inline == ["alone"]
    for job in list(pool.jobs):
        d.path.on_outcome(pool.finish(job, [np.ones((1, 10), np.float32)]))
    send(b"peer-b", "other")                 # another caller: the turn ends for the window
    d.path._inline = InlineRule(0.0, 1000.0, window_s=0.0)
    d.path.on_outcome(pool.finish(pool.jobs[-1], [np.ones((1, 10), np.float32)]))
    d.path.round_events = 2                  # the loop has another event this round
    send(b"peer-b", "busy-loop")
    d.path.on_outcome(pool.finish(pool.jobs[-1], [np.ones((1, 10), np.float32)]))
    d.path.round_events = 1
    # A stream connection that sent two requests at once: the second is read, not yet handled.
    pipelining = SimpleNamespace(peer=b"stream-peer", awaiting=2, backlog=[])
    frames = [memoryview(bytes(memoryview(f))) for f in proto.encode(
        proto.request_header("sent-together", daemon.model, [x()]), [x()])[1:]]
    d.path.on_stream_request(pipelining, (), frames, sum(len(f) for f in frames))
    d.path.on_outcome(pool.finish(pool.jobs[-1], [np.ones((1, 10), np.float32)]))
    send(b"peer-b", "now-alone")             # (the window made zero) alone, nothing else at all
    assert pool.tried_inline == ["alone", "now-alone"]
    assert [h["id"] for _, h, _ in daemon.frontend.sent] == ["first", "s1", "alone", "behind", "other", "busy-loop",
                                                             "sent-together"]
