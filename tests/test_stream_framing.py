"""ADPT/1 over a Unix stream (adaptd.wire.stream): framing, partial reads, limits. Real socketpairs."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptd.wire.stream import (BODY_ALIGN, GROW_FROM, MAX_FRAMES, READ_BYTES, SEND_BUFFER_BYTES, FramingError,
                                MessageReader, TooLarge, framed, message_bytes, send_message, unsent, widen_send_buffer)

from .conftest import enum_calls, read_in_cuts, read_ready


def test_a_message_arrives_with_its_frames_and_a_tensor_uncopied_on_the_way(unix_pair):
    a, b = unix_pair
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    send_message(a, [b"ADPT01", b"header", x])
    (frames,) = read_ready(MessageReader(1 << 20), b)
    assert frames == [b"ADPT01", b"header", x.tobytes()]


def test_messages_sent_back_to_back_are_all_read_and_stay_valid_after_later_reads(unix_pair):
    a, b = unix_pair
    reader = MessageReader(1 << 20)
    for i in range(5):
        send_message(a, [b"ADPT01", b"h%d" % i, b""])
    first = reader.read_from(b)
    assert [bytes(m[1]) for m in first] == [b"h%d" % i for i in range(5)]
    assert all(len(m[2]) == 0 for m in first)
    send_message(a, [b"ADPT01", b"later"])
    assert [bytes(f) for f in reader.read_from(b)[0]] == [b"ADPT01", b"later"]
    assert bytes(first[4][1]) == b"h4"   # a later read changed nothing under the earlier frames
    with pytest.raises(TypeError):
        first[0][1][0] = 0   # read-only


def test_a_message_trickling_in_byte_by_byte_is_whole_once_its_last_byte_comes(unix_pair):
    a, b = unix_pair
    reader = MessageReader(1 << 20)
    data = b"".join(bytes(memoryview(x).cast("B")) for x in message_bytes([b"ADPT01", b"hdr", b"\x01\x02\x03"]))
    got = []
    for i, byte in enumerate(data):
        a.sendall(bytes([byte]))
        got += read_ready(reader, b)
        assert bool(got) == (i == len(data) - 1)
    assert got == [[b"ADPT01", b"hdr", b"\x01\x02\x03"]]


def test_a_large_message_in_pieces_lands_in_one_buffer_of_its_size(unix_pair):
    a, b = unix_pair
    reader = MessageReader(1 << 26)
    body = np.random.default_rng(0).integers(0, 255, 3 * READ_BYTES + 17, dtype=np.uint8)
    data = b"".join(bytes(memoryview(x).cast("B")) for x in message_bytes([b"ADPT01", b"hdr", body]))
    got = []
    for at in range(0, len(data), 5000):
        a.sendall(data[at:at + 5000])
        got += read_all_views(reader, b)
    (frames,) = got
    assert bytes(frames[2]) == body.tobytes()
    assert frames[1].obj is frames[2].obj and 0 <= len(frames[2].obj) - (6 + 3 + body.nbytes) < BODY_ALIGN   # one buffer


@pytest.mark.parametrize("header_bytes", [1, 2, 3, 4, 5, 16, 301])
@pytest.mark.parametrize("floats", [READ_BYTES // 4 + 1, 150_528, (GROW_FROM // 4) * 3])   # the last one grows
def test_a_large_messages_tensors_are_aligned_in_their_buffer(unix_pair, header_bytes, floats):
    """Whatever the header's length, a large message's tensors start on an aligned address, so
    numpy reads them as aligned arrays (its BLAS paths need that), the buffer growing or not."""
    a, b = unix_pair
    reader = MessageReader(1 << 26)
    x = np.random.default_rng(floats).random(floats, dtype=np.float32)
    y = np.arange(5, dtype=np.float32)
    data = b"".join(bytes(memoryview(f).cast("B")) for f in message_bytes([b"ADPT01", b"h" * header_bytes, x, y]))
    got = []
    for at in range(0, len(data), 50_000):   # (less than the socket's buffer: each piece is read before the next)
        a.sendall(data[at:at + 50_000])
        got += read_all_views(reader, b)
    (frames,) = got
    for frame, want in ((frames[2], x), (frames[3], y)):
        array = np.frombuffer(frame, np.float32)
        assert array.flags.aligned and array.__array_interface__["data"][0] % 4 == 0
        np.testing.assert_array_equal(array, want)
    assert np.frombuffer(frames[2], np.float32).__array_interface__["data"][0] % BODY_ALIGN == 0
    assert bytes(frames[1]) == b"h" * header_bytes


def read_all_views(reader: MessageReader, sock: socket.socket) -> list[list[memoryview]]:
    out = []
    while True:
        try:
            out += reader.read_from(sock)
        except BlockingIOError:
            return out


def test_a_peer_announcing_a_huge_message_and_sending_little_holds_little(unix_pair):
    a, b = unix_pair
    reader = MessageReader(1 << 30)
    a.sendall(bytes(message_bytes([b"x" * (900 << 20)])[0]) + b"x" * (2 * READ_BYTES))
    read_ready(reader, b)
    assert reader.held_bytes <= max(GROW_FROM, 4 * READ_BYTES)


@pytest.mark.parametrize("count", [0, MAX_FRAMES + 1])
def test_a_frame_count_out_of_range_breaks_the_stream_for_good(unix_pair, count):
    a, b = unix_pair
    reader = MessageReader(1000)
    a.sendall(count.to_bytes(4, "little") + b"more")
    with pytest.raises(FramingError):
        read_ready(reader, b)
    assert reader.broken is not None
    with pytest.raises(FramingError):   # every later call
        reader.read_from(b)


def test_the_messages_before_a_break_come_out_and_the_break_after_them(unix_pair):
    a, b = unix_pair
    reader = MessageReader(1000)
    data = b"".join(bytes(memoryview(x).cast("B")) for x in message_bytes([b"ADPT01", b"fine"]))
    a.sendall(data + (0).to_bytes(4, "little"))
    assert [[bytes(f) for f in m] for m in reader.read_from(b)] == [[b"ADPT01", b"fine"]]
    assert isinstance(reader.broken, FramingError)
    with pytest.raises(FramingError):
        reader.read_from(b)


def test_a_message_over_the_limit_comes_out_as_its_size_and_the_stream_stays_in_step(unix_pair):
    a, b = unix_pair
    reader = MessageReader(1000)
    over = [b"ADPT01", os.urandom(3 * READ_BYTES)]
    data = b"".join(bytes(memoryview(x).cast("B")) for m in (over, [b"ADPT01", b"next"]) for x in message_bytes(m))
    got = []
    for at in range(0, len(data), 7000):
        a.sendall(data[at:at + 7000])
        got += read_all_views(reader, b)
    assert got[0] == TooLarge(6 + 3 * READ_BYTES)
    assert [bytes(f) for f in got[1]] == [b"ADPT01", b"next"] and len(got) == 2
    assert reader.held_bytes < 1000 and reader.broken is None


def test_the_end_of_the_stream_is_a_connection_error_mid_message_or_not(unix_pair):
    a, b = unix_pair
    reader = MessageReader(1 << 20)
    a.sendall(bytes(message_bytes([b"ADPT01", b"0123456789"])[0]) + b"ADPT")
    a.close()
    with pytest.raises(ConnectionError, match="middle of a message"):
        read_ready(reader, b)
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    c.close()
    with pytest.raises(ConnectionError, match="closed the stream"):
        MessageReader(10).read_from(d)
    d.close()


def test_unsent_is_what_a_partial_write_left():
    buffers = [b"abcd", np.arange(3, dtype=np.uint8), b"xy"]
    assert [bytes(v) for v in unsent(buffers, 0)] == [b"abcd", b"\x00\x01\x02", b"xy"]
    assert [bytes(v) for v in unsent(buffers, 5)] == [b"\x01\x02", b"xy"]
    assert unsent(buffers, 9) == []


@settings(max_examples=60, deadline=None)
@given(messages=st.lists(st.lists(st.binary(max_size=300), min_size=1, max_size=5), min_size=1, max_size=6),
       cuts=st.lists(st.integers(1, 400), min_size=1, max_size=30))
def test_any_messages_cut_anywhere_are_read_back_exactly(messages, cuts):
    data = b"".join(bytes(memoryview(x).cast("B")) for m in messages for x in message_bytes(m))
    assert read_in_cuts(MessageReader(1 << 20), data, cuts) == messages


def _taken_at_once(widen: bool, size: int) -> int:
    """How much of ``size`` bytes a non-blocking socket takes in one send, nothing read meanwhile."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if widen:
            widen_send_buffer(a)
        a.setblocking(False)
        return a.send(bytes(size))
    finally:
        a.close()
        b.close()


