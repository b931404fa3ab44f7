"""The unit of work a placement runs, and what comes back: shared by both placement hosts.

Contract
--------
* :class:`Job`: one execution of a request's inputs on one variant, made by the request path,
  queued and run by :mod:`adaptd.daemon.placement_threads` or :mod:`adaptd.daemon.pool`;
  ``context`` is the request path's own state, handed back untouched in the :class:`Outcome`.
* :class:`Outcome`: the job, the runner's ``done`` or ``fail`` header (the worker channel's
  fields, :mod:`adaptd.daemon.worker_process`; not the client protocol's), the output bodies,
  and when it ended.
* Times are ``time.monotonic_ns()``. Plain data: no locks; each job is owned by one thread at a
  time (the main thread, then its placement's runner, then the main thread again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Job:
    """One execution: a request bound to an arm, waiting for or running on a worker."""

    request_id: str
    version_dir: str
    variant: str
    input_headers: list[dict[str, Any]]
    input_frames: list[Any]
    received_ns: int
    context: Any                      # the daemon's per-request state, returned untouched
    dispatched_ns: int | None = None
    job_id: int = 0
    outputs_to: dict[str, Any] | None = None   # {region, offset, size}: write outputs there (PROTOCOL.md §11)


@dataclass(slots=True)
class Outcome:
    job: Job
    header: dict[str, Any]            # the worker's ``done`` header, or ``fail`` header
    bodies: list[Any]
    ok: bool
    finished_ns: int
