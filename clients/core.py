"""The client's side of ADPT/1 for one connection, without I/O: what to send, what a reply means,
when to send again.

Both clients are shells around a :class:`ClientCore`: they own the socket, wait on it and sleep;
the core builds the messages, tracks the requests in flight, matches replies to them by id and
decides what happens next. It never touches a socket, never sleeps and never reads a clock:
the shells pass ``now`` in.

Contract
--------
* Lifecycle of one request: a building method (:meth:`ClientCore.infer`, :meth:`~ClientCore.explain`,
  :meth:`~ClientCore.control`) returns a :class:`Call` (its id and frames; nothing is in flight
  yet). :meth:`~ClientCore.start` takes it in and answers :class:`Send`. For every ``Send`` the
  shell waits ``wait_s``, calls :meth:`~ClientCore.sending` (which gives the attempt's deadline),
  sends the frames, and waits for replies until that deadline, giving each received message to
  :meth:`~ClientCore.receive`; when the deadline passes first it calls
  :meth:`~ClientCore.timed_out`. Each of these answers one event:

  - :class:`Send`: send the same frames again under the same id (after a timeout, at most
    ``retries`` times per round; after ``BUSY``, for inferences, at most ``busy_retries`` times,
    after a randomised doubling wait, each BUSY resend starting a new round of ``retries``);
  - :class:`Done`: the call's value (an :class:`~adaptd.clients.results.InferResult`, an
    :class:`~adaptd.clients.results.Explanation`, a control reply's body);
  - :class:`Failed`: the exception to raise (an error reply's class from
    :mod:`adaptd.clients.errors`, ``RequestTimeout`` once the retries are spent, ``ReplyError``
    for a reply that breaks the protocol);
  - :class:`Stale`: a reply to no request awaiting one (the late answer to an attempt that timed
    out, then was answered); counted in ``stale_replies``, otherwise ignored;
  - :class:`Undecodable`: a message that is not ADPT/1 at all (nobody can be told whose it was);
  - :class:`Unattributed`: an error reply without a readable id (the daemon could not read a
    request's id): :meth:`~ClientCore.fail_awaiting` fails every request awaiting a reply.

  After ``Done`` or ``Failed`` the request is forgotten; :meth:`~ClientCore.forget` drops one
  early (a shell whose wait was interrupted). Several requests may be in flight at once (the
  asyncio client); a reply is matched only to a request awaiting one (between ``sending`` and
  its event).
* Regions (PROTOCOL.md §11): ``regions`` maps names to the regions mapped here;
  :meth:`~ClientCore.register_region` and :meth:`~ClientCore.unregister_region` are generators
  of the calls those operations need (a shell drives them: sends each yielded call's value back);
  :meth:`~ClientCore.close_deadline` and :meth:`~ClientCore.next_region_to_end` decide which
  regions close() still asks the daemon to end, once each, within the close budget.
* Counters, plain fields: ``stale_replies`` (replies discarded), ``retried`` (resends after a
  timeout), ``busy_retried`` (resends after BUSY). ``jitter`` is the random source of the BUSY
  waits (injected; seed it for reproducible waits).
* Not thread-safe: one thread or one event loop at a time (the synchronous client holds a lock).
* Zero copy: input arrays are the request's body frames themselves; outputs are views over the
  reply's frames (or the region they were written to).
* Units: ``now`` and deadlines are seconds of one monotonic clock (the shell's); ``wait_s``
  seconds; ``*_ms`` milliseconds.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from adaptd.clients.errors import AdaptdError, ReplyError, RequestTimeout, error_from_header
from adaptd.clients.messages import (body_from_reply, control_message, infer_message, new_request_id,
                                     result_from_reply)
from adaptd.clients.regions import Region
from adaptd.clients.results import Explanation
from adaptd.clients.settings import BUSY_BACKOFF_MAX_MS, ClientSettings
from adaptd.wire import protocol as p

# Reads a reply for its call: (header, body frames, client_ms) -> the call's value, or raises.
ReplyReader = Callable[[dict[str, Any], list[memoryview], float], Any]


@dataclass(slots=True)
class Call:
    """One request as built: nothing is in flight until :meth:`ClientCore.start`."""

    request_id: str
    frames: list[Any]
    read: ReplyReader
    timeout_ms: float
    retries: int           # resends after a timeout, per round
    busy_retries: int      # resends after BUSY (inferences only; 0 for the rest)


# --- events ------------------------------------------------------------------------------------
# Plain records, read-only by convention (not frozen: a frozen dataclass costs twice as much to
# make, and every request makes two of them).

@dataclass(slots=True)
class Send:
    """Send ``frames`` under ``request_id`` after ``wait_s`` seconds (call ``sending`` first)."""

    request_id: str
    frames: list[Any]
    wait_s: float = 0.0


@dataclass(slots=True)
class Done:
    request_id: str
    value: Any


@dataclass(slots=True)
class Failed:
    request_id: str
    error: Exception


@dataclass(slots=True)
class Stale:
    request_id: str | None


@dataclass(slots=True)
class Undecodable:
    pass


@dataclass(slots=True)
class Unattributed:
    error: AdaptdError


Event = Send | Done | Failed | Stale | Undecodable | Unattributed
_UNDECODABLE = Undecodable()


@dataclass(slots=True)
class _InFlight:
    call: Call
    started: float             # when it was started (client_ms counts from here)
    deadline: float = 0.0      # the current attempt's
    awaiting: bool = False     # between sending() and the attempt's event
    attempt: int = 0           # resends after a timeout in this round
    busy_retry: int = 0        # resends after BUSY so far


class ClientCore:
    """The protocol state of one connection (see the module docstring)."""

    def __init__(self, settings: ClientSettings, jitter: random.Random | None = None) -> None:
        self.settings = settings
        self.jitter = jitter if jitter is not None else random.Random()
        self.regions: dict[str, Region] = {}
        self.stale_replies = 0      # replies for ids no longer awaited, discarded
        self.retried = 0            # resends after a timeout (same id)
        self.busy_retried = 0       # resends after a BUSY reply (same id)
        self._in_flight: dict[str, _InFlight] = {}

    # --- building calls -----------------------------------------------------------------

    # The options are named one by one, not taken as **options: packing and unpacking ten keywords
    # per request cost 1.7 us here, more than all the rest of this method but infer_message.
    def infer(self, model: str, inputs: Any, *, request_id: str | None = None, timeout_ms: float | None = None,
              outputs_to: Any = None, version: str | None = None, min_accuracy: float | None = None,
              max_latency_ms: float | None = None, max_energy_mj: float | None = None,
              latency_confidence: float | None = None, objective: str = "latency", on_infeasible: str = "reject",
              variant: str | None = None, placement: str | None = None, explain: bool = False) -> Call:
        """An inference, as :meth:`adaptd.clients.client.Client.infer` takes it; inputs inside
        ``regions`` go by reference."""
        rid = request_id or new_request_id()
        regions = self.regions
        frames = infer_message(
            rid, model, inputs, version=version, min_accuracy=min_accuracy, max_latency_ms=max_latency_ms,
            max_energy_mj=max_energy_mj, latency_confidence=latency_confidence, objective=objective,
            on_infeasible=on_infeasible, variant=variant, placement=placement, explain=explain,
            client=self.settings.name, regions=tuple(regions.values()) if regions else (), outputs_to=outputs_to)

        def read(header: dict[str, Any], bodies: list[memoryview], client_ms: float) -> Any:
            return result_from_reply(header, bodies, client_ms, regions)
        return self._call(rid, frames, read, timeout_ms, None, self.settings.busy_retries)

    def explain(self, model: str, *, request_id: str | None = None, timeout_ms: float | None = None,
                **options: Any) -> Call:
        """A dry run (PROTOCOL.md §7.6); ``options`` as for :meth:`infer`."""
        rid = request_id or new_request_id()
        frames = infer_message(rid, model, (), explain=True, client=self.settings.name, request_type="explain",
                               **options)
        return self._call(rid, frames, _read_explanation, timeout_ms, None, 0)

    def fidelity_export(self, model: str, version: str | None = None, timeout_ms: float | None = None) -> Call:
        """PROTOCOL.md §7.7 (admin endpoint): its value is ``(body, npz bytes)``."""
        rid = new_request_id()
        fields = {"model": model, **({"version": str(version)} if version is not None else {})}

        def read(header: dict[str, Any], bodies: list[memoryview], client_ms: float) -> Any:
            return body_from_reply(header, "fidelity_export"), bytes(bodies[0]) if bodies else b""
        return self._call(rid, control_message(rid, "fidelity_export", **fields), read, timeout_ms, None, 0)

    def control(self, request_type: str, timeout_ms: float | None = None, retries: int | None = None,
                **fields: Any) -> Call:
        """A control request (§7, §11); its value is the reply's body."""
        rid = new_request_id()

        def read(header: dict[str, Any], bodies: list[memoryview], client_ms: float) -> Any:
            return body_from_reply(header, request_type)
        return self._call(rid, control_message(rid, request_type, **fields), read, timeout_ms, retries, 0)

    def _call(self, rid: str, frames: list[Any], read: ReplyReader, timeout_ms: float | None,
              retries: int | None, busy_retries: int) -> Call:
        return Call(rid, frames, read, self.settings.timeout_ms if timeout_ms is None else float(timeout_ms),
                    self.settings.retries if retries is None else int(retries), busy_retries)

    # --- the state machine --------------------------------------------------------------

    def start(self, call: Call, now: float) -> Send:
        """Take ``call`` in; its first ``Send``. ValueError if its id is already in flight."""
        if call.request_id in self._in_flight:
            raise ValueError(f"request id {call.request_id!r} is already outstanding on this client")
        self._in_flight[call.request_id] = _InFlight(call, now)
        return Send(call.request_id, call.frames)

    def sending(self, request_id: str, now: float) -> float:
        """The shell is sending the request now: it awaits a reply until the returned deadline."""
        state = self._in_flight[request_id]
        state.awaiting = True
        state.deadline = now + state.call.timeout_ms / 1e3
        return state.deadline

    def deadline(self, request_id: str) -> float:
        return self._in_flight[request_id].deadline

    def in_flight(self) -> list[str]:
        """The ids of the requests started and not yet done, failed or forgotten."""
        return list(self._in_flight)

    def receive(self, frames: Sequence[Any], now: float) -> Event:
        """What a received message means (see the module docstring)."""
        try:
            header, bodies = p.decode(frames)
        except p.ProtocolError:
            return _UNDECODABLE
        rid = header.get("id")
        state = self._in_flight.get(rid) if isinstance(rid, str) else None
        if state is None or not state.awaiting:
            if not isinstance(rid, str) and header.get("type") == "error":
                return Unattributed(error_from_header(header))
            self.stale_replies += 1
            return Stale(rid if isinstance(rid, str) else None)
        state.awaiting = False
        call = state.call
        if (state.busy_retry < call.busy_retries and header.get("type") == "error"
                and header.get("code") == p.BUSY):
            wait_s = self.busy_wait_s(state.busy_retry)
            state.busy_retry += 1
            state.attempt = 0
            self.busy_retried += 1
            return Send(rid, call.frames, wait_s)
        del self._in_flight[rid]
        try:
            return Done(rid, call.read(header, bodies, (now - state.started) * 1e3))
        except Exception as exc:   # the caller's to raise (the reply's error, or what broke reading it)
            return Failed(rid, exc)

    def timed_out(self, request_id: str) -> Send | Failed:
        """The attempt's deadline passed without its reply: send again, or give up."""
        state = self._in_flight[request_id]
        state.awaiting = False
        call = state.call
        if state.attempt < call.retries:
            state.attempt += 1
            self.retried += 1
            return Send(request_id, call.frames)
        del self._in_flight[request_id]
        attempts = call.retries + 1
        return Failed(request_id, RequestTimeout(
            f"no reply from {self.settings.endpoint} within {call.timeout_ms:.0f} ms "
            f"({attempts} attempt{'s' if attempts > 1 else ''}, same id)", request_id=request_id))

    def undecodable(self, request_id: str) -> Failed:
        """Fail ``request_id`` for an undecodable reply (a shell with one request in flight knows it
        was that request's)."""
        self._in_flight.pop(request_id, None)
        return Failed(request_id, ReplyError("undecodable reply from the daemon", request_id=request_id))

    def fail_awaiting(self, error: Exception) -> list[Failed]:
        """Fail every request awaiting a reply with ``error`` (an :class:`Unattributed` reply)."""
        failed = [Failed(rid, error) for rid, state in self._in_flight.items() if state.awaiting]
        for event in failed:
            del self._in_flight[event.request_id]
        return failed

    def forget(self, request_id: str) -> None:
        """Stop tracking a request (no-op when it is done already); later replies to it are stale."""
        self._in_flight.pop(request_id, None)

    def busy_wait_s(self, retry: int) -> float:
        """The wait before the ``retry``-th resend (0-based) of a request answered BUSY: the
        backoff doubled per retry, capped at ``BUSY_BACKOFF_MAX_MS``, times a random factor in
        [0.5, 1) so that clients refused together do not come back together."""
        cap_ms = min(self.settings.busy_backoff_ms * 2.0 ** retry, BUSY_BACKOFF_MAX_MS)
        return cap_ms * (0.5 + 0.5 * self.jitter.random()) / 1e3

    # --- regions (PROTOCOL.md §11) ------------------------------------------------------

    def register_region(self, nbytes: int, timeout_ms: float | None = None) -> Generator[Call, Any, Region]:
        """Ask for a region of ``nbytes`` owned by this process and map it; if mapping fails, ask
        the daemon to end it again and raise."""
        body = yield self.control("shm_register", timeout_ms, size=int(nbytes), owner_pid=os.getpid())
        try:
            region = Region(str(body["region"]), int(body["size"]), str(body["path"]))
        except BaseException:
            yield self.control("shm_unregister", timeout_ms, region=body["region"])
            raise
        self.regions[region.name] = region
        return region

    def unregister_region(self, region: Region | str, timeout_ms: float | None = None,
                          retries: int | None = None) -> Generator[Call, Any, None]:
        """End a region at the daemon; it is unmapped here whatever the answer (or if none comes)."""
        name = region if isinstance(region, str) else region.name
        mapped = self.regions.pop(name, None)
        try:
            yield self.control("shm_unregister", timeout_ms, retries, region=name)
        finally:
            if mapped is not None:
                mapped.close()
            if isinstance(region, Region):
                region.close()

    def close_deadline(self, now: float) -> float:
        """When close() stops asking the daemon to end regions."""
        return now + self.settings.close_budget_ms / 1e3

    def next_region_to_end(self, deadline: float, now: float) -> tuple[Region, float] | None:
        """(region, the ms left) for close() to unregister next, with no retry; None when none is
        left or less than a millisecond of the budget is. Each region is offered once (it is
        taken out of ``regions`` here)."""
        left_ms = (deadline - now) * 1e3
        if left_ms < 1.0 or not self.regions:
            return None
        name = next(iter(self.regions))
        return self.regions.pop(name), left_ms

    def unmap_regions(self) -> None:
        """Unmap every region still mapped here (the daemon ends them when this process exits)."""
        for region in self.regions.values():
            region.close()
        self.regions.clear()


