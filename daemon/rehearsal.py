"""A rehearsal of the request path at start: the first request is not its code's first run.

Contract
--------
* :func:`rehearse` runs a few inference requests through a request path of its own
  (:class:`~adaptd.daemon.request_path.RequestPath`, its parts assembled as the daemon's are,
  around the daemon's registry, dispatcher and meter) before the daemon reports ready, so that a
  client's first request after start runs code that has run before: Python's interpreter
  specialises a function's instructions only after its first runs, and the selector compiles its
  loop for each kind of request on first use (every kind is compiled here too). The daemon's
  first request took 760 µs in-process against 208 to 280 for the next arms' first requests,
  and 247 after a rehearsal (docs/decisions.md, "A rehearsal before ready, and the collector at
  idle moments").
* Nothing of it is seen outside: its replies go nowhere, its records to no store or stream, its
  statistics, decisions and learning into parts that are dropped after it, its energy estimated
  (the meter records none of its runs), and it loads no variant. Its runs use the placements'
  interpreters, on the daemon's main thread as an inline run does (the placement's lock held),
  which is put back on its own cores after it. The daemon's CPU time per request (``stats``'
  ``runtime``) counts it, as it counts the rest of start-up.
* What it rehearses: arms whose placement runs in this process, whose variant is loaded and
  whose recorded run (measured by its build) is at most ``RUN_MAX_MS`` (a longer run makes the daemon's own path a small
  share of a request; a variant loaded on first use, or one in a worker process, is not
  rehearsed). ``PINNED`` requests are pinned to them, the shortest first, in turn, and
  ``UNPINNED`` the policy chooses for, for a model whose every arm is among them; each is a
  header not seen before. No request is sent once they have taken ``BUDGET_S``. A job handed to
  a placement's thread is not rehearsed: every rehearsal run is inline. About 35 ms of the
  demo's start here.
* It never stops a start: a fault is logged and the start goes on.
* Called once, by the daemon's main thread, after eager loads and before the loop starts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, NamedTuple

import numpy as np

from adaptd.daemon.power.meter import EnergyReading
from adaptd.selector import kernel
from adaptd.wire import protocol as proto

log = logging.getLogger("adaptd")

PEER = b"\x00rehearsal"
OBJECTIVES = ("latency", "energy", "accuracy")
PINNED = 16       # requests pinned to an arm, the shortest runs' arms first, in turn
UNPINNED = 12     # requests the stand-in's policy chooses for: each objective in turn, every other with a bound
BUDGET_S = 0.25   # no request is sent once the requests have taken this long
RUN_MAX_MS = 5.0  # only arms whose recorded run is this short (where the daemon's own path counts)


class Rehearsal(NamedTuple):
    """What a rehearsal did: requests sent, answered with a result, and its error replies by code."""

    sent: int = 0
    results: int = 0
    errors: dict[str, int] = {}


class _NoFrontend:
    """Replies dropped; no sockets, no stream connection waiting."""

    admin: frozenset = frozenset()
    sent_on: set = set()
    streams = type("Streams", (), {"backlogged": False})()
    replies_unread_dropped = replies_to_departed = 0

    def send(self, route: Any, frames: list[Any]) -> bool:
        return True


class _NoStore:
    """Records dropped."""

    def submit(self, record: Any) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {}


class _EstimatedMeter:
    """The daemon's meter for the rehearsal: its estimates, none of its records (a measured
    execution's share of a rail's power is kept for the executions beside it)."""

    def __init__(self, meter: Any) -> None:
        self._meter = meter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._meter, name)

    def attribute(self, placement: Any, t0_ns: int, t1_ns: int, cpu_time_s: float, *, wait: bool = True) -> Any:
        return EnergyReading(*self._meter.runtime_energy_mj(cpu_time_s), True)


class _InlineOnly:
    """The daemon's dispatcher for the rehearsal: every job runs now on this thread, where the
    placement runs in this process and the variant is loaded; none queues, none loads."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self.path: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def submit(self, placement: str, job: Any) -> bool:
        outcome = self._pool.run_inline(placement, job)
        if outcome is None:
            return False   # answered BUSY, to nobody
        self.path.on_outcome(outcome)
        return True

    def preload(self, *args: Any, **kwargs: Any) -> None:
        pass


