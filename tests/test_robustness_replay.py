"""One client never receives another's results through the retry machinery: a real daemon.

PROTOCOL.md §8 promises that a retried id is run at most once and gets the stored reply. A
request id is no secret: the selection stream publishes every one (§9). So a second client that
sends a victim's id, with its own input, must get an answer to its own request (or an error),
never the victim's outputs, whether the victim's request is answered already (the replay store)
or still running (a retry attached to it), and whatever ``client`` name it claims. The victim's
own retry, on its own connection, still gets its stored reply. Outputs are checked against a
local LiteRT run of the pinned variant (``robustness.expected``), inputs chosen so that no two
give the same outputs.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from adaptd.clients.subscriber import Subscriber  # noqa: E402
from adaptd.wire import protocol as proto  # noqa: E402
from adaptd.tools.launch import DaemonProcess  # noqa: E402
from robustness import expected, watch  # noqa: E402

REPLY_MS = 60_000


def dealer(d: DaemonProcess) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(d.endpoint)
    return sock


def ask(sock: zmq.Socket, header: dict, x: np.ndarray) -> tuple[dict, list[np.ndarray]]:
    sock.send_multipart(proto.encode(header, [x]))
    assert sock.poll(REPLY_MS), f"no reply to {header['id']}"
    reply, bodies = proto.decode(sock.recv_multipart())
    if reply.get("type") != "result":
        return reply, []
    specs = proto.parse_tensor_headers(reply["outputs"], "outputs", reply["id"])
    return reply, [np.array(a) for a in proto.tensors_from_frames(specs, bodies, reply["id"], "output")]


def assert_own_answer(reply: dict, outputs: list[np.ndarray], exp: expected.Expected, variant: str, own: int,
                      victim_outputs: list[np.ndarray]) -> None:
    """An error, or a fresh result whose outputs are this request's own."""
    if reply["type"] == "error":
        assert reply["code"] != "INTERNAL", reply
        return
    assert reply["type"] == "result", reply
    leaked = len(outputs) == len(victim_outputs) and all(
        o.shape == v.shape and np.array_equal(o, v) for o, v in zip(outputs, victim_outputs))
    assert not leaked, f"the victim's outputs were sent to another client (replayed={reply.get('replayed')})"
    assert exp.check(reply["variant"], own, outputs) == "ok", reply
    assert reply.get("replayed") is False, reply


# --- answered already: the replay store --------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_repository, tmp_path_factory):
    repo, name, version = tiny_repository
    work = tmp_path_factory.mktemp("replay")
    exp = expected.build(repo, name, version, 2)
    d = DaemonProcess.start(repo, work, config={"placements": {"tensorflow": "off", "isolation": "process"}})
    yield d, exp
    assert d.stop() == 0, d.log()


def learn_a_request_id(d: DaemonProcess, sub: Subscriber, exp: expected.Expected, rid: str) -> dict:
    """Read the selection stream until the record of ``rid`` comes (what any subscriber sees)."""
    while True:
        record = sub.recv(timeout_ms=REPLY_MS)
        assert record is not None, f"no selection record for {rid}"
        if record["request_id"] == rid:
            return record


def join_stream(d: DaemonProcess, sub: Subscriber, exp: expected.Expected) -> None:
    """Send throwaway requests until the subscriber gets records (a PUB drops what is sent
    before the subscription reaches it)."""
    sock = dealer(d)
    try:
        for i in range(200):
            ask(sock, proto.request_header(f"join-{uuid.uuid4().hex}", exp.model, [exp.input(0)]), exp.input(0))
            if sub.recv(timeout_ms=100) is not None:
                while sub.recv(timeout_ms=0) is not None:
                    pass
                return
        raise AssertionError("the subscriber never received a record")
    finally:
        sock.close()


