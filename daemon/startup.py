"""Start-up steps of the daemon that are not its lifecycle: pinning, the scheduler slice, the
store, the default policy, the locks' directories.

Contract
--------
* Called once, from :meth:`adaptd.daemon.server.Daemon.start`, on the main thread, in the order
  the server's contract gives; each raises (OSError, RuntimeError, sqlite3.Error, zmq.ZMQError)
  rather than logging and going on, so start-up stops at the first problem with one line.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import zmq

from adaptd.daemon.config import Config
from adaptd.daemon.frontend import remove_stale_socket, socket_path
from adaptd.daemon.sched import RealtimeFrontEnd, request_slice_all_threads
from adaptd.daemon.selection import SelectorPolicy
from adaptd.daemon.store import SelectionStore
from adaptd.wire.board import daemon_board_id

log = logging.getLogger("adaptd")


def lock_directories(cfg: Config) -> list[Path]:
    """The directories of every ipc and local stream socket and of the store
    (:mod:`adaptd.daemon.instance`)."""
    paths = [p.parent for p in (socket_path(e) for e in (*cfg.endpoints, *cfg.pub_endpoints, *cfg.admin_endpoints))
             if p is not None]
    paths.append(cfg.store_path.parent)
    return paths


def pin_process(cores: tuple[int, ...]) -> None:
    """Pin every thread of this process (ZeroMQ's I/O thread is already running) to ``cores``;
    threads and processes started later inherit it, and each worker then pins itself to its
    placement's cores. Raises RuntimeError naming ``server.cores`` for cores this process may
    not use."""
    allowed = os.sched_getaffinity(0)
    if not set(cores) <= allowed:
        raise RuntimeError(f"server.cores: {sorted(set(cores) - allowed)} not among this process's cores "
                           f"{sorted(allowed)}")
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except ProcessLookupError:   # a thread that ended meanwhile
            pass
    log.info("daemon threads pinned to cores %s", ",".join(map(str, cores)))


def request_slice(slice_us: int) -> None:
    """``[server] sched_slice_us``: every thread of this process asks the fair scheduler for
    that slice (:mod:`adaptd.daemon.sched`); workers and later threads inherit it."""
    if request_slice_all_threads(slice_us):
        log.info("daemon threads and workers request a %d us scheduler slice", slice_us)
    else:
        log.info("server.sched_slice_us = %d not applied: this kernel keeps no per-thread slice (Linux 6.12 "
                 "and later do), or the service runs under a real-time policy", slice_us)


def realtime_front_end(priority: int) -> RealtimeFrontEnd:
    """``[server] rt_priority``: the main thread and ZeroMQ's I/O threads under ``SCHED_RR``
    (:class:`~adaptd.daemon.sched.RealtimeFrontEnd`). Where the system refuses it, one warning,
    and the object says so (``refused``, shown by ``health``): the daemon serves at its usual
    priority."""
    realtime = RealtimeFrontEnd(priority)
    try:
        threads = realtime.apply()
    except OSError as exc:
        why = ("not permitted (it needs CAP_SYS_NICE, or an RLIMIT_RTPRIO of at least "
               f"{priority}: systemd's LimitRTPRIO= with RestrictRealtime=no, and sched_setscheduler "
               "allowed by SystemCallFilter=)") if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
        log.warning("server.rt_priority = %d not applied: %s; serving under the fair scheduler", priority, why)
        return realtime
    log.info("front end under SCHED_RR %d: %s", priority, ", ".join(threads))
    return realtime


def default_policy(config: Config) -> Any:
    return SelectorPolicy.from_config(config)


def open_store(cfg: Config, context: zmq.Context, guard: Any) -> Any:
    """The selection store, opened (its database created) and its stream bound."""
    path = cfg.store_path
    path.parent.mkdir(parents=True, exist_ok=True)
    for endpoint in cfg.pub_endpoints:
        remove_stale_socket(endpoint)
    store = SelectionStore(cfg.store, path, cfg.pub_endpoints if cfg.store.publish else (), context, guard=guard,
                           board_id=daemon_board_id(cfg.board_id))
    store.start()
    return store

