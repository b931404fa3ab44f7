"""The client library's local-stream transport against real Unix stream servers written here:
one write per message that fits, the deadline kept for one that does not, reads that block in
the read itself under the attempt's deadline, and a connection the daemon closed while the
client was idle. Real sockets, real threads; no daemon."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from adaptd.clients import errors as e
from adaptd.clients.client import Client
from adaptd.wire import protocol as proto
from adaptd.wire import replies
from adaptd.wire.stream import MessageReader, send_message


class Requests:
    """The requests' headers a server reads from one connection, in order (several may come in one read)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn, self.reader, self.read = conn, MessageReader(1 << 20), []

    def next(self) -> dict | None:
        """The next request's header, or None at the end of the stream."""
        while not self.read:
            try:
                self.read += [proto.decode([b"", *m])[0] for m in self.reader.read_from(self.conn)]
            except ConnectionError:
                return None
        return self.read.pop(0)


def ok(request_id: str, body: dict) -> list:
    return proto.encode(replies.ok_header("models", request_id, body))[1:]


class Server:
    """A Unix stream listener whose connections ``handle(conn, index)`` serves, on a thread."""

    def __init__(self, path: str, handle, connections: int = 1) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(connections)
        self.thread = threading.Thread(target=self._run, args=(handle, connections), daemon=True)
        self.thread.start()

    def _run(self, handle, connections: int) -> None:
        for index in range(connections):
            conn, _ = self.listener.accept()
            with conn:
                handle(conn, index)

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()
        assert not self.thread.is_alive()


def test_a_message_that_fits_leaves_the_socket_blocking_and_a_long_one_keeps_its_deadline():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        send_message(a, [b"ADPT01", b"small"], deadline=time.monotonic() + 5)
        assert a.gettimeout() is None   # the one write did not wait: no timeout was set
        assert [bytes(f) for f in MessageReader(1 << 20).read_from(b)[0]] == [b"ADPT01", b"small"]
        # Nobody reads: a message larger than both buffers cannot go out, and gives up at its deadline.
        big = b"x" * (64 << 20)
        started = time.monotonic()
        with pytest.raises(OSError):
            send_message(a, [b"ADPT01", big], deadline=started + 0.2)
        assert 0.15 < time.monotonic() - started < 5


def test_a_write_to_a_closed_connection_raises_even_where_sigpipe_would_kill():
    """A client finds a connection the daemon closed by writing to it: in a process that does not
    ignore SIGPIPE (Python does; an embedding may not), that write must fail, not kill it."""
    script = """
import signal, socket, time
from adaptd.wire.stream import send_message
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
for deadline in (None, time.monotonic() + 5):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.close()
    try:
        send_message(a, [b"ADPT01", b"x" * (8 << 20)], deadline=deadline)
    except BrokenPipeError:
        print("raised")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.split()) == (0, ["raised", "raised"]), done


def test_a_long_message_is_written_whole_and_in_order_to_a_reader():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    payload = bytes(range(256)) * (32 << 12)   # 8 MiB: more than the socket's buffer
    got = []

    def read() -> None:
        reader = MessageReader(1 << 30)
        while not (messages := reader.read_from(b)):
            pass
        got.append(bytes(messages[0][1]))

    reader = threading.Thread(target=read)
    reader.start()
    with a, b:
        send_message(a, [b"ADPT01", payload], deadline=time.monotonic() + 30)
        reader.join(30)
    assert got == [payload]


def test_an_unanswered_request_times_out_on_its_deadline_with_its_retries_on_one_connection(tmp_path):
    """The server reads every attempt and never answers, but for a reply to another id, which
    must not stretch the attempt's wait (the read's timeout is set again for what is left)."""
    seen: list[str] = []

    def handle(conn: socket.socket, _: int) -> None:
        requests = Requests(conn)
        while (header := requests.next()) is not None:
            seen.append(header["id"])
            if len(seen) == 1:
                send_message(conn, ok("someone-else", {}))

    server = Server(str(tmp_path / "s.sock"), handle)
    with Client(f"unix://{tmp_path / 's.sock'}", timeout_ms=1000, retries=1) as client:
        started = time.monotonic()
        with pytest.raises(e.RequestTimeout):
            client.models()
        elapsed = time.monotonic() - started
        assert client.stale_replies == 1
    server.close()
    assert 2.0 <= elapsed < 2.0 + 1.0, elapsed   # two attempts of a second, not more than a moment late
    assert len(seen) == 2 and seen[0] == seen[1]


def test_a_connection_closed_while_idle_is_replaced_at_the_send_and_its_late_reply_still_counts(tmp_path):
    """The server answers the first request, then, once the client has its reply, writes a late
    reply nobody waits for and closes the connection (a daemon restarting between two requests).
    The next request, with no retries, goes out on a new connection; the late reply is read
    from the old one first and counted as stale."""
    close_now, closed = threading.Event(), threading.Event()

    def handle(conn: socket.socket, index: int) -> None:
        header = Requests(conn).next()
        send_message(conn, ok(header["id"], {"models": [index]}))
        if index == 0:
            assert close_now.wait(10)
            send_message(conn, ok("late", {}))
            conn.close()   # (before the client may send again)
            closed.set()

    server = Server(str(tmp_path / "s.sock"), handle, connections=2)
    with Client(f"unix://{tmp_path / 's.sock'}", timeout_ms=10_000, retries=0) as client:
        assert client.models() == {"models": [0]}
        close_now.set()
        assert closed.wait(10)
        assert client.models() == {"models": [1]}
        assert client.stale_replies == 1 and client.retried == 0
    server.close()
