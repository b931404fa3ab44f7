"""The asyncio adaptd client: many requests outstanding on one connection (a DEALER socket, or the
daemon's local stream: :mod:`adaptd.clients.transports`), an asyncio shell
around :class:`adaptd.clients.core.ClientCore` (as :mod:`adaptd.clients.client` is the blocking one).

Contract
--------
* Same API as :class:`adaptd.clients.client.Client`, with ``async def``; same results,
  exceptions, timeouts and retry rules (after a timeout the same frames are sent again under
  the same id, at most ``retries`` times, then ``RequestTimeout``; a ``BUSY`` reply is retried
  likewise when ``busy_retries`` asks for it, the waits awaited, not slept): the core decides
  them all for both clients.
* Lifecycle: construct anywhere; the socket is created and a reader task started on the
  first request, inside the running event loop, and both belong to that loop. ``await
  close()`` (or ``async with``) cancels the reader and fails any request still waiting with
  ``RuntimeError``.
* Concurrency: any number of coroutines of the one loop may call it at once; replies, in any
  order, are routed to the waiting call by request id. Not thread-safe (one event loop).
  Two concurrent calls with the same explicit ``request_id`` are refused (``ValueError``).
  Replies for ids nobody waits for any more are discarded and counted in ``stale_replies``; an
  undecodable reply is dropped (nobody can be told whose it was: that call times out).
* Zero copy as in the synchronous client: inputs go out with ``copy=False``; outputs are
  numpy views over the reply frames (no copy).
* Shared memory as in the synchronous client (PROTOCOL.md §11): ``await register_region(n)``,
  arrays inside a registered region go by reference, ``outputs_to=region``; ``close()``
  unregisters the client's regions.
* Attributes as the synchronous client's (settings, counters, ``regions``, ``core``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Generator
from typing import Any

import zmq
import zmq.asyncio

from adaptd.clients.core import Call, ClientCore, CoreAttributes, Done, Event, Failed, Send, Unattributed
from adaptd.clients.errors import AdaptdError
from adaptd.clients.regions import Region
from adaptd.clients.results import Explanation, InferResult
from adaptd.clients.settings import DEFAULT_BUSY_BACKOFF_MS, DEFAULT_RETRIES, DEFAULT_TIMEOUT_MS, ClientSettings
from adaptd.clients.transports import AsyncStreamTransport, AsyncZmqTransport, open_async_transport
from adaptd.wire.auth import CurveKeys


class AsyncClient(CoreAttributes):
    def __init__(self, endpoint: str | None = None, *, timeout_ms: float = DEFAULT_TIMEOUT_MS,
                 retries: int = DEFAULT_RETRIES, context: zmq.asyncio.Context | None = None,
                 name: str | None = None, busy_retries: int = 0,
                 busy_backoff_ms: float = DEFAULT_BUSY_BACKOFF_MS, curve: CurveKeys | None = None) -> None:
        self._core = ClientCore(ClientSettings.resolve(
            endpoint, timeout_ms=timeout_ms, retries=retries, name=name, busy_retries=busy_retries,
            busy_backoff_ms=busy_backoff_ms, curve=curve))
        self._context = context
        self._socket: AsyncZmqTransport | AsyncStreamTransport | None = None
        self._reader: asyncio.Task | None = None
        self._waiting: dict[str, asyncio.Future] = {}   # request id -> its next event
        self._closed = False

    # --- lifecycle ----------------------------------------------------------------------

    def _ensure_open(self) -> AsyncZmqTransport | AsyncStreamTransport:
        if self._closed:
            raise RuntimeError("client is closed")
        if self._socket is None:
            ctx = self._context or zmq.asyncio.Context.instance()
            self._socket = open_async_transport(self.endpoint, ctx, self.curve)
            self._reader = asyncio.get_running_loop().create_task(self._read_replies())
        return self._socket

    async def close(self) -> None:
        if self._closed:
            return
        core = self._core
        if self._socket is not None:   # as Client.close
            deadline = core.close_deadline(time.monotonic())
            while (step := core.next_region_to_end(deadline, time.monotonic())) is not None:
                with contextlib.suppress(AdaptdError, RuntimeError):   # it unmaps the region either way
                    await self.unregister_region(step[0], timeout_ms=step[1], retries=0)
        core.unmap_regions()
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
            self._socket.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _read_replies(self) -> None:
        assert self._socket is not None
        core = self._core
        while True:
            frames = await self._socket.recv()
            event = core.receive(frames, time.monotonic())
            if type(event) is Unattributed:   # the daemon could not read an id: fail every waiting call
                for failed in core.fail_awaiting(event.error):
                    self._deliver(failed)
            elif type(event) in (Done, Failed, Send):
                self._deliver(event)
            # Stale (counted by the core) and Undecodable: nobody to tell

    def _deliver(self, event: Done | Failed | Send) -> None:
        fut = self._waiting.get(event.request_id)
        if fut is not None and not fut.done():
            fut.set_result(event)

    # --- requests -----------------------------------------------------------------------

    async def infer(self, model: str, inputs: Any, *, version: str | None = None,
                    min_accuracy: float | None = None, max_latency_ms: float | None = None,
                    max_energy_mj: float | None = None, objective: str = "latency",
                    on_infeasible: str = "reject", variant: str | None = None,
                    placement: str | None = None, explain: bool = False, request_id: str | None = None,
                    timeout_ms: float | None = None, outputs_to: Any = None,
                    latency_confidence: float | None = None) -> InferResult:
        """As :meth:`adaptd.clients.client.Client.infer`."""
        return await self._exchange(self._core.infer(
            model, inputs, version=version, min_accuracy=min_accuracy, max_latency_ms=max_latency_ms,
            max_energy_mj=max_energy_mj, objective=objective, on_infeasible=on_infeasible, variant=variant,
            placement=placement, explain=explain, request_id=request_id, timeout_ms=timeout_ms,
            outputs_to=outputs_to, latency_confidence=latency_confidence))

    async def register_region(self, nbytes: int, timeout_ms: float | None = None) -> Region:
        """As :meth:`adaptd.clients.client.Client.register_region`."""
        return await self._run(self._core.register_region(nbytes, timeout_ms))

    async def unregister_region(self, region: Region | str, timeout_ms: float | None = None,
                                retries: int | None = None) -> None:
        """As :meth:`adaptd.clients.client.Client.unregister_region`."""
        await self._run(self._core.unregister_region(region, timeout_ms, retries))

    async def shm_regions(self, timeout_ms: float | None = None) -> list[dict[str, Any]]:
        return list((await self._exchange(self._core.control("shm_regions", timeout_ms)))["regions"])

    async def explain(self, model: str, *, version: str | None = None, min_accuracy: float | None = None,
                      max_latency_ms: float | None = None, max_energy_mj: float | None = None,
                      objective: str = "latency", on_infeasible: str = "reject",
                      variant: str | None = None, placement: str | None = None,
                      request_id: str | None = None, timeout_ms: float | None = None,
                      latency_confidence: float | None = None) -> Explanation:
        """As :meth:`adaptd.clients.client.Client.explain`."""
        return await self._exchange(self._core.explain(
            model, version=version, min_accuracy=min_accuracy, max_latency_ms=max_latency_ms,
            max_energy_mj=max_energy_mj, objective=objective, on_infeasible=on_infeasible, variant=variant,
            placement=placement, request_id=request_id, timeout_ms=timeout_ms,
            latency_confidence=latency_confidence))

    async def models(self, timeout_ms: float | None = None) -> dict[str, Any]:
        return await self._exchange(self._core.control("models", timeout_ms))

    async def placements(self, timeout_ms: float | None = None) -> dict[str, Any]:
        return await self._exchange(self._core.control("placements", timeout_ms))

    async def stats(self, timeout_ms: float | None = None) -> dict[str, Any]:
        return await self._exchange(self._core.control("stats", timeout_ms))

    async def health(self, timeout_ms: float | None = None) -> dict[str, Any]:
        return await self._exchange(self._core.control("health", timeout_ms))

    async def reload(self, timeout_ms: float | None = None) -> dict[str, Any]:
        return await self._exchange(self._core.control("reload", timeout_ms))

    # --- I/O ----------------------------------------------------------------------------

    async def _run(self, operation: Generator[Call, Any, Any]) -> Any:
        """As Client._run, awaiting each exchange."""
        with contextlib.closing(operation):
            try:
                call = next(operation)
                while True:
                    call = operation.send(await self._exchange(call))
            except StopIteration as done:
                return done.value

    async def _exchange(self, call: Call) -> Any:
        """Send ``call`` and await its outcome, as the core directs; its value or its exception."""
        self._ensure_open()
        core = self._core
        rid = call.request_id
        event: Event = core.start(call, time.monotonic())   # ValueError for an id already in flight
        fut: asyncio.Future | None = None
        try:
            while type(event) is Send:
                if event.wait_s > 0:
                    await asyncio.sleep(event.wait_s)   # BUSY: the core's randomised wait
                sock = self._ensure_open()              # RuntimeError if closed meanwhile
                deadline = core.sending(rid, time.monotonic())
                if fut is None or fut.done():
                    fut = self._waiting[rid] = asyncio.get_running_loop().create_future()
                try:
                    await asyncio.wait_for(sock.send(event.frames), deadline - time.monotonic())
                    event = await asyncio.wait_for(asyncio.shield(fut), deadline - time.monotonic())
                except (asyncio.TimeoutError, OSError):   # OSError: a local stream broke under the send
                    event = fut.result() if fut.done() else core.timed_out(rid)
        finally:
            core.forget(rid)
            self._waiting.pop(rid, None)
            if fut is not None and not fut.done():
                fut.cancel()
        if type(event) is Done:
            return event.value
        raise event.error
