"""The daemon's own ZMTP engine (adaptd.wire.zmtp, served by adaptd.daemon.streams on ipc endpoints).

Two halves: the reader fed raw bytes over a real socket pair (the handshake, frames cut anywhere,
commands, limits, breaks), and real libzmq clients (pyzmq's DEALER and REQ) against a listening
StreamServer driven as the daemon's loop drives it, which is what says the engine speaks ZeroMQ's
wire format and a ROUTER's manners."""

from __future__ import annotations

import socket
import struct

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptd.daemon.streams import StreamServer
from adaptd.wire import protocol as proto
from adaptd.wire import zmtp
from adaptd.wire.stream import READ_BYTES, FramingError, TooLarge

from .conftest import read_in_cuts, read_ready


def peer_greeting(mechanism: bytes = b"NULL", major: int = 3) -> bytes:
    return b"\xff" + b"\0" * 8 + b"\x7f" + bytes((major, 0)) + mechanism.ljust(20, b"\0") + b"\0" * 32


def command(name: bytes, body: bytes = b"") -> bytes:
    data = bytes((len(name),)) + name + body
    return bytes((0x04, len(data))) + data


def ready(socket_type: bytes = b"DEALER", identity: bytes | None = None) -> bytes:
    props = b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    if identity is not None:
        props += b"\x08Identity" + struct.pack(">I", len(identity)) + identity
    return command(b"READY", props)


def wire(frames: list[bytes]) -> bytes:
    buffers, size = zmtp.framed(frames)
    data = b"".join(bytes(memoryview(b).cast("B")) for b in buffers)
    assert len(data) == size
    return data


# --- the reader, fed bytes -----------------------------------------------------------------------

def test_the_handshake_gives_the_peers_type_and_identity_and_then_its_messages(unix_pair):
    a, b = unix_pair
    reader = zmtp.ZmtpReader(1 << 20)
    a.sendall(peer_greeting() + ready(b"DEALER", b"\x01me") + wire([b"", b"ADPT01", b"hdr"]))
    assert read_ready(reader, b) == [[b"", b"ADPT01", b"hdr"]]
    assert reader.ready and reader.socket_type == b"DEALER" and reader.identity == b"\x01me"


@settings(max_examples=60, deadline=None)
@given(messages=st.lists(st.lists(st.binary(max_size=300), min_size=1, max_size=5), min_size=1, max_size=6),
       cuts=st.lists(st.integers(1, 400), min_size=1, max_size=30))
def test_any_messages_cut_anywhere_are_read_back_exactly(messages, cuts):
    data = peer_greeting() + ready() + b"".join(wire(m) for m in messages)
    assert read_in_cuts(zmtp.ZmtpReader(1 << 20), data, cuts) == messages


@settings(max_examples=40, deadline=None)
@given(header=st.binary(max_size=400), bodies=st.lists(st.binary(max_size=600), max_size=3))
def test_a_replys_framing_made_once_for_its_delimiter_and_signature_is_the_frames_own(header, bodies):
    """protocol.encode's delimiter and signature take a ready-made head: the same bytes as framing
    each frame (a signature equal but not the same object takes that general path)."""
    arrays = [np.frombuffer(b, dtype=np.uint8) for b in bodies]
    encoded = [b"", proto.SIGNATURE, header, *arrays]
    general = [bytearray(b""), bytes(bytearray(proto.SIGNATURE)), header, *arrays]
    assert general[1] is not proto.SIGNATURE
    assert wire(encoded) == wire(general)
    assert read_in_cuts(zmtp.ZmtpReader(1 << 20), peer_greeting() + ready() + wire(encoded), [7]) == [
        [b"", proto.SIGNATURE, header, *bodies]]


def test_a_frame_larger_than_a_read_lands_whole_and_aligned_in_a_buffer_of_its_own(unix_pair):
    a, b = unix_pair
    a.setblocking(False)
    tensor = np.arange(3 * READ_BYTES, dtype=np.float32)
    data = peer_greeting() + ready() + wire([b"", b"ADPT01", b"h" * 7, tensor.tobytes()])
    reader, got, at = zmtp.ZmtpReader(1 << 22), [], 0
    while not got:
        if at < len(data):
            try:
                at += a.send(data[at:at + 100_000])
            except BlockingIOError:
                pass
        try:
            got = reader.read_from(b)
        except BlockingIOError:
            pass
    body = got[0][3]
    assert body.readonly and np.frombuffer(body, np.float32).ctypes.data % 16 == 0
    assert np.array_equal(np.frombuffer(body, np.float32), tensor)


