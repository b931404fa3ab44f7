"""The daemon: its lifecycle, its main loop, and the request path through it.

Contract
--------
* Lifecycle (as uvicorn's Server): ``Daemon(config)`` is cheap; :meth:`Daemon.start` checks and
  starts everything, in this order, or nothing: the runtime directory's owner, the instance lock
  (:mod:`adaptd.daemon.instance`), placements, the repository, the store, the sockets
  (:mod:`adaptd.daemon.frontend`), the power meter, the workers, the metrics endpoint when
  ``[metrics]`` is on (:mod:`adaptd.daemon.metrics`), a rehearsal of the request path
  (:mod:`adaptd.daemon.rehearsal`); then tells systemd READY. A failure is one line
  (:class:`StartupError`); whatever was started is stopped and every file made removed.
  :meth:`Daemon.run` serves until SIGTERM/SIGINT, then drains (new requests get ``SHUTTING_DOWN``,
  held ones finish and are answered, up to ``server.drain_timeout_s``; what is still held then is
  answered ``SHUTTING_DOWN`` too), flushes the store and exits 0. A second SIGTERM stops at once.
  SIGHUP reloads the repository with an atomic swap.
* The pieces are injected: :meth:`Daemon.assemble` takes the registry, placements, pool, meter,
  store and frontend, so a test can build a daemon in-process with fakes for the pool, meter,
  store and sockets and drive its request path with frames.
* Threads: all here runs on the main thread, Python's collector too (at idle moments:
  :mod:`adaptd.daemon.collector`); signal handlers only set flags and wake the loop through a pipe.
  The power sampler and the store writer run behind contracts of their own, fed without blocking.
* Exactly one reply per request message (PROTOCOL.md §8): every branch of
  :meth:`Daemon.on_request` ends in a reply or in a job whose outcome (done, failed, worker death,
  drain) produces one. Nothing a client sends, and no worker's death, ends the loop: an
  unexpected fault in one request is answered ``INTERNAL`` and logged (a traceback at most once a
  minute per kind of fault, one line otherwise: :mod:`adaptd.daemon.faultlog`); one in the
  once-a-second housekeeping (:mod:`adaptd.daemon.housekeeping`) is logged the same way, and the
  loop goes on.
* Isolation between clients: replies kept for replay, requests in flight and shared-memory
  regions belong to the peer that sent them (:mod:`adaptd.daemon.peers`); records name a peer
  only by an opaque tag. ``reload`` is accepted on the admin endpoint only.
* Under overload completions go first: each round of the loop handles the workers' results
  before it takes new requests, and takes at most ``INTAKE_BATCH`` from each socket and each
  local stream connection (:mod:`adaptd.daemon.streams`; the rest wait in its backlog); a request
  whose model has every placement's queue full is refused ``BUSY`` before it is parsed further.
* The request path: decode (:mod:`adaptd.wire.protocol`) -> admit (:mod:`adaptd.daemon.admission`)
  -> choose (the policy, pure) -> queue on the placement's worker -> (the worker runs) -> reply
  (:mod:`adaptd.wire.replies`), then, off the round trip, statistics, the policy's update and the
  selection record (:mod:`adaptd.daemon.bookkeeping`). Tensor bytes are passed as the received
  frames (ZeroMQ's, or a local stream's buffers), never copied here. TensorFlow is never
  imported by this process.
* Shared memory (PROTOCOL.md §11): this process creates, bounds-checks and removes regions
  (:mod:`adaptd.daemon.shm`) but never maps one: tensors in a region are read and written by the
  worker alone.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sqlite3
import time
from typing import Any

import zmq

from adaptd.daemon import startup
from adaptd.daemon.admission import Admission
from adaptd.daemon.arms import ArmHealth
from adaptd.daemon.auth import Authenticator
from adaptd.daemon.bookkeeping import Bookkeeping
from adaptd.daemon.collector import IdleCollector
from adaptd.daemon.config import Config
from adaptd.daemon.control import Control
from adaptd.daemon.fidelity import LiveFidelity
from adaptd.daemon.frontend import Frontend, ipc_path, socket_path
from adaptd.daemon.housekeeping import Housekeeping
from adaptd.daemon.instance import InstanceLock
from adaptd.daemon.placements import Placement, discover
from adaptd.daemon.power import EnergyMeter
from adaptd.daemon.registry import Registry, RegistryError, load_registry
from adaptd.daemon.rehearsal import rehearse
from adaptd.daemon.replay import ReplayCache
from adaptd.daemon.sdnotify import Notifier
from adaptd.daemon.shm import RegionTable
from adaptd.daemon.request_path import INTAKE_BATCH, RequestPath
from adaptd.daemon.dispatch import Dispatcher
from adaptd.wire.rundir import ensure_daemon_dir

log = logging.getLogger("adaptd")



class StartupError(RuntimeError):
    """The daemon cannot start: one line for the operator."""


class Daemon:
    def __init__(self, config: Config, policy: Any = None) -> None:
        self.config = config
        self.policy = policy
        self.notifier = Notifier()
        self.started_at = time.time()
        self.started_cpu_s = time.process_time()
        self.draining = False
        self._stop_requested = 0
        self._reload_requested = False
        server = config.server
        self.replays = ReplayCache(server.dedup_window_s, server.dedup_entries, server.dedup_max_bytes)
        self.auth = Authenticator(config.auth.curve, config.auth.server_key, config.auth.client_keys)
        self.lock = InstanceLock(startup.lock_directories(config))
        self.control = Control(self)
        self.context: zmq.Context | None = None
        self.frontend: Any = None
        self.pool: Any = None
        self.registry: Registry | None = None
        self.placements: list[Placement] = []
        self.meter: Any = None
        self.store: Any = None
        self.regions = RegionTable()
        self.metrics: Any = None   # adaptd.daemon.metrics.DaemonMetrics when [metrics] is on
        self.realtime: Any = None  # adaptd.daemon.sched.RealtimeFrontEnd with [server] rt_priority
        self.collector = IdleCollector()

    # --- assembly --------------------------------------------------------------------------
    def assemble(self, *, registry: Registry, placements: list[Placement], pool: Any, meter: Any, store: Any,
                 frontend: Any, regions: RegionTable | None = None) -> None:
        """Wire the request path's parts together (start-up does this with the real ones)."""
        cfg = self.config
        self.registry, self.placements, self.pool, self.meter = registry, placements, pool, meter
        self.store, self.frontend = store, frontend
        self.regions = regions or self.regions
        if self.policy is None:
            self.policy = startup.default_policy(cfg)
        self.health = ArmHealth(lambda m, a, up: self.policy.set_available(m, a, up), pool.down_reason)
        self.admission = Admission(lambda: self.registry, placements, self.health, lambda: self.regions,
                                   pool.queue_length, pool.queue_limit, cfg.server.max_batch)
        self.books = Bookkeeping(store.submit, cfg.stats.window, cfg.stats.ewma_alpha,
                                 lambda observations: self.policy.observe_many(observations))
        self.fidelity = LiveFidelity(cfg.fidelity, pool, meter, store.submit, self._set_accuracy,
                                     cfg.placements.inline_max_ms)
        self.path = RequestPath(self)
        self.housekeeping = Housekeeping(self, self.path.faults)
        pool.on_load_failed = self._load_failed
        pool.on_down = lambda placement: self.health.placement_down(self.registry, placement)

    def _load_failed(self, placement: str, key: tuple[str, str], message: str) -> None:
        self.health.failed(self.registry, (key[0], key[1], placement), message, time.monotonic())

    def _set_accuracy(self, model: Any, variant: str, accuracy: float | None, source: str) -> None:
        """Live fidelity's figure for a variant's arms (the policy judges min_accuracy on it)."""
        if hasattr(self.policy, "set_accuracy"):
            self.policy.set_accuracy(model, variant, accuracy, source)

    # --- start-up --------------------------------------------------------------------------
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
        if any((p := socket_path(e)) is not None and p.parent == cfg.runtime_dir
               for e in (*cfg.endpoints, *cfg.pub_endpoints, *cfg.admin_endpoints)):
            ensure_daemon_dir(cfg.runtime_dir)
        for path in self.lock.paths:
            path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        placements = discover(cfg.placements)   # before pinning: it reads this process's cores
        registry = load_registry(cfg.repository, placements, generation=1)
        self.context = zmq.Context()
        self.auth.start(self.context)
        self.store = startup.open_store(cfg, self.context, self.auth.guard)
        self.frontend = Frontend(self.context, max_message_bytes=cfg.server.max_message_bytes,
                                 send_hwm=cfg.server.send_hwm, ipc_mode=cfg.server.ipc_mode, guard=self.auth.guard,
                                 intake=INTAKE_BATCH,   # (CurveZMQ is libzmq's: its ROUTERs serve ipc then)
                                 ipc_engine="zeromq" if self.auth.enabled else cfg.server.ipc_engine)
        self.frontend.bind(cfg.endpoints, cfg.admin_endpoints)
        for path in (ipc_path(e) for e in cfg.pub_endpoints):
            if path is not None:
                os.chmod(path, cfg.server.ipc_mode)
        if cfg.server.cores:
            startup.pin_process(cfg.server.cores)
        if cfg.server.sched_slice_us:   # before the workers start: they inherit it
            startup.request_slice(cfg.server.sched_slice_us)
        regions = RegionTable(cfg.server.ipc_mode, max_regions_per_peer=cfg.server.shm_regions_per_client,
                              max_bytes_per_peer=cfg.server.shm_bytes_per_client)
        stale = regions.sweep_stale()
        if stale:
            log.info("removed %d shared-memory region(s) left by daemons no longer running", len(stale))

        self.meter = EnergyMeter.from_config(cfg.power)
        self.meter.start()
        self.pool = Dispatcher(placements, cfg.placements.queue_limit, isolation=cfg.placements.isolation,
                               reject_nonfinite=cfg.server.reject_nonfinite, home_cores=cfg.server.cores,
                               shadow_worker=cfg.fidelity.enabled, sched_slice_us=cfg.server.sched_slice_us,
                               follow_work=not cfg.server.spin_us, job_timeout_s=cfg.placements.job_timeout_s)
        self.assemble(registry=registry, placements=placements, pool=self.pool, meter=self.meter, store=self.store,
                      frontend=self.frontend, regions=regions)
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
        self.policy.reset(registry)
        self.fidelity.reset(registry)
        self.admission.prepare(registry)
        self.path.loads_on_demand = not self._eager(registry)
        if not self.path.loads_on_demand:
            self._preload(registry)
            laggards = self.pool.wait_loaded(cfg.placements.worker_start_timeout_s)   # (a shadow worker's too)
            if laggards:
                log.warning("eager loads still running after %s s on %s; serving anyway",
                            cfg.placements.worker_start_timeout_s, ", ".join(laggards))
        if cfg.metrics.enabled:   # prometheus_client is imported only then
            from adaptd.daemon import metrics
            self.metrics = metrics.start(self)
        rehearse(self)   # (the first request after start is not its code's first run)
        self.collector.start()   # what start-up made, frozen; collections at idle moments from now
        if cfg.server.rt_priority:   # last: every thread started so far keeps the fair scheduler
            self.realtime = startup.realtime_front_end(cfg.server.rt_priority)
            if not self.realtime.refused:
                self.pool.threads.realtime = self.realtime
                if not cfg.server.cores and self.pool.threads.workers:
                    log.warning("server.rt_priority without server.cores: after a job it runs inline, the front end "
                                "stays on that placement's cores and preempts its interpreter threads while it works; "
                                "set server.cores to the cores the clients run on")
        self.notifier.ready(f"serving {self._models_summary()}")
        log.info("serving %s on %s; placements %s", self._models_summary(), ", ".join(cfg.endpoints),
                 ", ".join(p.name for p in placements))

    def _abort_start(self) -> None:
        """Undo a start-up that failed part-way: processes stopped, files removed, lock released."""
        for stop in (lambda: self.metrics.close(), lambda: self.pool.stop(timeout_s=2.0), lambda: self.meter.close(),
                     lambda: self.frontend.close(), lambda: self.store.close(), lambda: self.auth.stop(),
                     lambda: self.context.term(), self.regions.close_all, self.lock.release, self.collector.stop):
            try:
                stop()
            except Exception:  # noqa: BLE001 - best effort: this start already failed; None parts too
                pass
        if self.store is not None:
            self._unlink_stream_sockets()

    def _unlink_stream_sockets(self) -> None:
        for path in (ipc_path(e) for e in self.config.pub_endpoints):
            if path is not None:
                try:
                    path.unlink()
                except OSError:
                    pass

    def _eager(self, registry: Registry) -> bool:
        """Whether to load every arm now: ``[placements] load``, and for "auto" whether the
        variants' memory (each once per placement that runs it) fits ``eager_memory_bytes``."""
        cfg = self.config.placements
        if cfg.load != "auto":
            return cfg.load == "eager"
        need = sum(arm.variant.memory_bytes for model in registry.newest() for arm in model.arms)
        eager = need <= cfg.eager_memory_bytes
        log.info("load = auto: the variants take about %.0f MiB loaded on every placement, %s %.0f MiB: %s",
                 need / 2**20, "within" if eager else "over", cfg.eager_memory_bytes / 2**20,
                 "loading them all now" if eager else "each loads on its first request")
        return eager

    def _preload(self, registry: Registry) -> None:
        for model in registry.newest():
            for arm in model.arms:
                self.pool.preload(arm.placement.name, model.version_dir, arm.variant.name)

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
        return rfd

    # --- main loop -----------------------------------------------------------------------
    def run(self) -> int:
        wake = self.install_signal_handlers()
        poller = zmq.Poller()
        # The ROUTERs are polled by their descriptors (the frontend's contract says why):
        routers = self.frontend.router_fds()
        router_fds = {sock: fd for fd, sock in routers.items()}
        unannounced: set[int] = set()   # ROUTERs with messages their descriptors will not announce
        sent = self.frontend.sent_on
        streams = self.frontend.streams   # unix:// endpoints: their descriptors change as clients come and go
        exit_fds: set[int] = set()
        rank: dict[Any, int] = {}

        def register() -> None:
            nonlocal poller, exit_fds, rank
            poller = zmq.Poller()
            # One round's events are handled in this order: the workers' results (completions
            # and replies before new intake), the request sockets, the signal pipe, then worker
            # deaths last (a replacement may reuse the dead one's descriptor numbers, so no
            # event of the round may be read after a restart).
            rank = {}
            for fd in self.pool.channel_fds():
                poller.register(fd, zmq.POLLIN)
                rank[fd] = 0
            for fd in routers:
                poller.register(fd, zmq.POLLIN)
                rank[fd] = 1
            streams.sync(poller, rank, fresh=True)
            poller.register(wake, zmq.POLLIN)
            rank[wake] = 2
            exit_fds = set(self.pool.exit_fds())
            for fd in exit_fds:
                poller.register(fd, zmq.POLLIN)
                rank[fd] = 3

        register()
        self.pool.on_change = register
        streams.on_change = lambda: streams.sync(poller, rank)
        watchdog_s = self.notifier.watchdog_interval_s() if self.config.server.watchdog else None
        next_watchdog = time.monotonic()
        drain_deadline = None
        next_tick = time.monotonic()
        timeout_ms = 1000.0 if watchdog_s is None else min(1000.0, watchdog_s * 1e3)
        spin_ns = self.config.server.spin_us * 1000
        books, collector = self.books, self.collector

        while True:
            # With bookkeeping waiting, look without blocking first: nothing to do means an idle
            # moment (e.g. a caller reading its reply), which is when that work is done.
            spin_until_ns = (None if not spin_ns or books.waiting or streams.backlogged   # (spin_us first:
                             else self._spin_until_ns(spin_ns))                           # off by default)
            wait_ms = timeout_ms
            restart_s = self.pool.next_restart_s()
            if restart_s is not None:
                wait_ms = min(wait_ms, restart_s * 1e3 + 1.0)
            learn_s = books.learn_due_s   # executions held for the policy: an idle flush then, unless a
            if learn_s is not None and not self.pool.running():   # run goes on (its reply's flush will do)
                wait_ms = min(wait_ms, max(0, math.ceil((learn_s - time.monotonic()) * 1e3)))
            if sent:   # replies went out on these ROUTERs: a message may have come unannounced
                unannounced.update(router_fds[sock] for sock in self.frontend.unannounced())
            events = poller.poll(0 if books.waiting or spin_until_ns or streams.backlogged or unannounced
                                 else wait_ms)
            if unannounced:
                events += [(fd, zmq.POLLIN) for fd in unannounced.difference(item for item, _ in events)]
                unannounced.clear()
            if not events and spin_until_ns:
                # [server] spin_us: a result due soon is picked up without a wake-up from sleep
                while not events and time.monotonic_ns() < spin_until_ns:
                    os.sched_yield()   # a worker sharing this core runs first
                    events = poller.poll(0)
                if not events:
                    events = poller.poll(wait_ms)
            self.path.round_events = n_events = len(events)   # (more than one: no long job runs inline)
            if n_events > 1:
                events.sort(key=lambda e: rank.get(e[0], 1))
            if not events and not streams.backlogged:   # an idle moment
                books.flush(hold=True)
                collector.idle()
            else:
                collector.busy()   # (a loop that is never idle collects too, less often)
                if books.full:   # a daemon that is never idle: a slice per round
                    books.flush_slice()
            for item, flags in events:
                if item in routers:
                    if self.path.drain(routers[item]):
                        unannounced.add(item)
                elif streams.owns(item):
                    for connection, envelope, frames, size in streams.on_event(item, flags):
                        self.path.on_stream_request(connection, envelope, frames, size)
                elif item == wake:
                    try:
                        os.read(wake, 512)
                    except BlockingIOError:
                        pass
                elif item in exit_fds:
                    for outcome in self.pool.on_exit(item):
                        self.path.on_outcome(outcome)
                else:
                    for outcome in self.pool.on_message(item):
                        self.path.on_outcome(outcome)
            if streams.backlogged:   # requests a stream sent beyond one round's intake
                for connection, envelope, frames, size in streams.backlog_round():
                    self.path.on_stream_request(connection, envelope, frames, size)

            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + 1.0
                self.housekeeping.tick(now)
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
                log.info("draining %d request(s)", len(self.path.pending))
            if self.draining:
                if self._stop_requested > 1 or not (self.path.pending or streams.backlogged) \
                        or now >= drain_deadline:
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

    def reload(self) -> str | None:
        """SIGHUP or ``reload`` (:meth:`_reload`). Not front-end work (it hashes new variant files:
        up to seconds on a board): with ``[server] rt_priority`` it runs under the fair scheduler."""
        realtime = self.realtime
        left = realtime is not None and not realtime.refused and realtime.leave()
        try:
            return self._reload()
        finally:
            if left:
                realtime.enter()

    def regions_gone(self, names: list[str]) -> None:
        """Regions just unlinked: the workers that mapped them unmap them."""
        if names:
            self.pool.broadcast("shm_unmap", {"regions": names})

    # --- reload and shutdown -------------------------------------------------------------
    def _reload(self) -> str | None:
        """Swap in a freshly loaded repository; on failure keep the old one and return why."""
        assert self.registry is not None
        self.books.flush()   # what was measured before goes to the policy it was measured for
        try:
            registry = load_registry(self.config.repository, self.placements, self.registry.generation + 1)
        except (RegistryError, OSError) as exc:
            log.error("reload failed, keeping the previous repository: %s", exc)
            return str(exc)
        self.registry = registry
        self.auth.reload()
        self.policy.reset(registry)
        self.fidelity.reset(registry)
        self.health.reset(registry, time.monotonic())
        self.admission.prepare(registry)
        keep = registry.directories() | {str(p.model.directory) for p in self.path.pending.values()}
        self.pool.unload_except(keep)
        self.path.loads_on_demand = not self._eager(registry)
        if not self.path.loads_on_demand:
            self._preload(registry)
        log.info("reloaded the repository (generation %d): %s", registry.generation, self._models_summary())
        return None

    def shutdown(self) -> int:
        self.collector.stop()
        self.books.flush()
        self.path.abandon_all()
        if self.metrics is not None:
            self.metrics.close()
        self.pool.stop()
        self.regions.close_all()
        if self.store is not None:
            self.store.close()
        if self.meter is not None:
            self.meter.close()
        self.frontend.close()
        self.auth.stop()
        self.context.term()
        self._unlink_stream_sockets()
        self.lock.release()
        self.notifier.close()
        log.info("stopped")
        return 0
