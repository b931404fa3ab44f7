"""The local stream (unix://, PROTOCOL.md §2.3) through the real daemon serving the tiny real model:
the same replies as over ZeroMQ, retries, regions, and clients that break the framing, leave
mid-message or never read. Real daemon process, real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid

import numpy as np
import pytest

from adaptd.clients import errors as e
from adaptd.clients.aio import AsyncClient
from adaptd.clients.client import Client
from adaptd.tools.launch import DaemonProcess
from adaptd.wire import protocol as proto
from adaptd.wire import replies
from adaptd.wire.stream import MAX_FRAMES, MessageReader, message_bytes, send_message, widen_send_buffer

from .conftest import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon(tiny_repository, tmp_path_factory):
    repo, model, _ = tiny_repository
    d = DaemonProcess.start(repo, tmp_path_factory.mktemp("daemon"), config={"placements": {"load": "eager"}})
    try:
        assert d.local_endpoint is not None
        yield d, model
    finally:
        d.stop()


class Stream:
    """A raw connection to the daemon's local stream (what the client library does, by hand)."""

    def __init__(self, endpoint: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(endpoint[len("unix://"):])
        self.reader = MessageReader(1 << 30)
        self.ready: list = []

    def send(self, header: dict, bodies=()) -> None:
        send_message(self.sock, proto.encode(header, bodies)[1:])

    def recv(self) -> tuple[dict, list[memoryview]]:
        while not self.ready:
            self.ready += self.reader.read_from(self.sock)
        return proto.decode([b"", *self.ready.pop(0)])

    def close(self) -> None:
        self.sock.close()


def tiny_input(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 8, 8, 1), dtype=np.float32)


def health(d: DaemonProcess) -> dict:
    return d.request({"type": "health", "id": uuid.uuid4().hex})[0]["body"]


def test_a_reply_over_the_stream_carries_what_one_over_zeromq_does(daemon):
    d, model = daemon
    header = {"type": "infer", "model": model, "inputs": [proto.tensor_header(tiny_input())],
              "constraints": {"max_latency_ms": 200}, "explain": True}
    over_zmq, zmq_bodies = d.request({**header, "id": "z1"}, [tiny_input()])
    stream = Stream(d.local_endpoint)
    try:
        stream.send({**header, "id": "s1"}, [tiny_input()])
        over_stream, bodies = stream.recv()
    finally:
        stream.close()
    assert over_stream["type"] == "result" and over_stream["id"] == "s1"
    assert set(over_stream) == set(over_zmq)
    for part in ("timing", "energy", "predicted", "runtime", "reason"):
        assert set(over_stream[part]) == set(over_zmq[part]), part
    assert len(bodies) == len(zmq_bodies) == 1 and np.frombuffer(bodies[0], np.float32).shape == (10,)


def test_the_client_library_serves_inferences_and_regions_over_the_stream(daemon):
    d, model = daemon
    x = tiny_input(1)
    with Client(d.local_endpoint, timeout_ms=30_000) as client, Client(d.endpoint) as by_zmq:
        result = client.infer(model, x, max_latency_ms=200, variant="float32")
        assert result.selection.variant == "float32" and result.selection.energy.estimated
        region = client.register_region(4096)
        xs = region.ndarray(x.shape, np.float32)
        xs[...] = x
        in_region = client.infer(model, xs, variant="float32", outputs_to=region)
        expected = by_zmq.infer(model, x, variant="float32").outputs[0]
        np.testing.assert_allclose(in_region.outputs[0], expected, rtol=1e-6)
        np.testing.assert_allclose(result.outputs[0], expected, rtol=1e-6)
        with pytest.raises(e.UnknownModelError):
            client.infer("no-such-model", x)
        assert client.models()   # the connection serves on after an error reply


def _send_buffer(sock) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


def test_both_clients_connections_hold_a_large_input_whole(daemon):
    """Each client widens its stream connection's send buffer (``widen_send_buffer``): a large
    input then goes to the daemon in one write rather than in pieces, each a wake-up of both."""
    d, model = daemon
    reference = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    default = _send_buffer(reference)
    widen_send_buffer(reference)
    widened = _send_buffer(reference)
    reference.close()
    assert widened > default
    with Client(d.local_endpoint, timeout_ms=30_000) as client:
        client.infer(model, tiny_input(1))
        assert _send_buffer(client._transport.sock) == widened

    async def run() -> int:
        async with AsyncClient(d.local_endpoint, timeout_ms=30_000) as client:
            await client.infer(model, tiny_input(1))
            return _send_buffer(client._socket._writer.get_extra_info("socket"))

    assert asyncio.run(run()) == widened


def test_the_asyncio_client_has_many_requests_in_flight_on_one_stream(daemon):
    d, model = daemon

    async def run() -> list:
        async with AsyncClient(d.local_endpoint, timeout_ms=30_000) as client:
            results = await asyncio.gather(*(client.infer(model, tiny_input(i)) for i in range(16)))
            with pytest.raises(e.UnknownModelError):
                await client.infer("no-such-model", tiny_input())
            return results

    results = asyncio.run(run())
    assert len({r.request_id for r in results}) == 16
    with Client(d.endpoint) as by_zmq:   # each reply is its own request's
        for i in (0, 7, 15):
            expected = by_zmq.infer(model, tiny_input(i), variant=results[i].selection.variant,
                                    placement=results[i].selection.placement).outputs[0]
            np.testing.assert_allclose(results[i].outputs[0], expected, rtol=1e-5)


