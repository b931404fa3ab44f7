"""Shared-memory tensors (PROTOCOL.md §11) through a real daemon, real workers and real /dev/shm.

The daemon allocates a region, the client maps it; requests name a region and an offset instead
of carrying the bytes. These tests check the outputs against the inline path, every refusal
(unknown region, out of bounds, misaligned, ended), the region's lifetime (unregister, the owner's
exit, the daemon's exit, a daemon killed outright) and a worker killed while it reads a region.
Nothing sleeps to synchronise: tests wait on replies, on process exit and on ``shm_regions``
(which settles owner exits before it answers).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import zmq

from adaptd.clients import errors as e
from adaptd.clients.aio import AsyncClient
from adaptd.clients.client import CLOSE_TIMEOUT_MS, Client, Region, ShmTensor
from adaptd.wire import protocol as proto
from adaptd.tools.launch import DaemonProcess

SHM = Path("/dev/shm")


def region_files(pid: int) -> set[str]:
    return {n for n in os.listdir(SHM) if n.startswith(f"adaptd-{pid}-")}


def digits(n: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 8, 8, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def daemon(tiny_repository, tmp_path_factory):
    repo, model, _ = tiny_repository
    d = DaemonProcess.start(repo, tmp_path_factory.mktemp("shm"), config={"placements": {"tensorflow": "off", "isolation": "process"}})
    with Client(d.endpoint, timeout_ms=30_000) as c:
        placement = next(p["name"] for p in c.placements()["placements"] if p["runtime"] == "litert")
    yield d, model, placement
    assert d.stop() == 0, d.log()
    assert region_files(d.proc.pid) == set(), "the daemon's exit left region files behind"


def pinned(placement: str) -> dict:
    return {"variant": "float32", "placement": placement}


# --- round trips -----------------------------------------------------------------------------

def test_shm_round_trip_matches_inline_and_the_daemon_never_maps_the_region(daemon):
    d, model, placement = daemon
    with Client(d.endpoint, timeout_ms=30_000) as c:
        x = digits(4)
        inline = c.infer(model, x, **pinned(placement)).outputs[0]
        region = c.register_region(1 << 16)
        assert (SHM / region.name).exists() and region.name.startswith(f"adaptd-{d.proc.pid}-")
        assert oct((SHM / region.name).stat().st_mode & 0o777) == oct(0o660)
        xs = region.ndarray(x.shape, np.float32, offset=128)
        xs[...] = x
        r = c.infer(model, xs, **pinned(placement))
        np.testing.assert_array_equal(r.outputs[0], inline)
        # explicit ShmTensor, and outputs written into the region
        t = ShmTensor(region, 128, np.float32, x.shape)
        r2 = c.infer(model, t, outputs_to=(region, 4096), **pinned(placement))
        out = r2.outputs[0]
        np.testing.assert_array_equal(out, inline)
        assert region.offset_of(out) == 4096                   # a view of the region, no frame
        assert r2.header["outputs"][0]["shm"] == {"region": region.name, "offset": 4096}
        # the worker mapped the region; the daemon process never did
        worker_pid = next(p["worker_pid"] for p in c.placements()["placements"] if p["name"] == placement)
        assert region.name in Path(f"/proc/{worker_pid}/maps").read_text()
        assert region.name not in Path(f"/proc/{d.proc.pid}/maps").read_text()
        c.unregister_region(region)
        assert not (SHM / region.name).exists()
        for _ in range(1000):   # the worker unmaps it (its kept views dropped first) once told
            if region.name not in Path(f"/proc/{worker_pid}/maps").read_text():
                break
            c.health()
        assert region.name not in Path(f"/proc/{worker_pid}/maps").read_text()


def test_shm_round_trip_on_a_thread_placement_matches_inline(tiny_repository, tmp_path):
    """isolation = "thread" (the default): the placement's thread, or the receiving thread running
    a short job inline, maps the region in the daemon's own process; inputs and outputs_to behave
    exactly as with a worker process, and an ended region is unmapped there too."""
    repo, model, _ = tiny_repository
    with DaemonProcess.start(repo, tmp_path, config={"placements": {"tensorflow": "off"}}) as d, \
            Client(d.endpoint, timeout_ms=30_000) as c:
        placement = next(p["name"] for p in c.placements()["placements"] if p["isolation"] == "thread")
        x = digits(4)
        inline = c.infer(model, x, **pinned(placement)).outputs[0]
        region = c.register_region(1 << 16)
        xs = region.ndarray(x.shape, np.float32, offset=128)
        xs[...] = x
        np.testing.assert_array_equal(c.infer(model, xs, **pinned(placement)).outputs[0], inline)
        r = c.infer(model, ShmTensor(region, 128, np.float32, x.shape), outputs_to=(region, 4096), **pinned(placement))
        np.testing.assert_array_equal(r.outputs[0], inline)
        assert region.offset_of(r.outputs[0]) == 4096
        xs[1, 2, 3, 0] = np.inf   # the executor screens what it reads from a region (the daemon cannot)
        with pytest.raises(e.BadInputError, match="input 0 holds NaN or infinite values"):
            c.infer(model, xs, **pinned(placement))
        assert region.name in Path(f"/proc/{d.proc.pid}/maps").read_text()
        c.unregister_region(region)
        assert not (SHM / region.name).exists()
        c.health()   # a round trip after the unregister: the placements' threads have unmapped it since
        for _ in range(1000):
            if region.name not in Path(f"/proc/{d.proc.pid}/maps").read_text():
                break
            c.health()
        assert region.name not in Path(f"/proc/{d.proc.pid}/maps").read_text()


def test_a_nonfinite_input_in_a_region_is_refused_by_the_worker(daemon):
    """Inline inputs are screened on admission; one in a region only by the executor that maps
    it, here a worker process."""
    d, model, placement = daemon
    with Client(d.endpoint, timeout_ms=30_000) as c:
        region = c.register_region(1 << 16)
        xs = region.ndarray((2, 8, 8, 1), np.float32)
        xs[...] = digits(2)
        xs[0, 0, 0, 0] = np.nan
        with pytest.raises(e.BadInputError, match="input 0 holds NaN or infinite values"):
            c.infer(model, xs, **pinned(placement))
        xs[0, 0, 0, 0] = 0.5
        assert c.infer(model, xs, **pinned(placement)).outputs[0].shape[0] == 2
        c.unregister_region(region)


def test_many_requests_reuse_one_region(daemon):
    d, model, placement = daemon
    with Client(d.endpoint, timeout_ms=30_000) as c:
        region = c.register_region(2 * 8 * 8 * 4)
        xs = region.ndarray((2, 8, 8, 1))
        for i in range(60):
            x = digits(2, seed=i)
            xs[...] = x
            got = c.infer(model, xs, outputs_to=(region, 0) if i % 2 else None, **pinned(placement)).outputs[0]
            got = np.array(got)                   # the next request may overwrite it
            want = c.infer(model, x, **pinned(placement)).outputs[0]
            np.testing.assert_array_equal(got, want)
        (info,) = [r for r in c.shm_regions() if r["region"] == region.name]
        assert info["in_use"] == 0 and not info["ended"] and info["owner_pid"] == os.getpid()


def test_async_client_shm(daemon):
    d, model, placement = daemon

    async def run():
        async with AsyncClient(d.endpoint, timeout_ms=30_000) as c:
            region = await c.register_region(8 * 8 * 8 * 4)
            views = [region.ndarray((1, 8, 8, 1), offset=i * 256) for i in range(8)]
            for i, v in enumerate(views):
                v[...] = digits(1, seed=i)
            results = await asyncio.gather(*(c.infer(model, v, **pinned(placement)) for v in views))
            inline = await asyncio.gather(*(c.infer(model, digits(1, seed=i), **pinned(placement))
                                            for i in range(8)))
            name = region.name
        return results, inline, name

    results, inline, name = asyncio.run(run())
    for a, b in zip(results, inline):
        np.testing.assert_array_equal(a.outputs[0], b.outputs[0])
    assert not (SHM / name).exists(), "AsyncClient.close() unregisters its regions"


# --- refusals -------------------------------------------------------------------------------

class RawPeer:
    """One raw DEALER connection to the daemon: the regions it registers are its own (§11.1)."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def request(self, header: dict, bodies=()) -> dict:
        self.sock.send_multipart(proto.encode(header, bodies))
        assert self.sock.poll(30_000), f"no reply to {header.get('type')}"
        reply, _ = proto.decode(self.sock.recv_multipart())
        return reply

    def register(self, size: int) -> str:
        return self.map(size).name

    def map(self, size: int) -> Region:
        """Register a region on this connection and map it here."""
        reply = self.request({"type": "shm_register", "id": uuid.uuid4().hex, "size": size})
        assert reply["type"] == "ok", reply
        body = reply["body"]
        return Region(body["region"], body["size"], body["path"])

    def regions(self) -> list[dict]:
        return self.request({"type": "shm_regions", "id": uuid.uuid4().hex})["body"]["regions"]

    def close(self) -> None:
        self.sock.close()


