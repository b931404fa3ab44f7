"""Control requests (PROTOCOL.md §7 and §11): models, placements, stats, health, reload, explain and
the shared-memory regions.

Contract
--------
* :meth:`Control.reply` answers one parsed control request with its ``ok`` header (or raises a
  ``ProtocolError``). ``peer`` is the requesting peer, or None on the admin endpoint (which sees
  and ends every client's regions). Which types need the admin endpoint is the caller's check
  (``ADMIN_ONLY``).
* Handlers read the daemon's state and change only what their request asks: regions (register,
  end), the repository (reload). Every reply is a header; ``fidelity_export`` adds one body
  frame (the ``.npz``). They run on the daemon's main thread, after the deferred
  bookkeeping of answered requests, so statistics include every reply already sent.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from adaptd.daemon.shm import RegionError
from adaptd.daemon.execution import rss_bytes
from adaptd.wire import protocol as proto
from adaptd.wire import replies

log = logging.getLogger("adaptd.control")

ADMIN_ONLY = frozenset({"reload", "fidelity_export"})   # the export holds every client's inputs


class Control:
    """The control handlers over the daemon's state (``daemon``: a :class:`~adaptd.daemon.server.Daemon`)."""

    def __init__(self, daemon: Any) -> None:
        self.d = daemon

    def reply(self, request: proto.Request, peer: bytes | None) -> tuple[dict[str, Any], list[bytes]]:
        """The ``ok`` header and its body frames (none but for ``fidelity_export``)."""
        if request.type == "fidelity_export":
            body, frames = self.fidelity_export(request)
            return replies.ok_header(request.type, request.id, body), frames
        handler = getattr(self, request.type)
        body = handler(request, peer) if request.type.startswith("shm_") else handler(request)
        return replies.ok_header(request.type, request.id, body), []

    def models(self, request: proto.Request) -> dict[str, Any]:
        registry = self.d.registry
        return {"models": [m.describe(registry.models[m.name]) for m in registry.newest()],
                "placements": self.d.pool.snapshots()}

    def placements(self, request: proto.Request) -> dict[str, Any]:
        return {"placements": [{**s, "queue_limit": self.d.config.placements.queue_limit}
                               for s in self.d.pool.snapshots()]}

    def stats(self, request: proto.Request) -> dict[str, Any]:
        d = self.d
        now, mono = time.time(), time.monotonic()
        arms = []
        for model in d.registry.newest():
            for arm in model.arms:
                mem = d.pool.loaded_bytes(arm.placement.name, model.version_dir, arm.variant.name)
                arms.append({**d.books.stats_of(model, arm).snapshot(now, mem is not None, mem),
                             **d.health.describe(model, arm, mono)})
        return {"arms": arms, "energy": d.meter.describe(), "runtime": self.runtime(), "fidelity": d.fidelity.stats()}

    def fidelity_export(self, request: proto.Request) -> tuple[dict[str, Any], list[bytes]]:
        """§7.8: the reservoir of disagreeing inputs as one ``.npz`` body frame."""
        try:
            data, n = self.d.fidelity.export(request.model, request.version)
        except LookupError as exc:
            raise proto.ProtocolError(proto.UNKNOWN_MODEL if "no live fidelity" in str(exc) else proto.BAD_REQUEST,
                                      str(exc), request.id) from None
        return {"model": request.model, "items": n, "bytes": len(data), "format": "npz"}, [data]

    def runtime(self) -> dict[str, Any]:
        """What the daemon itself costs per inference: its process's CPU time since it started,
        less the executions run in it (thread placements), over the inferences answered; the
        energy, estimated from that CPU time."""
        d = self.d
        served = max(d.path.inferences, 1)
        shadow_s = d.fidelity.cpu_ms_in_process / 1e3   # the runtime's, shown apart from the requests'
        cpu_s = max(time.process_time() - d.started_cpu_s - d.path.execution_cpu_s_in_process - shadow_s, 0.0)
        energy_mj, source = d.meter.runtime_energy_mj(cpu_s / served)
        return {"inferences": d.path.inferences, "cpu_ms_per_request": cpu_s / served * 1e3,
                "executions_cpu_ms": d.path.execution_cpu_s_all * 1e3,
                "energy_mj_per_request": energy_mj, "source": source, "estimated": True,
                "shadow_cpu_ms": d.fidelity.cpu_ms, "shadow_energy_mj": d.fidelity.energy_mj}

    def health(self, request: proto.Request) -> dict[str, Any]:
        d = self.d
        streams = d.frontend.streams
        ipc_connections = sum(1 for c in streams.connections.values() if c.zmtp)   # served by the daemon's ZMTP
        return {"status": "draining" if d.draining else "serving",
                "uptime_s": time.time() - d.started_at, "pid": os.getpid(),
                "rss_bytes": rss_bytes(), "workers_rss_bytes": d.pool.workers_rss_bytes(),
                "requests": d.path.requests, "errors": d.path.errors, "in_flight": len(d.path.pending),
                "repository": str(d.registry.root), "generation": d.registry.generation,
                "store": d.store.describe(),
                "replay": {"entries": len(d.replays), "bytes": d.replays.bytes, "hits": d.replays.hits},
                "busy_refused_early": d.path.busy_early,
                "replies_unread_dropped": d.frontend.replies_unread_dropped + streams.replies_unread_dropped,
                "replies_to_departed": d.frontend.replies_to_departed + streams.replies_to_departed,
                "local_streams": {"connections": len(streams.connections) - ipc_connections,
                                  "refused": streams.refused},
                "ipc": {"engine": "adaptd" if streams.zmtp_listeners else "zeromq", "connections": ipc_connections},
                "authentication": "curve" if d.auth.enabled else "none",
                "front_end_scheduling": d.realtime.describe() if d.realtime is not None else "fair"}

    def shm_register(self, request: proto.Request, peer: bytes | None) -> dict[str, Any]:
        d = self.d
        d.regions_gone(d.regions.sweep_owners())
        if d.draining:
            raise proto.ProtocolError(proto.SHUTTING_DOWN, "the daemon is shutting down", request.id)
        assert request.size is not None
        try:
            region = d.regions.create(request.size, request.owner_pid, peer)
        except RegionError as exc:
            raise proto.ProtocolError(proto.BAD_REQUEST, exc.message, request.id) from None
        log.debug("region %s registered (%d bytes, owner pid %s)", region.name, region.size, region.owner_pid)
        return {"region": region.name, "size": region.size, "path": str(region.path)}

    def shm_unregister(self, request: proto.Request, peer: bytes | None) -> dict[str, Any]:
        d = self.d
        assert request.region is not None
        try:
            in_use = d.regions.lookup(request.region, peer).users
            d.regions_gone(d.regions.end(request.region, peer))
        except RegionError as exc:
            raise proto.ProtocolError(proto.UNKNOWN_REGION, exc.message, request.id) from None
        return {"region": request.region, "in_use": in_use}

    def shm_regions(self, request: proto.Request, peer: bytes | None) -> dict[str, Any]:
        self.d.regions_gone(self.d.regions.sweep_owners())
        return {"regions": self.d.regions.describe(peer)}

    def reload(self, request: proto.Request) -> dict[str, Any]:
        error = self.d.reload()
        if error:
            raise proto.ProtocolError(proto.INTERNAL, f"reload failed, still serving the previous repository: {error}",
                                      request.id)
        registry = self.d.registry
        return {"generation": registry.generation,
                "models": [{"name": m.name, "version": m.version} for m in registry.newest()]}

    def explain(self, request: proto.Request) -> dict[str, Any]:
        d = self.d
        model, candidates = d.admission.candidates(request)
        choice = d.policy.choose(model, request, candidates, d.pool, time.monotonic())
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
