"""The loop polls each ROUTER by its notification descriptor, which a reply sent on the socket
can consume while a message waits (adaptd.daemon.frontend's contract). Real ZeroMQ sockets: the
hazard is reproduced step by step, each step awaited by polling the descriptor, and the frontend
must name the socket that holds the unannounced message; a ROUTER nothing was sent on is never
asked."""

from __future__ import annotations

import select
import sys

import zmq

from adaptd.daemon.frontend import Frontend
from adaptd.wire.frames import readable


def _readable(fd: int, timeout_s: float) -> bool:
    return bool(select.select([fd], [], [], timeout_s)[0])


def test_a_message_a_reply_left_unannounced_is_named_before_the_loop_polls(tmp_path):
    ctx = zmq.Context()
    frontend = Frontend(ctx, max_message_bytes=1 << 20, send_hwm=100, ipc_mode=0o600)
    frontend.bind([f"ipc://{tmp_path}/a.sock", f"ipc://{tmp_path}/b.sock"], [])
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        (fd, router), (other_fd, other) = frontend.router_fds().items()
        dealer.connect(f"ipc://{tmp_path}/a.sock")
        dealer.send(b"first")
        assert _readable(fd, 10)
        identity, _ = router.recv_multipart()
        assert not router.get(zmq.EVENTS) & zmq.POLLIN and not readable(router)   # read dry: the next is announced
        dealer.send(b"second")
        assert _readable(fd, 10)                          # announced, not read yet
        assert frontend.send((router, [identity]), [b"reply"])
        assert not _readable(fd, 0)                       # the reply took the announcement
        assert router.get(zmq.EVENTS) & zmq.POLLIN        # while the message waits
        enum_calls: list[str] = []   # (its flags are plain ints: an enum's ``&`` runs Python per reply)
        sys.setprofile(lambda frame, event, arg: enum_calls.append(frame.f_code.co_name)
                       if event == "call" and frame.f_code.co_filename.endswith("enum.py") else None)
        try:
            waiting = frontend.unannounced()
        finally:
            sys.setprofile(None)
        assert waiting == [router] and not frontend.sent_on and enum_calls == []
        assert frontend.unannounced() == []               # asked once per send
        assert other not in frontend.sent_on and other_fd != fd
        assert router.recv_multipart()[1] == b"second"
    finally:
        dealer.close(0)
        frontend.close()
        ctx.term()
