"""The asyncio adaptd client: many requests outstanding on one DEALER socket.

Contract
--------
* Same API as :class:`adaptd.clients.client.Client`, with ``async def``; same results,
  exceptions, timeouts and retry rules (after a timeout the same frames are sent again under
  the same id, at most ``retries`` times, then ``RequestTimeout``; a ``BUSY`` reply is retried
  likewise when ``busy_retries`` asks for it, the waits awaited, not slept).
* Lifecycle: construct anywhere; the socket is created and a reader task started on the
  first request, inside the running event loop, and both belong to that loop. ``await
  close()`` (or ``async with``) cancels the reader and fails any request still waiting with
  ``RuntimeError``.
* Concurrency: any number of coroutines of the one loop may call it at once; replies, in any
  order, are routed to the waiting call by request id. Not thread-safe (one event loop).
  Two concurrent calls with the same explicit ``request_id`` are refused (``ValueError``).
  Replies for ids nobody waits for any more are discarded and counted in ``stale_replies``.
* Zero copy as in the synchronous client: inputs go out with ``copy=False``; outputs are
  numpy views over the reply frames (no copy).
* Shared memory as in the synchronous client (PROTOCOL.md §11): ``await register_region(n)``,
  arrays inside a registered region go by reference, ``outputs_to=region``; ``close()``
  unregisters the client's regions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import zmq
import zmq.asyncio

from adaptd.clients.client import (
    DEFAULT_BUSY_BACKOFF_MS, DEFAULT_RETRIES, DEFAULT_TIMEOUT_MS, ClientSettings, Explanation, InferResult,
    Region, body_from_reply, control_message, infer_message, new_dealer, new_request_id, reply_id, result_from_reply,
)
from adaptd.clients.errors import AdaptdError, RequestTimeout, error_from_header
from adaptd.wire.auth import CurveKeys


class AsyncClient(ClientSettings):
    def __init__(self, endpoint: str | None = None, *, timeout_ms: float = DEFAULT_TIMEOUT_MS,
                 retries: int = DEFAULT_RETRIES, context: zmq.asyncio.Context | None = None,
                 name: str | None = None, busy_retries: int = 0,
                 busy_backoff_ms: float = DEFAULT_BUSY_BACKOFF_MS, curve: CurveKeys | None = None) -> None:
        super().__init__(endpoint, timeout_ms, retries, name, busy_retries, busy_backoff_ms, curve)
        self._context = context
        self._socket: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task | None = None
        self._waiting: dict[str, asyncio.Future] = {}
        self._closed = False

    # --- lifecycle ----------------------------------------------------------------------

    def _ensure_open(self) -> zmq.asyncio.Socket:
        if self._closed:
            raise RuntimeError("client is closed")
        if self._socket is None:
            ctx = self._context or zmq.asyncio.Context.instance()
            self._socket = new_dealer(ctx, self.endpoint, self.curve)
            self._reader = asyncio.get_running_loop().create_task(self._read_replies())
        return self._socket

    async def close(self) -> None:
        if self._closed:
            return
        if self._socket is not None:
            deadline = self.close_budget_deadline()   # as Client.close
            for region in list(self.regions.values()):
                left_ms = (deadline - time.monotonic()) * 1e3
                if left_ms < 1.0:
                    break
                with contextlib.suppress(AdaptdError, RuntimeError):   # it unmaps the region either way
                    await self.unregister_region(region, timeout_ms=left_ms, retries=0)
        for region in self.regions.values():
            region.close()
        self.regions.clear()
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(RuntimeError("client closed while the request was waiting"))
        self._waiting.clear()
        if self._socket is not None:
            self._socket.close(0)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _read_replies(self) -> None:
        assert self._socket is not None
        while True:
            frames = await self._socket.recv_multipart(copy=False)
            rid, header, bodies = reply_id(frames)
            if header is None:
                continue   # undecodable: nobody can be told; the waiting call will time out
            fut = self._waiting.get(rid) if rid is not None else None
            if fut is None:
                if rid is None and header.get("type") == "error":
                    # The daemon could not read an id: fail every waiting call rather than hang.
                    for f in self._waiting.values():
                        if not f.done():
                            f.set_exception(error_from_header(header))
                else:
                    self.stale_replies += 1
                continue
            if not fut.done():
                fut.set_result((header, bodies))

    # --- requests -----------------------------------------------------------------------

    async def infer(self, model: str, inputs: Any, *, version: str | None = None,
                    min_accuracy: float | None = None, max_latency_ms: float | None = None,
                    max_energy_mj: float | None = None, objective: str = "latency",
                    on_infeasible: str = "reject", variant: str | None = None,
                    placement: str | None = None, explain: bool = False, request_id: str | None = None,
                    timeout_ms: float | None = None, outputs_to: Any = None,
                    latency_confidence: float | None = None) -> InferResult:
        rid = request_id or new_request_id()
        frames = infer_message(rid, model, inputs, version=version, min_accuracy=min_accuracy,
                               max_latency_ms=max_latency_ms, max_energy_mj=max_energy_mj,
                               objective=objective, on_infeasible=on_infeasible, variant=variant,
                               placement=placement, explain=explain, client=self.name,
                               regions=tuple(self.regions.values()), outputs_to=outputs_to,
                               latency_confidence=latency_confidence)
        started = time.perf_counter()
        header, bodies = await self._roundtrip(rid, frames, timeout_ms)
        retry = 0
        while self._resend_busy(header, retry):   # as Client.infer
            await asyncio.sleep(self.busy_wait_s(retry))
            retry += 1
            header, bodies = await self._roundtrip(rid, frames, timeout_ms)
        return result_from_reply(header, bodies, (time.perf_counter() - started) * 1e3, self.regions)

    async def register_region(self, nbytes: int, timeout_ms: float | None = None) -> Region:
        """As :meth:`adaptd.clients.client.Client.register_region`."""
        rid = new_request_id()
        header, _ = await self._roundtrip(rid, control_message(rid, "shm_register", size=int(nbytes),
                                                               owner_pid=os.getpid()), timeout_ms)
        body = body_from_reply(header, "shm_register")
        try:
            region = Region(str(body["region"]), int(body["size"]), str(body["path"]))
        except BaseException:
            rid = new_request_id()
            await self._roundtrip(rid, control_message(rid, "shm_unregister", region=body["region"]), timeout_ms)
            raise
        self.regions[region.name] = region
        return region

    async def unregister_region(self, region: Region | str, timeout_ms: float | None = None,
                                retries: int | None = None) -> None:
        """As :meth:`adaptd.clients.client.Client.unregister_region`."""
        name = region if isinstance(region, str) else region.name
        mapped = self.regions.pop(name, None)
        try:
            rid = new_request_id()
            header, _ = await self._roundtrip(rid, control_message(rid, "shm_unregister", region=name), timeout_ms,
                                              retries)
            body_from_reply(header, "shm_unregister")
        finally:
            if mapped is not None:
                mapped.close()
            if isinstance(region, Region):
                region.close()

    async def shm_regions(self, timeout_ms: float | None = None) -> list[dict[str, Any]]:
        return list((await self._control("shm_regions", timeout_ms))["regions"])

    async def explain(self, model: str, *, version: str | None = None, min_accuracy: float | None = None,
                      max_latency_ms: float | None = None, max_energy_mj: float | None = None,
                      objective: str = "latency", on_infeasible: str = "reject",
                      variant: str | None = None, placement: str | None = None,
                      request_id: str | None = None, timeout_ms: float | None = None,
                      latency_confidence: float | None = None) -> Explanation:
        rid = request_id or new_request_id()
        frames = infer_message(rid, model, (), version=version, min_accuracy=min_accuracy,
                               max_latency_ms=max_latency_ms, max_energy_mj=max_energy_mj,
                               objective=objective, on_infeasible=on_infeasible, variant=variant,
                               placement=placement, explain=True, client=self.name, request_type="explain",
                               latency_confidence=latency_confidence)
        header, _ = await self._roundtrip(rid, frames, timeout_ms)
        return Explanation.from_body(body_from_reply(header, "explain"))

    async def models(self, timeout_ms: float | None = None) -> dict[str, Any]:
        return await self._control("models", timeout_ms)

    async def placements(self, timeout_ms: float | None = None) -> dict[str, Any]:
        return await self._control("placements", timeout_ms)

    async def stats(self, timeout_ms: float | None = None) -> dict[str, Any]:
        return await self._control("stats", timeout_ms)

    async def health(self, timeout_ms: float | None = None) -> dict[str, Any]:
        return await self._control("health", timeout_ms)

    async def reload(self, timeout_ms: float | None = None) -> dict[str, Any]:
        return await self._control("reload", timeout_ms)

    async def _control(self, request_type: str, timeout_ms: float | None) -> dict[str, Any]:
        rid = new_request_id()
        header, _ = await self._roundtrip(rid, control_message(rid, request_type), timeout_ms)
        return body_from_reply(header, request_type)

    async def _roundtrip(self, rid: str, frames: list[Any], timeout_ms: float | None, retries: int | None = None):
        sock = self._ensure_open()
        retries = self.retries if retries is None else retries
        if rid in self._waiting:
            raise ValueError(f"request id {rid!r} is already outstanding on this client")
        timeout_s = (timeout_ms if timeout_ms is not None else self.timeout_ms) / 1e3
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            for attempt in range(retries + 1):
                if attempt:
                    self.retried += 1
                try:
                    await asyncio.wait_for(sock.send_multipart(frames, copy=False), timeout_s)
                    return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
                except asyncio.TimeoutError:
                    continue
            attempts = retries + 1
            raise RequestTimeout(f"no reply from {self.endpoint} within {timeout_s * 1e3:.0f} ms "
                                 f"({attempts} attempt{'s' if attempts > 1 else ''}, same id)", request_id=rid)
        finally:
            self._waiting.pop(rid, None)
            if not fut.done():
                fut.cancel()
