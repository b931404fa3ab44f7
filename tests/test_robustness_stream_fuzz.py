"""Fuzz messages over the local stream (PROTOCOL.md §2.3) against a real daemon.

The messages of ``bench/robustness/stream.py`` (valid and near-valid requests of every type,
frame-level breakage, random frames, byte-level mutations), each framed for the stream, on a
few connections with several outstanding each. Every message must get exactly one reply on its
connection, in a readable ADPT01 message, never ``INTERNAL``, never a success for a message the
protocol rules out, and under its id when the id is readable. Then one connection breaks the
framing (a frame count of zero) after a valid request: that request is answered, then a
``MALFORMED`` without an id, then the connection ends; the daemon serves on and logs no
traceback.
"""

from __future__ import annotations

import socket
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from adaptd.tools.launch import DaemonProcess  # noqa: E402
from adaptd.wire import protocol as proto  # noqa: E402
from adaptd.wire.stream import MAX_FRAMES, MessageReader, message_bytes  # noqa: E402
from robustness import watch, wire  # noqa: E402
from robustness.stream import MessageStream  # noqa: E402

MESSAGES = 3000
CONNECTIONS = 3
WINDOW = 8
MAX_MESSAGE_BYTES = 1 << 20

pytestmark = pytest.mark.slow


def stream_bytes(frames: list[bytes]) -> bytes | None:
    """A fuzz message as the stream carries it (no delimiter), or None when it has none to drop
    or cannot be framed (the stream's framing is not what this test breaks)."""
    if not frames or frames[0] != b"" or not 1 <= len(frames) - 1 <= MAX_FRAMES:
        return None
    if sum(len(f) for f in frames[1:]) > MAX_MESSAGE_BYTES:
        return None
    return b"".join(bytes(memoryview(b).cast("B")) for b in message_bytes(frames[1:]))


class Connection:
    def __init__(self, endpoint: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(endpoint[len("unix://"):])
        self.reader = MessageReader(1 << 30)
        self.ready: list = []
        self.outstanding = 0          # messages sent on it, replies not read yet

    def recv(self) -> dict:
        while not self.ready:
            self.ready += self.reader.read_from(self.sock)
        return proto.decode([b"", *self.ready.pop(0)])[0]


def test_fuzzed_messages_over_the_stream_each_get_one_clear_reply(tiny_repository, tmp_path):
    repo, _, _ = tiny_repository
    daemon = DaemonProcess.start(repo, tmp_path, config={"server": {"max_message_bytes": MAX_MESSAGE_BYTES},
                                                         "placements": {"tensorflow": "off"}})
    log = watch.LogWatch(daemon.log_path, from_start=True)
    try:
        models = daemon.request({"type": "models", "id": "m"})[0]["body"]
        target = wire.Target.from_models_reply(models)
        messages = MessageStream(target, 11, "sf.", max_message_bytes=MAX_MESSAGE_BYTES)
        conns = [Connection(daemon.local_endpoint) for _ in range(CONNECTIONS)]
        failures: list[str] = []
        codes: Counter = Counter()
        sent = answered = 0

        by_id: dict[str, object] = {}   # messages sent with a readable id, not answered yet
        unmatched_success: list = []      # success replies under ids we did not send readably
        fate_unknown = 0                  # messages that may succeed under an id we cannot read (mutated)

        def judge(conn: Connection) -> None:
            """Read one reply on ``conn`` (replies come in any order, matched by id, §8)."""
            nonlocal answered
            conn.outstanding -= 1
            reply = conn.recv()
            answered += 1
            code = reply.get("code")
            codes[code or reply.get("type")] += 1
            message = by_id.pop(reply.get("id"), None)
            if code == "INTERNAL":
                failures.append(f"INTERNAL: {reply.get('message')}")
            if message is None:
                if reply.get("type") != "error":
                    unmatched_success.append(reply.get("id"))
            elif reply.get("type") != "error" and not message.valid:
                failures.append(f"success for {message.kind}")

        while sent < MESSAGES:
            message = messages.next()
            data = stream_bytes(message.frames)
            if data is None:
                continue
            conn = conns[sent % CONNECTIONS]
            if conn.outstanding >= WINDOW:
                judge(conn)
            conn.sock.sendall(data)
            conn.outstanding += 1
            if message.rid is not None:
                by_id[message.rid] = message
            elif message.valid:
                fate_unknown += 1
            sent += 1
        for conn in conns:
            while conn.outstanding:
                judge(conn)
        assert by_id == {}, f"{len(by_id)} messages with a readable id never answered under it"
        assert len(unmatched_success) <= fate_unknown, unmatched_success[:10]
        assert answered == sent and failures == [], failures[:10]
        # the mix reached the daemon's validation and its executions both
        assert codes["result"] > 0 and len({"MALFORMED", "BAD_REQUEST", "BAD_INPUT"} & set(codes)) == 3, codes

        breaker = conns[0]
        breaker.sock.sendall(b"".join(bytes(memoryview(b).cast("B"))
                                      for b in message_bytes(proto.encode({"type": "models", "id": "last"})[1:]))
                             + (0).to_bytes(4, "little"))
        assert breaker.recv()["id"] == "last"
        farewell = breaker.recv()
        assert farewell["code"] == "MALFORMED" and farewell["id"] is None
        with pytest.raises(ConnectionError):
            breaker.recv()
        health = daemon.request({"type": "health", "id": uuid.uuid4().hex})[0]["body"]
        assert health["status"] == "serving"
        for conn in conns:
            conn.sock.close()
    finally:
        exit_code = daemon.stop()
    assert exit_code == 0
    assert log.tracebacks() == []
