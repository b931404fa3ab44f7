"""Send a stream of fuzz messages to a real daemon on many sockets and judge every reply.

Contract
--------
* :func:`fuzz` runs in the calling thread: it owns ``readers`` DEALER sockets (each with at
  most ``window`` messages outstanding), ``mutes`` DEALER sockets that send and never read (the
  daemon must cope with replies nobody collects), and one socket that asks ``health`` every
  ``health_every_s``. It returns a :class:`FuzzReport`; it never raises for what the daemon
  does (a daemon that dies shows as lost replies and failed health checks).
* Judged per reply (PROTOCOL.md §6, §8): a message with a readable id (``Message.rid``) is
  answered exactly once under that id; each reading socket gets exactly as many replies as it
  sent messages; no message the protocol rules out gets a success reply; no reply is
  ``INTERNAL``; every reply decodes as an ADPT01 message. ``health`` is answered within
  ``health_timeout_s`` each time.
* :meth:`FuzzReport.finish` reads what is left on the reading sockets once the daemon has
  exited (so a second reply sent at the very end is counted too) and closes them.
* Units: seconds, bytes.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import zmq

from adaptd.wire import protocol as proto

from .ledger import Ledger
from .stream import MessageStream


@dataclass
class FuzzReport:
    sent: int = 0
    skipped_oversize: int = 0         # not sent: a frame over ZeroMQ's backstop (no reply is owed)
    not_sent: int = 0                 # not sent: a reading socket would have blocked (a stall)
    mute_not_sent: int = 0            # not sent: a mute socket would have blocked
    mute_sent: int = 0
    replies: int = 0
    codes: Counter = field(default_factory=Counter)          # reply code ("ok"/"result" for success)
    codes_by_kind: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    success_to_malformed: int = 0
    unmatched_success: int = 0        # success replies whose id no message of ours carried readably
    ambiguous_anonymous: int = 0      # messages of unknown fate without a readable id
    internal: int = 0
    garbled: int = 0
    missing_replies: int = 0          # per reading socket: messages sent - replies received (> 0)
    extra_replies: int = 0            # per reading socket: replies received - messages sent (> 0)
    health_ok: int = 0
    health_failed: int = 0
    health_worst_s: float = 0.0
    elapsed_s: float = 0.0
    aborted: str | None = None        # why the run stopped early (the daemon stopped answering)
    ledger: Ledger = field(default_factory=Ledger)
    examples: list[str] = field(default_factory=list)         # a few failures, for a person
    _sockets: list[Any] = field(default_factory=list, repr=False)
    _per_socket: list[list[int]] = field(default_factory=list, repr=False)

    @property
    def attempted(self) -> int:
        return self.sent + self.mute_sent + self.skipped_oversize + self.not_sent + self.mute_not_sent

    def note(self, text: str) -> None:
        if len(self.examples) < 12:
            self.examples.append(text[:400])

    @property
    def failures(self) -> dict[str, int]:
        c = self.ledger.counts
        unanswered = c.lost
        return {k: v for k, v in {
            "lost (no reply under a readable id)": unanswered, "duplicated ids": c.duplicated,
            "missing replies": self.missing_replies, "extra replies": self.extra_replies,
            "success replies to malformed messages": self.success_to_malformed
            + max(0, self.unmatched_success - self.ambiguous_anonymous),
            "INTERNAL replies": self.internal, "undecodable replies": self.garbled,
            "health checks unanswered": self.health_failed, "aborted": int(self.aborted is not None),
            "messages the daemon would not take": self.not_sent,
        }.items() if v}

    def finish(self, idle_ms: int = 200) -> None:
        """Read every reply still queued on the reading sockets (call once the daemon has
        exited), then settle the counts and close the sockets."""
        for i, sock in enumerate(self._sockets):
            while sock.poll(idle_ms):
                _on_reply(self, i, sock.recv_multipart(copy=True))
            sock.close()
        for sent, received in self._per_socket:
            self.missing_replies += max(0, sent - received)
            self.extra_replies += max(0, received - sent)
        self.ledger.give_up()
        self._sockets = []


def _on_reply(report: FuzzReport, index: int, frames: list[bytes]) -> None:
    report.replies += 1
    report._per_socket[index][1] += 1
    try:
        split = frames.index(b"")
        header, _ = proto.decode(frames[split:])
    except (ValueError, proto.ProtocolError) as exc:
        report.garbled += 1
        report.note(f"undecodable reply {frames[:4]!r}: {exc}")
        return
    rtype = header.get("type")
    success = rtype in ("result", "ok")
    code = rtype if success else str(header.get("code"))
    report.codes[code] += 1
    if code == proto.INTERNAL:
        report.internal += 1
        report.note(f"INTERNAL: {header.get('message')}")
    rid = header.get("id")
    if not report.ledger.knows(rid):
        # an id we never registered: a reply without one, or to a message whose id the daemon
        # could read but we could not vouch for (mutated, or its id field broken on purpose)
        report.unmatched_success += success
        return
    verdict, context = report.ledger.received(rid)
    if verdict == "first":
        valid, kind = context
        report.codes_by_kind[kind][code] += 1
        if success and not valid:
            report.success_to_malformed += 1
            report.note(f"success reply to a malformed message ({kind}): {str(header)[:200]}")
        report.ledger.ok() if success else report.ledger.error(code)
    elif verdict == "duplicate":
        report.note(f"second reply for id {header.get('id')!r}: {str(header)[:200]}")


def fuzz(endpoint: str, stream: MessageStream, messages: int, *, readers: int = 4, mutes: int = 1,
         window: int = 16, mute_share: float = 0.02, health_every_s: float = 1.0,
         health_timeout_s: float = 10.0, drain_timeout_s: float = 30.0, max_frame_bytes: int | None = None,
         report: FuzzReport | None = None) -> FuzzReport:
    """Send ``messages`` messages from ``stream``. ``max_frame_bytes``: messages with a larger
    frame are not sent (ZeroMQ's ``MAXMSGSIZE`` backstop would drop the connection without a
    reply). Pass ``report`` to watch its counts from another thread while this runs. The run
    stops early (``report.aborted``) when no reply comes for ``drain_timeout_s`` while every
    reading socket waits for one."""
    ctx = zmq.Context.instance()
    report = report if report is not None else FuzzReport()

    def dealer(rcvhwm: int | None = None) -> zmq.Socket:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        if rcvhwm is not None:
            s.setsockopt(zmq.RCVHWM, rcvhwm)
        s.connect(endpoint)
        return s

    socks = [dealer() for _ in range(readers)]
    mute_socks = [dealer(rcvhwm=1) for _ in range(mutes)]
    health = dealer()
    report._sockets = socks
    report._per_socket = [[0, 0] for _ in socks]
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    poller.register(health, zmq.POLLIN)
    index = {s: i for i, s in enumerate(socks)}
    health_sent: dict[str, float] = {}
    next_health = time.monotonic()
    t0 = time.monotonic()
    turn = 0

    def check_health(now: float) -> None:
        nonlocal next_health
        for rid, at in list(health_sent.items()):
            if now - at > health_timeout_s:
                del health_sent[rid]
                report.health_failed += 1
                report.note(f"health unanswered for {health_timeout_s} s")
        if now >= next_health:
            next_health = now + health_every_s
            rid = f"health-{uuid.uuid4().hex}"
            health.send_multipart(proto.encode({"type": "health", "id": rid}))
            health_sent[rid] = now

    last_reply = time.monotonic()

    def read(timeout_ms: float) -> None:
        nonlocal last_reply
        for sock, _ in poller.poll(timeout_ms):
            if sock is not health:
                last_reply = time.monotonic()
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if sock is health:
                    header, _ = proto.decode(frames)
                    at = health_sent.pop(header.get("id"), None)
                    if at is not None and header.get("type") == "ok":
                        report.health_ok += 1
                        report.health_worst_s = max(report.health_worst_s, time.monotonic() - at)
                    elif at is not None:
                        report.health_failed += 1
                        report.note(f"health answered {header}")
                else:
                    _on_reply(report, index[sock], frames)

    while report.attempted < messages:
        now = time.monotonic()
        check_health(now)
        idle = True
        for i, sock in enumerate(socks):
            if report.attempted >= messages:
                break
            per = report._per_socket[i]
            if per[0] - per[1] >= window:
                continue
            idle = False
            msg = stream.next()
            if max_frame_bytes is not None and max(map(len, msg.frames)) > max_frame_bytes:
                report.skipped_oversize += 1
                continue
            if mute_socks and stream.rng.random() < mute_share:
                turn += 1
                try:
                    mute_socks[turn % len(mute_socks)].send_multipart(msg.frames, zmq.NOBLOCK)
                    report.mute_sent += 1
                except zmq.Again:
                    report.mute_not_sent += 1
                continue
            try:
                sock.send_multipart(msg.frames, zmq.NOBLOCK)
            except zmq.Again:      # the daemon is not taking messages: a stall, judged below
                report.not_sent += 1
                continue
            if msg.rid is not None:
                report.ledger.sent(msg.rid, (msg.valid, msg.kind))
            elif msg.valid:
                report.ambiguous_anonymous += 1
            per[0] += 1
            report.sent += 1
        read(50 if idle else 0)
        if idle and time.monotonic() - last_reply > drain_timeout_s:
            report.aborted = f"no reply for {drain_timeout_s} s with {report.sent} messages sent"
            break

    deadline = time.monotonic() + drain_timeout_s
    while any(p[0] > p[1] for p in report._per_socket) and time.monotonic() < deadline:
        check_health(time.monotonic())
        read(50)
    health_sent.clear()
    check_health(next_health)          # one last health check after the stream
    end = time.monotonic() + health_timeout_s
    while health_sent and time.monotonic() < end:
        read(50)
        check_health(time.monotonic())
    report.elapsed_s = time.monotonic() - t0
    health.close()
    for s in mute_socks:
        s.close()
    return report
