"""The synchronous adaptd client: a blocking shell around :class:`adaptd.clients.core.ClientCore`.

The core builds the messages, matches the replies and decides every retry; this module owns the
socket, waits on it and sleeps when the core says so. The asyncio client (``aio.py``) is the
other shell around the same core.

Contract
--------
* Lifecycle: ``Client(endpoint)`` creates one ``DEALER`` socket and connects it (ZeroMQ
  connects lazily: constructing a client never fails because the daemon is not up yet), or, for
  a ``unix://`` endpoint, the daemon's local stream (PROTOCOL.md §2.3; connected on first use and
  again after the daemon restarted: :mod:`adaptd.clients.transports`). The default endpoint is
  the local stream where the daemon serves one (:func:`default_endpoint`);
  :meth:`Client.close` (or ``with Client() as c:``) closes it, asking the daemon to end this
  client's regions first, once each and within ``CLOSE_TIMEOUT_MS`` in all, so that it
  returns in that time when the daemon is gone. No use after close.
* Threads: a ``Client`` may be shared between threads; calls are serialised by a lock
  (one request outstanding at a time, its BUSY waits included). For many concurrent requests use
  :class:`adaptd.clients.aio.AsyncClient`, or one ``Client`` per thread.
* Replies are matched by request id. A reply for an id the client no longer waits for (the
  late answer to a request that timed out, then succeeded on retry) is discarded and counted
  in ``stale_replies``.
* Timeouts and retries: each attempt waits ``timeout_ms``; after a timeout the *same*
  message is sent again with the *same* id, at most ``retries`` times, so the daemon runs it
  at most once (PROTOCOL.md §8). Then :class:`~adaptd.clients.errors.RequestTimeout`. Error
  replies are not retried by the client, but for ``BUSY`` when asked (``busy_retries``, 0 by
  default): an inference answered ``BUSY`` (the placement's queue full, nothing run) is sent
  again with the same id after a randomised, doubling wait (``busy_backoff_ms``, at most
  ``BUSY_BACKOFF_MAX_MS``), at most ``busy_retries`` times, then ``BusyError``; each retry is
  counted in ``busy_retried``. ``BUSY``, ``WORKER_FAILED`` and ``SHUTTING_DOWN`` raise a
  :class:`~adaptd.clients.errors.TransientError` the caller may retry.
* Zero copy: input arrays are sent as their own frames with ``copy=False`` (pyzmq still
  copies frames under its 64 KiB threshold, where copying is cheaper). Do not modify an input
  array while its request is in flight. Outputs are numpy views over the reply frames
  (``np.frombuffer``, no copy); ``np.array(out)`` gives an independent copy.
* Shared memory (PROTOCOL.md §11), for a client on the daemon's machine:
  :meth:`Client.register_region` asks the daemon for a region and maps it here; arrays made with
  :meth:`Region.ndarray` (or any C-contiguous array whose bytes lie inside a registered region)
  are then sent by region and offset instead of as frames, and ``outputs_to=region`` has the
  outputs written into the region (the returned outputs are views of it, overwritten by the next
  request that writes there). Do not modify a region's input bytes while a request reading them
  is in flight. A region ends with :meth:`Client.unregister_region`, :meth:`Client.close`, the
  exit of the process that registered it, or the daemon's exit; the inline path stays the default.
* Attributes: the settings (``endpoint``, ``timeout_ms``, ``retries``, ``busy_retries``,
  ``busy_backoff_ms``, ``name``, ``curve``; read-only, validated once: ``ValueError``), the
  counters ``stale_replies``, ``retried`` and ``busy_retried``, ``regions`` (name -> Region)
  and ``core``, the protocol state they are read from.
* Units: ``*_ms`` milliseconds, ``*_mj`` millijoules, accuracy a share in [0, 1]. Energy
  that was estimated (no power sensor) has ``Energy.estimated`` true and a ``source``
  starting with ``estimated``; present it as an estimate.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Generator
from typing import Any

import zmq

from adaptd.clients.core import (Call, ClientCore, CoreAttributes, Done, Event, Send, Stale, Unattributed,
                                 Undecodable)
# Several names below are imported only so that they stay importable from this module, as they
# have been (``__all__``): the endpoint variables, the settings and their constants, the reply
# classes, the regions and infer_message.
from adaptd.clients.endpoints import (ADMIN_ENDPOINT_ENV, ENDPOINT_ENV, PUB_ENDPOINT_ENV, default_admin_endpoint,
                                      default_endpoint, default_pub_endpoint, default_runtime_dir)
from adaptd.clients.errors import AdaptdError
from adaptd.clients.messages import infer_message
from adaptd.clients.regions import Region, ShmTensor
from adaptd.clients.results import Energy, Explanation, InferResult, Predicted, Reason, Selection, Timing
from adaptd.clients.settings import (BUSY_BACKOFF_MAX_MS, CLOSE_TIMEOUT_MS, DEFAULT_BUSY_BACKOFF_MS, DEFAULT_RETRIES,
                                     DEFAULT_TIMEOUT_MS, ClientSettings)
from adaptd.wire.auth import CurveKeys
from adaptd.clients.transports import new_dealer, open_transport

__all__ = [
    "Client", "new_dealer",
    # kept importable from here, as they have been
    "ADMIN_ENDPOINT_ENV", "ENDPOINT_ENV", "PUB_ENDPOINT_ENV", "default_admin_endpoint", "default_endpoint",
    "default_pub_endpoint", "default_runtime_dir", "AdaptdError", "infer_message", "Region", "ShmTensor",
    "Energy", "Explanation", "InferResult", "Predicted", "Reason", "Selection", "Timing",
    "BUSY_BACKOFF_MAX_MS", "CLOSE_TIMEOUT_MS", "DEFAULT_BUSY_BACKOFF_MS", "DEFAULT_RETRIES", "DEFAULT_TIMEOUT_MS",
    "ClientSettings", "CurveKeys",
]


class Client(CoreAttributes):
    """Blocking ADPT/1 client over one connection (see the module docstring)."""

    def __init__(self, endpoint: str | None = None, *, timeout_ms: float = DEFAULT_TIMEOUT_MS,
                 retries: int = DEFAULT_RETRIES, context: zmq.Context | None = None,
                 name: str | None = None, busy_retries: int = 0,
                 busy_backoff_ms: float = DEFAULT_BUSY_BACKOFF_MS, curve: CurveKeys | None = None) -> None:
        self._core = ClientCore(ClientSettings.resolve(
            endpoint, timeout_ms=timeout_ms, retries=retries, name=name, busy_retries=busy_retries,
            busy_backoff_ms=busy_backoff_ms, curve=curve))
        self._lock = threading.Lock()
        self._transport = open_transport(self.endpoint, context or zmq.Context.instance(), self.curve)
        self._closed = False

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Unregister this client's regions (best effort: one attempt each, all within
        ``CLOSE_TIMEOUT_MS``, so a client whose daemon is gone closes in that time), unmap them,
        close the socket."""
        core = self._core
        deadline = core.close_deadline(time.monotonic())
        while (step := core.next_region_to_end(deadline, time.monotonic())) is not None:
            with contextlib.suppress(AdaptdError, RuntimeError):   # it unmaps the region either way
                self.unregister_region(step[0], timeout_ms=step[1], retries=0)
        core.unmap_regions()   # the daemon is gone or slow: its owner's exit ends them
        with self._lock:
            if not self._closed:
                self._closed = True
                self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- requests -----------------------------------------------------------------------

    def infer(self, model: str, inputs: Any, *, version: str | None = None,
              min_accuracy: float | None = None, max_latency_ms: float | None = None,
              max_energy_mj: float | None = None, objective: str = "latency",
              on_infeasible: str = "reject", variant: str | None = None, placement: str | None = None,
              explain: bool = False, request_id: str | None = None,
              timeout_ms: float | None = None, outputs_to: Any = None,
              latency_confidence: float | None = None) -> InferResult:
        """Run one inference; returns the outputs and the selection, or raises an AdaptdError.

        Inputs whose bytes lie in one of this client's regions (or ShmTensor) go by reference;
        ``outputs_to`` (a Region, ``(region, offset)`` or ShmTensor) has the outputs written there.
        ``latency_confidence`` (in [0.5, 1)): how sure the daemon must be that ``max_latency_ms``
        holds (PROTOCOL.md §4; default the daemon's configured confidence)."""
        return self._exchange(self._core.infer(
            model, inputs, version=version, min_accuracy=min_accuracy, max_latency_ms=max_latency_ms,
            max_energy_mj=max_energy_mj, objective=objective, on_infeasible=on_infeasible, variant=variant,
            placement=placement, explain=explain, request_id=request_id, timeout_ms=timeout_ms,
            outputs_to=outputs_to, latency_confidence=latency_confidence))

    def register_region(self, nbytes: int, timeout_ms: float | None = None) -> Region:
        """Ask the daemon for a shared-memory region of ``nbytes`` and map it (PROTOCOL.md §11).

        The region lives until :meth:`unregister_region`, :meth:`close`, this process's exit or
        the daemon's exit."""
        return self._run(self._core.register_region(nbytes, timeout_ms))

    def unregister_region(self, region: Region | str, timeout_ms: float | None = None,
                          retries: int | None = None) -> None:
        """End a region at the daemon (requests already holding it finish first) and unmap it here."""
        self._run(self._core.unregister_region(region, timeout_ms, retries))

    def shm_regions(self, timeout_ms: float | None = None) -> list[dict[str, Any]]:
        """The daemon's registered regions (``shm_regions``, §11.2)."""
        return list(self._exchange(self._core.control("shm_regions", timeout_ms))["regions"])

    def explain(self, model: str, *, version: str | None = None, min_accuracy: float | None = None,
                max_latency_ms: float | None = None, max_energy_mj: float | None = None,
                objective: str = "latency", on_infeasible: str = "reject", variant: str | None = None,
                placement: str | None = None, request_id: str | None = None,
                timeout_ms: float | None = None, latency_confidence: float | None = None) -> Explanation:
        """Dry run: what the daemon would choose now, and why (nothing runs)."""
        return self._exchange(self._core.explain(
            model, version=version, min_accuracy=min_accuracy, max_latency_ms=max_latency_ms,
            max_energy_mj=max_energy_mj, objective=objective, on_infeasible=on_infeasible, variant=variant,
            placement=placement, request_id=request_id, timeout_ms=timeout_ms,
            latency_confidence=latency_confidence))

    def models(self, timeout_ms: float | None = None) -> dict[str, Any]:
        """Body of ``models`` (§7.1): ``models`` (with their variants) and ``placements``."""
        return self._exchange(self._core.control("models", timeout_ms))

    def placements(self, timeout_ms: float | None = None) -> dict[str, Any]:
        return self._exchange(self._core.control("placements", timeout_ms))

    def stats(self, timeout_ms: float | None = None) -> dict[str, Any]:
        """Body of ``stats`` (§7.3): ``arms`` (one map per variant x placement) and ``energy``."""
        return self._exchange(self._core.control("stats", timeout_ms))

    def health(self, timeout_ms: float | None = None) -> dict[str, Any]:
        return self._exchange(self._core.control("health", timeout_ms))

    def reload(self, timeout_ms: float | None = None) -> dict[str, Any]:
        """Reload the daemon's repository; the daemon accepts it on its admin endpoint only
        (:func:`default_admin_endpoint`): elsewhere it is answered ``FORBIDDEN``."""
        return self._exchange(self._core.control("reload", timeout_ms))

    def fidelity_export(self, model: str, version: str | None = None,
                        timeout_ms: float | None = None) -> tuple[dict[str, Any], bytes]:
        """The daemon's reservoir of inputs its variants disagreed on (§7.7; admin endpoint only):
        the reply's body and the ``.npz`` bytes, which ``adaptd variants build --data`` accepts."""
        return self._exchange(self._core.fidelity_export(model, version, timeout_ms))

    # --- I/O ----------------------------------------------------------------------------

    def _run(self, operation: Generator[Call, Any, Any]) -> Any:
        """Drive one of the core's multi-request operations: each call it yields is exchanged and
        its value sent back; a failure closes the operation (its cleanup runs) and propagates."""
        with contextlib.closing(operation):
            try:
                call = next(operation)
                while True:
                    call = operation.send(self._exchange(call))
            except StopIteration as done:
                return done.value

    def _exchange(self, call: Call) -> Any:
        """Send ``call`` and wait for its outcome, as the core directs; its value or its exception."""
        core = self._core
        rid = call.request_id
        with self._lock:
            if self._closed:
                raise RuntimeError("client is closed")
            event = core.start(call, time.monotonic())
            try:
                while type(event) is Send:
                    if event.wait_s > 0:
                        time.sleep(event.wait_s)   # BUSY: the core's randomised wait
                    event = self._attempt(rid, event.frames, core.sending(rid, time.monotonic()))
            finally:
                core.forget(rid)
        if type(event) is Done:
            return event.value
        raise event.error

    def _attempt(self, rid: str, frames: list[Any], deadline: float) -> Event:
        """One attempt: send, then read replies until this request's event or the deadline."""
        core, transport = self._core, self._transport
        if transport.send(frames, deadline):
            while (remaining := deadline - time.monotonic()) > 0:
                if not transport.wait(max(1, int(remaining * 1e3))):
                    continue
                message = transport.recv()
                if message is None:                        # a stream's partial read
                    continue
                event = core.receive(message, time.monotonic())
                kind = type(event)
                if kind is Stale:
                    continue                               # a late reply to an earlier request
                if kind is Undecodable:
                    return core.undecodable(rid)
                if kind is Unattributed:                   # the daemon could not read our id
                    return core.fail_awaiting(event.error)[0]
                return event                               # ours: the only request in flight
        return core.timed_out(rid)


__all__ = [
    "AdaptdError", "Client", "Energy", "Explanation", "InferResult", "Predicted", "Reason", "Region",
    "Selection", "ShmTensor", "Timing", "default_admin_endpoint", "default_endpoint", "default_pub_endpoint",
    "default_runtime_dir",
]