def raw_infer(peer: RawPeer, model: str, placement: str, inputs: list[dict], bodies=(), **extra) -> dict:
    header = {"type": "infer", "id": uuid.uuid4().hex, "model": model, "inputs": inputs,
              "pin": pinned(placement), **extra}
    return peer.request(header, bodies)


def test_bounds_alignment_and_unknown_regions_are_refused(daemon):
    d, model, placement = daemon
    shape = [1, 8, 8, 1]
    peer = RawPeer(d.endpoint)
    with Client(d.endpoint, timeout_ms=30_000) as c:
        name = peer.register(1024)

        def shm(offset, region_name=name):
            return [proto.shm_tensor_header(np.float32, shape, region_name, offset)]

        d_raw = peer
        ok = raw_infer(d_raw, model, placement, shm(1024 - 256))          # the last 256 bytes: fits exactly
        assert ok["type"] == "result", ok
        for offset in (1024 - 252, 1024, 10**12):
            r = raw_infer(d_raw, model, placement, shm(offset))
            assert r["code"] == "BAD_INPUT" and "outside region" in r["message"], r
        r = raw_infer(d_raw, model, placement, shm(2))
        assert r["code"] == "BAD_INPUT" and "multiple" in r["message"], r
        r = raw_infer(d_raw, model, placement, [{"dtype": "float32", "shape": shape, "shm": {"region": name,
                                                                                             "offset": -4}}])
        assert r["code"] == "BAD_REQUEST", r
        r = raw_infer(d_raw, model, placement, shm(0, f"adaptd-{d.proc.pid}-{'0' * 32}"))
        assert r["code"] == "UNKNOWN_REGION", r
        # outputs that do not fit (10 float32 per image: 40 bytes at 1000 overflows 1024)
        r = raw_infer(d_raw, model, placement, shm(0), outputs_to={"region": name, "offset": 1000})
        assert r["code"] == "BAD_INPUT" and "outside region" in r["message"], r
        # a shm tensor takes no frame: an extra body frame is refused
        x = digits()
        r = raw_infer(d_raw, model, placement, shm(0), [x])
        assert r["code"] == "BAD_INPUT" and "body frame" in r["message"], r
        # client-side errors map to their classes
        region = c.register_region(1024)
        with pytest.raises(e.UnknownRegionError):
            c.infer(model, ShmTensor("adaptd-1-" + "0" * 32, 0, np.float32, shape), **pinned(placement))
        with pytest.raises(e.BadInputError):
            c.infer(model, ShmTensor(region, 1000, np.float32, shape), **pinned(placement))
        c.unregister_region(region)
        # unregister, then use
        ended = peer.request({"type": "shm_unregister", "id": uuid.uuid4().hex, "region": name})
        assert ended["type"] == "ok", ended
        assert not (SHM / name).exists()
        r = raw_infer(d_raw, model, placement, shm(0))
        assert r["code"] == "UNKNOWN_REGION", r
        with pytest.raises(e.UnknownRegionError):
            c.unregister_region(name)
        # the daemon keeps serving
        assert c.infer(model, digits(), **pinned(placement)).outputs[0].shape == (1, 10)
    peer.close()