def test_a_retry_on_the_same_connection_is_answered_from_the_replay_store(daemon):
    d, model = daemon
    stream = Stream(d.local_endpoint)
    try:
        header = {"type": "infer", "id": "retry-1", "model": model, "inputs": [proto.tensor_header(tiny_input())]}
        stream.send(header, [tiny_input()])
        stream.send(header, [tiny_input()])
        first, _ = stream.recv()
        second, _ = stream.recv()
    finally:
        stream.close()
    assert first["type"] == second["type"] == "result"
    assert first["replayed"] is False and second["replayed"] is True
    assert second["timing"] == first["timing"]   # the stored reply: run once


def test_a_broken_frame_count_gets_one_error_reply_and_the_connection_ends(daemon):
    d, model = daemon
    stream = Stream(d.local_endpoint)
    try:
        stream.sock.sendall((MAX_FRAMES + 1).to_bytes(4, "little"))
        reply, _ = stream.recv()
        assert reply["type"] == "error" and reply["code"] == "MALFORMED" and reply["id"] is None
        with pytest.raises(ConnectionError):
            stream.recv()
    finally:
        stream.close()
    assert health(d)["status"] == "serving"


def test_a_message_over_the_limit_gets_too_large_and_the_connection_serves_on(daemon):
    d, model = daemon
    rss_before = health(d)["rss_bytes"]
    stream = Stream(d.local_endpoint)
    try:
        over = b"x" * (65 << 20)   # the default limit is 64 MiB
        stream.sock.sendall(message_bytes([b"ADPT01", over])[0])
        reply, _ = stream.recv()   # answered as soon as its size is known
        assert reply["code"] == "TOO_LARGE" and reply["id"] is None, reply
        stream.sock.sendall(b"ADPT01" + over)   # skipped as it comes
        assert health(d)["rss_bytes"] - rss_before < 32 << 20
        stream.send({"type": "models", "id": "after"})
        after, _ = stream.recv()
        assert after["type"] == "ok" and after["id"] == "after"
    finally:
        stream.close()


def test_an_oversize_request_among_others_fails_alone_with_its_id(daemon):
    d, model = daemon
    huge = np.zeros((1, 4200, 4096, 1), np.float32)   # over the 64 MiB limit

    async def run() -> tuple:
        async with AsyncClient(d.local_endpoint, timeout_ms=30_000, retries=0) as client:
            calls = [client.infer(model, tiny_input(i)) for i in range(4)] + [client.infer(model, huge)]
            return await asyncio.gather(*calls, return_exceptions=True)

    *fine, too_large = asyncio.run(run())
    assert all(r.outputs[0].shape == (1, 10) for r in fine), fine
    assert isinstance(too_large, e.TooLargeError) and too_large.request_id is not None


def test_clients_that_leave_mid_message_or_with_requests_in_flight_leave_the_daemon_serving(daemon):
    d, model = daemon
    half = Stream(d.local_endpoint)
    data = b"".join(bytes(memoryview(b).cast("B"))
                    for b in message_bytes(proto.encode({"type": "models", "id": "half"})[1:]))
    half.sock.sendall(data[:len(data) // 2])
    half.close()
    busy = Stream(d.local_endpoint)
    for i in range(20):
        busy.send({"type": "infer", "id": f"gone-{i}", "model": model,
                   "inputs": [proto.tensor_header(tiny_input())]}, [tiny_input()])
    busy.close()
    with Client(d.local_endpoint) as client:
        assert client.infer(model, tiny_input()).outputs[0].shape == (1, 10)
    assert health(d)["status"] == "serving"


def test_a_client_that_never_reads_its_replies_loses_them_not_the_daemons_memory(daemon):
    d, _ = daemon
    stream = Stream(d.local_endpoint)
    stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    dropped_before = health(d)["replies_unread_dropped"]
    try:
        for i in range(3000):
            stream.send({"type": "models", "id": f"unread-{i}"})
        body = wait_until(lambda: (lambda h: h if h["replies_unread_dropped"] > dropped_before else None)(health(d)),
                          "replies dropped for the reader")
        assert body["status"] == "serving" and body["local_streams"]["connections"] >= 1
    finally:
        stream.close()


def test_a_stream_client_reconnects_after_the_connection_ends_and_its_retry_is_answered(tmp_path):
    """The client library's transport against a real Unix stream server that drops the first
    connection after reading its request, then answers on the second."""
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(2)
    seen = []

    def serve() -> None:
        first, _ = listener.accept()
        reader = MessageReader(1 << 20)
        while not (messages := reader.read_from(first)):
            pass
        seen.append(proto.decode([b"", *messages[0]])[0]["id"])
        first.close()   # the daemon went away with the request
        second, _ = listener.accept()
        reader = MessageReader(1 << 20)
        while not (messages := reader.read_from(second)):
            pass
        header = proto.decode([b"", *messages[0]])[0]
        seen.append(header["id"])
        send_message(second, proto.encode(replies.ok_header("models", header["id"], {"models": []}))[1:])
        second.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    with Client(f"unix://{path}", timeout_ms=500, retries=2) as client:
        assert client.models() == {"models": []}
    server.join(10)
    listener.close()
    assert len(seen) == 2 and seen[0] == seen[1]   # the same request, sent again on the new connection


def test_a_stream_endpoint_that_is_not_there_times_out_and_keys_are_refused(tmp_path):
    with Client(f"unix://{tmp_path / 'none.sock'}", timeout_ms=50, retries=1) as client:
        with pytest.raises(e.RequestTimeout):
            client.models()
    from adaptd.wire.auth import CurveKeys
    import zmq

    keys = CurveKeys(*zmq.curve_keypair(), zmq.curve_keypair()[0])
    with pytest.raises(ValueError, match="local stream"):
        Client(f"unix://{tmp_path / 'none.sock'}", curve=keys)
