"""The request path: a request's frames in, one reply out, and what is written down after it.

Contract
--------
* :meth:`RequestPath.on_request` handles one message from a request socket (and
  :meth:`RequestPath.on_stream_request` one from a local stream connection): decode
  (:mod:`adaptd.wire.protocol`; a steady client's repeated header is kept from its second sight,
  then not parsed again: :mod:`adaptd.daemon.request_memo`), answer a retry or a stored reply
  (:mod:`adaptd.daemon.replay`), admit (:mod:`adaptd.daemon.admission`), choose (the policy,
  pure), run inline where :mod:`adaptd.daemon.inline_rule` allows, else queue on the placement's
  worker. Where variants load on first use (``loads_on_demand``, set by the daemon), a choice not
  loaded yet gives way to the best loaded arm that meets the request on a placement with no load
  under way, and loads in the background (:meth:`RequestPath._prefer_loaded`). A request handed
  over is held as a :class:`~adaptd.daemon.pending.Pending`; its job's outcome becomes its reply
  in :meth:`~adaptd.daemon.outcomes.Outcomes.on_outcome` (:mod:`adaptd.daemon.outcomes`, this
  class's base), which defers the statistics, the policy's update and the selection record.
* Exactly one reply per request message (PROTOCOL.md §8): every branch ends in a reply or in a
  pending job whose outcome (done, failed, worker death, drain: :meth:`abandon_all`) produces
  one. An unexpected fault in one request, or in turning its outcome into a reply, is answered
  ``INTERNAL`` unless its reply has already gone out (then it is only logged: never a second
  reply), and logged (a traceback at most once a minute per kind, one line otherwise); it never
  ends the loop, and it leaves no request held: a run that raises gives its request up, so a
  retry runs afresh rather than waiting on a job that will never end.
* Requests in flight and stored replies belong to the peer that sent them
  (:mod:`adaptd.daemon.peers`); the record names a peer only by an opaque tag.
* A float input sent inline that holds NaN or an infinity (``[server] reject_nonfinite``) is
  refused ``BAD_INPUT`` after the choice when the chosen placement runs in this process (a
  placement's thread, or inline here): screened on this thread, so that the placement's thread
  never lets go of the interpreter lock between two runs (:mod:`adaptd.daemon.execution`); a
  worker process screens its own. Either way the refusal is recorded against the chosen arm.
* Under overload a request whose model has every placement's queue full is refused BUSY before
  it is parsed (counted in ``busy_early``), unless it is a retry.
* The daemon's main thread only. Tensor bytes are passed as the received frames, never copied.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import zmq

from adaptd.daemon.admission import busy_reply
from adaptd.daemon.control import ADMIN_ONLY
from adaptd.daemon.execution import nonfinite_inline, nonfinite_message
from adaptd.daemon.faultlog import FaultLog
from adaptd.daemon.inline_rule import InlineRule
from adaptd.daemon.peers import PeerTags, peer_of
from adaptd.daemon.registry import Arm, ModelVersion
from adaptd.daemon.jobs import Job
from adaptd.daemon.outcomes import Outcomes, internal_message
from adaptd.daemon.pending import Pending
from adaptd.daemon.request_memo import RequestMemo, job_inputs
from adaptd.wire import protocol as proto, replies
from adaptd.wire.frames import readable, recv_frames
from adaptd.wire.stream import TooLarge

log = logging.getLogger("adaptd")

INTAKE_BATCH = 16     # requests taken from one socket per round, after the round's completions
_NO_PREDICTION: dict[str, Any] = {}   # (read only)


class RequestPath(Outcomes):
    """Requests and outcomes over the daemon's parts (``daemon``: a :class:`~adaptd.daemon.server.Daemon`
    whose parts are assembled)."""

    def __init__(self, daemon: Any) -> None:
        self.d = daemon
        self.pending: dict[tuple[bytes, str], Pending] = {}
        self.peer_tags = PeerTags()
        self.requests = 0           # replies sent (counted as each goes out: a fault after one sends no second)
        self.errors = 0             # error replies sent
        self.errors_by_code: dict[str, int] = {}   # the same, per error code (metrics)
        self.busy_early = 0         # BUSY answers given before a request was parsed (overload)
        self.execution_cpu_s_in_process = 0.0   # CPU of executions run in this process (thread placements)
        self.execution_cpu_s_all = 0.0          # CPU of every execution answered, wherever it ran
        self.loads_on_demand = False    # set by the daemon: variants load on first use (not eagerly)
        self.inferences = 0         # inference requests answered with a result
        self.saturated = False      # a queue was full when last looked: refuse BUSY early
        self.round_events = 0       # events the loop's current round handles (set by the loop)
        self._cpu0 = 0
        self._inline = InlineRule(daemon.config.placements.inline_max_ms,
                                  daemon.config.placements.inline_sole_caller_max_ms)
        self._reject_nonfinite = daemon.config.server.reject_nonfinite
        self.faults = FaultLog(log)   # unexpected faults: a traceback at most once a minute per kind
        self._memo = RequestMemo()   # inference headers a steady client repeats, kept from the second

    def drain(self, sock: zmq.Socket) -> bool:
        """Take at most INTAKE_BATCH messages from one request socket; True when more may wait
        (the loop drains it again next round). After each, its events say whether another waits
        (2.8 us here, against 3.5 for a receive that raises); read dry, it is off ``sent_on``."""
        for _ in range(INTAKE_BATCH):
            try:
                frames = recv_frames(sock, zmq.NOBLOCK)
            except zmq.Again:   # a wake-up with nothing to read
                self.d.frontend.sent_on.discard(sock)
                return False
            self.on_request(sock, frames)
            if not readable(sock):
                self.d.frontend.sent_on.discard(sock)
                return False
        return True

    def on_request(self, sock: Any, frames: list[Any]) -> None:
        """One message from a request socket: exactly one reply, now or when its job ends."""
        received_ns = time.monotonic_ns()
        self._cpu0 = time.thread_time_ns()
        # The envelope is everything before the empty delimiter (one identity frame for a
        # direct DEALER or REQ peer, more behind a proxy).
        # (a frame's len(), not its buffer's: a zmq.Frame makes a memoryview and a weak reference
        # each time its ``buffer`` is asked for, 0.4 us against 0.08)
        if len(frames) > 1 and not len(frames[1]):   # a direct peer: one identity frame
            split = 1
        else:
            split = next((i for i, f in enumerate(frames) if len(f) == 0), None)
        if split is None or split == 0:
            envelope, message = frames[:1], frames[1:]
        else:
            envelope, message = frames[:split], frames[split:]
        peer = peer_of(envelope, frames[-1] if self.d.auth.enabled else None)
        size = 0
        for f in message:   # (a loop: a generator's resumptions are calls, one a frame)
            size += len(f)
        self._handle((sock, envelope), peer, message, size, received_ns, sock in self.d.frontend.admin,
                     delimited=split is not None)

    def on_stream_request(self, connection: Any, envelope: tuple[Any, ...] | None, frames: list[Any],
                          size: int) -> None:
        """One message from a connection the daemon serves itself (:mod:`adaptd.daemon.streams`: a
        local stream's, or a ZeroMQ client's on an ipc endpoint), its frames after the delimiter,
        and its envelope (none but behind a ZeroMQ proxy; None: no delimiter, ``MALFORMED``); the
        connection is the peer; otherwise as :meth:`on_request`. A message over the size limit
        comes as ``[TooLarge]``, skipped unread: ``TOO_LARGE``, with the request's id when its
        header came."""
        received_ns = time.monotonic_ns()
        self._cpu0 = time.thread_time_ns()
        peer = connection.peer
        if envelope:   # behind a proxy: the peer as a ROUTER names it (adaptd.daemon.peers)
            peer = b"/".join([peer, *(bytes(f) for f in envelope)])
        if frames and type(frames[0]) is TooLarge:   # (a ZMTP message may be its delimiter alone)
            limit = self.d.config.server.max_message_bytes
            header = frames[0].header
            self._reply_error((connection, envelope or ()), proto.TOO_LARGE,
                              f"request is {size} bytes; the limit is {limit}", _request_id(header),
                              {"limit_bytes": limit}, peer)
            return
        self._handle((connection, envelope or ()), peer, [b"", *frames], size, received_ns, False,
                     delimited=envelope is not None)

    def _handle(self, route: tuple[Any, Any], peer: bytes, message: list[Any], size: int, received_ns: int,
                admin: bool, delimited: bool = True) -> None:
        request_id = None
        answered = self.requests
        try:
            if not delimited:
                raise proto.ProtocolError(proto.MALFORMED, "no empty delimiter frame before the signature")
            # A steady client's repeated header comes back parsed (not while a queue is full: a
            # request may then be refused BUSY from its header alone, before it is parsed).
            request, header, bodies = (self._memo.decode(message) if not self.saturated
                                       else (None, *proto.decode(message)))
            request_id = request.id if request is not None else proto.request_id_of(header)
            limit = self.d.config.server.max_message_bytes
            if size > limit:
                raise proto.ProtocolError(proto.TOO_LARGE, f"request is {size} bytes; the limit is {limit}",
                                          request_id, {"limit_bytes": limit})
            if request is None:
                busy = (self._refuse_early(peer, request_id, header)
                        if self.saturated and request_id is not None and header.get("type") == "infer" else None)
                if busy is not None:
                    self.busy_early += 1
                    self._reply_error(route, proto.BUSY, busy[0], request_id, busy[1], peer)
                    return
                request = self._memo.parse(message, header)
            if request.type == "infer":
                self._on_infer(route, peer, request, bodies, received_ns)
            else:
                if request.type in ADMIN_ONLY and not admin:
                    raise proto.ProtocolError(proto.FORBIDDEN, f"'{request.type}' is accepted on the admin endpoint "
                                              "only (server.admin_endpoints)", request.id)
                self.d.books.flush()   # statistics and explanations include every answered request
                self._send(route, *self.d.control.reply(request, None if admin else peer))
        except proto.ProtocolError as exc:
            self._reply_error(route, exc.code, exc.message, exc.request_id or request_id, exc.details, peer)
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the daemon
            self._log_internal(exc)
            if self.requests == answered:   # not answered yet (a fault after its reply is only logged)
                self._reply_error(route, proto.INTERNAL, internal_message(exc), request_id, None, peer)

    def _refuse_early(self, peer: bytes, request_id: str, header: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """BUSY before parsing (admission's rule), unless it is a retry of a request in flight or
        one with a stored reply. Asked only while some queue is full (``saturated``: set by a BUSY,
        cleared by the next outcome), so it costs nothing otherwise."""
        busy = self.d.admission.refuse_early(header)
        if busy is None or (peer, request_id) in self.pending \
                or self.d.replays.get(peer, request_id, time.monotonic()) is not None:
            return None
        return busy

    def _log_internal(self, exc: BaseException) -> None:
        self.faults.log(exc, "on a request")

    def _on_infer(self, route, peer: bytes, request: proto.Request, bodies: list[memoryview],
                  received_ns: int) -> None:
        rid = request.id
        self._inline.seen(peer, received_ns)
        pending = self.pending.get((peer, rid))
        if pending is not None:            # a retry of a request we are running: answer both
            pending.routes.append(route)
            return
        replay = self.d.replays.get(peer, rid, time.monotonic())
        if replay is not None:
            self._send(route, replies.replayed(proto.unpack(replay[0])), replay[1])
            return
        if self.d.draining:
            raise proto.ProtocolError(proto.SHUTTING_DOWN, "the daemon is shutting down", rid)

        admitted = self.d.admission.admit(request, bodies, peer)
        model = admitted.model
        now = time.time()
        choice = self.d.policy.choose(model, request, admitted.candidates, self.d.pool, time.monotonic())
        if self.loads_on_demand and choice.arm is not None and choice.feasible:
            choice = self._prefer_loaded(model, request, admitted.candidates, choice)
        client = request.client or self.peer_tags.tag(peer)
        if choice.arm is None:
            closest = choice.closest
            details = {"closest": {"variant": closest.variant.name, "placement": closest.placement.name} if closest else None,
                       "violations": choice.violations or {}}
            self.d.books.record(request, model, client, now, outcome="rejected", error_code=proto.INFEASIBLE,
                              choice=choice, arm=closest)
            raise proto.ProtocolError(proto.INFEASIBLE, choice.text, rid, details)

        arm = choice.arm
        if self._reject_nonfinite and bodies and self.d.pool.in_process(arm.placement.name):
            # Screened here, not by the placement's thread (adaptd.daemon.execution says why).
            bad = nonfinite_inline(request, bodies)
            if bad is not None:
                self.d.books.record(request, model, client, now, outcome="error", error_code=proto.BAD_INPUT,
                                    choice=choice, arm=arm)
                raise proto.ProtocolError(proto.BAD_INPUT, nonfinite_message(bad), rid,
                                          {"placement": arm.placement.name, "variant": arm.variant.name})
        regions = admitted.regions
        pending = Pending(request, [route], model, arm, choice, client, received_ns, now, peer, regions=regions)
        job = Job(rid, model.version_dir, arm.variant.name, job_inputs(request, admitted.shm_inputs),
                  bodies, received_ns, pending, outputs_to=admitted.outputs_to)
        pending.submitted_ns = time.monotonic_ns()
        pending.cpu_start_ns = self._cpu0
        self.d.regions.acquire(regions)
        self.pending[(peer, rid)] = pending
        try:
            predicted = choice.predicted or _NO_PREDICTION
            predicted_ms = predicted.get("latency_ms")
            if predicted_ms is not None and self._inline.allows(predicted_ms, predicted.get("latency_bound_ms"), peer,
                                                                received_ns, self._others_busy, route):
                pending.inline = True
                outcome = self.d.pool.run_inline(arm.placement.name, job)
                if outcome is not None:   # ran here and now: no hand-off, no wake-up
                    self.on_outcome(outcome)
                    return
                pending.inline = False
            queued = self.d.pool.submit(arm.placement.name, job)
        except BaseException:   # the run or the hand-off raised: no job will answer this request
            self._give_up(pending)
            raise
        if not queued:
            self.saturated = True
            self._give_up(pending)
            self.d.books.record(request, model, client, now, outcome="error", error_code=proto.BUSY, choice=choice,
                              arm=arm)
            message, details = busy_reply(arm.placement.name, self.d.config.placements.queue_limit)
            raise proto.ProtocolError(proto.BUSY, message, rid, details)
        pending.cpu_ns = time.thread_time_ns() - self._cpu0

    def _others_busy(self, route: tuple[Any, Any]) -> bool:
        """Another request is held (this one is), read or waiting on this request's socket or
        connection, or in a stream's backlog; the loop has other events this round; or a
        placement runs or holds a job."""
        if len(self.pending) > 1 or self.round_events > 1 or self.d.frontend.streams.backlogged:
            return True
        sock = route[0]
        if hasattr(sock, "awaiting"):   # a stream connection: its requests handed out, not answered
            if sock.awaiting > 1 or sock.backlog:
                return True
        elif isinstance(sock, zmq.Socket) and readable(sock):   # ZeroMQ: another message queued
            return True
        return self.d.pool.running()

    def _give_up(self, pending: Pending) -> None:
        """A request that will be answered without its job's outcome: no longer held, its
        shared-memory regions let go. A job that runs after all (a hand-off that raised once it
        had queued the job) finds its request gone: no second reply (:meth:`_on_outcome`)."""
        if self.pending.pop((pending.peer, pending.request.id), None) is pending:
            self._release(pending)

    def _release(self, pending: Pending) -> None:
        """Let go of a request's shared-memory regions, once."""
        if pending.regions:
            regions, pending.regions = pending.regions, ()
            self.d.regions_gone(self.d.regions.release(regions))

    def _prefer_loaded(self, model: ModelVersion, request: proto.Request, candidates: Sequence[Arm],
                       choice: Any) -> Any:
        """Variants loaded on first use (``load = "lazy"``, or "auto" over its memory budget): a
        chosen arm not loaded yet would make this request wait for its load (tens to hundreds of
        ms, which no estimate of the arm includes). The best loaded arm predicted to meet the
        request on a placement with no load waiting or running (a job there would wait behind
        it), other than the chosen arm's, is taken instead, and the chosen arm is loaded in the
        background unless its placement is loading already (then again after that: a load lost
        to a worker's restart, or failed, is asked for again; the arm's health sets aside one
        whose loads keep failing); not kept across a restart (INFaaS's rule). The second decision
        is a dry run: the first one already spent or earned the request's probe credit. With no
        such arm, the choice stands and pays the load."""
        pool, directory, arm = self.d.pool, model.version_dir, choice.arm
        if pool.is_loaded(arm.placement.name, directory, arm.variant.name):
            return choice
        loaded = [a for a in candidates if a.placement.name != arm.placement.name
                  and not pool.loading(a.placement.name)
                  and pool.is_loaded(a.placement.name, directory, a.variant.name)]
        if not loaded:
            return choice
        alternative = self.d.policy.choose(model, request, loaded, pool, time.monotonic(), dry_run=True)
        if alternative.arm is None or not alternative.feasible:
            return choice
        if not pool.loading(arm.placement.name):
            pool.preload(arm.placement.name, directory, arm.variant.name, keep=False)
        return alternative.noting(f" (among loaded arms: {arm.variant.name} on {arm.placement.name} was "
                                  "chosen first and is loading)")

    # --- outcomes ------------------------------------------------------------------------
    # --- replies -------------------------------------------------------------------------
    def _send(self, route, header: dict[str, Any], bodies) -> bytes:
        """One reply to ``route``; returns its packed header (what the replay store keeps)."""
        frames = proto.encode(header, bodies)
        self.d.frontend.send(route, frames)
        self.requests += 1
        return frames[2]

    def _reply_error(self, route, code: str, message: str, request_id: str | None,
                     details: dict[str, Any] | None = None, peer: bytes | None = None) -> None:
        self._count_errors(code, 1)
        header = proto.error_header(code, message, request_id, details)
        packed = self._send(route, header, ())
        if request_id and peer is not None and code not in proto.TRANSIENT_CODES:
            self.d.replays.put(peer, request_id, packed, [], time.monotonic())

    def _count_errors(self, code: str, n: int) -> None:
        self.errors += n
        self.errors_by_code[code] = self.errors_by_code.get(code, 0) + n

    def abandon_all(self) -> None:
        """Shutdown: every request still held is answered SHUTTING_DOWN."""
        for (_, rid), pending in list(self.pending.items()):
            header = proto.error_header(proto.SHUTTING_DOWN, "the daemon stopped before this request finished", rid)
            for route in pending.routes:
                self._send(route, header, ())
        self.pending.clear()



def _request_id(header: bytes | None) -> str | None:
    """The id in a request's header frame, if it is one that reads (else None)."""
    if header is None:
        return None
    try:
        return proto.request_id_of(proto.decode([b"", proto.SIGNATURE, header])[0])
    except proto.ProtocolError:
        return None
