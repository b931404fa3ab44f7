"""The daemon: sockets, the request path, control messages and the lifecycle.

Contract
--------
* Lifecycle: ``Daemon(config)`` is cheap; :meth:`Daemon.start` binds the sockets, discovers the
  placements, loads the repository's manifests, starts the workers, the power meter and the
  selection store, and tells systemd READY; :meth:`Daemon.run` serves until SIGTERM/SIGINT, then
  drains (new requests get ``SHUTTING_DOWN``, held ones finish and are answered, up to
  ``server.drain_timeout_s``; what is still held then is answered ``SHUTTING_DOWN`` too), flushes
  the store and exits 0. A second SIGTERM stops at once. SIGHUP reloads the repository with an
  atomic swap.
* Threads: everything here runs on the main thread; signal handlers only set flags and wake the
  loop through a pipe. The power sampler and the store writer run elsewhere behind their own
  contracts; the request path hands them data without blocking.
* Exactly one reply per request message (PROTOCOL.md §8): every branch of
  :meth:`Daemon._on_request` ends in a reply or in a job whose outcome (done, failed, worker
  death, drain) produces one. Nothing a client sends, and no worker's death, ends the loop: an
  unexpected fault in one request is answered ``INTERNAL`` and logged (a traceback at most once a
  minute per kind of fault, one line otherwise).
* Start-up checks everything it can before it starts a process: the config is validated when
  loaded, then the runtime directory's owner, the instance lock, placements, repository, store and
  sockets, and only then the meter and the workers. A failure is one line (:class:`StartupError`),
  and whatever was started is stopped and every file made removed.
* Isolation between clients: replies kept for replay, requests in flight and shared-memory
  regions belong to the peer that sent them (:mod:`adaptd.daemon.peers`); records name a peer
  only by an opaque tag. ``reload`` is accepted on the admin endpoint only.
* Under overload completions go first: each round of the loop handles the workers' results
  before it takes new requests, and takes at most ``INTAKE_BATCH`` from each socket; a request
  whose model has every placement's queue full is refused ``BUSY`` before it is decoded further.
* The request path: decode and validate -> choose (policy, pure) -> queue on the placement's
  worker -> (worker runs) -> reply, statistics, energy attribution, selection record. Tensor
  bytes are passed as the received ZeroMQ frames, never copied here. TensorFlow is never
  imported by this process.
* Shared memory (PROTOCOL.md §11): this process creates, bounds-checks and removes regions
  (:mod:`adaptd.daemon.shm`) but never maps one: tensors in a region are read and written by the
  worker alone.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from adaptd.wire import protocol as proto
from adaptd.daemon.auth import Authenticator
from adaptd.daemon.config import Config
from adaptd.wire.frames import recv_frames
from adaptd.daemon.frontend import Frontend, ipc_path
from adaptd.daemon.instance import InstanceLock
from adaptd.daemon.peers import PeerTags, peer_of
from adaptd.daemon.placements import Placement, discover
from adaptd.daemon.policy import Choice, Policy
from adaptd.daemon.quarantine import Quarantine
from adaptd.daemon.registry import Arm, ModelVersion, Registry, RegistryError, load_registry
from adaptd.daemon.replay import ReplayCache
from adaptd.daemon.sdnotify import Notifier
from adaptd.daemon.shm import RegionError, RegionTable
from adaptd.daemon.stats import ArmStats
from adaptd.daemon.workers import Job, Outcome, WorkerPool
from adaptd.variants.digest import check_variant
from adaptd.variants.preprocess import accepted_dtypes
from adaptd.variants.preprocess import accepts as accepts_dtypes
from adaptd.wire import records, replies
from adaptd.wire.rundir import ensure_daemon_dir

log = logging.getLogger("adaptd")

INTAKE_BATCH = 16     # requests taken from one socket per round, after the round's completions
DEFER_MAX_ITEMS = 16  # answered requests whose bookkeeping may wait for an idle moment
ADMIN_ONLY = frozenset({"reload"})
TRACEBACK_EVERY_S = 60.0   # an unexpected fault's traceback is logged at most this often per kind


class StartupError(RuntimeError):
    """The daemon cannot start: one line for the operator."""


@dataclass
class Pending:
    """The daemon's state for one inference request between choice and reply."""

    request: proto.Request
    routes: list[tuple[zmq.Socket, list[Any]]]    # (socket, envelope) of the request and its retries
    model: ModelVersion
    arm: Arm
    choice: Choice
    client: str
    received_ns: int
    received_at: float
    peer: bytes = b""
    submitted_ns: int = 0       # handed to the worker pool (after decoding and choosing)
    regions: tuple[str, ...] = ()   # shared-memory regions the job reads or writes (held until its outcome)


def _arm_key(model: ModelVersion, arm: Arm) -> tuple[str, str, str]:
    return (str(model.directory), arm.variant.name, arm.placement.name)