def test_a_ping_is_answered_with_a_pong_carrying_its_context(unix_pair):
    a, b = unix_pair
    reader = zmtp.ZmtpReader(1 << 20)
    a.sendall(peer_greeting() + ready() + command(b"PING", b"\x00\x0actx-1") + wire([b"", b"x"]))
    assert read_ready(reader, b) == [[b"", b"x"]]
    assert reader.pong == command(b"PONG", b"ctx-1")


def test_a_ping_between_a_messages_frames_is_answered_and_the_message_goes_on(unix_pair):
    a, b = unix_pair
    reader = zmtp.ZmtpReader(1 << 20)
    message = wire([b"", b"ADPT01", b"hdr", b"x" * 300])
    cut = len(wire([b"", b"ADPT01"]))   # (libzmq's heartbeat timer may fire after any frame)
    a.sendall(peer_greeting() + ready() + message[:cut] + command(b"PING", b"\x00\x0a") + message[cut:])
    assert read_ready(reader, b) == [[b"", b"ADPT01", b"hdr", b"x" * 300]]
    assert reader.pong == command(b"PONG") and reader.pings == 1


def test_a_flood_of_pings_holds_one_pong(unix_pair):
    a, b = unix_pair
    reader = zmtp.ZmtpReader(1 << 20)
    a.sendall(peer_greeting() + ready() + b"".join(command(b"PING", b"\x00\x0a%d" % i) for i in range(1000)))
    read_ready(reader, b)
    assert reader.pings == 1000 and reader.pong == command(b"PONG", b"999")


def test_a_message_over_the_limit_comes_out_as_its_size_and_header_and_the_stream_stays_in_step(unix_pair):
    a, b = unix_pair
    a.setblocking(False)
    reader = zmtp.ZmtpReader(1000)
    big = wire([b"", b"ADPT01", b"the-header", b"x" * 200_000, b"y" * 10])
    data = peer_greeting() + ready() + big + wire([b"", b"ADPT01", b"next"])
    got, at = [], 0
    while len(got) < 2:
        if at < len(data):
            try:
                at += a.send(data[at:at + 50_000])
            except BlockingIOError:
                pass
        got += read_ready(reader, b)
    assert got == [TooLarge(len(b"ADPT01the-header") + 200_010, b"the-header"), [b"", b"ADPT01", b"next"]]


def test_a_message_over_the_limit_behind_a_proxy_keeps_its_envelope_for_the_reply(unix_pair):
    a, b = unix_pair
    reader = zmtp.ZmtpReader(100)
    a.sendall(peer_greeting() + ready() + wire([b"\x01hop", b"", b"ADPT01", b"hdr", b"x" * 200]))
    assert read_ready(reader, b) == [TooLarge(209, b"hdr", (b"\x01hop",))]


def test_the_size_limit_counts_a_message_less_its_envelope_as_a_routers_does(unix_pair):
    a, b = unix_pair
    reader = zmtp.ZmtpReader(1000)
    message = [b"\x01" + b"h" * 15, b"", b"ADPT01", b"hdr", b"x" * 991]   # 1000 bytes past the delimiter
    a.sendall(peer_greeting() + ready() + wire(message))
    assert read_ready(reader, b) == [message]


@pytest.mark.parametrize("data, why", [
    (b"GET / HTTP/1.1\r\n\r\n" + b"\0" * 60, "greeting"),
    (peer_greeting(major=2), "greeting"),
    (peer_greeting(mechanism=b"CURVE") + ready(), "NULL"),
    (peer_greeting() + ready(b"PUB"), "cannot talk"),
    (peer_greeting() + wire([b"", b"x"]), "before the READY"),
    (peer_greeting() + ready() + b"\x10\x01x", "reserved"),
    (peer_greeting() + ready() + b"\x05\x04\x04PING", "MORE flag"),
])
def test_what_is_not_zmtp_3_from_a_routers_peer_breaks_the_stream_for_good(unix_pair, data, why):
    a, b = unix_pair
    reader = zmtp.ZmtpReader(1 << 20)
    a.sendall(data)
    with pytest.raises(FramingError, match=why):
        read_ready(reader, b)
    with pytest.raises(FramingError):
        reader.read_from(b)


