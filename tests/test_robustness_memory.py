"""Cheap requests do not buy memory in the daemon: a real daemon, its RSS from /proc.

A request that costs its sender one message must not leave the daemon holding much more than the
message's worth for long. Here 400 requests, each with a unique id and a 256 KiB model name
(about 100 MiB in all; each answered UNKNOWN_MODEL at once, all replies read), must leave the
daemon's RSS within 32 MiB of where it was: an error reply that echoed the string and a replay
store that kept every such reply would hold all of it.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from adaptd.wire import protocol as proto  # noqa: E402
from adaptd.tools.launch import DaemonProcess  # noqa: E402
from robustness import watch  # noqa: E402

REQUESTS = 400
NAME_BYTES = 256 << 10
ALLOWED_GROWTH = 32 << 20


def test_error_replies_to_cheap_requests_do_not_keep_their_strings(tiny_repository, tmp_path):
    repo, name, _ = tiny_repository
    d = DaemonProcess.start(repo, tmp_path, config={"placements": {"tensorflow": "off"}})
    try:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(d.endpoint)
        x = np.zeros((1, 8, 8, 1), np.float32)
        sock.send_multipart(proto.encode(proto.request_header("warm", name, [x]), [x]))
        assert sock.poll(60_000)
        sock.recv_multipart()
        before = watch.rss_bytes(d.proc.pid)
        for i in range(REQUESTS):
            long_name = f"{i:06d}" + "m" * NAME_BYTES
            sock.send_multipart(proto.encode(proto.request_header(f"cheap-{uuid.uuid4().hex}", long_name, [x]), [x]))
            assert sock.poll(60_000), "no reply"
            reply, _ = proto.decode(sock.recv_multipart())
            assert reply["type"] == "error" and reply["code"] in ("UNKNOWN_MODEL", "BAD_REQUEST"), reply
        health = watch.control(d.endpoint, "health")
        assert health["type"] == "ok"
        after = watch.rss_bytes(d.proc.pid)
        sock.close()
    finally:
        d.stop()
    growth = after - before
    assert growth <= ALLOWED_GROWTH, (f"RSS grew by {growth / 2**20:.0f} MiB over {REQUESTS} requests of "
                                      f"{NAME_BYTES >> 10} KiB each ({before / 2**20:.0f} -> {after / 2**20:.0f} MiB)")
