"""Hostile bytes on the ipc endpoint, which the daemon serves itself (PROTOCOL.md §2.4).

Raw Unix-socket clients, not libzmq, send what a ZeroMQ client never would: random bytes, broken
greetings and handshakes, frames with reserved flags, commands with MORE, lengths far over the
limit, floods of PINGs, and a valid request in the middle of any of it; each then shuts its side
and reads until the daemon closes the connection, which it must (no connection left hanging).
Between them a real libzmq DEALER keeps sending requests, each of which must be answered. The
daemon must serve on, log no traceback and exit 0.
"""

from __future__ import annotations

import random
import socket
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from adaptd.tools.launch import DaemonProcess  # noqa: E402
from adaptd.wire import protocol as proto  # noqa: E402
from adaptd.wire import zmtp  # noqa: E402
from robustness import watch  # noqa: E402

CASES = 160
MAX_MESSAGE_BYTES = 1 << 16

pytestmark = pytest.mark.slow


def frames_bytes(frames: list[bytes]) -> bytes:
    buffers, _ = zmtp.framed(frames)
    return b"".join(bytes(memoryview(b).cast("B")) for b in buffers)


def hostile(rng: random.Random, request: bytes) -> bytes:
    """One connection's bytes: a kind of breakage drawn at random."""
    hello = zmtp.GREETING + zmtp.ready_command(b"DEALER", bytes([1]) + rng.randbytes(7))
    noise = rng.randbytes(rng.randint(1, 300))
    kind = rng.randrange(8)
    if kind == 0:
        return noise
    if kind == 1:   # a greeting with one byte changed
        greeting = bytearray(zmtp.GREETING)
        greeting[rng.randrange(len(greeting))] ^= 1 << rng.randrange(8)
        return bytes(greeting) + zmtp.ready_command(b"DEALER") + request
    if kind == 2:   # a READY whose body is noise
        return zmtp.GREETING + zmtp.command(b"READY", noise) + request
    if kind == 3:
        return hello + noise
    if kind == 4:   # frame headers with random flags and sizes
        return hello + b"".join(bytes((rng.randrange(256), rng.randrange(256))) for _ in range(20))
    if kind == 5:   # a long frame far over the limit, then a little of it
        return hello + struct.pack(">BQ", 0x03, rng.choice([MAX_MESSAGE_BYTES + 1, 1 << 40, (1 << 64) - 1])) + noise
    if kind == 6:   # a command with MORE after a valid request
        return hello + request + bytes((0x05, 5)) + b"\x04PING"
    pings = b"".join(zmtp.command(b"PING", b"\0\1" + rng.randbytes(rng.randint(0, 16))) for _ in range(50))
    return hello + pings + request + pings   # a flood of PINGs around a valid request: answered


def drain(sock: socket.socket) -> bytes:
    """Everything the daemon writes until it closes the connection (a timeout fails the test)."""
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def test_hostile_bytes_on_the_ipc_endpoint_never_stop_the_daemon(tiny_repository, tmp_path):
    repo, model, _ = tiny_repository
    daemon = DaemonProcess.start(repo, tmp_path, config={"server": {"max_message_bytes": MAX_MESSAGE_BYTES},
                                                         "placements": {"tensorflow": "off"}})
    log = watch.LogWatch(daemon.log_path, from_start=True)
    rng = random.Random(11)
    x = np.zeros((1, 8, 8, 1), np.float32)
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(daemon.endpoint)
    try:
        answered_raw = 0
        for i in range(CASES):
            request = frames_bytes(proto.encode(proto.request_header(f"raw-{i}", model, [x]), [x]))
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.settimeout(30)
            raw.connect(daemon.endpoint[len("ipc://"):])
            try:
                raw.sendall(hostile(rng, request))
                raw.shutdown(socket.SHUT_WR)
                got = drain(raw)
            except (BrokenPipeError, ConnectionResetError):   # closed on us mid-write: fine
                got = b""
            finally:
                raw.close()
            answered_raw += f"raw-{i}".encode() in got
            if i % 20 == 0:   # a well-behaved client beside them is served throughout
                dealer.send_multipart(proto.encode(proto.request_header(f"good-{i}", model, [x]), [x]))
                assert dealer.poll(30_000), f"no reply to a good request after {i} hostile connections"
                reply = proto.decode(dealer.recv_multipart())[0]
                assert reply["type"] == "result" and reply["id"] == f"good-{i}", reply
        assert answered_raw > 0   # valid requests amid the breakage were answered too
        health = daemon.request({"type": "health", "id": "h"})[0]["body"]
        assert health["status"] == "serving" and health["ipc"]["connections"] <= 2, health
    finally:
        dealer.close()
        exit_code = daemon.stop()
    assert exit_code == 0
    assert log.tracebacks() == []