def _read_explanation(header: dict[str, Any], bodies: list[memoryview], client_ms: float) -> Explanation:
    return Explanation.from_body(body_from_reply(header, "explain"))


class CoreAttributes:
    """What both clients expose of their core and settings, read-only (the names the clients
    have always had)."""

    _core: ClientCore

    @property
    def core(self) -> ClientCore:
        """The connection's protocol state: counters, regions, the BUSY jitter's random source."""
        return self._core

    @property
    def settings(self) -> ClientSettings:
        return self._core.settings

    endpoint = property(lambda self: self._core.settings.endpoint)
    timeout_ms = property(lambda self: self._core.settings.timeout_ms)
    retries = property(lambda self: self._core.settings.retries)
    busy_retries = property(lambda self: self._core.settings.busy_retries)
    busy_backoff_ms = property(lambda self: self._core.settings.busy_backoff_ms)
    name = property(lambda self: self._core.settings.name)
    curve = property(lambda self: self._core.settings.curve)
    stale_replies = property(lambda self: self._core.stale_replies)
    retried = property(lambda self: self._core.retried)
    busy_retried = property(lambda self: self._core.busy_retried)
    regions = property(lambda self: self._core.regions)


__all__ = ["Call", "ClientCore", "CoreAttributes", "Done", "Event", "Failed", "Send", "Stale", "Unattributed",
           "Undecodable"]
