"""The daemon <-> worker channel (adaptd.daemon.channel) over a real Unix socketpair: a message
cut anywhere comes out whole, and only whole; reading never waits; bytes that are not a message
of the channel raise ChannelError rather than anything else."""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import threading
import time

import msgpack
import numpy as np
import pytest

from adaptd.daemon.channel import MAX_MESSAGE_BYTES, PREFIX, Channel, ChannelError


@pytest.fixture
def ends():
    ours, theirs = Channel.pair(timeout_s=0.2)
    peer = Channel(theirs)
    try:
        yield ours, peer
    finally:
        ours.close()
        peer.close()


def encoded(verb: str, header: dict, bodies=()) -> bytes:
    """What Channel.send writes, captured from a real send."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        Channel(a).send(verb, header, bodies)
        a.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: b.recv(65536), b""))


def test_a_message_cut_at_every_byte_comes_out_whole_on_the_call_that_completes_it(ends):
    ours, peer = ends
    x = np.arange(10, dtype=np.float32)
    wire = encoded("done", {"job": "j1", "n": 3}, [x, b"tail"])
    for i, byte in enumerate(wire):
        assert ours.recv_ready() is None
        assert (ours.partial_at is None) == (i == 0)
        peer.sock.sendall(bytes([byte]))
    verb, header, bodies = ours.recv_ready()
    assert (verb, header) == ("done", {"job": "j1", "n": 3})
    assert np.array_equal(np.frombuffer(bodies[0], np.float32), x) and bytes(bodies[1]) == b"tail"
    assert ours.partial_at is None and ours.recv_ready() is None


def test_partial_at_is_the_time_of_the_latest_bytes_of_a_message_still_cut(ends, monkeypatch):
    """What the pool's stall limit reads: a message arriving slowly but steadily is never stalled."""
    from adaptd.daemon import channel as channel_module

    clock = iter(range(1000, 2000))
    monkeypatch.setattr(channel_module.time, "monotonic", lambda: float(next(clock)))
    ours, peer = ends
    wire = encoded("done", {"job": "j1"}, [b"x" * 64])
    seen = []
    for i in range(0, len(wire) - 7, 7):
        peer.sock.sendall(wire[i:i + 7])
        assert ours.recv_ready() is None
        seen.append(ours.partial_at)
    assert seen == sorted(set(seen)) and len(seen) > 3   # later at each read
    peer.sock.sendall(wire[len(seen) * 7:])
    assert ours.recv_ready()[0] == "done" and ours.partial_at is None


def unread_bytes(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def test_the_worker_end_blocks_through_a_cut_message_and_returns_it_whole():
    """The worker's end is a blocking socket: its receive reads what came, waits for the rest."""
    ours, theirs = Channel.pair(timeout_s=5.0)
    worker = Channel(theirs)
    wire = encoded("run", {"job": "j9"}, [b"y" * 1000])
    got = []
    with ours.sock, theirs:
        ours.sock.sendall(wire[:11])   # the prefix and 3 bytes of the header
        reader = threading.Thread(target=lambda: got.append(worker.recv()))
        reader.start()
        deadline = time.monotonic() + 10
        while unread_bytes(theirs) and time.monotonic() < deadline:   # until the reader has taken them
            time.sleep(0)   # (a yield: the loop ends on the socket's state, not on a time)
        assert unread_bytes(theirs) == 0 and not got
        ours.sock.sendall(wire[11:])
        reader.join(10)
    assert got and got[0][:2] == ("run", {"job": "j9"}) and bytes(got[0][2][0]) == b"y" * 1000


def test_messages_written_together_come_out_one_per_call_in_order(ends):
    ours, peer = ends
    peer.sock.sendall(encoded("ready", {"rss_bytes": 1}) + encoded("pong", {"n": 7}) + encoded("pong", {"n": 8})[:5])
    assert ours.recv_ready()[:2] == ("ready", {"rss_bytes": 1})
    assert ours.recv_ready()[:2] == ("pong", {"n": 7})
    assert ours.recv_ready() is None and ours.partial_at is not None


def test_the_blocking_receive_waits_for_the_rest_and_gives_up_on_a_peer_that_stops(ends):
    ours, peer = ends
    wire = encoded("pong", {"n": 1})
    peer.sock.sendall(wire[:3])
    with pytest.raises(TimeoutError):
        ours.recv()
    peer.sock.sendall(wire[3:])
    assert ours.recv()[:2] == ("pong", {"n": 1})


def test_a_closed_peer_is_a_connection_error(ends):
    ours, peer = ends
    peer.sock.sendall(encoded("pong", {"n": 1})[:6])
    peer.sock.shutdown(socket.SHUT_WR)
    assert ours.recv_ready() is None   # the bytes that came; the end of the stream at the next look
    with pytest.raises(ConnectionError):
        ours.recv_ready()


def frame(header_bytes: bytes, bodies: bytes = b"") -> bytes:
    return PREFIX.pack(len(header_bytes), len(bodies)) + header_bytes + bodies


@pytest.mark.parametrize("wire, says", [
    (PREFIX.pack(MAX_MESSAGE_BYTES, 1), "bytes announced"),
    (frame(b"\xc1\xc1\xc1"), "does not unpack"),
    (frame(b""), "does not unpack"),
    (frame(msgpack.packb({"_verb": "done", "_sizes": []}) + b"\x01"), "does not unpack"),   # extra data
    (frame(msgpack.packb(["done", []])), "not a map"),
    (frame(msgpack.packb({"_sizes": []})), "without its verb"),
    (frame(msgpack.packb({"_verb": "done", "_sizes": [4]}), b"abc"), "do not fit the 3 bytes"),
    (frame(msgpack.packb({"_verb": "done", "_sizes": [1]}), b"abc"), "do not fit the 3 bytes"),
    (frame(msgpack.packb({"_verb": "done", "_sizes": [-1, 4]}), b"abc"), "do not fit"),
    (frame(msgpack.packb({"_verb": "done", "_sizes": "3"}), b"abc"), "without its bodies' sizes"),
], ids=["too-large", "not-msgpack", "empty", "extra-bytes", "a-list", "no-verb", "short-body", "long-body",
        "negative", "sizes-a-string"])
def test_bytes_that_are_not_a_message_of_the_channel_raise_channel_error(ends, wire, says):
    ours, peer = ends
    peer.sock.sendall(wire)
    with pytest.raises(ChannelError, match=says):
        ours.recv_ready()