def test_a_region_is_invisible_and_unusable_to_other_clients(daemon):
    """A region belongs to the connection that registered it: another one cannot list it, run on
    it, write outputs into it or end it; the admin endpoint sees and ends every region."""
    d, model, placement = daemon
    shape = [1, 8, 8, 1]
    owner, other = RawPeer(d.endpoint), RawPeer(d.endpoint)
    try:
        name = owner.register(1024)
        listed = other.request({"type": "shm_regions", "id": uuid.uuid4().hex})["body"]["regions"]
        assert all(r["region"] != name for r in listed)
        assert any(r["region"] == name for r in
                   owner.request({"type": "shm_regions", "id": uuid.uuid4().hex})["body"]["regions"])
        ref = [proto.shm_tensor_header(np.float32, shape, name, 0)]
        assert raw_infer(other, model, placement, ref)["code"] == "UNKNOWN_REGION"
        x = digits()
        r = raw_infer(other, model, placement, [proto.tensor_header(x)], [x], outputs_to={"region": name, "offset": 0})
        assert r["code"] == "UNKNOWN_REGION", r
        r = other.request({"type": "shm_unregister", "id": uuid.uuid4().hex, "region": name})
        assert r["code"] == "UNKNOWN_REGION", r
        assert raw_infer(owner, model, placement, ref)["type"] == "result"
        admin = RawPeer(d.admin_endpoint)
        try:
            everyone = admin.request({"type": "shm_regions", "id": uuid.uuid4().hex})["body"]["regions"]
            assert any(r["region"] == name for r in everyone)
            assert admin.request({"type": "shm_unregister", "id": uuid.uuid4().hex, "region": name})["type"] == "ok"
        finally:
            admin.close()
        assert raw_infer(owner, model, placement, ref)["code"] == "UNKNOWN_REGION"
    finally:
        owner.close()
        other.close()


