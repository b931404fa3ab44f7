"""Frame-by-frame multipart I/O (adaptd.wire.frames) over real ZeroMQ sockets: the same
messages as pyzmq's multipart calls, in both directions, small and large frames alike."""

from __future__ import annotations

import numpy as np
import pytest
import zmq
from adaptd.wire import frames as frames_mod
from adaptd.wire.frames import recv_frames, send_frames


@pytest.fixture
def pair(tmp_path):
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    endpoint = f"ipc://{tmp_path}/frames.sock"
    router.bind(endpoint)
    dealer.connect(endpoint)
    yield router, dealer
    router.close(0)
    dealer.close(0)
    ctx.term()


def message():
    big = np.arange(100_000, dtype=np.float32)          # 400 kB: sent without copying
    return [b"", b"header", memoryview(b"tiny"), big]


def test_a_message_sent_frame_by_frame_arrives_whole_through_pyzmq(pair):
    router, dealer = pair
    send_frames(dealer, message())
    got = router.recv_multipart()
    assert got[1:] == [b"", b"header", b"tiny", np.arange(100_000, dtype=np.float32).tobytes()]


def test_a_pyzmq_multipart_message_is_received_frame_by_frame_and_sent_back(pair):
    router, dealer = pair
    dealer.send_multipart(message(), copy=False)
    frames = recv_frames(router)
    assert all(isinstance(f, zmq.Frame) for f in frames) and len(frames) == 5   # identity first
    send_frames(router, frames)   # received frames go back as they are (the daemon's envelope)
    back = dealer.recv_multipart()
    assert back == [b"", b"header", b"tiny", np.arange(100_000, dtype=np.float32).tobytes()]


@pytest.mark.parametrize("frame_knows_more", [True, False])
def test_the_end_of_a_message_is_found_by_either_backends_means(pair, monkeypatch, frame_knows_more):
    """Cython's Frame.more, or the socket's ZMQ_RCVMORE where the backend (CFFI) leaves it unset."""
    monkeypatch.setattr(frames_mod, "_FRAME_KNOWS_MORE", frame_knows_more)
    router, dealer = pair
    send_frames(dealer, [b"", b"one"])
    send_frames(dealer, [b"", b"two", b"three"])
    assert [bytes(f.buffer) for f in recv_frames(router)][1:] == [b"", b"one"]
    assert [bytes(f.buffer) for f in recv_frames(router)][1:] == [b"", b"two", b"three"]


def test_noblock_raises_again_when_nothing_waits(pair):
    router, dealer = pair
    with pytest.raises(zmq.Again):
        recv_frames(router, zmq.NOBLOCK)
    send_frames(dealer, [b"", b"after"], zmq.NOBLOCK)
    assert [bytes(f.buffer) for f in recv_frames(router)][1:] == [b"", b"after"]


def test_a_frame_that_is_not_a_buffer_sends_nothing_so_the_next_message_stays_whole(pair):
    router, dealer = pair
    with pytest.raises(TypeError):
        send_frames(dealer, [b"", b"header", None])
    with pytest.raises(ValueError):
        send_frames(dealer, [])
    send_frames(dealer, [b"", b"next"])
    assert [bytes(f.buffer) for f in recv_frames(router)][1:] == [b"", b"next"]