@pytest.mark.parametrize("claims_victims_name", [False, True], ids=["own-name", "victims-name"])
def test_a_replayed_id_from_another_client_never_gets_the_victims_outputs(tiny, claims_victims_name):
    d, exp = tiny
    log = watch.LogWatch(d.log_path)
    variant = "float32"
    placement = watch.control(d.endpoint, "placements")["body"]["placements"][0]["name"]
    sub = Subscriber(d.pub_endpoint, models=exp.model)
    victim, attacker = dealer(d), dealer(d)
    try:
        join_stream(d, sub, exp)
        rid = f"victim-{uuid.uuid4().hex}"
        header = proto.request_header(rid, exp.model, [exp.input(0)], pin_variant=variant, pin_placement=placement,
                                      client="victim-app")
        reply, victim_outputs = ask(victim, header, exp.input(0))
        assert reply["type"] == "result" and exp.check(variant, 0, victim_outputs) == "ok", reply
        record = learn_a_request_id(d, sub, exp, rid)
        assert record["client"] == "victim-app"

        stolen = proto.request_header(rid, exp.model, [exp.input(1)], pin_variant=variant, pin_placement=placement,
                                      client=record["client"] if claims_victims_name else "attacker")
        reply, outputs = ask(attacker, stolen, exp.input(1))
        assert_own_answer(reply, outputs, exp, variant, 1, victim_outputs)

        # the victim's own retry, on its own connection, still gets its reply (PROTOCOL.md §8)
        reply, again = ask(victim, header, exp.input(0))
        assert reply["type"] == "result" and reply["id"] == rid, reply
        assert all(np.array_equal(a, v) for a, v in zip(again, victim_outputs))
        assert not victim.poll(0) and not attacker.poll(0), "an extra reply"
    finally:
        victim.close()
        attacker.close()
        sub.close()
    assert log.tracebacks() == []


# --- still running: a retry attached to the running request ---------------------------------------

SLOW_BATCH = 48     # one request of this batch runs for about half a second on one core


@pytest.fixture(scope="module")
def slow(slow_repository, tmp_path_factory):
    work = tmp_path_factory.mktemp("replay-slow")
    exp = expected.build(slow_repository, "slow", "1", 2, candidates=8)
    d = DaemonProcess.start(slow_repository, work, config={"placements": {"tensorflow": "off", "isolation": "process", "queue_limit": 4}})
    yield d, exp
    assert d.stop() == 0, d.log()


def test_a_running_id_sent_by_another_client_never_gets_the_victims_outputs(slow):
    d, exp = slow
    log = watch.LogWatch(d.log_path)
    placement = watch.control(d.endpoint, "placements")["body"]["placements"][0]
    victim, attacker = dealer(d), dealer(d)
    big = np.random.default_rng(7).random((SLOW_BATCH, *exp.inputs.shape[1:]), dtype=np.float32)
    rid = f"running-{uuid.uuid4().hex}"
    try:
        victim.send_multipart(proto.encode(proto.request_header(
            rid, exp.model, [big], pin_variant="float32", pin_placement=placement["name"]), [big]))
        # freeze the worker while it runs the victim's request: it is certainly still running
        pid = watch.wait_busy(d.endpoint, placement["name"])
        os.kill(pid, signal.SIGSTOP)
        early: list[list[bytes]] = []
        try:
            stolen = proto.request_header(rid, exp.model, [exp.input(1)], pin_variant="float32",
                                          pin_placement=placement["name"])
            attacker.send_multipart(proto.encode(stolen, [exp.input(1)]))
            # one connection's messages are handled in order: once this health request is
            # answered, the daemon has taken the stolen id while the victim's still runs
            attacker.send_multipart(proto.encode({"type": "health", "id": "after-stolen"}))
            while True:
                assert attacker.poll(REPLY_MS), "no reply to health"
                frames = attacker.recv_multipart()
                if proto.decode(frames)[0].get("id") == "after-stolen":
                    break
                early.append(frames)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert victim.poll(REPLY_MS), "no reply to the victim"
        vreply, vbodies = proto.decode(victim.recv_multipart())
        assert vreply["type"] == "result" and vreply["id"] == rid, vreply
        victim_outputs = [np.array(a) for a in proto.tensors_from_frames(
            proto.parse_tensor_headers(vreply["outputs"], "outputs", rid), vbodies, rid, "output")]
        assert victim_outputs[0].shape[0] == SLOW_BATCH
        if not early:
            assert attacker.poll(REPLY_MS), "no reply to the second client"
            early.append(attacker.recv_multipart())
        assert len(early) == 1, f"{len(early)} replies to one request"
        reply, bodies = proto.decode(early[0])
        outputs = [] if reply["type"] != "result" else [np.array(a) for a in proto.tensors_from_frames(
            proto.parse_tensor_headers(reply["outputs"], "outputs", rid), bodies, rid, "output")]
        assert_own_answer(reply, outputs, exp, "float32", 1, victim_outputs)
        assert not victim.poll(0) and not attacker.poll(0), "an extra reply"
    finally:
        victim.close()
        attacker.close()
    assert log.tracebacks() == []


