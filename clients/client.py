"""The synchronous adaptd client, and what it shares with the asyncio one (``aio.py``).

Contract
--------
* Lifecycle: ``Client(endpoint)`` creates one ``DEALER`` socket and connects it (ZeroMQ
  connects lazily: constructing a client never fails because the daemon is not up yet);
  :meth:`Client.close` (or ``with Client() as c:``) closes it, asking the daemon to end this
  client's regions first, once each and within ``CLOSE_TIMEOUT_MS`` in all, so that it
  returns in that time when the daemon is gone. No use after close.
* Threads: a ``Client`` may be shared between threads; calls are serialised by a lock
  (one request outstanding at a time). For many concurrent requests use
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
* Units: ``*_ms`` milliseconds, ``*_mj`` millijoules, accuracy a share in [0, 1]. Energy
  that was estimated (no power sensor) has ``Energy.estimated`` true and a ``source``
  starting with ``estimated``; present it as an estimate.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from typing import Any

import zmq

from adaptd.clients.endpoints import (ADMIN_ENDPOINT_ENV, ENDPOINT_ENV, PUB_ENDPOINT_ENV, default_admin_endpoint,
                                      default_endpoint, default_pub_endpoint, default_runtime_dir)
from adaptd.clients.errors import AdaptdError, ReplyError, RequestTimeout, error_from_header
from adaptd.clients.messages import (as_input_arrays, body_from_reply, constraints_dict, control_message,
                                     infer_message, input_frames, new_request_id, reply_id, result_from_reply)
from adaptd.clients.regions import Region, ShmTensor, outputs_ref
from adaptd.clients.results import Energy, Explanation, InferResult, Predicted, Reason, Selection, Timing
from adaptd.wire.frames import recv_frames, send_frames
from adaptd.wire.auth import CurveKeys

DEFAULT_TIMEOUT_MS = 30_000.0
DEFAULT_RETRIES = 2
# close() asks the daemon to end this client's regions, once each, within this budget in all;
# those it has not ended when the budget runs out are only unmapped here (the daemon ends a
# region when the process that registered it exits, §11.2).
CLOSE_TIMEOUT_MS = 2000.0
DEFAULT_BUSY_BACKOFF_MS = 2.0      # the first wait before resending a request answered BUSY
BUSY_BACKOFF_MAX_MS = 100.0        # the longest such wait


def new_dealer(context: zmq.Context, endpoint: str, curve: CurveKeys | None = None) -> zmq.Socket:
    """A DEALER connected to ``endpoint`` with a random 16-byte routing identity (the daemon keys a
    client's stored replies and regions on it: a random one cannot be guessed and claimed by
    another local client) and, with ``curve``, CurveZMQ keys."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"\x01" + os.urandom(15))   # ZeroMQ reserves a leading zero byte
    if curve is not None:
        curve.apply(sock)
    sock.connect(endpoint)
    return sock


# --- the synchronous client ----------------------------------------------------------------------

class ClientSettings:
    """What the synchronous and the asyncio client share: where, how long, how often, who."""

    def __init__(self, endpoint: str | None, timeout_ms: float, retries: int, name: str | None,
                 busy_retries: int = 0, busy_backoff_ms: float = DEFAULT_BUSY_BACKOFF_MS,
                 curve: CurveKeys | None = None) -> None:
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be > 0, got {timeout_ms}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if busy_retries < 0:
            raise ValueError(f"busy_retries must be >= 0, got {busy_retries}")
        if not 0 < busy_backoff_ms <= BUSY_BACKOFF_MAX_MS:
            raise ValueError(f"busy_backoff_ms must be in (0, {BUSY_BACKOFF_MAX_MS:g}], got {busy_backoff_ms}")
        self.endpoint = endpoint or default_endpoint()
        # CurveZMQ keys: given, else from $ADAPTD_CURVE_CLIENT_KEY / $ADAPTD_CURVE_SERVER_KEY, else none
        self.curve = curve if curve is not None else CurveKeys.from_env()
        self.timeout_ms = float(timeout_ms)
        self.retries = int(retries)
        self.busy_retries = int(busy_retries)
        self.busy_backoff_ms = float(busy_backoff_ms)
        self.name = name
        self.stale_replies = 0      # replies for ids no longer awaited, discarded
        self.retried = 0            # resends after a timeout (same id)
        self.busy_retried = 0       # resends after a BUSY reply (same id)
        self.regions: dict[str, Region] = {}
        self._jitter = random.Random()

    def _resend_busy(self, header: dict[str, Any], retry: int) -> bool:
        """Whether the reply ``header`` to the ``retry``-th resend (0 for the first send) is a
        BUSY that ``busy_retries`` asks to send again; counts the resend when it is."""
        if retry >= self.busy_retries or header.get("type") != "error" or header.get("code") != "BUSY":
            return False
        self.busy_retried += 1
        return True

    def close_budget_deadline(self) -> float:
        """When close() stops asking the daemon to end regions (``time.monotonic()`` seconds)."""
        return time.monotonic() + min(self.timeout_ms, CLOSE_TIMEOUT_MS) / 1e3

    def busy_wait_s(self, retry: int) -> float:
        """The wait before the ``retry``-th resend (0-based) of a request answered BUSY: the
        backoff doubled per retry, capped, times a random factor in [0.5, 1) so that clients
        refused together do not come back together."""
        cap_ms = min(self.busy_backoff_ms * 2.0 ** retry, BUSY_BACKOFF_MAX_MS)
        return cap_ms * (0.5 + 0.5 * self._jitter.random()) / 1e3