def test_the_messages_before_a_break_come_out_first(unix_pair):
    a, b = unix_pair
    reader = zmtp.ZmtpReader(1 << 20)
    a.sendall(peer_greeting() + ready() + wire([b"", b"ok"]) + b"\x01\x00" * (zmtp.MAX_FRAMES + 1))
    assert reader.read_from(b) == [[b"", b"ok"]]
    assert "frames" in str(reader.broken)


@settings(max_examples=200, deadline=None)
@given(noise=st.binary(min_size=1, max_size=2000))
def test_arbitrary_bytes_after_a_handshake_are_messages_or_a_break_never_anything_else(noise):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.setblocking(False)
    try:
        a.sendall(peer_greeting() + ready() + noise)
        a.shutdown(socket.SHUT_WR)
        reader = zmtp.ZmtpReader(1000)
        for _ in range(len(noise) + 10):   # each read consumes bytes or ends: it cannot spin
            try:
                for message in reader.read_from(b):
                    assert type(message) is TooLarge or sum(f.nbytes for f in message) <= 1000
            except (FramingError, ConnectionError):
                return
            except BlockingIOError:
                continue
        raise AssertionError("the reader neither ended nor broke")
    finally:
        a.close()
        b.close()


# --- real ZeroMQ clients against a listening server --------------------------------------------

@pytest.fixture
def served(tmp_path):
    srv = StreamServer(max_message_bytes=1 << 22, send_hwm=8, ipc_mode=0o660)
    endpoint = f"ipc://{tmp_path}/d.sock"
    srv.bind(endpoint)
    poller, rank = zmq.Poller(), {}
    srv.on_change = lambda: srv.sync(poller, rank)
    srv.sync(poller, rank, fresh=True)
    ctx = zmq.Context()
    yield srv, endpoint, poller, ctx
    srv.close()
    ctx.destroy(linger=0)


def requests(srv: StreamServer, poller: zmq.Poller, n: int) -> list:
    """Rounds of the daemon's loop until ``n`` requests were handed out."""
    got: list = []
    for _ in range(200):
        for fd, flags in poller.poll(0 if srv.backlogged else 100):
            got += srv.on_event(fd, flags)
        got += srv.backlog_round()
        if len(got) >= n:
            return got
    raise AssertionError(f"{n} request(s) did not come")


def answer(srv: StreamServer, poller: zmq.Poller, request, header: dict, bodies=()) -> None:
    conn, envelope, _, _ = request
    assert srv.send(conn, proto.encode(header, bodies), envelope or ())
    while conn.queued:
        for fd, flags in poller.poll(100):
            srv.on_event(fd, flags)


def dealer(ctx: zmq.Context, endpoint: str, identity: bytes | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(endpoint)
    return sock


def test_a_dealers_request_arrives_as_a_routers_would_and_its_reply_goes_back(served):
    srv, endpoint, poller, ctx = served
    d = dealer(ctx, endpoint, b"\x01client-a")
    tensor = np.arange(100_000, dtype=np.float32)   # a frame larger than a read, sent by libzmq
    d.send_multipart([b"", b"ADPT01", b"hdr", tensor])
    ((conn, envelope, frames, size),) = requests(srv, poller, 1)
    assert conn.peer == b"r:\x01client-a" and envelope == () and size == 9 + tensor.nbytes
    assert [bytes(f) for f in frames[:2]] == [b"ADPT01", b"hdr"]
    assert np.array_equal(np.frombuffer(frames[2], np.float32), tensor)
    answer(srv, poller, (conn, envelope, frames, size), {"type": "ok", "id": "r1"}, [tensor])
    reply = d.recv_multipart()
    assert reply[0] == b"" and proto.decode(reply)[0]["id"] == "r1" and reply[3] == tensor.tobytes()


def test_a_req_socket_works_one_request_at_a_time(served):
    srv, endpoint, poller, ctx = served
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 10_000)
    req.connect(endpoint)
    for i in range(3):
        req.send_multipart([b"ADPT01", b"%d" % i])   # REQ adds the delimiter itself
        (request,) = requests(srv, poller, 1)
        assert bytes(request[2][1]) == b"%d" % i
        answer(srv, poller, request, {"type": "ok", "id": str(i)})
        assert proto.decode([b"", *req.recv_multipart()])[0]["id"] == str(i)


