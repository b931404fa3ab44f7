"""The loop polls each ROUTER by its notification descriptor, which a reply sent on the socket
can consume while a message waits (adaptd.daemon.frontend's contract). Real ZeroMQ sockets: the
hazard is reproduced step by step, each step awaited by polling the descriptor, and the frontend
must name the socket that holds the unannounced message; a ROUTER nothing was sent on is never
asked."""

from __future__ import annotations

import select

import zmq

from adaptd.daemon.frontend import Frontend
from adaptd.wire.frames import readable

from .conftest import enum_calls


def _readable(fd: int, timeout_s: float) -> bool:
    return bool(select.select([fd], [], [], timeout_s)[0])


def test_a_message_a_reply_left_unannounced_is_named_before_the_loop_polls(tmp_path):
    ctx = zmq.Context()
    frontend = Frontend(ctx, max_message_bytes=1 << 20, send_hwm=100, ipc_mode=0o600, ipc_engine="zeromq")
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
        waiting: list = []   # (asked with plain ints: an enum's ``&`` runs Python, on every reply)
        assert not {"__and__", "__rand__"} & set(enum_calls(lambda: waiting.extend(frontend.unannounced())))
        assert waiting == [router] and not frontend.sent_on
        assert frontend.unannounced() == []               # asked once per send
        assert other not in frontend.sent_on and other_fd != fd
        assert router.recv_multipart()[1] == b"second"
    finally:
        dealer.close(0)
        frontend.close()
        ctx.term()