def test_one_client_cannot_take_every_region(daemon):
    """A per-client quota (server.shm_regions_per_client, 16 by default) leaves room for others."""
    d, _, _ = daemon
    greedy, modest = RawPeer(d.endpoint), RawPeer(d.endpoint)
    try:
        names = [greedy.register(4096) for _ in range(16)]
        refused = greedy.request({"type": "shm_register", "id": uuid.uuid4().hex, "size": 4096, "owner_pid": 1})
        assert refused["code"] == "BAD_REQUEST" and "per client" in refused["message"], refused
        assert modest.register(4096)
        for name in names:
            greedy.request({"type": "shm_unregister", "id": uuid.uuid4().hex, "region": name})
    finally:
        greedy.close()
        modest.close()


def test_register_limits(daemon):
    d, _, _ = daemon
    for body in ({"size": 0}, {"size": 2 << 30}, {"size": 64, "owner_pid": 2**22 + 12345}, {},
                 {"size": 64, "owner_pid": 2**31}, {"size": 64, "owner_pid": 2**63}):
        reply, _ = d.request({"type": "shm_register", "id": uuid.uuid4().hex, **body})
        assert reply["type"] == "error" and reply["code"] == "BAD_REQUEST", (body, reply)


# --- lifetime -------------------------------------------------------------------------------

CRASHING_CLIENT = textwrap.dedent("""
    import os, sys
    from adaptd.clients.client import Client
    c = Client(sys.argv[1], timeout_ms=30_000)
    r = c.register_region(4096)
    r.ndarray(16)[:] = 1.0
    print(r.name, flush=True)
    sys.stdin.readline()          # wait to be killed
""")


