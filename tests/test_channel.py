"""The daemon <-> worker channel (adaptd.daemon.channel) over a real Unix socketpair: a message
cut anywhere comes out whole, and only whole; reading never waits; bytes that are not a message
of the channel raise ChannelError rather than anything else."""

from __future__ import annotations

import socket

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
    (frame(msgpack.packb({"_sizes": []})), "verb"),
    (frame(msgpack.packb({"_verb": "done", "_sizes": [4]}), b"abc"), "sizes"),
    (frame(msgpack.packb({"_verb": "done", "_sizes": [-1, 4]}), b"abc"), "sizes"),
    (frame(msgpack.packb({"_verb": "done", "_sizes": "3"}), b"abc"), "sizes"),
], ids=["too-large", "not-msgpack", "empty", "extra-bytes", "a-list", "no-verb", "short-body", "negative",
        "sizes-a-string"])
def test_bytes_that_are_not_a_message_of_the_channel_raise_channel_error(ends, wire, says):
    ours, peer = ends
    peer.sock.sendall(wire)
    with pytest.raises(ChannelError, match=says):
        ours.recv_ready()