def test_a_connection_without_an_identity_or_with_one_in_use_gets_an_unguessable_one(served):
    srv, endpoint, poller, ctx = served
    first, second, anonymous = dealer(ctx, endpoint, b"\x01same"), dealer(ctx, endpoint, b"\x01same"), \
        dealer(ctx, endpoint)
    for sock in (first, second, anonymous):
        sock.send_multipart([b"", b"ADPT01", b"hi"])
        requests(srv, poller, 1)
    peers = [c.peer for c in srv.connections.values()]
    assert len(set(peers)) == 3 and b"r:\x01same" in peers
    others = [p for p in peers if p != b"r:\x01same"]
    assert all(p.startswith(b"r:\0") and len(p) == 11 for p in others)


def test_a_request_behind_a_proxy_keeps_its_envelope_there_and_back(served):
    srv, endpoint, poller, ctx = served
    d = dealer(ctx, endpoint, b"\x01proxy")
    d.send_multipart([b"\x01hop", b"", b"ADPT01", b"hdr"])   # as a ROUTER-DEALER proxy forwards
    ((conn, envelope, frames, size),) = requests(srv, poller, 1)
    assert [bytes(f) for f in envelope] == [b"\x01hop"] and bytes(frames[1]) == b"hdr"
    answer(srv, poller, (conn, envelope, frames, size), {"type": "ok", "id": "p"})
    assert d.recv_multipart()[:2] == [b"\x01hop", b""]


def test_a_client_that_reconnects_while_its_old_connection_owes_a_reply_keeps_its_identity(served):
    srv, endpoint, poller, ctx = served
    old = dealer(ctx, endpoint, b"\x01me")
    old.send_multipart([b"", b"ADPT01", b"first try"])
    (pending,) = requests(srv, poller, 1)
    old.close()
    while pending[0].reading:   # the loop notices the client went; the reply is still owed
        for fd, flags in poller.poll(100):
            srv.on_event(fd, flags)
    new = dealer(ctx, endpoint, b"\x01me")
    new.send_multipart([b"", b"ADPT01", b"retry"])
    (retry,) = requests(srv, poller, 1)
    assert retry[0].peer == pending[0].peer == b"r:\x01me"   # the retry finds what the first left
    assert not srv.send(pending[0], proto.encode({"type": "ok", "id": "late"}))   # into the void
    assert srv.identities == {b"\x01me": retry[0]}


def test_a_reconnect_that_outruns_the_end_of_a_connection_with_a_backlog_still_takes_its_identity(served, tmp_path):
    srv, endpoint, poller, ctx = served
    old, new = (socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2))
    old.connect(str(tmp_path / "d.sock"))
    old.sendall(peer_greeting() + ready(b"DEALER", b"\x01me")
                + b"".join(wire([b"", b"ADPT01", b"%d" % i]) for i in range(200)))
    first = requests(srv, poller, 16)   # one round's intake; the rest wait in its backlog, unread
    old.close()   # its end comes after 184 requests the loop has not handed out yet
    new.connect(str(tmp_path / "d.sock"))
    new.sendall(peer_greeting() + ready(b"DEALER", b"\x01me") + wire([b"", b"ADPT01", b"retry"]))
    got = requests(srv, poller, 201 - len(first))
    (retry,) = [r for r in got if bytes(r[2][1]) == b"retry"]
    assert [bytes(r[2][1]) for r in got].index(b"retry") < 184 - 16   # it came while the backlog was long
    assert retry[0].peer == b"r:\x01me" and srv.identities[b"\x01me"] is retry[0]
    new.close()


def test_a_pong_the_socket_cannot_take_now_is_written_once_it_can(served, tmp_path):
    srv, endpoint, poller, ctx = served
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(tmp_path / "d.sock"))
    raw.sendall(peer_greeting() + ready())
    while not any(c.peer for c in srv.connections.values()):
        for fd, flags in poller.poll(100):
            srv.on_event(fd, flags)
    (conn,) = srv.connections.values()
    try:   # the daemon's side full, its queue empty (bytes the client will not parse)
        while True:
            conn.sock.send(b"\0" * 65536)
    except BlockingIOError:
        pass
    raw.sendall(command(b"PING", b"\x00\x0aping-ctx"))
    while conn.reader.pings < 1:
        for fd, flags in poller.poll(100):
            srv.on_event(fd, flags)
    assert conn.queued   # the PONG waits for room
    raw.setblocking(False)
    got = b""
    for _ in range(500):   # the client reads; the loop must then be told the socket has room
        try:
            got += raw.recv(1 << 20)
        except BlockingIOError:
            pass
        for fd, flags in poller.poll(10):
            srv.on_event(fd, flags)
        if got.endswith(command(b"PONG", b"ping-ctx")):
            break
    assert got.endswith(command(b"PONG", b"ping-ctx")) and not conn.queued
    raw.close()