def test_a_crashed_owner_leaves_no_region_behind(daemon):
    d, _, _ = daemon
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_CLIENT, d.endpoint], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        name = proc.stdout.readline().strip()
        assert name and (SHM / name).exists()
        with Client(d.admin_endpoint) as c:   # the admin endpoint sees every client's regions
            assert any(r["region"] == name and r["owner_pid"] == proc.pid for r in c.shm_regions())
            proc.kill()
            proc.wait()
            assert all(r["region"] != name for r in c.shm_regions())   # settled before answering
        assert not (SHM / name).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_daemon_exit_and_kill_leave_no_region_files(tiny_repository, tmp_path):
    repo, model, _ = tiny_repository
    cfg = {"placements": {"tensorflow": "off", "isolation": "process"}}
    d = DaemonProcess.start(repo, tmp_path / "a", config=cfg)
    try:
        reply, _ = d.request({"type": "shm_register", "id": "r1", "size": 4096})
        name = reply["body"]["region"]
        assert (SHM / name).exists()
    finally:
        assert d.stop() == 0
    assert not (SHM / name).exists() and region_files(d.proc.pid) == set()

    # killed outright: the files stay until the next daemon starts
    d = DaemonProcess.start(repo, tmp_path / "b", config=cfg)
    reply, _ = d.request({"type": "shm_register", "id": "r2", "size": 4096})
    name = reply["body"]["region"]
    d.kill()
    assert (SHM / name).exists()
    d2 = DaemonProcess.start(repo, tmp_path / "c", config=cfg)
    try:
        assert not (SHM / name).exists(), "the next daemon removes a dead daemon's regions"
        r, _ = d2.request({"type": "infer", "id": "x", "model": model, "pin": {"variant": "float32"},
                           "inputs": [proto.shm_tensor_header(np.float32, [1, 8, 8, 1], name, 0)]})
        assert r["code"] == "UNKNOWN_REGION", r
    finally:
        assert d2.stop() == 0


def test_clients_close_promptly_when_their_daemon_is_gone(tiny_repository, tmp_path):
    """close() asks the daemon to end its regions once each, within CLOSE_TIMEOUT_MS in all; with
    the daemon gone it gives up when that budget is spent and only unmaps the rest (it used to
    wait out every retry of every region)."""
    repo, _, _ = tiny_repository
    loop = asyncio.new_event_loop()
    d = DaemonProcess.start(repo, tmp_path / "d", config={"placements": {"tensorflow": "off", "isolation": "process"}})
    try:
        sync = Client(d.endpoint, timeout_ms=30_000, retries=2)
        sync_regions = [sync.register_region(4096) for _ in range(3)]

        async def open_async():
            c = AsyncClient(d.endpoint, timeout_ms=30_000, retries=2)
            return c, [await c.register_region(4096) for _ in range(3)]

        aclient, async_regions = loop.run_until_complete(open_async())
        d.kill()
        for close in (sync.close, lambda: loop.run_until_complete(aclient.close())):
            t0 = time.monotonic()
            close()
            # the budget once, not 3 regions x 3 attempts of the client's timeout
            assert time.monotonic() - t0 < 2 * CLOSE_TIMEOUT_MS / 1e3
        assert all(r.closed for r in sync_regions + async_regions)
        assert not sync.regions and not aclient.regions
        with pytest.raises(RuntimeError, match="closed"):
            sync.infer("any", digits())
    finally:
        d.kill()
        loop.close()
        for name in region_files(d.proc.pid):   # a killed daemon's regions wait for the next daemon
            (SHM / name).unlink()


def test_unregister_while_in_use_defers_the_unlink(daemon):
    d, model, placement = daemon
    peer = RawPeer(d.endpoint)   # requests, the region and its unregister share one connection
    sock = peer.sock
    with Client(d.endpoint, timeout_ms=30_000) as c:
        want = c.infer(model, digits(64), **pinned(placement)).outputs[0]
    region = peer.map(64 * 8 * 8 * 4)
    xs = region.ndarray((64, 8, 8, 1))
    xs[...] = digits(64)
    try:
        # several requests queued on the region, then the unregister: they all finish first
        rids = [f"q{i}" for i in range(6)]
        for rid in rids:
            header = proto.request_header(rid, model, [], pin_variant="float32", pin_placement=placement,
                                          input_headers=[proto.shm_tensor_header(np.float32, xs.shape,
                                                                                 region.name, 0)])
            sock.send_multipart(proto.encode(header), copy=False)
        unreg = {"type": "shm_unregister", "id": "u", "region": region.name}
        sock.send_multipart(proto.encode(unreg))
        replies = {}
        while len(replies) < len(rids) + 1:
            assert sock.poll(30_000)
            h, bodies = proto.decode(sock.recv_multipart())
            replies[h["id"]] = (h, [bytes(b) for b in bodies])
        assert replies["u"][0]["type"] == "ok"
        for rid in rids:
            h, bodies = replies[rid]
            assert h["type"] == "result", h
            np.testing.assert_array_equal(np.frombuffer(bodies[0], np.float32).reshape(64, 10), want)
        del xs
        region.close()
        assert all(r["region"] != region.name for r in peer.regions())
        assert not (SHM / region.name).exists()
    finally:
        peer.close()