class Daemon:
    def __init__(self, config: Config, policy: Policy | None = None) -> None:
        self.config = config
        self.policy: Policy | None = policy
        self.notifier = Notifier()
        self.started_at = time.time()
        self.requests = 0
        self.errors = 0
        self.busy_fast = 0          # BUSY answers given before a request was parsed (overload)
        self._placements_of: dict[Path, set[str]] = {}
        self.draining = False
        self._stop_requested = 0
        self._reload_requested = False
        self._pending: dict[tuple[bytes, str], Pending] = {}
        # Bookkeeping of answered requests not done yet (statistics, the policy's update, the
        # selection record): see _defer.
        self._deferred: list[tuple[Any, tuple[Any, ...]]] = []
        server = config.server
        self.replays = ReplayCache(server.dedup_window_s, server.dedup_entries, server.dedup_max_bytes)
        self.quarantine = Quarantine()
        self._set_aside: set[tuple[str, str, str]] = set()   # arms the policy was told to leave out
        self._refused: dict[tuple[str, str], str] = {}   # (dir, variant) whose file went bad after loading
        self.peer_tags = PeerTags()
        self._stats: dict[tuple[str, str, str, str], ArmStats] = {}
        self._tracebacks: dict[str, float] = {}
        self.auth = Authenticator(config.auth.curve, config.auth.server_key, config.auth.client_keys)
        self.frontend: Frontend | None = None
        self.lock = InstanceLock(self._lock_paths())
        self.context: zmq.Context | None = None
        self.pool: WorkerPool | None = None
        self.registry: Registry | None = None
        self.placements: list[Placement] = []
        self.meter = None
        self.store = None
        self.regions = RegionTable()

    # --- start-up ------------------------------------------------------------------------
    def _lock_paths(self) -> list[Path]:
        """The directories of every ipc socket and of the store (:mod:`adaptd.daemon.instance`)."""
        cfg = self.config
        paths = [p.parent for p in (ipc_path(e) for e in (*cfg.endpoints, *cfg.pub_endpoints, *cfg.admin_endpoints))
                 if p is not None]
        paths.append(cfg.store_path.parent)
        return paths

    def start(self) -> None:
        """Start everything, or nothing: on failure stop what was started and raise StartupError."""
        try:
            self._start()
        except StartupError:
            self._abort_start()
            raise
        except (RegistryError, ValueError, RuntimeError, OSError, zmq.ZMQError, sqlite3.Error) as exc:
            self._abort_start()
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if isinstance(exc, OSError) and exc.strerror:   # not "[Errno 98] ..."
                message = exc.strerror + (f": {exc.filename}" if exc.filename else "")
            if isinstance(exc, sqlite3.Error):
                message = f"the selection store {self.config.store_path}: {message}"
            raise StartupError(message) from None
        except BaseException:
            self._abort_start()
            raise

    def _start(self) -> None:
        cfg = self.config
        # Directories and the lock first: nothing else may touch a socket file or the store
        # before this daemon knows no other one owns them.
        for endpoint in (*cfg.endpoints, *cfg.pub_endpoints, *cfg.admin_endpoints):
            path = ipc_path(endpoint)
            if path is not None and path.parent == cfg.runtime_dir:
                ensure_daemon_dir(cfg.runtime_dir)
                break
        for path in self.lock.paths:
            path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        self.placements = discover(cfg.placements)   # before pinning: it reads this process's cores
        self._placement_by_name = {p.name: p for p in self.placements}
        self.registry = load_registry(cfg.repository, self.placements, generation=1)
        if self.policy is None:
            self.policy = _default_policy(cfg)
        self.context = zmq.Context()
        self.auth.start(self.context)
        self.store = _open_store(cfg, self.context, self.auth.guard)
        self.frontend = Frontend(self.context, max_message_bytes=cfg.server.max_message_bytes,
                                 send_hwm=cfg.server.send_hwm, ipc_mode=cfg.server.ipc_mode, guard=self.auth.guard)
        self.frontend.bind(cfg.endpoints, cfg.admin_endpoints)
        for path in (ipc_path(e) for e in cfg.pub_endpoints):
            if path is not None:
                os.chmod(path, cfg.server.ipc_mode)
        if cfg.server.cores:
            _pin_process(cfg.server.cores)
        if cfg.server.sched_slice_us:   # before the workers start: they inherit it
            _request_slice(cfg.server.sched_slice_us)
        self.regions = RegionTable(cfg.server.ipc_mode, max_regions_per_peer=cfg.server.shm_regions_per_client,
                                   max_bytes_per_peer=cfg.server.shm_bytes_per_client)
        stale = self.regions.sweep_stale()
        if stale:
            log.info("removed %d shared-memory region(s) left by daemons no longer running", len(stale))

        from adaptd.daemon.power import EnergyMeter

        self.meter = EnergyMeter.from_config(cfg.power)
        self.meter.start()

        self.pool = WorkerPool(self.placements, cfg.placements.queue_limit,
                               worker_options={"reject_nonfinite": cfg.server.reject_nonfinite})
        self.pool.on_load_failed = self._on_load_failed
        self.pool.on_down = self._placement_down
        self.pool.start()
        laggards = self.pool.wait_ready(cfg.placements.worker_start_timeout_s)
        if laggards:
            raise StartupError(f"workers not ready within {cfg.placements.worker_start_timeout_s} s: "
                               f"{', '.join(laggards)}")
        if hasattr(self.policy, "energy_prior"):
            self.policy.energy_prior = self.meter.predict_mj
            self.policy.overhead_ms = self.pool.measure_overhead_ms()
            log.info("worker channel round trip: %s", ", ".join(f"{k} {v * 1e3:.0f} us"
                                                               for k, v in self.policy.overhead_ms.items()))
        self.policy.reset(self.registry)
        if cfg.placements.load == "eager":
            self._preload(self.registry)
            laggards = self.pool.wait_loaded(cfg.placements.worker_start_timeout_s)
            if laggards:
                log.warning("eager loads still running after %s s on %s; serving anyway",
                            cfg.placements.worker_start_timeout_s, ", ".join(laggards))
        # Everything allocated so far lives as long as the daemon: keep the collector off it,
        # so a collection on the request path walks only the objects of recent requests.
        gc.collect()
        gc.freeze()
        self.notifier.ready(f"serving {self._models_summary()}")
        log.info("serving %s on %s; placements %s", self._models_summary(), ", ".join(cfg.endpoints),
                 ", ".join(p.name for p in self.placements))

    def _abort_start(self) -> None:
        """Undo a start-up that failed part-way: processes stopped, files removed, lock released."""
        for stop in (lambda: self.pool.stop(timeout_s=2.0), lambda: self.meter.close(),
                     lambda: self.frontend.close(), lambda: self.store.close(), lambda: self.auth.stop(),
                     lambda: self.context.term(), self.regions.close_all, self.lock.release):
            try:
                stop()
            except Exception:  # noqa: BLE001 - best effort: this start already failed; None parts too
                pass
        for path in (ipc_path(e) for e in self.config.pub_endpoints):
            if path is not None and self.store is not None:
                try:
                    path.unlink()
                except OSError:
                    pass

    def _preload(self, registry: Registry) -> None:
        for model in registry.newest():
            for arm in model.arms:
                self.pool.preload(arm.placement.name, str(model.directory), arm.variant.name)

    def _models_summary(self) -> str:
        assert self.registry is not None
        return ", ".join(f"{m.name}:{m.version} ({len(m.variants)} variants)" for m in self.registry.newest()) or "no models"

    # --- signals -------------------------------------------------------------------------
    def install_signal_handlers(self) -> int:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)

        def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
            self._stop_requested += 1

        def on_hup(signum, frame):  # noqa: ARG001
            self._reload_requested = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)
        self._wakeup_fd = rfd
        return rfd

    # --- main loop -----------------------------------------------------------------------
    def run(self) -> int:
        wake = self.install_signal_handlers()
        poller = zmq.Poller()
        frontends: set[zmq.Socket] = set(self.frontend.sockets)
        pidfds: set[int] = set()
        rank: dict[Any, int] = {}

        def register() -> None:
            nonlocal poller, pidfds, rank
            poller = zmq.Poller()
            # One round's events are handled in this order: the workers' results (completions
            # and replies before new intake), the request sockets, the signal pipe, then worker
            # deaths last (a replacement may reuse the dead one's descriptor numbers, so no
            # event of the round may be read after a restart).
            rank = {}
            for fd in self.pool.channel_fds():
                poller.register(fd, zmq.POLLIN)
                rank[fd] = 0
            for sock in self.frontend.sockets:
                poller.register(sock, zmq.POLLIN)
                rank[sock] = 1
            poller.register(wake, zmq.POLLIN)
            rank[wake] = 2
            pidfds = set(self.pool.pidfds())
            for fd in pidfds:
                poller.register(fd, zmq.POLLIN)
                rank[fd] = 3

        register()
        self.pool.on_change = register
        watchdog_s = self.notifier.watchdog_interval_s() if self.config.server.watchdog else None
        next_watchdog = time.monotonic()
        drain_deadline = None
        next_tick = time.monotonic()
        timeout_ms = 1000.0 if watchdog_s is None else min(1000.0, watchdog_s * 1e3)
        spin_ns = self.config.server.spin_us * 1000

        while True:
            # With bookkeeping waiting, look without blocking first: nothing to do means an idle
            # moment (e.g. a caller reading its reply), which is when that work is done.
            spin_until_ns = None if self._deferred or not spin_ns else self._spin_until_ns(spin_ns)
            wait_ms = timeout_ms
            restart_s = self.pool.next_restart_s()
            if restart_s is not None:
                wait_ms = min(wait_ms, restart_s * 1e3 + 1.0)
            events = poller.poll(0 if self._deferred or spin_until_ns else wait_ms)
            if not events and spin_until_ns:
                # [server] spin_us: a result due soon is picked up without a wake-up from sleep
                while not events and time.monotonic_ns() < spin_until_ns:
                    os.sched_yield()   # a worker sharing this core runs first
                    events = poller.poll(0)
                if not events:
                    events = poller.poll(wait_ms)
            if len(events) > 1:
                events.sort(key=lambda e: rank.get(e[0], 1))
            if not events and self._deferred:
                self._flush_deferred()
            elif len(self._deferred) >= DEFER_MAX_ITEMS:   # never idle: keep the backlog bounded
                self._flush_deferred()
            for item, _ in events:
                if item in frontends:
                    self._drain_frontend(item)
                elif item == wake:
                    try:
                        os.read(wake, 512)
                    except BlockingIOError:
                        pass
                elif item in pidfds:
                    for outcome in self.pool.on_exit(item):
                        self._on_outcome(outcome)
                else:
                    outcome = self.pool.on_message(item)
                    if outcome is not None:
                        self._on_outcome(outcome)

            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + 1.0
                self._tick(now)
            if restart_s is not None:
                self.pool.restart_due()
            if watchdog_s is not None and now >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = now + watchdog_s
            if self._reload_requested:
                self._reload_requested = False
                self.notifier.reloading()
                self.reload()
                self.notifier.ready(f"serving {self._models_summary()}")
            if self._stop_requested and not self.draining:
                self.draining = True
                self.notifier.stopping()
                drain_deadline = now + self.config.server.drain_timeout_s
                log.info("draining %d request(s)", len(self._pending))
            if self.draining:
                if self._stop_requested > 1 or not self._pending or now >= drain_deadline:
                    break
        return self.shutdown()

    def _tick(self, now: float) -> None:
        """Once a second: regions whose registering process has exited (§11.2), replies past
        their replay window, arms whose quarantine ended or whose placement is back."""
        if self.regions.owned():
            self._regions_gone(self.regions.sweep_owners())
        self.replays.expire(now)
        if self._set_aside:
            self._sync_available(now)

    def _spin_until_ns(self, spin_ns: int) -> int | None:
        """The end of the spin after the latest dispatch still in flight; None when nothing is in
        flight or that spin is over (then the loop sleeps as usual)."""
        started = self.pool.latest_dispatch_ns()
        if started is None:
            return None
        until = started + spin_ns
        return until if until > time.monotonic_ns() else None

    def _drain_frontend(self, sock: zmq.Socket) -> None:
        for _ in range(INTAKE_BATCH):
            try:
                frames = recv_frames(sock, zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_request(sock, frames)

    # --- requests ------------------------------------------------------------------------
    def _on_request(self, sock: zmq.Socket, frames: list[zmq.Frame]) -> None:
        received_ns = time.monotonic_ns()
        # The envelope is everything before the empty delimiter (one identity frame for a
        # direct DEALER or REQ peer, more behind a proxy).
        split = next((i for i, f in enumerate(frames) if len(f.buffer) == 0), None)
        if split is None or split == 0:
            envelope, message = frames[:1], frames[1:]
        else:
            envelope, message = frames[:split], frames[split:]
        route = (sock, envelope)
        peer = peer_of(envelope, frames[-1] if self.auth.enabled else None)
        request_id = None
        try:
            if split is None:
                raise proto.ProtocolError(proto.MALFORMED, "no empty delimiter frame before the signature")
            header, bodies = proto.decode(message)
            request_id = proto.request_id_of(header)
            size = sum(len(f.buffer) for f in message)
            if size > self.config.server.max_message_bytes:
                raise proto.ProtocolError(proto.TOO_LARGE,
                                          f"request is {size} bytes; the limit is {self.config.server.max_message_bytes}",
                                          request_id, {"limit_bytes": self.config.server.max_message_bytes})
            if request_id is not None and header.get("type") == "infer" and self._refuse_saturated(peer, header):
                self.busy_fast += 1
                self._reply_error(route, proto.BUSY, "every placement that can run this model has a full queue; "
                                  "retry later", request_id, {"queue_limit": self.config.placements.queue_limit}, peer)
                return
            request = proto.parse_request(header)
            if request.type == "infer":
                self._on_infer(route, peer, request, bodies, received_ns)
            else:
                admin = sock in self.frontend.admin
                if request.type in ADMIN_ONLY and not admin:
                    raise proto.ProtocolError(proto.FORBIDDEN, f"'{request.type}' is accepted on the admin endpoint "
                                              "only (server.admin_endpoints)", request.id)
                self._flush_deferred()   # statistics and explanations include every answered request
                self._reply(route, self._on_control(request, None if admin else peer), ())
        except proto.ProtocolError as exc:
            self._reply_error(route, exc.code, exc.message, exc.request_id or request_id, exc.details, peer)
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the daemon
            self._log_internal(exc)
            self._reply_error(route, proto.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", request_id,
                              None, peer)

    def _log_internal(self, exc: BaseException) -> None:
        """An unexpected fault: its traceback at most once a minute per kind (type and place), so
        a client that keeps triggering it cannot flood the log; one line otherwise."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
        kind = f"{type(exc).__name__}@{where}"
        now = time.monotonic()
        if now - self._tracebacks.get(kind, -TRACEBACK_EVERY_S) >= TRACEBACK_EVERY_S:
            if len(self._tracebacks) > 256:
                self._tracebacks.clear()
            self._tracebacks[kind] = now
            log.exception("internal error on a request (further ones like it are logged in one line for %.0f s)",
                          TRACEBACK_EVERY_S)
        else:
            log.error("internal error on a request: %s: %s (at %s)", type(exc).__name__,
                      str(exc).splitlines()[0][:200] if str(exc) else "", where)

    def _refuse_saturated(self, peer: bytes, header: dict[str, Any]) -> bool:
        """Whether an inference request can be refused BUSY before it is parsed: its model is known,
        every placement that could run it has a full queue, and it is neither a retry of a
        request in flight nor one with a stored reply. Under overload this keeps the refusals
        cheap, so the daemon's time goes to the requests it can serve."""
        model_name, version = header.get("model"), header.get("version")
        if not isinstance(model_name, str) or not (version is None or isinstance(version, str)):
            return False
        model = self.registry.get(model_name, version) if self.registry is not None else None
        if model is None:
            return False
        limit = self.pool.queue_limit
        for name in self._model_placements(model):
            if self.pool.queue_length(name) <= limit:
                return False
        rid = header["id"]
        return (peer, rid) not in self._pending and self.replays.get(peer, rid, time.monotonic()) is None

    def _model_placements(self, model: ModelVersion) -> set[str]:
        cached = self._placements_of.get(model.directory)
        if cached is None:
            cached = self._placements_of[model.directory] = {a.placement.name for a in model.arms}
        return cached

    def _on_infer(self, route, peer: bytes, request: proto.Request, bodies: list[memoryview],
                  received_ns: int) -> None:
        rid = request.id
        pending = self._pending.get((peer, rid))
        if pending is not None:            # a retry of a request we are running: answer both
            pending.routes.append(route)
            return
        replay = self.replays.get(peer, rid, time.monotonic())
        if replay is not None:
            self._reply(route, replies.replayed(replay[0]), replay[1])
            return
        if self.draining:
            raise proto.ProtocolError(proto.SHUTTING_DOWN, "the daemon is shutting down", rid)

        model, candidates = self._candidates(request)
        self._check_inputs(request, candidates, bodies)
        shm_inputs, outputs_to = self._check_regions(request, candidates, peer)
        candidates = self._accepting(request, candidates)
        now = time.time()
        choice = self.policy.choose(model, request, candidates, self.pool, time.monotonic())
        client = request.client or self.peer_tags.tag(peer)
        if choice.arm is None:
            closest = choice.closest
            details = {"closest": {"variant": closest.variant.name, "placement": closest.placement.name} if closest else None,
                       "violations": choice.violations or {}}
            self._record(request, model, client, now, outcome="rejected", error_code=proto.INFEASIBLE,
                         choice=choice, arm=closest)
            raise proto.ProtocolError(proto.INFEASIBLE, choice.text, rid, details)

        arm = choice.arm
        regions = tuple(r["region"] for r in (*shm_inputs.values(), *([outputs_to] if outputs_to else [])))
        pending = Pending(request, [route], model, arm, choice, client, received_ns, now, peer, regions=regions)
        job = Job(rid, str(model.directory), arm.variant.name,
                  [{"dtype": s.dtype_name, "shape": list(s.shape), **({"shm": shm_inputs[i]} if i in shm_inputs else {})}
                   for i, s in enumerate(request.inputs)],
                  bodies, received_ns, pending, outputs_to=outputs_to)
        pending.submitted_ns = time.monotonic_ns()
        self.regions.acquire(regions)
        if not self.pool.submit(arm.placement.name, job):
            self._regions_gone(self.regions.release(regions))
            self._record(request, model, client, now, outcome="error", error_code=proto.BUSY, choice=choice, arm=arm)
            raise proto.ProtocolError(proto.BUSY, f"placement {arm.placement.name} has {self.config.placements.queue_limit} "
                                      "requests queued; retry later", rid,
                                      {"placement": arm.placement.name, "queue_limit": self.config.placements.queue_limit})
        self._pending[(peer, rid)] = pending

    def _candidates(self, request: proto.Request) -> tuple[ModelVersion, list[Arm]]:
        assert self.registry is not None
        model = self.registry.get(request.model, request.version)
        if model is None:
            known = ", ".join(sorted(self.registry.models)) or "none"
            what = f"model {proto.shown(request.model)}" + (f" version {proto.shown(request.version)}"
                                                             if request.version else "")
            raise proto.ProtocolError(proto.UNKNOWN_MODEL, f"{what} is not loaded; models: {known}", request.id)
        arms = list(model.arms)
        if request.pin_variant is not None:
            if request.pin_variant not in model.variants:
                raise proto.ProtocolError(proto.UNKNOWN_VARIANT,
                                          f"{model.name}:{model.version} has no variant {proto.shown(request.pin_variant)}; "
                                          f"variants: {', '.join(model.variants)}", request.id)
            runtime = model.variants[request.pin_variant].runtime
            if request.pin_variant in model.unservable and any(p.runtime == runtime for p in self.placements):
                # refused for its file (a runtime no placement has is UNKNOWN_PLACEMENT, below)
                raise proto.ProtocolError(proto.UNKNOWN_VARIANT, f"variant {request.pin_variant} is not served: "
                                          f"{model.unservable[request.pin_variant]}", request.id)
            arms = [a for a in arms if a.variant.name == request.pin_variant]
        if request.pin_placement is not None:
            if request.pin_placement not in self._placement_by_name:
                raise proto.ProtocolError(proto.UNKNOWN_PLACEMENT,
                                          f"no placement {proto.shown(request.pin_placement)}; placements: "
                                          f"{', '.join(self._placement_by_name)}", request.id)
            arms = [a for a in arms if a.placement.name == request.pin_placement]
        if not arms:
            raise proto.ProtocolError(proto.UNKNOWN_PLACEMENT,
                                      model.no_arm_reason(request.pin_variant, request.pin_placement), request.id)
        if self._set_aside:
            now = time.monotonic()
            usable = [a for a in arms if self._arm_down(model, a, now) is None]
            if not usable:
                why = self._arm_down(model, arms[0], now)
                raise proto.ProtocolError(proto.WORKER_FAILED, f"no arm can serve this request now: {why}",
                                          request.id, {"set_aside": [{"variant": a.variant.name,
                                                                       "placement": a.placement.name} for a in arms]})
            arms = usable
        return model, arms

    def _arm_down(self, model: ModelVersion, arm: Arm, now: float) -> str | None:
        """Why an arm is set aside now (its file, its quarantine, or its placement's restart), else None."""
        key = _arm_key(model, arm)
        if key not in self._set_aside:
            return None
        refused = self._refused.get((key[0], key[1]))
        if refused is not None:
            return f"variant {arm.variant.name} is refused: {refused}"
        return self.quarantine.reason(key, now) or self.pool.down_reason(arm.placement.name)

    def _set_aside_arm(self, model: ModelVersion, arm: Arm) -> None:
        key = _arm_key(model, arm)
        if key not in self._set_aside:
            self._set_aside.add(key)
            self.policy.set_available(model, arm, False)

    def _sync_available(self, now: float) -> None:
        """Put back the arms whose quarantine ended and whose placement is up."""
        assert self.registry is not None
        for model in self.registry.newest():
            for arm in model.arms:
                key = _arm_key(model, arm)
                if key in self._set_aside and not self.quarantine.blocked(key, now) \
                        and (key[0], key[1]) not in self._refused \
                        and self.pool.down_reason(arm.placement.name) is None:
                    self._set_aside.discard(key)
                    self.policy.set_available(model, arm, True)
        live = self.registry.directories()
        self._set_aside = {k for k in self._set_aside if k[0] in live}

    def _placement_down(self, placement: str) -> None:
        """A placement's worker is held back by a crash loop: its arms leave every decision."""
        assert self.registry is not None
        for model in self.registry.newest():
            for arm in model.arms:
                if arm.placement.name == placement:
                    self._set_aside_arm(model, arm)

    def _on_load_failed(self, placement: str, key: tuple[str, str], message: str) -> None:
        """A worker could not load a variant (or died loading it): a failure of that arm."""
        self._arm_failed((key[0], key[1], placement), message)

    def _arm_failed(self, key: tuple[str, str, str], message: str) -> None:
        """An arm's load or execution failed. If its file no longer matches the manifest, the
        variant is refused on every placement until a reload; otherwise the arm is quarantined
        once it has failed repeatedly."""
        model = next((m for m in self.registry.newest() if str(m.directory) == key[0]), None) \
            if self.registry is not None else None
        if model is None or key[1] not in model.variants:
            return
        record = model.variants[key[1]]
        problem = check_variant(model.directory, record.path, record.sha256)
        if problem is not None:
            if (key[0], key[1]) not in self._refused:
                self._refused[(key[0], key[1])] = problem
                log.error("%s:%s variant %s refused until the repository is reloaded: %s", model.name,
                          model.version, key[1], problem)
                for arm in model.arms:
                    if arm.variant.name == key[1]:
                        self._set_aside_arm(model, arm)
            return
        length = self.quarantine.failed(key, time.monotonic(), message)
        if length is None:
            return
        log.warning("%s on %s set aside for %.0f s after repeated failures: %s", key[1], key[2], length, message)
        arm = model.arm(key[1], key[2])
        if arm is not None:
            self._set_aside_arm(model, arm)

    @staticmethod
    def _accepting(request: proto.Request, candidates: list[Arm]) -> list[Arm]:
        """The candidates that take the request's input dtypes (float32 goes to every variant;
        another dtype only to those that take it: adaptd.variants.preprocess.accepts)."""
        names = [s.dtype_name for s in request.inputs]
        if all(n == "float32" for n in names):
            return candidates
        accepted = [a for a in candidates if accepts_dtypes(a.variant, names)]
        if not accepted:
            dtypes = accepted_dtypes(a.variant for a in candidates)
            raise proto.ProtocolError(proto.BAD_INPUT, f"no variant takes input dtype(s) {names}; "
                                      f"send one of {dtypes}", request.id)
        return accepted

    def _check_inputs(self, request: proto.Request, candidates: list[Arm], bodies: list[memoryview]) -> None:
        want = candidates[0].variant.inputs
        if len(request.inputs) != len(want):
            raise proto.ProtocolError(proto.BAD_INPUT, f"the model takes {len(want)} input(s); the request has "
                                      f"{len(request.inputs)}", request.id)
        inline = [s for s in request.inputs if s.shm is None]
        if len(bodies) != len(inline):
            raise proto.ProtocolError(proto.BAD_INPUT, f"{len(inline)} inline input header(s) but {len(bodies)} "
                                      "body frame(s)", request.id)
        frames = iter(bodies)
        for i, (spec, w) in enumerate(zip(request.inputs, want)):
            expected = tuple(w.shape)
            if len(spec.shape) != len(expected) or tuple(spec.shape[1:]) != expected[1:] or spec.shape[0] < 1:
                raise proto.ProtocolError(proto.BAD_INPUT, f"input {i}: shape {list(spec.shape)} does not match the "
                                          f"model's {list(expected)}", request.id)
            if spec.shape[0] > self.config.server.max_batch:
                raise proto.ProtocolError(proto.BAD_INPUT, f"input {i}: a batch of {spec.shape[0]}; the limit is "
                                          f"{self.config.server.max_batch} (server.max_batch)", request.id,
                                          {"max_batch": self.config.server.max_batch})
            if spec.shm is not None:
                continue
            body = next(frames)
            if len(body) != spec.nbytes:
                raise proto.ProtocolError(proto.BAD_INPUT, f"input {i}: body is {len(body)} bytes but dtype "
                                          f"{spec.dtype.name} and shape {list(spec.shape)} need {spec.nbytes}", request.id)

    def _check_regions(self, request: proto.Request, candidates: list[Arm], peer: bytes
                       ) -> tuple[dict[int, dict[str, Any]], dict[str, Any] | None]:
        """Bounds-check every region a request names (§11.3), without touching the bytes.

        Returns the worker's references: ``{input index: {region, offset, size}}`` and the
        outputs' ``{region, offset, size}`` (or None)."""
        shm_inputs: dict[int, dict[str, Any]] = {}
        if request.outputs_to is None and all(spec.shm is None for spec in request.inputs):
            return shm_inputs, None
        try:
            for i, spec in enumerate(request.inputs):
                if spec.shm is None:
                    continue
                if spec.shm.offset % spec.dtype.itemsize:
                    raise proto.ProtocolError(proto.BAD_INPUT, f"input {i}: offset {spec.shm.offset} is not a multiple "
                                              f"of {spec.dtype.name}'s {spec.dtype.itemsize} bytes", request.id)
                region = self.regions.check(spec.shm.region, spec.shm.offset, spec.nbytes, peer)
                shm_inputs[i] = {"region": region.name, "offset": spec.shm.offset, "size": region.size}
            outputs_to = None
            if request.outputs_to is not None:
                ref = request.outputs_to
                if ref.offset % 4:
                    raise proto.ProtocolError(proto.BAD_INPUT, f"outputs_to: offset {ref.offset} is not a multiple "
                                              "of 4 bytes (outputs are float32)", request.id)
                batch = request.inputs[0].shape[0] if request.inputs else 1
                need = sum(4 * batch * math.prod(o.shape[1:]) for o in candidates[0].variant.outputs)
                region = self.regions.check(ref.region, ref.offset, need, peer)
                outputs_to = {"region": region.name, "offset": ref.offset, "size": region.size}
        except RegionError as exc:
            code = proto.UNKNOWN_REGION if exc.kind == "unknown" else proto.BAD_INPUT
            raise proto.ProtocolError(code, exc.message, request.id) from None
        return shm_inputs, outputs_to

    def _regions_gone(self, names: list[str]) -> None:
        """Regions just unlinked: the workers that mapped them unmap them."""
        if names:
            self.pool.broadcast("shm_unmap", {"regions": names})

    # --- outcomes ------------------------------------------------------------------------
    def _on_outcome(self, outcome: Outcome) -> None:
        pending: Pending = outcome.job.context
        request, arm, model = pending.request, pending.arm, pending.model
        self._pending.pop((pending.peer, request.id), None)
        if pending.regions:
            self._regions_gone(self.regions.release(pending.regions))
        stats = self._arm_stats(model, arm)
        if not outcome.ok:
            message = str(outcome.header.get("message", "the worker failed"))
            code = proto.BAD_INPUT if outcome.header.get("code") == proto.BAD_INPUT else proto.WORKER_FAILED
            if code == proto.WORKER_FAILED:
                stats.errors += 1
                if outcome.header.get("died", True):   # not a job that only waited in a dead worker's queue
                    self._arm_failed(_arm_key(model, arm), message)
            self.errors += len(pending.routes)
            header = proto.error_header(code, message, request.id,
                                        {"placement": arm.placement.name, "variant": arm.variant.name})
            for route in pending.routes:
                self._send(route, header, ())
            self.requests += len(pending.routes)
            if code not in proto.TRANSIENT_CODES:
                self.replays.put(pending.peer, request.id, header, [], time.monotonic())
            self._record(request, model, pending.client, time.time(), outcome="error",
                         error_code=code, choice=pending.choice, arm=arm)
            return
        if self.quarantine.any():
            self.quarantine.succeeded(_arm_key(model, arm))
        h = outcome.header
        compute_ms = float(h["compute_ms"])
        queue_ms = max(0.0, (h["t0_ns"] - pending.received_ns) / 1e6)
        energy = self.meter.attribute(arm.placement, h["t0_ns"], h["t1_ns"], float(h["cpu_time_s"]), wait=False)
        now = time.time()
        now_ns = time.monotonic_ns()
        total_ms = (now_ns - pending.received_ns) / 1e6
        # The policy learns the latency a caller's bound is judged on (total_ms: from receiving the
        # request to the reply) less the wait behind other work, which it predicts from the queues
        # instead: so the daemon's own decode, choice, dispatch and result handling count, with the
        # worker's wake-up, the channel and the execution (model load excluded), which is what a
        # contended core or a throttled clock lengthens. Learning the service time alone left out
        # ~0.3 ms per request here, and 70% of replies exceeded the predicted 95% bound
        # (bench/bench_selection.py). The statistics keep the interpreter's own execution time.
        started_ns = max(outcome.job.dispatched_ns, int(h.get("idle_since_ns") or 0))   # not behind other work
        behind_ns = max(0, started_ns - (pending.submitted_ns or started_ns))
        path_ms = (now_ns - pending.received_ns - behind_ns) / 1e6 - float(h.get("load_ms") or 0.0)
        met = replies.met_constraints(request.constraints.as_dict(), arm.accuracy, total_ms, energy.energy_mj)
        choice = pending.choice
        header = replies.result_header(
            request_id=request.id, model=model.name, version=model.version, variant=arm.variant.name,
            placement=arm.placement.name, outputs=h["outputs"], queue_ms=queue_ms, compute_ms=compute_ms,
            total_ms=total_ms, energy_mj=energy.energy_mj, energy_source=energy.source,
            energy_estimated=energy.estimated, predicted=choice.predicted, constraints_met=met,
            reason_code=choice.code, reason_text=choice.text,
            alternatives=choice.alternatives if request.explain else None)
        for route in pending.routes:
            self._send(route, header, outcome.bodies)
        self.requests += len(pending.routes)
        self.replays.put(pending.peer, request.id, header, outcome.bodies, time.monotonic())
        self._defer(self._account, pending, stats, compute_ms, queue_ms, total_ms, max(path_ms, compute_ms),
                    energy, met, now, now_ns)

    def _account(self, pending: Pending, stats: ArmStats, compute_ms: float, queue_ms: float, total_ms: float,
                 path_ms: float, energy: Any, met: dict[str, bool], now: float, now_ns: int) -> None:
        """An answered request's statistics, the policy's update and its selection record."""
        stats.record(compute_ms, energy.energy_mj, energy.source, energy.estimated, now)
        self.policy.observe(pending.model, pending.arm, path_ms, energy.energy_mj, energy.estimated, now_ns / 1e9,
                            compute_ms=compute_ms)
        self._record(pending.request, pending.model, pending.client, now, outcome="ok", error_code=None,
                     choice=pending.choice, arm=pending.arm, timing=(queue_ms, compute_ms, total_ms),
                     energy=energy, met=met)

    # --- bookkeeping after the reply -------------------------------------------------------
    def _defer(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` after the reply has gone, at the next idle moment of the main loop
        (no socket, channel or signal ready), before any control message (so statistics,
        explanations and health include every answered request), once DEFER_MAX_ITEMS wait (a
        daemon that is never idle), and at shutdown. The reply's fields are all computed before
        it is sent; only what no caller waits for is deferred. A caller that reads its reply and
        sends the next request gives the daemon that idle moment, so the bookkeeping (about a
        quarter of the daemon's per-request work) leaves the round trip."""
        self._deferred.append((fn, args))

    def _flush_deferred(self) -> None:
        work, self._deferred = self._deferred, []
        for fn, args in work:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - one record's bookkeeping must not stop the daemon
                log.exception("bookkeeping of an answered request failed")

    def _arm_stats(self, model: ModelVersion, arm: Arm) -> ArmStats:
        key = (model.name, model.version, arm.variant.name, arm.placement.name)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = ArmStats(*key, window=self.config.stats.window, alpha=self.config.stats.ewma_alpha)
        return stats

    def _record(self, request: proto.Request, model: ModelVersion, client: str, now: float, *, outcome: str,
                error_code: str | None, choice: Choice, arm: Arm | None, timing=None, energy=None,
                met: dict[str, bool] | None = None) -> None:
        record = records.selection_record(
            ts=now, request_id=request.id, client=client, model=model.name, version=model.version,
            objective=request.objective, on_infeasible=request.on_infeasible,
            constraints=request.constraints.as_dict(), outcome=outcome, error_code=error_code,
            variant=arm.variant.name if arm else None, placement=arm.placement.name if arm else None,
            reason_code=choice.code, reason=choice.text, predicted=choice.predicted,
            timing=({"queue_ms": timing[0], "compute_ms": timing[1], "total_ms": timing[2]} if timing else None),
            energy=({"energy_mj": energy.energy_mj, "source": energy.source, "estimated": energy.estimated}
                    if energy else None),
            met=met)
        self.store.submit(record)

    # --- replies -------------------------------------------------------------------------
    def _send(self, route, header: dict[str, Any], bodies) -> None:
        self.frontend.send(route, proto.encode(header, bodies))

    def _reply(self, route, header: dict[str, Any], bodies) -> None:
        self.requests += 1
        self._send(route, header, bodies)

    def _reply_error(self, route, code: str, message: str, request_id: str | None,
                     details: dict[str, Any] | None = None, peer: bytes | None = None) -> None:
        self.errors += 1
        header = proto.error_header(code, message, request_id, details)
        self._reply(route, header, ())
        if request_id and peer is not None and code not in proto.TRANSIENT_CODES:
            self.replays.put(peer, request_id, header, [], time.monotonic())

    # --- control -------------------------------------------------------------------------
    def _on_control(self, request: proto.Request, peer: bytes | None) -> dict[str, Any]:
        """A control request's reply; ``peer`` is None on the admin endpoint (every region is its)."""
        handler = getattr(self, f"_control_{request.type}")
        body = handler(request, peer) if request.type.startswith("shm_") else handler(request)
        return replies.ok_header(request.type, request.id, body)

    def _control_models(self, request: proto.Request) -> dict[str, Any]:
        assert self.registry is not None
        return {"models": [m.describe(self.registry.models[m.name]) for m in self.registry.newest()],
                "placements": [w.snapshot() for w in self.pool.workers.values()]}

    def _control_placements(self, request: proto.Request) -> dict[str, Any]:
        return {"placements": [{**w.snapshot(), "queue_limit": self.config.placements.queue_limit}
                               for w in self.pool.workers.values()]}

    def _control_stats(self, request: proto.Request) -> dict[str, Any]:
        assert self.registry is not None
        now, mono = time.time(), time.monotonic()
        arms = []
        for model in self.registry.newest():
            for arm in model.arms:
                key = (model.name, model.version, arm.variant.name, arm.placement.name)
                stats = self._stats.get(key) or ArmStats(*key, window=self.config.stats.window)
                worker = self.pool.workers[arm.placement.name]
                mem = worker.loaded.get((str(model.directory), arm.variant.name))
                arms.append({**stats.snapshot(now, mem is not None, mem),
                             **self.quarantine.describe(_arm_key(model, arm), mono)})
        return {"arms": arms, "energy": self.meter.describe()}

    def _control_health(self, request: proto.Request) -> dict[str, Any]:
        assert self.registry is not None
        return {"status": "draining" if self.draining else "serving",
                "uptime_s": time.time() - self.started_at, "pid": os.getpid(),
                "rss_bytes": _rss_bytes(), "workers_rss_bytes": self.pool.workers_rss_bytes(),
                "requests": self.requests, "errors": self.errors, "in_flight": len(self._pending),
                "repository": str(self.registry.root), "generation": self.registry.generation,
                "store": self.store.describe(),
                "replay": {"entries": len(self.replays), "bytes": self.replays.bytes, "hits": self.replays.hits},
                "busy_refused_early": self.busy_fast,
                "replies_unread_dropped": self.frontend.replies_unread_dropped,
                "replies_to_departed": self.frontend.replies_to_departed,
                "authentication": "curve" if self.auth.enabled else "none"}

    def _control_shm_register(self, request: proto.Request, peer: bytes | None) -> dict[str, Any]:
        self._regions_gone(self.regions.sweep_owners())
        if self.draining:
            raise proto.ProtocolError(proto.SHUTTING_DOWN, "the daemon is shutting down", request.id)
        assert request.size is not None
        try:
            region = self.regions.create(request.size, request.owner_pid, peer)
        except RegionError as exc:
            raise proto.ProtocolError(proto.BAD_REQUEST, exc.message, request.id) from None
        log.debug("region %s registered (%d bytes, owner pid %s)", region.name, region.size, region.owner_pid)
        return {"region": region.name, "size": region.size, "path": str(region.path)}

    def _control_shm_unregister(self, request: proto.Request, peer: bytes | None) -> dict[str, Any]:
        assert request.region is not None
        try:
            in_use = self.regions.lookup(request.region, peer).users
            self._regions_gone(self.regions.end(request.region, peer))
        except RegionError as exc:
            raise proto.ProtocolError(proto.UNKNOWN_REGION, exc.message, request.id) from None
        return {"region": request.region, "in_use": in_use}

    def _control_shm_regions(self, request: proto.Request, peer: bytes | None) -> dict[str, Any]:
        self._regions_gone(self.regions.sweep_owners())
        return {"regions": self.regions.describe(peer)}

    def _control_reload(self, request: proto.Request) -> dict[str, Any]:
        error = self.reload()
        if error:
            raise proto.ProtocolError(proto.INTERNAL, f"reload failed, still serving the previous repository: {error}",
                                      request.id)
        assert self.registry is not None
        return {"generation": self.registry.generation,
                "models": [{"name": m.name, "version": m.version} for m in self.registry.newest()]}

    def _control_explain(self, request: proto.Request) -> dict[str, Any]:
        model, candidates = self._candidates(request)
        choice = self.policy.choose(model, request, candidates, self.pool, time.monotonic())
        return {"model": model.name, "version": model.version,
                "variant": choice.arm.variant.name if choice.arm else None,
                "placement": choice.arm.placement.name if choice.arm else None,
                "feasible": choice.feasible, "reason": {"code": choice.code, "text": choice.text},
                "predicted": choice.predicted, "predicted_met": choice.predicted_met,
                "violations": choice.violations,
                "closest": ({"variant": choice.closest.variant.name, "placement": choice.closest.placement.name}
                            if choice.closest else None),
                "alternatives": choice.alternatives or [],
                "unservable": model.describe_unservable()}

    # --- reload and shutdown -------------------------------------------------------------
    def reload(self) -> str | None:
        """Swap in a freshly loaded repository; on failure keep the old one and return why."""
        assert self.registry is not None
        try:
            registry = load_registry(self.config.repository, self.placements, self.registry.generation + 1)
        except (RegistryError, OSError) as exc:
            log.error("reload failed, keeping the previous repository: %s", exc)
            return str(exc)
        self.registry = registry
        self.auth.reload()
        self.policy.reset(registry)
        self.quarantine.forget_except(registry.directories())
        self._refused.clear()     # the new registry checked every file again
        self._set_aside.clear()   # the new policy has every arm; set aside again what is still down
        for model in registry.newest():
            for arm in model.arms:
                if self.quarantine.blocked(_arm_key(model, arm), time.monotonic()) \
                        or self.pool.down_reason(arm.placement.name) is not None:
                    self._set_aside_arm(model, arm)
        keep = registry.directories() | {str(p.model.directory) for p in self._pending.values()}
        self.pool.unload_except(keep)
        if self.config.placements.load == "eager":
            self._preload(registry)
        log.info("reloaded the repository (generation %d): %s", registry.generation, self._models_summary())
        return None

    def shutdown(self) -> int:
        self._flush_deferred()
        for (_, rid), pending in list(self._pending.items()):
            header = proto.error_header(proto.SHUTTING_DOWN, "the daemon stopped before this request finished", rid)
            for route in pending.routes:
                self._send(route, header, ())
        self._pending.clear()
        self.pool.stop()
        self.regions.close_all()
        if self.store is not None:
            self.store.close()
        if self.meter is not None:
            self.meter.close()
        self.frontend.close()
        self.auth.stop()
        self.context.term()
        for path in (ipc_path(e) for e in self.config.pub_endpoints):
            if path is not None:
                try:
                    path.unlink()
                except OSError:
                    pass
        self.lock.release()
        self.notifier.close()
        log.info("stopped")
        return 0


def _pin_process(cores: tuple[int, ...]) -> None:
    """Pin every thread of this process (ZeroMQ's I/O thread is already running) to ``cores``;
    threads and processes started later inherit it, and each worker then pins itself to its
    placement's cores. Raises RuntimeError naming ``server.cores`` for cores this process may
    not use."""
    allowed = os.sched_getaffinity(0)
    if not set(cores) <= allowed:
        raise RuntimeError(f"server.cores: {sorted(set(cores) - allowed)} not among this process's cores "
                           f"{sorted(allowed)}")
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except ProcessLookupError:   # a thread that ended meanwhile
            pass
    log.info("daemon threads pinned to cores %s", ",".join(map(str, cores)))


def _request_slice(slice_us: int) -> None:
    """``[server] sched_slice_us``: every thread of this process asks the fair scheduler for
    that slice (:mod:`adaptd.daemon.sched`); workers and later threads inherit it."""
    from adaptd.daemon.sched import request_slice_all_threads

    if request_slice_all_threads(slice_us):
        log.info("daemon threads and workers request a %d us scheduler slice", slice_us)
    else:
        log.info("server.sched_slice_us = %d not applied: this kernel keeps no per-thread slice (Linux 6.12 "
                 "and later do), or the service runs under a real-time policy", slice_us)


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _default_policy(config: Config) -> Policy:
    from adaptd.daemon.selection import SelectorPolicy

    return SelectorPolicy.from_config(config)


def _open_store(cfg: Config, context: zmq.Context, guard: Any):
    """The selection store, opened (its database created) and its stream bound."""
    from adaptd.wire.board import daemon_board_id
    from adaptd.daemon.store import SelectionStore

    path = cfg.store_path
    path.parent.mkdir(parents=True, exist_ok=True)
    for endpoint in cfg.pub_endpoints:
        from adaptd.daemon.frontend import remove_stale_socket

        remove_stale_socket(endpoint)
    store = SelectionStore(cfg.store, path, cfg.pub_endpoints if cfg.store.publish else (), context, guard=guard,
                           board_id=daemon_board_id(cfg.board_id))
    store.start()
    return store

