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
  death, drain) produces one.
* The request path: decode and validate -> choose (policy, pure) -> queue on the placement's
  worker -> (worker runs) -> reply, statistics, energy attribution, selection record. Tensor
  bytes are passed as the received ZeroMQ frames, never copied here. TensorFlow is never
  imported by this process.
* Shared memory (PROTOCOL.md §11): this process creates, bounds-checks and removes regions
  (:mod:`adaptd.daemon.shm`) but never maps one: tensors in a region are read and written by the
  worker alone.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import signal
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from adaptd.daemon import protocol as proto
from adaptd.daemon.config import Config, ConfigError, load_config
from adaptd.daemon.frames import recv_frames, send_frames
from adaptd.daemon.placements import Placement, discover
from adaptd.daemon.policy import Choice, Policy
from adaptd.daemon.registry import Arm, ModelVersion, Registry, RegistryError, load_registry
from adaptd.daemon.sdnotify import Notifier
from adaptd.daemon.shm import RegionError, RegionTable
from adaptd.daemon.stats import ArmStats
from adaptd.daemon.workers import Job, Outcome, WorkerPool
from adaptd.variants.preprocess import accepted_dtypes, accepts as accepts_dtypes

log = logging.getLogger("adaptd")

FRONTEND_BATCH = 64   # messages taken from one socket per poll round, so no socket starves
DEFER_MAX_ITEMS = 16  # answered requests whose bookkeeping may wait for an idle moment


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
    submitted_ns: int = 0       # handed to the worker pool (after decoding and choosing)
    regions: tuple[str, ...] = ()   # shared-memory regions the job reads or writes (held until its outcome)


@dataclass
class _Replay:
    expires: float
    header: dict[str, Any]
    bodies: list[Any] = field(default_factory=list)