# --- a worker killed while it reads a region ------------------------------------------------------

SLOW_SHAPE = (32, 32, 8)   # conftest.py's slow_repository
SLOW_BATCH = 48            # one request runs for about half a second on one core


def test_worker_killed_while_reading_shm_fails_that_request(slow_repository, tmp_path):
    """A worker SIGKILLed mid-read fails that request WORKER_FAILED; a region unregistered while
    requests hold it stays mapped for them (the queued one runs on the restarted worker, which
    maps it afresh) and is unlinked when the last of them is answered."""
    d = DaemonProcess.start(slow_repository, tmp_path, config={"placements": {"tensorflow": "off", "isolation": "process"}})
    try:
        with Client(d.endpoint, timeout_ms=60_000, retries=0) as c:
            litert = [p for p in c.placements()["placements"] if p["runtime"] == "litert"]
            name = min(litert, key=lambda p: len(p["cores"]))["name"]

            def wait_busy(queued: int = 0) -> dict:   # each look waits on a reply; no sleeping
                for _ in range(100_000):
                    state = next(p for p in c.placements()["placements"] if p["name"] == name)
                    if state["busy"] and state["queued"] >= queued:
                        return state
                raise AssertionError(f"{name} never busy with {queued} queued")

            peer = RawPeer(d.endpoint)   # the region's owner: its requests share its connection
            sock = peer.sock
            region = peer.map(SLOW_BATCH * int(np.prod(SLOW_SHAPE)) * 4)
            xs = region.ndarray((SLOW_BATCH, *SLOW_SHAPE))
            xs[...] = np.random.default_rng(0).random(xs.shape, dtype=np.float32)
            want = np.array(c.infer("slow", np.array(xs[:1]), variant="float32", placement=name).outputs[0])

            def send(rid: str, batch: int) -> None:
                header = proto.request_header(rid, "slow", [], pin_variant="float32", pin_placement=name,
                                              input_headers=[proto.shm_tensor_header(
                                                  np.float32, (batch, *SLOW_SHAPE), region.name, 0)])
                sock.send_multipart(proto.encode(header))

            try:
                send("victim", SLOW_BATCH)
                busy = wait_busy()
                send("queued", 1)
                wait_busy(queued=1)   # received: another connection's request has no order with it
                ended, _ = d.request({"type": "shm_unregister", "id": "end", "region": region.name}, admin=True)
                assert ended["type"] == "ok" and ended["body"]["in_use"] == 2, ended
                late, _ = d.request(proto.request_header(
                    "late", "slow", [], pin_variant="float32", pin_placement=name,
                    input_headers=[proto.shm_tensor_header(np.float32, (1, *SLOW_SHAPE), region.name, 0)]))
                assert late["code"] == "UNKNOWN_REGION", late
                assert (SHM / region.name).exists(), "unlinked while requests still hold it"
                os.kill(busy["worker_pid"], signal.SIGKILL)
                replies = {}
                for _ in range(2):
                    assert sock.poll(60_000)
                    h, bodies = proto.decode(sock.recv_multipart())
                    replies[h["id"]] = (h, [bytes(b) for b in bodies])
            except BaseException:
                peer.close()
                raise
            victim = replies["victim"][0]
            assert victim["type"] == "error" and victim["code"] == "WORKER_FAILED", victim
            queued, bodies = replies["queued"]
            assert queued["type"] == "result", queued
            np.testing.assert_array_equal(np.frombuffer(bodies[0], np.float32).reshape(want.shape), want)
            assert all(r["region"] != region.name for r in peer.regions())
            assert not (SHM / region.name).exists()
            del xs
            region.close()
            peer.close()
    finally:
        assert d.stop() == 0, d.log()
    assert region_files(d.proc.pid) == set()