def test_a_widened_socket_takes_a_large_message_in_fewer_writes():
    """The kernel grants what ``net.core.wmem_max`` allows (doubled, for its bookkeeping); with
    the default limit a 602 KB input still went in three writes, with the widened buffer in one
    where the limit allows 4 MiB (this machine's does: 4194304) and in two at the default's."""
    if not os.path.exists("/proc/sys/net/core/wmem_max"):
        pytest.skip("no /proc/sys/net/core/wmem_max here")
    with open("/proc/sys/net/core/wmem_max") as fh:
        wmem_max = int(fh.read())
    plain, widened = _taken_at_once(False, 8 << 20), _taken_at_once(True, 8 << 20)
    assert widened > plain
    assert widened >= min(SEND_BUFFER_BYTES, wmem_max)


SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)   # (Linux's; Python 3.11 does not name it)


def test_widening_never_shrinks_a_larger_buffer():
    """A socket whose buffer is already larger than ``widen_send_buffer`` asks for keeps it (the
    larger buffer is forced here, as a host's ``net.core.wmem_default`` would give it)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            a.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 * SEND_BUFFER_BYTES)
        except PermissionError:
            pytest.skip("forcing a send buffer past net.core.wmem_max needs CAP_NET_ADMIN")
        before = a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        assert before > 2 * SEND_BUFFER_BYTES
        widen_send_buffer(a)
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == before
    finally:
        a.close()
        b.close()


def test_a_send_within_a_deadline_runs_no_enum_arithmetic(unix_pair):
    # socket.MSG_* are enum flags: an ``|`` of two runs the enum module's Python on every send
    # (1.6 us here, several times that on a cold request path), where plain ints cost nothing.
    a, b = unix_pair
    import time
    assert enum_calls(lambda: send_message(a, [b"ADPT01", b"\x80"], time.monotonic() + 5)) == []
    assert read_ready(MessageReader(1 << 20), b) == [[b"ADPT01", b"\x80"]]


def test_a_framed_messages_size_is_its_buffers_bytes_whatever_their_kind():
    # A 2-d array's len() is its rows, a float view's its items: the size must count bytes, as
    # the writer compares it with what a write took.
    frames = [b"ADPT01", memoryview(b"header"), np.ones((2, 3), np.float32), memoryview(np.ones(5, np.float64))]
    buffers, size = framed(frames)
    assert buffers[0] == message_bytes(frames)[0] and all(a is b for a, b in zip(buffers[1:], frames))
    assert size == sum(memoryview(b).nbytes for b in buffers) == 4 * 5 + 6 + 6 + 24 + 40