class Daemon:
    def __init__(self, config: Config, policy: Policy | None = None) -> None:
        self.config = config
        self.policy: Policy | None = policy
        self.notifier = Notifier()
        self.started_at = time.time()
        self.requests = 0
        self.errors = 0
        self.draining = False
        self._stop_requested = 0
        self._reload_requested = False
        self._pending: dict[str, Pending] = {}
        # Bookkeeping of answered requests not done yet (statistics, the policy's update, the
        # selection record): see _defer.
        self._deferred: list[tuple[Any, tuple[Any, ...]]] = []
        self._replays: OrderedDict[str, _Replay] = OrderedDict()
        self._stats: dict[tuple[str, str, str, str], ArmStats] = {}
        self._frontends: list[zmq.Socket] = []
        self._ipc_paths: list[Path] = []
        self.registry: Registry | None = None
        self.placements: list[Placement] = []
        self.meter = None
        self.store = None
        self.regions = RegionTable()

    # --- start-up ------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        cfg.runtime_dir.mkdir(parents=True, exist_ok=True)
        self.context = zmq.Context()
        self.placements = discover(cfg.placements)   # before pinning: it reads this process's cores
        self._placement_by_name = {p.name: p for p in self.placements}
        if cfg.server.cores:
            _pin_process(cfg.server.cores)
        if cfg.server.sched_slice_us:   # before the workers start: they inherit it
            _request_slice(cfg.server.sched_slice_us)
        self.registry = load_registry(cfg.repository, self.placements, generation=1)
        self.regions = RegionTable(cfg.server.ipc_mode)
        stale = self.regions.sweep_stale()
        if stale:
            log.info("removed %d shared-memory region(s) left by daemons no longer running", len(stale))

        self.pool = WorkerPool(self.placements, cfg.placements.queue_limit)
        self.pool.start()

        from adaptd.daemon.power import EnergyMeter

        self.meter = EnergyMeter.from_config(cfg.power)
        self.meter.start()
        if self.policy is None:
            self.policy = _default_policy(cfg)

        from adaptd.daemon.store import SelectionStore, StoreConfig

        store_cfg = StoreConfig.from_dict(cfg.store)
        store_path = Path(store_cfg.path)
        if not store_path.is_absolute():
            store_path = cfg.state_dir / store_path
        store_path.parent.mkdir(parents=True, exist_ok=True)
        for endpoint in cfg.pub_endpoints:
            self._prepare_ipc(endpoint)
        self.store = SelectionStore(store_cfg, store_path, cfg.pub_endpoints if store_cfg.publish else (),
                                    self.context)
        self.store.start()
        for endpoint in cfg.pub_endpoints:
            self._chmod_ipc(endpoint)

        for endpoint in cfg.endpoints:
            sock = self.context.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 2000)
            sock.setsockopt(zmq.MAXMSGSIZE, 2 * cfg.server.max_message_bytes)
            sock.setsockopt(zmq.SNDHWM, 0)   # replies are never dropped for a slow reader
            self._prepare_ipc(endpoint)
            sock.bind(endpoint)
            self._chmod_ipc(endpoint)
            self._frontends.append(sock)

        laggards = self.pool.wait_ready(cfg.placements.worker_start_timeout_s)
        if laggards:
            raise RuntimeError(f"workers not ready within {cfg.placements.worker_start_timeout_s} s: "
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

    def _prepare_ipc(self, endpoint: str) -> None:
        if endpoint.startswith("ipc://"):
            path = Path(endpoint[len("ipc://"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
                path.unlink()   # a stale socket from a killed daemon

    def _chmod_ipc(self, endpoint: str) -> None:
        if endpoint.startswith("ipc://"):
            path = Path(endpoint[len("ipc://"):])
            os.chmod(path, self.config.server.ipc_mode)
            self._ipc_paths.append(path)

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

        def register() -> None:
            nonlocal poller
            poller = zmq.Poller()
            for s in self._frontends:
                poller.register(s, zmq.POLLIN)
            for fd in self.pool.channel_fds():
                poller.register(fd, zmq.POLLIN)
            for fd in self.pool.pidfds():
                poller.register(fd, zmq.POLLIN)
            poller.register(wake, zmq.POLLIN)

        register()
        self.pool.on_change = register
        frontends = set(self._frontends)
        pidfds = set(self.pool.pidfds())
        watchdog_s = self.notifier.watchdog_interval_s() if self.config.server.watchdog else None
        next_watchdog = time.monotonic()
        drain_deadline = None
        next_sweep = time.monotonic()
        timeout_ms = 1000.0 if watchdog_s is None else min(1000.0, watchdog_s * 1e3)
        spin_ns = self.config.server.spin_us * 1000

        while True:
            # Worker deaths last: a replacement worker may reuse the dead one's descriptor
            # numbers, so no event of this round may be read after a restart.
            # With bookkeeping waiting, look without blocking first: nothing to do means an idle
            # moment (e.g. a caller reading its reply), which is when that work is done.
            spin_until_ns = None if self._deferred or not spin_ns else self._spin_until_ns(spin_ns)
            events = poller.poll(0 if self._deferred or spin_until_ns else timeout_ms)
            if not events and spin_until_ns:
                # [server] spin_us: a result due soon is picked up without a wake-up from sleep
                while not events and time.monotonic_ns() < spin_until_ns:
                    os.sched_yield()   # a worker sharing this core runs first
                    events = poller.poll(0)
                if not events:
                    events = poller.poll(timeout_ms)
            if len(events) > 1:
                events.sort(key=lambda e: e[0] in pidfds)
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
                    outcome = self.pool.on_exit(item)
                    pidfds = set(self.pool.pidfds())
                    if outcome is not None:
                        self._on_outcome(outcome)
                else:
                    outcome = self.pool.on_message(item)
                    if outcome is not None:
                        self._on_outcome(outcome)

            now = time.monotonic()
            if now >= next_sweep:   # regions whose registering process has exited (§11.2)
                next_sweep = now + 1.0
                if self.regions.owned():
                    self._regions_gone(self.regions.sweep_owners())
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

    def _spin_until_ns(self, spin_ns: int) -> int | None:
        """The end of the spin after the latest dispatch still in flight; None when nothing is in
        flight or that spin is over (then the loop sleeps as usual)."""
        started = self.pool.latest_dispatch_ns()
        if started is None:
            return None
        until = started + spin_ns
        return until if until > time.monotonic_ns() else None

    def _drain_frontend(self, sock: zmq.Socket) -> None:
        for _ in range(FRONTEND_BATCH):
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
            request = proto.parse_request(header)
            if request.type == "infer":
                self._on_infer(route, request, bodies, received_ns)
            else:
                self._flush_deferred()   # statistics and explanations include every answered request
                self._reply(route, self._on_control(request), ())
        except proto.ProtocolError as exc:
            self._reply_error(route, exc.code, exc.message, exc.request_id or request_id, exc.details)
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the daemon
            log.exception("internal error on a request")
            self._reply_error(route, proto.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", request_id)

    def _on_infer(self, route, request: proto.Request, bodies: list[memoryview], received_ns: int) -> None:
        rid = request.id
        pending = self._pending.get(rid)
        if pending is not None:            # a retry of a request we are running: answer both
            pending.routes.append(route)
            return
        replay = self._replays.get(rid)
        if replay is not None:
            if replay.expires >= time.monotonic():
                self._reply(route, {**replay.header, "replayed": True}, replay.bodies)
                return
            del self._replays[rid]
        if self.draining:
            raise proto.ProtocolError(proto.SHUTTING_DOWN, "the daemon is shutting down", rid)

        model, candidates = self._candidates(request)
        self._check_inputs(request, candidates, bodies)
        shm_inputs, outputs_to = self._check_regions(request, candidates)
        candidates = self._accepting(request, candidates)
        now = time.time()
        choice = self.policy.choose(model, request, candidates, self.pool, time.monotonic())
        client = request.client or bytes(route[1][0].buffer).hex()
        if choice.arm is None:
            closest = choice.closest
            details = {"closest": {"variant": closest.variant.name, "placement": closest.placement.name} if closest else None,
                       "violations": choice.violations or {}}
            self._record(request, model, client, now, outcome="rejected", error_code=proto.INFEASIBLE,
                         choice=choice, arm=closest)
            raise proto.ProtocolError(proto.INFEASIBLE, choice.text, rid, details)

        arm = choice.arm
        regions = tuple(r["region"] for r in (*shm_inputs.values(), *([outputs_to] if outputs_to else [])))
        pending = Pending(request, [route], model, arm, choice, client, received_ns, now, regions=regions)
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
        self._pending[rid] = pending

    def _candidates(self, request: proto.Request) -> tuple[ModelVersion, list[Arm]]:
        assert self.registry is not None
        model = self.registry.get(request.model, request.version)
        if model is None:
            known = ", ".join(sorted(self.registry.models)) or "none"
            what = f"model {request.model!r}" + (f" version {request.version}" if request.version else "")
            raise proto.ProtocolError(proto.UNKNOWN_MODEL, f"{what} is not loaded; models: {known}", request.id)
        arms = list(model.arms)
        if request.pin_variant is not None:
            if request.pin_variant not in model.variants:
                raise proto.ProtocolError(proto.UNKNOWN_VARIANT,
                                          f"{model.name}:{model.version} has no variant {request.pin_variant!r}; "
                                          f"variants: {', '.join(model.variants)}", request.id)
            arms = [a for a in arms if a.variant.name == request.pin_variant]
        if request.pin_placement is not None:
            if request.pin_placement not in self._placement_by_name:
                raise proto.ProtocolError(proto.UNKNOWN_PLACEMENT,
                                          f"no placement {request.pin_placement!r}; placements: "
                                          f"{', '.join(self._placement_by_name)}", request.id)
            arms = [a for a in arms if a.placement.name == request.pin_placement]
        if not arms:
            raise proto.ProtocolError(proto.UNKNOWN_PLACEMENT,
                                      f"placement {request.pin_placement} cannot run variant {request.pin_variant} "
                                      "(their runtimes differ)" if request.pin_placement and request.pin_variant
                                      else f"no placement here can run {model.name}:{model.version}", request.id)
        return model, arms

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
            if spec.shm is not None:
                continue
            body = next(frames)
            if len(body) != spec.nbytes:
                raise proto.ProtocolError(proto.BAD_INPUT, f"input {i}: body is {len(body)} bytes but dtype "
                                          f"{spec.dtype.name} and shape {list(spec.shape)} need {spec.nbytes}", request.id)

    def _check_regions(self, request: proto.Request, candidates: list[Arm]
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
                region = self.regions.check(spec.shm.region, spec.shm.offset, spec.nbytes)
                shm_inputs[i] = {"region": region.name, "offset": spec.shm.offset, "size": region.size}
            outputs_to = None
            if request.outputs_to is not None:
                ref = request.outputs_to
                if ref.offset % 4:
                    raise proto.ProtocolError(proto.BAD_INPUT, f"outputs_to: offset {ref.offset} is not a multiple "
                                              "of 4 bytes (outputs are float32)", request.id)
                batch = request.inputs[0].shape[0] if request.inputs else 1
                need = sum(4 * batch * math.prod(o.shape[1:]) for o in candidates[0].variant.outputs)
                region = self.regions.check(ref.region, ref.offset, need)
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
        self._pending.pop(request.id, None)
        if pending.regions:
            self._regions_gone(self.regions.release(pending.regions))
        stats = self._arm_stats(model, arm)
        if not outcome.ok:
            stats.errors += 1
            self.errors += 1
            header = proto.error_header(proto.WORKER_FAILED, outcome.header.get("message", "the worker failed"),
                                        request.id, {"placement": arm.placement.name, "variant": arm.variant.name})
            for route in pending.routes:
                self._send(route, header, ())
            self.requests += len(pending.routes)
            self._record(request, model, pending.client, time.time(), outcome="error",
                         error_code=proto.WORKER_FAILED, choice=pending.choice, arm=arm)
            return
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
        c = request.constraints
        met: dict[str, bool] = {}
        if c.min_accuracy is not None:
            met["min_accuracy"] = arm.accuracy is not None and arm.accuracy >= c.min_accuracy
        if c.max_latency_ms is not None:
            met["max_latency_ms"] = total_ms <= c.max_latency_ms
        if c.max_energy_mj is not None:
            met["max_energy_mj"] = energy.energy_mj is not None and energy.energy_mj <= c.max_energy_mj
        choice = pending.choice
        header = {
            "type": "result", "id": request.id, "model": model.name, "version": model.version,
            "variant": arm.variant.name, "placement": arm.placement.name,
            "outputs": h["outputs"],
            "timing": {"queue_ms": queue_ms, "compute_ms": compute_ms, "total_ms": total_ms},
            "energy": {"energy_mj": energy.energy_mj, "source": energy.source, "estimated": energy.estimated},
            "predicted": choice.predicted,
            "constraints_met": met, "met": all(met.values()),
            "reason": {"code": choice.code, "text": choice.text},
            "replayed": False,
        }
        if request.explain and choice.alternatives is not None:
            header["alternatives"] = choice.alternatives
        for route in pending.routes:
            self._send(route, header, outcome.bodies)
        self.requests += len(pending.routes)
        self._remember(request.id, header, outcome.bodies)
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
        c = request.constraints
        p = choice.predicted or {}
        met = met or {}
        record = {
            "ts": now, "request_id": request.id, "client": client, "model": model.name, "version": model.version,
            "objective": request.objective, "on_infeasible": request.on_infeasible,
            "min_accuracy": c.min_accuracy, "max_latency_ms": c.max_latency_ms, "max_energy_mj": c.max_energy_mj,
            "latency_confidence": c.latency_confidence,
            "outcome": outcome, "error_code": error_code,
            "variant": arm.variant.name if arm else None, "placement": arm.placement.name if arm else None,
            "reason_code": choice.code, "reason": choice.text,
            "predicted_latency_ms": p.get("latency_ms"), "predicted_latency_bound_ms": p.get("latency_bound_ms"),
            "predicted_latency_confidence": p.get("latency_confidence"),
            "predicted_queue_ms": p.get("queue_ms"), "predicted_energy_mj": p.get("energy_mj"),
            "predicted_energy_bound_mj": p.get("energy_bound_mj"),
            "predicted_accuracy": p.get("accuracy"),
            "queue_ms": timing[0] if timing else None, "compute_ms": timing[1] if timing else None,
            "total_ms": timing[2] if timing else None,
            "energy_mj": energy.energy_mj if energy else None,
            "energy_source": energy.source if energy else None,
            "energy_estimated": bool(energy.estimated) if energy else bool(p.get("energy_estimated", False)),
            "met_accuracy": met.get("min_accuracy"), "met_latency": met.get("max_latency_ms"),
            "met_energy": met.get("max_energy_mj"),
            "met": all(met.values()) if outcome == "ok" else False,
        }
        self.store.submit(record)

    def _remember(self, rid: str, header: dict[str, Any], bodies: list[Any]) -> None:
        cfg = self.config.server
        if cfg.dedup_entries <= 0 or cfg.dedup_window_s <= 0:
            return
        self._replays[rid] = _Replay(time.monotonic() + cfg.dedup_window_s, header, bodies)
        self._replays.move_to_end(rid)
        while len(self._replays) > cfg.dedup_entries:
            self._replays.popitem(last=False)

    # --- replies -------------------------------------------------------------------------
    def _send(self, route, header: dict[str, Any], bodies) -> None:
        sock, envelope = route
        try:
            send_frames(sock, [*envelope, *proto.encode(header, bodies)])
        except zmq.ZMQError as exc:   # the peer went away; nothing else to do for it
            log.debug("reply to a departed client dropped: %s", exc)

    def _reply(self, route, header: dict[str, Any], bodies) -> None:
        self.requests += 1
        self._send(route, header, bodies)

    def _reply_error(self, route, code: str, message: str, request_id: str | None,
                     details: dict[str, Any] | None = None) -> None:
        self.errors += 1
        header = proto.error_header(code, message, request_id, details)
        self._reply(route, header, ())
        if request_id and code not in proto.TRANSIENT_CODES:
            self._remember(request_id, header, [])

    # --- control -------------------------------------------------------------------------
    def _on_control(self, request: proto.Request) -> dict[str, Any]:
        handler = getattr(self, f"_control_{request.type}")
        return {"type": "ok", "id": request.id, "of": request.type, "body": handler(request)}

    def _control_models(self, request: proto.Request) -> dict[str, Any]:
        assert self.registry is not None
        return {"models": [m.describe(self.registry.models[m.name]) for m in self.registry.newest()],
                "placements": [w.snapshot() for w in self.pool.workers.values()]}

    def _control_placements(self, request: proto.Request) -> dict[str, Any]:
        return {"placements": [{**w.snapshot(), "queue_limit": self.config.placements.queue_limit}
                               for w in self.pool.workers.values()]}

    def _control_stats(self, request: proto.Request) -> dict[str, Any]:
        assert self.registry is not None
        now = time.time()
        arms = []
        for model in self.registry.newest():
            for arm in model.arms:
                key = (model.name, model.version, arm.variant.name, arm.placement.name)
                stats = self._stats.get(key) or ArmStats(*key, window=self.config.stats.window)
                worker = self.pool.workers[arm.placement.name]
                mem = worker.loaded.get((str(model.directory), arm.variant.name))
                arms.append(stats.snapshot(now, mem is not None, mem))
        return {"arms": arms, "energy": self.meter.describe()}

    def _control_health(self, request: proto.Request) -> dict[str, Any]:
        assert self.registry is not None
        return {"status": "draining" if self.draining else "serving",
                "uptime_s": time.time() - self.started_at, "pid": os.getpid(),
                "rss_bytes": _rss_bytes(), "workers_rss_bytes": self.pool.workers_rss_bytes(),
                "requests": self.requests, "errors": self.errors, "in_flight": len(self._pending),
                "repository": str(self.registry.root), "generation": self.registry.generation,
                "store": self.store.describe()}

    def _control_shm_register(self, request: proto.Request) -> dict[str, Any]:
        self._regions_gone(self.regions.sweep_owners())
        if self.draining:
            raise proto.ProtocolError(proto.SHUTTING_DOWN, "the daemon is shutting down", request.id)
        assert request.size is not None
        try:
            region = self.regions.create(request.size, request.owner_pid)
        except RegionError as exc:
            raise proto.ProtocolError(proto.BAD_REQUEST, exc.message, request.id) from None
        log.debug("region %s registered (%d bytes, owner pid %s)", region.name, region.size, region.owner_pid)
        return {"region": region.name, "size": region.size, "path": str(region.path)}

    def _control_shm_unregister(self, request: proto.Request) -> dict[str, Any]:
        assert request.region is not None
        try:
            in_use = self.regions.lookup(request.region).users
            self._regions_gone(self.regions.end(request.region))
        except RegionError as exc:
            raise proto.ProtocolError(proto.UNKNOWN_REGION, exc.message, request.id) from None
        return {"region": request.region, "in_use": in_use}

    def _control_shm_regions(self, request: proto.Request) -> dict[str, Any]:
        self._regions_gone(self.regions.sweep_owners())
        return {"regions": self.regions.describe()}

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
                "alternatives": choice.alternatives or []}

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
        self.policy.reset(registry)
        keep = registry.directories() | {str(p.model.directory) for p in self._pending.values()}
        self.pool.unload_except(keep)
        if self.config.placements.load == "eager":
            self._preload(registry)
        log.info("reloaded the repository (generation %d): %s", registry.generation, self._models_summary())
        return None

    def shutdown(self) -> int:
        self._flush_deferred()
        for rid, pending in list(self._pending.items()):
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
        for sock in self._frontends:
            sock.close(linger=2000)
        self.context.term()
        for path in self._ipc_paths:
            try:
                path.unlink()
            except OSError:
                pass
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


def run_serve(args) -> int:
    """``adaptd serve``: the CLI entry."""
    from adaptd.clients.cli import UserError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.config is not None:
            config = load_config(args.config)
        else:
            if args.repository is None:
                raise UserError("give --config FILE or --repository DIR")
            config = Config.from_dict({"repository": str(args.repository)})
        overrides: dict[str, Any] = {}
        if args.repository is not None:
            overrides["repository"] = Path(args.repository).resolve()
        if args.endpoint:
            overrides["server"] = dataclasses.replace(config.server, endpoints=tuple(args.endpoint))
        if overrides:
            config = dataclasses.replace(config, **overrides)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    logging.getLogger().setLevel(config.log_level.upper())
    daemon = Daemon(config)
    try:
        daemon.start()
    except (RegistryError, ValueError, RuntimeError, OSError, zmq.ZMQError) as exc:
        raise UserError(f"cannot start: {exc}") from None
    return daemon.run()