def rehearse(daemon: Any, budget_s: float = BUDGET_S) -> Rehearsal:
    """Run the rehearsal for ``daemon`` (a started :class:`~adaptd.daemon.server.Daemon` whose
    workers are ready and eager loads done); no request is sent once the requests have taken
    ``budget_s``. Never raises: a fault is logged."""
    started = time.perf_counter()
    try:
        done = _rehearse(daemon, budget_s)
    except Exception:  # noqa: BLE001 - a rehearsal must not stop a start
        log.warning("the request path's rehearsal failed; serving without it", exc_info=True)
        return Rehearsal()
    finally:
        threads = getattr(daemon.pool, "threads", None)
        if threads is not None:   # (an inline run leaves the main thread on its placement's cores)
            threads.go_home()
    log.debug("request path rehearsed: %d requests, %d results, errors %s, in %.0f ms", done.sent, done.results,
              done.errors or "none", (time.perf_counter() - started) * 1e3)
    return done


def _rehearse(daemon: Any, budget_s: float) -> Rehearsal:
    for bounds in ((a, b, c) for a in (False, True) for b in (False, True) for c in (False, True)):
        for objective in OBJECTIVES:
            for queued in (False, True):
                kernel.scanner(bounds, objective, queued)   # (each compiled on first use)
    pool = daemon.pool
    served = [(m, a) for m in daemon.registry.newest() for a in m.arms
              if pool.in_process(a.placement.name) and pool.is_loaded(a.placement.name, m.version_dir, a.variant.name)]
    arms = sorted(((m, a) for m, a in served if a.variant.latency_ms_1thread.n and _run_ms(a) <= RUN_MAX_MS),
                  key=lambda arm: _run_ms(arm[1]))   # (n = 0: a build that did not measure it)
    if not arms:
        return Rehearsal()
    # (a request the policy chooses for may run any of its model's arms: only a model whose every
    # arm runs here and is short)
    models = {m.key: m for m, _ in arms}
    whole = [m for m in models.values() if sum(1 for n, _ in arms if n is m) == len(m.arms)]
    path = _stand_in(daemon)
    inputs = {m.key: [np.zeros([d if d > 0 else 1 for d in spec.shape], spec.dtype) for spec in m.manifest.inputs]
              for m, _ in arms}
    plan = [(m, {"pin_variant": a.variant.name, "pin_placement": a.placement.name})
            for m, a in (arms[i % len(arms)] for i in range(PINNED))]
    plan += [(whole[0], {"objective": OBJECTIVES[i % len(OBJECTIVES)],
                         "constraints": {"max_latency_ms": 1e3} if i % 2 else None})
             for i in range(UNPINNED if whole else 0)]
    deadline = time.perf_counter() + budget_s
    sent = 0
    for model, fields in plan:
        if time.perf_counter() > deadline:
            break
        header = proto.request_header(f"rehearsal-{sent}", model.name, inputs[model.key], version=model.version,
                                      client=f"rehearsal-{sent}", **fields)   # (a header not seen before)
        bodies = [memoryview(x.tobytes()) for x in inputs[model.key]]   # (as a connection reads them)
        path.on_stream_request(_Route(), (), [proto.SIGNATURE, proto.pack(header), *bodies], 0)
        sent += 1
        path.d.books.flush()
    return Rehearsal(sent, path.inferences, dict(path.errors_by_code))


def _run_ms(arm: Any) -> float:
    """The arm's recorded single-threaded run (the build machine's median)."""
    return arm.variant.latency_ms_1thread.median


def _stand_in(daemon: Any) -> Any:
    """A request path of the rehearsal's own (see the module's contract)."""
    from adaptd.daemon.server import Daemon   # (the daemon's module imports this one)

    cfg = daemon.config
    cfg = dataclasses.replace(cfg, fidelity=dataclasses.replace(cfg.fidelity, enabled=False))
    pool = _InlineOnly(daemon.pool)
    stand_in = Daemon(cfg, policy=None)
    # (assembly sets the dispatcher's callbacks: on the stand-in's dispatcher, not the daemon's)
    stand_in.assemble(registry=daemon.registry, placements=daemon.placements, pool=pool,
                      meter=_EstimatedMeter(daemon.meter), store=_NoStore(), frontend=_NoFrontend())
    policy = stand_in.policy
    for name in ("energy_prior", "overhead_ms"):
        if hasattr(daemon.policy, name):
            setattr(policy, name, getattr(daemon.policy, name))
    selection_log = logging.getLogger("adaptd.selection")
    level = selection_log.level
    selection_log.setLevel(logging.WARNING)   # (the daemon's own selector has said what it is)
    try:
        policy.reset(daemon.registry)
    finally:
        selection_log.setLevel(level)
    stand_in.admission.prepare(daemon.registry)
    pool.path = stand_in.path
    return stand_in.path


class _Route:
    """A connection that nobody reads (the stand-in frontend drops what is sent to it)."""

    peer = PEER
    awaiting = 1
    backlog = ()
