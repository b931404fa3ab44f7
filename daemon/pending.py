"""A request the daemon holds between its choice and its reply.

Contract
--------
* :class:`Pending` is made by :class:`adaptd.daemon.request_path.RequestPath` when it hands a
  request's job to a placement (or runs it inline), kept in ``RequestPath.pending`` under the
  request's (peer, id), travels with the job as its ``context``, and is read back by
  :class:`adaptd.daemon.outcomes.Outcomes` when the job's outcome comes. Retries of the same
  request add their routes to it: one execution, a reply to each.
* Plain data, the daemon's main thread only. Times: ``*_ns`` from ``time.monotonic_ns()``
  (``cpu_*_ns`` from the main thread's CPU clock), ``received_at`` Unix time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adaptd.daemon.registry import Arm, ModelVersion
    from adaptd.wire import protocol as proto


@dataclass(slots=True)
class Pending:
    """The daemon's state for one inference request between choice and reply."""

    request: proto.Request
    routes: list[tuple[Any, list[Any]]]    # (socket, envelope) of the request and its retries
    model: ModelVersion
    arm: Arm
    choice: Any
    client: str
    received_ns: int
    received_at: float
    peer: bytes = b""
    cpu_start_ns: int = 0       # the main thread's CPU clock when the request arrived
    cpu_ns: int = 0             # its CPU time on the request until the job was handed over
    inline: bool = False        # run on the main thread (its execution's CPU is the main thread's too)
    submitted_ns: int = 0       # handed to the worker pool (after decoding and choosing)
    regions: tuple[str, ...] = ()   # shared-memory regions the job reads or writes (held until its outcome)
