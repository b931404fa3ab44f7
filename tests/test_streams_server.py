"""The daemon's local stream endpoints (adaptd.daemon.streams) driven in-process: a real listening
Unix socket, real client sockets and ZeroMQ's poller, as the daemon's loop drives them."""

from __future__ import annotations

import os
import resource
import socket
import stat

import pytest
import zmq

from adaptd.daemon.streams import StreamServer
from adaptd.wire import protocol as proto
from adaptd.wire.stream import MessageReader, message_bytes, send_message


@pytest.fixture
def server(tmp_path):
    srv = StreamServer(max_message_bytes=1 << 20, send_hwm=4, ipc_mode=0o660, intake=16)
    path = tmp_path / "local.sock"
    srv.bind(f"unix://{path}")
    poller, rank = zmq.Poller(), {}
    srv.on_change = lambda: srv.sync(poller, rank)
    srv.sync(poller, rank, fresh=True)
    yield srv, path, poller
    srv.close()


def client(path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def pump(srv: StreamServer, poller: zmq.Poller, timeout_ms: int = 1000) -> list:
    """One round of the daemon's loop over the stream descriptors (not sleeping while a backlog
    waits): the requests it handed out."""
    out = []
    for fd, flags in poller.poll(0 if srv.backlogged else timeout_ms):
        out += srv.on_event(fd, flags)
    return out + srv.backlog_round()


def messages(srv: StreamServer, poller: zmq.Poller, n: int = 1) -> list:
    """Rounds of the loop until ``n`` messages are complete (accepting their connections first)."""
    got: list = []
    for _ in range(100):
        got += pump(srv, poller)
        if len(got) >= n:
            return got
    raise AssertionError(f"{n} message(s) did not come")


def test_the_socket_file_has_the_configured_mode_and_goes_with_close(tmp_path):
    srv = StreamServer(max_message_bytes=1000, send_hwm=4, ipc_mode=0o640)
    path = tmp_path / "s.sock"
    path.touch()
    with pytest.raises(OSError):   # not a socket: never removed
        srv.bind(f"unix://{path}")
    path.unlink()
    srv.bind(f"unix://{path}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    srv.close()
    assert not path.exists()


def test_requests_in_and_replies_out_with_each_connection_its_own_peer(server):
    srv, path, poller = server
    a, b = client(path), client(path)
    send_message(a, [b"ADPT01", b"from-a"])
    send_message(b, [b"ADPT01", b"from-b"])
    got = messages(srv, poller, 2)
    by_payload = {bytes(frames[1]): conn for conn, _, frames, _ in got}
    assert by_payload[b"from-a"].peer != by_payload[b"from-b"].peer
    assert srv.send(by_payload[b"from-a"], proto.encode({"type": "ok", "id": "x"}))
    reply = []
    reader = MessageReader(1 << 20)
    while not reply:
        reply = reader.read_from(a)
    assert proto.decode([b"", *reply[0]])[0]["id"] == "x"
    a.close()
    b.close()


def test_a_reply_the_socket_cannot_take_waits_for_room_and_beyond_send_hwm_is_dropped(server):
    srv, path, poller = server
    a = client(path)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    send_message(a, [b"ADPT01", b"hello"])
    ((conn, _, _, _),) = messages(srv, poller)
    big = os.urandom(1 << 20)
    sent = [srv.send(conn, [b"", b"ADPT01", b"hdr", big]) for _ in range(8)]
    assert sent[:4] == [True] * 4 and not all(sent) and srv.replies_unread_dropped == sent.count(False)
    assert conn.queued and dict(srv.interest())[conn.fd] & zmq.POLLOUT   # waits to write
    reader, received = MessageReader(1 << 22), []
    a.setblocking(False)
    while len(received) < sent.count(True):
        pump(srv, poller, 100)
        try:
            received += reader.read_from(a)
        except BlockingIOError:
            pass
    assert all(bytes(m[2]) == big for m in received)
    assert not conn.queued and dict(srv.interest())[conn.fd] == zmq.POLLIN
    a.close()


def test_a_client_that_leaves_is_answered_into_the_void_then_closed_and_counted_departed(server):
    srv, path, poller = server
    a = client(path)
    send_message(a, [b"ADPT01", b"hello"])
    ((conn, _, _, _),) = messages(srv, poller)
    a.close()
    for _ in range(100):
        if not conn.reading:
            break
        pump(srv, poller)
    assert not conn.reading and not conn.closed   # it still owes a reply
    assert not srv.send(conn, proto.encode({"type": "ok", "id": "late"}))
    assert conn.closed and srv.replies_to_departed == 1 and conn.fd not in dict(srv.interest())


def test_one_round_takes_at_most_the_intake_from_a_connection_and_the_rest_on_later_rounds(server):
    srv, path, poller = server
    a = client(path)
    a.sendall(b"".join(bytes(memoryview(x).cast("B"))
                       for i in range(40) for x in message_bytes([b"ADPT01", b"%d" % i])))
    first = messages(srv, poller)
    assert len(first) == srv.intake and srv.backlogged   # one round: the intake, no more
    conn = first[0][0]
    assert not dict(srv.interest()).get(conn.fd, 0) & zmq.POLLIN   # not read while it has a backlog
    rest = []
    while srv.backlogged:
        rest.append(pump(srv, poller))
    assert [len(r) for r in rest] == [16, 8]
    assert [bytes(f[1]) for _, _, f, _ in first + rest[0] + rest[1]] == [b"%d" % i for i in range(40)]
    assert dict(srv.interest())[conn.fd] & zmq.POLLIN and conn.awaiting == 40
    a.close()


def test_a_broken_framing_is_answered_after_the_requests_before_it_then_the_connection_ends(server):
    srv, path, poller = server
    a = client(path)
    a.sendall(b"".join(bytes(memoryview(x).cast("B")) for x in message_bytes([b"ADPT01", b"ok"]))
              + (0).to_bytes(4, "little"))
    ((conn, _, frames, _),) = messages(srv, poller)
    assert bytes(frames[1]) == b"ok" and not conn.reading and not conn.closed
    assert srv.send(conn, proto.encode({"type": "ok", "id": "first"}))
    assert conn.closed   # the farewell went out after the reply, then the connection ended
    reader, got = MessageReader(1 << 20), []
    while True:
        try:
            got += reader.read_from(a)
        except ConnectionError:
            break
    headers = [proto.decode([b"", *m])[0] for m in got]
    assert [h["id"] for h in headers] == ["first", None] and headers[1]["code"] == "MALFORMED"
    a.close()


def test_out_of_descriptors_the_listener_rests_and_comes_back_on_the_tick(server):
    srv, path, poller = server
    waiting = [client(path) for _ in range(4)]   # queued in the listener's backlog
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The limit bounds descriptor numbers, not their count: an earlier test's closed descriptors
    # leave gaps below the highest one in use, which accept() would fill. The gaps are taken
    # first, so that one number is left free under the limit.
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers = []
    while (fd := os.open(os.devnull, os.O_RDONLY)) < highest:
        fillers.append(fd)
    os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 2, hard))
    try:
        pump(srv, poller)
        assert len(srv.connections) < 4
        listener = next(iter(srv.listeners))
        assert listener not in dict(srv.interest())   # resting: the loop does not spin on it
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)
    srv.tick(float("inf"))
    assert listener in dict(srv.interest())
    while len(srv.connections) < 4:
        pump(srv, poller)
    for sock in waiting:
        sock.close()