class Client(ClientSettings):
    """Blocking ADPT/1 client over one DEALER socket (see the module docstring)."""

    def __init__(self, endpoint: str | None = None, *, timeout_ms: float = DEFAULT_TIMEOUT_MS,
                 retries: int = DEFAULT_RETRIES, context: zmq.Context | None = None,
                 name: str | None = None, busy_retries: int = 0,
                 busy_backoff_ms: float = DEFAULT_BUSY_BACKOFF_MS, curve: CurveKeys | None = None) -> None:
        super().__init__(endpoint, timeout_ms, retries, name, busy_retries, busy_backoff_ms, curve)
        self._lock = threading.Lock()
        self._socket = new_dealer(context or zmq.Context.instance(), self.endpoint, self.curve)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._closed = False

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Unregister this client's regions (best effort: one attempt each, all within
        ``CLOSE_TIMEOUT_MS``, so a client whose daemon is gone closes in that time), unmap them,
        close the socket."""
        deadline = self.close_budget_deadline()
        for region in list(self.regions.values()):
            left_ms = (deadline - time.monotonic()) * 1e3
            if left_ms < 1.0:
                break
            with contextlib.suppress(AdaptdError, RuntimeError):   # it unmaps the region either way
                self.unregister_region(region, timeout_ms=left_ms, retries=0)
        for region in self.regions.values():   # the daemon is gone or slow: its owner's exit ends them
            region.close()
        self.regions.clear()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._socket.close(0)

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
        holds (PROTOCOL.md §4.2; default the daemon's configured confidence)."""
        rid = request_id or new_request_id()
        frames = infer_message(rid, model, inputs, version=version, min_accuracy=min_accuracy,
                               max_latency_ms=max_latency_ms, max_energy_mj=max_energy_mj,
                               objective=objective, on_infeasible=on_infeasible, variant=variant,
                               placement=placement, explain=explain, client=self.name,
                               regions=tuple(self.regions.values()), outputs_to=outputs_to,
                               latency_confidence=latency_confidence)
        started = time.perf_counter()
        header, bodies = self._roundtrip(rid, frames, timeout_ms)
        retry = 0
        while self._resend_busy(header, retry):
            time.sleep(self.busy_wait_s(retry))
            retry += 1
            header, bodies = self._roundtrip(rid, frames, timeout_ms)
        return result_from_reply(header, bodies, (time.perf_counter() - started) * 1e3, self.regions)

    def register_region(self, nbytes: int, timeout_ms: float | None = None) -> Region:
        """Ask the daemon for a shared-memory region of ``nbytes`` and map it (PROTOCOL.md §11).

        The region lives until :meth:`unregister_region`, :meth:`close`, this process's exit or
        the daemon's exit."""
        rid = new_request_id()
        header, _ = self._roundtrip(rid, control_message(rid, "shm_register", size=int(nbytes),
                                                         owner_pid=os.getpid()), timeout_ms)
        body = body_from_reply(header, "shm_register")
        try:
            region = Region(str(body["region"]), int(body["size"]), str(body["path"]))
        except BaseException:
            rid = new_request_id()
            self._roundtrip(rid, control_message(rid, "shm_unregister", region=body["region"]), timeout_ms)
            raise
        self.regions[region.name] = region
        return region

    def unregister_region(self, region: Region | str, timeout_ms: float | None = None,
                          retries: int | None = None) -> None:
        """End a region at the daemon (requests already holding it finish first) and unmap it here."""
        name = region if isinstance(region, str) else region.name
        mapped = self.regions.pop(name, None)
        try:
            rid = new_request_id()
            header, _ = self._roundtrip(rid, control_message(rid, "shm_unregister", region=name), timeout_ms,
                                        retries)
            body_from_reply(header, "shm_unregister")
        finally:
            if mapped is not None:
                mapped.close()
            if isinstance(region, Region):
                region.close()

    def shm_regions(self, timeout_ms: float | None = None) -> list[dict[str, Any]]:
        """The daemon's registered regions (``shm_regions``, §11.2)."""
        return list(self._control("shm_regions", timeout_ms)["regions"])

    def explain(self, model: str, *, version: str | None = None, min_accuracy: float | None = None,
                max_latency_ms: float | None = None, max_energy_mj: float | None = None,
                objective: str = "latency", on_infeasible: str = "reject", variant: str | None = None,
                placement: str | None = None, request_id: str | None = None,
                timeout_ms: float | None = None, latency_confidence: float | None = None) -> Explanation:
        """Dry run: what the daemon would choose now, and why (nothing runs)."""
        rid = request_id or new_request_id()
        frames = infer_message(rid, model, (), version=version, min_accuracy=min_accuracy,
                               max_latency_ms=max_latency_ms, max_energy_mj=max_energy_mj,
                               objective=objective, on_infeasible=on_infeasible, variant=variant,
                               placement=placement, explain=True, client=self.name, request_type="explain",
                               latency_confidence=latency_confidence)
        header, _ = self._roundtrip(rid, frames, timeout_ms)
        return Explanation.from_body(body_from_reply(header, "explain"))

    def models(self, timeout_ms: float | None = None) -> dict[str, Any]:
        """Body of ``models`` (§7.1): ``models`` (with their variants) and ``placements``."""
        return self._control("models", timeout_ms)

    def placements(self, timeout_ms: float | None = None) -> dict[str, Any]:
        return self._control("placements", timeout_ms)

    def stats(self, timeout_ms: float | None = None) -> dict[str, Any]:
        """Body of ``stats`` (§7.3): ``arms`` (one map per variant x placement) and ``energy``."""
        return self._control("stats", timeout_ms)

    def health(self, timeout_ms: float | None = None) -> dict[str, Any]:
        return self._control("health", timeout_ms)

    def reload(self, timeout_ms: float | None = None) -> dict[str, Any]:
        """Reload the daemon's repository; the daemon accepts it on its admin endpoint only
        (:func:`default_admin_endpoint`): elsewhere it is answered ``FORBIDDEN``."""
        return self._control("reload", timeout_ms)

    def _control(self, request_type: str, timeout_ms: float | None) -> dict[str, Any]:
        rid = new_request_id()
        header, _ = self._roundtrip(rid, control_message(rid, request_type), timeout_ms)
        return body_from_reply(header, request_type)

    def _roundtrip(self, rid: str, frames: list[Any], timeout_ms: float | None,
                   retries: int | None = None) -> tuple[dict[str, Any], list[memoryview]]:
        timeout_s = (timeout_ms if timeout_ms is not None else self.timeout_ms) / 1e3
        retries = self.retries if retries is None else retries
        with self._lock:
            if self._closed:
                raise RuntimeError("client is closed")
            for attempt in range(retries + 1):
                if attempt:
                    self.retried += 1
                deadline = time.monotonic() + timeout_s
                if not self._send(frames, deadline):
                    continue
                while (remaining := deadline - time.monotonic()) > 0:
                    if not self._poller.poll(max(1, int(remaining * 1e3))):
                        continue
                    reply = recv_frames(self._socket)
                    got, header, bodies = reply_id(reply)
                    if header is None:
                        raise ReplyError("undecodable reply from the daemon", request_id=rid)
                    if got == rid:
                        return header, bodies
                    if got is None and header.get("type") == "error":
                        raise error_from_header(header)   # daemon could not read our id
                    self.stale_replies += 1               # a late reply to an earlier request
        attempts = retries + 1
        raise RequestTimeout(f"no reply from {self.endpoint} within {timeout_s * 1e3:.0f} ms "
                             f"({attempts} attempt{'s' if attempts > 1 else ''}, same id)", request_id=rid)

    def _send(self, frames: list[Any], deadline: float) -> bool:
        while True:
            try:
                send_frames(self._socket, frames, zmq.NOBLOCK)
                return True
            except zmq.Again:   # high-water mark reached (daemon away): wait for room
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._socket.poll(max(1, int(remaining * 1e3)), zmq.POLLOUT):
                    return False


__all__ = [
    "AdaptdError", "Client", "Energy", "Explanation", "InferResult", "Predicted", "Reason", "Region",
    "Selection", "ShmTensor", "Timing", "default_admin_endpoint", "default_endpoint", "default_pub_endpoint",
    "default_runtime_dir",
]
