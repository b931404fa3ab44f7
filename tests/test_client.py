"""Both clients against a real ROUTER socket (a scripted daemon in a thread): codec, matching
replies by id, retries under the same id, stale replies, error mapping, timeouts."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq

from adaptd.clients import errors as e
from adaptd.clients.aio import AsyncClient
from adaptd.clients.client import Client, default_endpoint, default_pub_endpoint
from adaptd.wire import protocol as p


def result_header(req: dict, outputs: list[np.ndarray], **extra) -> dict:
    h = {
        "type": "result", "id": req["id"], "model": req["model"], "version": "1",
        "variant": "int8_full", "placement": "cpu:0-1",
        "outputs": [p.tensor_header(o) for o in outputs],
        "timing": {"queue_ms": 0.02, "compute_ms": 0.11, "total_ms": 0.31},
        "energy": {"energy_mj": 0.9, "source": "estimated:generic", "estimated": True},
        "predicted": {"latency_ms": 0.3, "latency_bound_ms": 0.45, "queue_ms": 0.0,
                      "energy_mj": 0.85, "energy_estimated": True, "accuracy": 0.961},
        "constraints_met": {k: True for k in (req.get("constraints") or {})},
        "met": True, "reason": {"code": "selected", "text": "least latency"}, "replayed": False,
    }
    h.update(extra)
    return h


class FakeDaemon:
    """A ROUTER in a thread. ``handler(header, arrays, count)`` returns a list of
    (header, bodies) replies to send (possibly none, or several, or for other ids)."""

    def __init__(self, endpoint: str, handler: Callable) -> None:
        self.endpoint = endpoint
        self.handler = handler
        self.received: list[dict] = []
        self._ctx = zmq.Context.instance()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.bind(endpoint)
        # A fresh name each time: id(self) is reused once an instance is collected.
        self._stop_endpoint = f"inproc://stop-{uuid.uuid4().hex}"
        self._stop = self._ctx.socket(zmq.PAIR)
        self._stop.bind(self._stop_endpoint)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stop = self._ctx.socket(zmq.PAIR)
        stop.connect(self._stop_endpoint)
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(stop, zmq.POLLIN)
        while True:
            events = dict(poller.poll())
            if stop in events:
                break
            frames = self._router.recv_multipart(copy=False)
            envelope, rest = frames[0].bytes, frames[1:]
            header, bodies = p.decode(rest)
            arrays = []
            if header.get("type") == "infer":
                specs = p.parse_tensor_headers(header["inputs"], "inputs", header["id"])
                arrays = p.tensors_from_frames(specs, bodies)
            self.received.append(header)
            count = sum(1 for h in self.received if h.get("id") == header.get("id"))
            for reply, reply_bodies in self.handler(header, arrays, count):
                self._router.send_multipart([envelope, *p.encode(reply, reply_bodies)])
        stop.close(0)
        self._router.close(0)

    def close(self) -> None:
        self._stop.send(b"")
        self._thread.join()
        self._stop.close(0)
        self._stop.close(0)


@pytest.fixture
def endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/d.sock"


def echo_softmax(header, arrays, count):
    if header["type"] != "infer":
        return [({"type": "ok", "id": header["id"], "of": header["type"], "body": {"you_asked": header["type"]}}, [])]
    out = np.full((arrays[0].shape[0], 10), float(arrays[0].sum()), np.float32)
    return [(result_header(header, [out]), [out])]


def test_default_endpoints(monkeypatch):
    monkeypatch.delenv("ADAPTD_ENDPOINT", raising=False)
    monkeypatch.delenv("ADAPTD_PUB_ENDPOINT", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_endpoint() == "ipc:///run/user/1000/adaptd/adaptd.sock"
    assert default_pub_endpoint() == "ipc:///run/user/1000/adaptd/adaptd-selections.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    import os
    assert default_endpoint() == f"ipc:///tmp/adaptd-{os.getuid()}/adaptd.sock"
    monkeypatch.setenv("ADAPTD_ENDPOINT", "tcp://127.0.0.1:5555")
    assert default_endpoint() == "tcp://127.0.0.1:5555"


def test_the_default_endpoint_is_the_local_stream_where_the_daemon_serves_one(monkeypatch, tmp_path):
    import socket

    monkeypatch.delenv("ADAPTD_ENDPOINT", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "adaptd").mkdir(mode=0o700)
    assert default_endpoint() == f"ipc://{tmp_path}/adaptd/adaptd.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "adaptd" / "adaptd-local.sock"))
    try:
        assert default_endpoint() == f"ipc://{tmp_path}/adaptd/adaptd.sock"   # a file nobody listens on
        listener.listen(1)
        assert default_endpoint() == f"unix://{tmp_path}/adaptd/adaptd-local.sock"
        assert default_endpoint(stream=False) == f"ipc://{tmp_path}/adaptd/adaptd.sock"   # CurveZMQ keys
    finally:
        listener.close()


def test_sync_infer_round_trip_sends_spec_frames_and_returns_views(endpoint):
    daemon = FakeDaemon(endpoint, echo_softmax)
    try:
        with Client(endpoint, timeout_ms=5000, name="tester") as c:
            x = np.ones((1, 16, 16, 1), np.float64)   # float64 goes out as float32
            r = c.infer("digits", x, min_accuracy=0.9, max_latency_ms=5, objective="energy",
                        on_infeasible="best_effort", variant="int8_full", request_id="abc")
            assert r.request_id == "abc"
            assert r.outputs[0].shape == (1, 10) and r.outputs[0].dtype == np.float32
            assert float(r.outputs[0][0, 0]) == 256.0
            assert not r.outputs[0].flags.owndata   # a view over the frame, not a copy
            s = r.selection
            assert (s.variant, s.placement, s.met, s.reason.code) == ("int8_full", "cpu:0-1", True, "selected")
            assert s.energy.estimated and s.energy.source == "estimated:generic"
            assert "estimated" in s.energy.describe()
            assert s.constraints_met == {"min_accuracy": True, "max_latency_ms": True}
            assert s.timing.total_ms == pytest.approx(0.31) and s.predicted.accuracy == pytest.approx(0.961)
            req = daemon.received[0]
            assert p.parse_request(req).constraints == p.Constraints(0.9, 5.0, None)
            assert req["pin"] == {"variant": "int8_full"} and req["client"] == "tester"
            assert req["inputs"] == [{"dtype": "float32", "shape": [1, 16, 16, 1]}]
            assert c.health() == {"you_asked": "health"}
            assert c.stats() == {"you_asked": "stats"}
    finally:
        daemon.close()


def test_large_tensor_round_trip_is_exact(endpoint):
    def handler(header, arrays, count):
        out = np.ascontiguousarray(arrays[0]) * 2
        return [(result_header(header, [out]), [out])]
    daemon = FakeDaemon(endpoint, handler)
    try:
        with Client(endpoint, timeout_ms=5000) as c:
            x = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)
            r = c.infer("mnv2", x)
            np.testing.assert_array_equal(r.outputs[0], x * 2)
    finally:
        daemon.close()


def test_retry_after_timeout_reuses_the_id_and_discards_stale_replies(endpoint):
    def handler(header, arrays, count):
        if header["id"] == "slow" and count == 1:
            return []                                     # first attempt: silence
        replies = []
        if header["id"] == "slow":                        # a stale reply for an old id first
            replies.append(({"type": "error", "id": "long-gone", "code": "BUSY", "message": "x"}, []))
        return replies + echo_softmax(header, arrays, count)
    daemon = FakeDaemon(endpoint, handler)
    try:
        with Client(endpoint, timeout_ms=300, retries=2) as c:
            r = c.infer("digits", np.zeros((1, 4), np.float32), request_id="slow")
            assert r.request_id == "slow" and c.retried == 1 and c.stale_replies == 1
            assert [h["id"] for h in daemon.received] == ["slow", "slow"]
            assert daemon.received[0] == daemon.received[1]   # the same message, resent
    finally:
        daemon.close()


def test_timeout_after_all_retries(endpoint):
    daemon = FakeDaemon(endpoint, lambda h, a, n: [])
    try:
        with Client(endpoint, timeout_ms=100, retries=1) as c:
            with pytest.raises(e.RequestTimeout) as info:
                c.infer("digits", np.zeros((1, 4), np.float32), request_id="t1")
            assert isinstance(info.value, TimeoutError) and info.value.request_id == "t1"
            assert [h["id"] for h in daemon.received] == ["t1", "t1"]
    finally:
        daemon.close()


@pytest.mark.parametrize("code,cls", [
    ("INFEASIBLE", e.InfeasibleError), ("BUSY", e.BusyError), ("BAD_INPUT", e.BadInputError),
    ("BAD_CONSTRAINTS", e.BadConstraintsError), ("UNKNOWN_MODEL", e.UnknownModelError),
    ("UNKNOWN_VARIANT", e.UnknownVariantError), ("UNKNOWN_PLACEMENT", e.UnknownPlacementError),
    ("WORKER_FAILED", e.WorkerFailedError), ("SHUTTING_DOWN", e.ShuttingDownError),
    ("TOO_LARGE", e.TooLargeError), ("INTERNAL", e.InternalError), ("MALFORMED", e.MalformedError),
    ("BAD_REQUEST", e.BadRequestError), ("UNSUPPORTED_VERSION", e.UnsupportedVersionError),
])
def test_error_codes_map_to_exceptions(endpoint, code, cls):
    details = {"closest": {"variant": "float32", "placement": "cpu:0-1"},
               "violations": {"max_latency_ms": {"predicted": 9.0, "bound": 5.0, "by": 4.0}}}

    def handler(header, arrays, count):
        return [(p.error_header(code, "no can do", header["id"], details), [])]
    daemon = FakeDaemon(endpoint, handler)
    try:
        with Client(endpoint, timeout_ms=5000) as c:
            with pytest.raises(cls) as info:
                c.infer("digits", np.zeros((1, 4), np.float32), request_id="x1")
            err = info.value
            assert isinstance(err, e.AdaptdError)
            assert (err.code, err.request_id, err.message) == (code, "x1", "no can do")
            assert err.details == details
            if cls is e.InfeasibleError:
                assert err.closest == {"variant": "float32", "placement": "cpu:0-1"}
                assert err.violations["max_latency_ms"]["bound"] == 5.0
            assert c.retried == 0   # error replies are not retried
    finally:
        daemon.close()


def test_async_client_many_outstanding_replies_out_of_order(endpoint):
    held: list = []

    def handler(header, arrays, count):
        # Hold replies until 20 requests arrived, then answer them in reverse order.
        held.append((header, arrays))
        if len(held) < 20:
            return []
        replies = []
        for h, a in reversed(held):
            out = np.array([[float(a[0][0, 0])]], np.float32)
            replies.append((result_header(h, [out]), [out]))
        return replies
    daemon = FakeDaemon(endpoint, handler)

    async def main():
        async with AsyncClient(endpoint, timeout_ms=5000, retries=0) as c:
            results = await asyncio.gather(*(
                c.infer("digits", np.full((1, 1), i, np.float32), request_id=f"a{i}") for i in range(20)))
            return [(r.request_id, float(r.outputs[0][0, 0])) for r in results]
    try:
        assert asyncio.run(main()) == [(f"a{i}", float(i)) for i in range(20)]
    finally:
        daemon.close()


def test_async_client_retry_timeout_and_errors(endpoint):
    def handler(header, arrays, count):
        if header["id"] == "never":
            return []
        if header["id"] == "flaky" and count == 1:
            return []
        if header["id"] == "bad":
            return [(p.error_header("INFEASIBLE", "nothing fits", "bad"), [])]
        return echo_softmax(header, arrays, count)
    daemon = FakeDaemon(endpoint, handler)

    async def main():
        async with AsyncClient(endpoint, timeout_ms=200, retries=1) as c:
            r = await c.infer("digits", np.zeros((1, 2), np.float32), request_id="flaky")
            assert r.request_id == "flaky" and c.retried == 1
            with pytest.raises(e.RequestTimeout):
                await c.infer("digits", np.zeros((1, 2), np.float32), request_id="never")
            with pytest.raises(e.InfeasibleError):
                await c.infer("digits", np.zeros((1, 2), np.float32), request_id="bad")
            assert await c.models() == {"you_asked": "models"}
    try:
        asyncio.run(main())
        assert [h["id"] for h in daemon.received].count("never") == 2
    finally:
        daemon.close()


def test_busy_backoff_doubles_is_capped_and_randomised():
    from adaptd.clients.client import BUSY_BACKOFF_MAX_MS, ClientSettings
    from adaptd.clients.core import ClientCore

    s = ClientCore(ClientSettings("ipc:///nowhere", 1000.0, 0, None, busy_retries=5, busy_backoff_ms=2.0))
    for retry, cap_ms in ((0, 2.0), (1, 4.0), (3, 16.0), (10, BUSY_BACKOFF_MAX_MS)):
        waits_ms = [s.busy_wait_s(retry) * 1e3 for _ in range(200)]
        assert all(cap_ms / 2 <= w < cap_ms for w in waits_ms), (retry, min(waits_ms), max(waits_ms))
        assert max(waits_ms) - min(waits_ms) > cap_ms / 10          # not one fixed wait for everyone
    for bad in ({"busy_retries": -1}, {"busy_backoff_ms": 0.0}, {"busy_backoff_ms": 2 * BUSY_BACKOFF_MAX_MS}):
        with pytest.raises(ValueError):
            ClientSettings("ipc:///nowhere", 1000.0, 0, None, **bad)


def test_fit_to_spec_keeps_a_batch_adds_a_missing_batch_axis_and_refuses_other_shapes():
    from adaptd.clients.inputs import fit_to_spec

    spec = {"dtype": "float32", "shape": [1, 16, 16, 1]}
    assert fit_to_spec(np.zeros((3, 16, 16, 1), np.float64), spec).shape == (3, 16, 16, 1)   # the daemon runs a batch
    assert fit_to_spec(np.zeros((16, 16, 1), np.float32), spec).shape == (1, 16, 16, 1)
    with pytest.raises(ValueError, match=r"\[2, 8, 8, 1\] does not fit the model's \[1, 16, 16, 1\]"):
        fit_to_spec(np.zeros((2, 8, 8, 1), np.float32), spec)
    with pytest.raises(ValueError, match="does not fit"):
        fit_to_spec(np.zeros((0, 16, 16, 1), np.float32), spec)


def test_fit_to_spec_sends_frames_as_uint8_where_the_model_declares_preprocessing():
    from adaptd.clients.inputs import fit_to_spec

    image = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    plain = {"dtype": "float32", "shape": [1, 6, 5, 3]}
    framed = {**plain, "preprocessing": {"from": "uint8", "scale": 2 / 255, "offset": -1.0, "in_model": False}}
    sent = fit_to_spec(image, framed)
    assert sent.dtype == np.uint8 and sent.shape == (1, 6, 5, 3)       # resized, still a quarter of the bytes
    scaled = fit_to_spec(image, plain)
    assert scaled.dtype == np.float32 and float(scaled.max()) <= 1.0    # no declaration: scaled to [0, 1] here
    np.testing.assert_allclose(scaled * 255, sent, atol=1)


def test_both_clients_resend_busy_under_the_same_id_and_fail_calls_the_daemon_could_not_read(endpoint):
    def handler(header, arrays, count):
        if header.get("id") == "unreadable":   # as if the daemon could not read the id
            return [(p.error_header("MALFORMED", "header is not valid msgpack"), [])]
        if header["type"] == "infer" and count <= 2:
            return [(p.error_header("BUSY", "queue full", header["id"]), [])]
        return echo_softmax(header, arrays, count)
    daemon = FakeDaemon(endpoint, handler)

    async def run_async():
        async with AsyncClient(endpoint, timeout_ms=5000, busy_retries=3, busy_backoff_ms=1.0) as c:
            r = await c.infer("digits", np.ones((1, 2), np.float32), request_id="async-busy")
            with pytest.raises(e.MalformedError):
                await c.infer("digits", np.ones((1, 2), np.float32), request_id="unreadable")
            return r, c.busy_retried, c.retried
    try:
        with Client(endpoint, timeout_ms=5000, busy_retries=3, busy_backoff_ms=1.0) as c:
            r = c.infer("digits", np.ones((1, 2), np.float32), request_id="sync-busy")
            assert float(r.outputs[0][0, 0]) == 2.0 and (c.busy_retried, c.retried) == (2, 0)
            with pytest.raises(e.MalformedError):
                c.infer("digits", np.ones((1, 2), np.float32), request_id="unreadable")
        r, busy_retried, retried = asyncio.run(run_async())
        assert r.request_id == "async-busy" and (busy_retried, retried) == (2, 0)
        ids = [h["id"] for h in daemon.received]
        assert ids.count("sync-busy") == ids.count("async-busy") == 3
    finally:
        daemon.close()