def test_a_reply_of_more_frames_than_one_system_call_takes_arrives_whole(served):
    srv, endpoint, poller, ctx = served
    d = dealer(ctx, endpoint)
    d.send_multipart([b"", b"ADPT01", b"many outputs"])
    (request,) = requests(srv, poller, 1)
    outputs = [b"%04d" % i for i in range(700)]   # 1,400 buffers: over IOV_MAX
    answer(srv, poller, request, {"type": "ok", "id": "wide"}, outputs)
    assert d.recv_multipart()[3:] == outputs


def test_a_connection_that_never_completes_its_handshake_is_closed_on_the_tick(served, tmp_path):
    srv, endpoint, poller, ctx = served
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(tmp_path / "d.sock"))
    while not srv.connections:
        for fd, flags in poller.poll(100):
            srv.on_event(fd, flags)
    srv.tick(float("inf"))
    assert not srv.connections
    raw.close()


def test_a_client_gone_right_after_its_handshake_leaves_no_identity_behind(served, tmp_path):
    srv, endpoint, poller, ctx = served
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(tmp_path / "d.sock"))
    raw.sendall(peer_greeting() + ready(b"DEALER", b"\x01squat") + command(b"PING", b"\0\1"))
    raw.close()
    for _ in range(50):
        for fd, flags in poller.poll(100):
            srv.on_event(fd, flags)
        if not srv.connections:
            break
    assert not srv.connections and srv.identities == {}


def test_a_message_without_a_delimiter_is_handed_out_as_such(served):
    srv, endpoint, poller, ctx = served
    d = dealer(ctx, endpoint)
    d.send_multipart([b"ADPT01", b"hdr"])
    ((_, envelope, frames, _),) = requests(srv, poller, 1)
    assert envelope is None and [bytes(f) for f in frames] == [b"ADPT01", b"hdr"]


def test_heartbeats_are_answered_and_the_connection_lives_past_their_timeout(served):
    srv, endpoint, poller, ctx = served
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.RCVTIMEO, 10_000)
    d.setsockopt(zmq.HEARTBEAT_IVL, 20)
    d.setsockopt(zmq.HEARTBEAT_TIMEOUT, 100)
    monitor = d.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    d.connect(endpoint)
    d.send_multipart([b"", b"ADPT01", b"first"])
    (first,) = requests(srv, poller, 1)
    conn = first[0]
    while conn.reader.pings < 8:   # 8 PINGs 20 ms apart: past the 100 ms timeout had none been answered
        for fd, flags in poller.poll(1000):
            srv.on_event(fd, flags)
    answer(srv, poller, first, {"type": "ok", "id": "alive"})
    assert proto.decode(d.recv_multipart())[0]["id"] == "alive"
    assert not monitor.poll(0)   # libzmq never timed the connection out
    d.disable_monitor()


def test_a_client_that_is_not_zmtp_is_closed_and_the_endpoint_serves_on(served, tmp_path):
    srv, endpoint, poller, ctx = served
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(10)
    raw.connect(str(tmp_path / "d.sock"))
    raw.sendall(b"\x02\x00\x00\x00" + b"\x06\x00\x00\x00" * 2 + b"ADPT01hello!")   # the local stream's framing
    for _ in range(50):
        for fd, flags in poller.poll(100):
            srv.on_event(fd, flags)
        if not srv.connections:
            break
    assert not srv.connections
    greeting = raw.recv(64)
    assert greeting[:1] == b"\xff" and raw.recv(4096, socket.MSG_WAITALL) == zmtp.READY   # then the end
    d = dealer(ctx, endpoint)
    d.send_multipart([b"", b"ADPT01", b"still"])
    assert bytes(requests(srv, poller, 1)[0][2][1]) == b"still"
