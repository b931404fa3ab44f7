"""A placement's worker process: runs variants, one execution at a time, pinned to its cores.

Contract
--------
* Started by :mod:`adaptd.daemon.pool` as ``python -m adaptd.daemon.worker_process SPEC_JSON``; SPEC
  gives the inherited channel's file descriptor (and, on a kernel without pidfds, the one that
  reports its exit: :mod:`adaptd.daemon.procwatch`), the cores, the thread count and the
  runtime. Both descriptors are made non-inheritable before anything else. The process pins
  itself to its cores *before* importing an interpreter, so every thread the runtime starts
  inherits the pinning.
* Lifecycle: send ``ready`` -> serve messages in order until ``stop`` or until the channel
  closes (the daemon's death ends the worker).
* Internal protocol (not part of PROTOCOL.md; both ends live in this package), carried by
  :mod:`adaptd.daemon.channel`: a verb, a header map and bodies. Daemon -> worker: ``run`` (header: job, dir, variant,
  inputs: tensor headers, a header with ``shm: {region, offset, size}`` naming a shared-memory
  region instead of a body; optional ``outputs_to: {region, offset, size}``; bodies: the inline
  input tensors as received from the client), ``load``, ``unload_except``, ``shm_unmap``
  (header: regions, names the daemon has unlinked), ``ping`` (answered ``pong`` at once: the
  channel's round trip), ``stop``.
  ``spec.sched_idle`` (default false): the process runs under ``SCHED_IDLE``, only on a core
  that nothing else wants (the shadow worker of live fidelity, :mod:`adaptd.daemon.dispatch`).
  ``spec.sched_slice_us`` (optional): the scheduler slice the process asks for itself
  (``[server] sched_slice_us``; a worker started while the daemon's front end runs under
  ``SCHED_RR`` with reset-on-fork inherits none). ``spec.nice`` (optional): the daemon's nice
  when it started the worker, which the worker takes for every thread where it started at
  another (a real-time parent's child starts at 0); lowering it needs a privilege, so a worker
  without one stays at the nice it got.
  ``spec.reject_nonfinite`` (default true): a float input holding NaN or an infinity is
  answered ``fail`` with code ``BAD_INPUT`` without running (the daemon never sees tensor bytes in
  a region, so the worker checks).
  Worker -> daemon: ``ready``, ``done`` (header: job, t0_ns, t1_ns,
  compute_ms, cpu_time_s, idle_since_ns: when the worker started waiting for the message that
  turned out to be this run; load_ms and memory_bytes when the run loaded its variant; outputs;
  bodies: output tensors, none for outputs written to ``outputs_to``, whose headers then carry
  ``shm: {region, offset}``), ``loaded``, ``fail`` (header: job, code, message).
* Shared memory: a region is mapped on first use and kept until ``shm_unmap``
  (:class:`~adaptd.daemon.shm.WorkerMaps`, which keeps its views with it); a job holds them only
  during its run. Reading the input out of the region is the interpreter's own input copy.
* Timing: ``t0_ns``/``t1_ns`` are ``time.monotonic_ns()`` (CLOCK_MONOTONIC, comparable with the
  daemon's and the power sampler's clocks) taken around the execution: from handing the input to
  the interpreter to having the outputs, model load excluded. ``cpu_time_s`` is this process's CPU
  time (all threads) over the same span, used by the estimated power model.
* Loading verifies the variant's file against the manifest's sha256 and refuses a mismatch.
* Only this process imports the interpreter runtime: LiteRT for ``litert`` placements,
  TensorFlow for ``tensorflow`` ones. A failure to load or run a variant is answered ``fail``
  and the worker keeps serving; only a crash ends it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


from adaptd.daemon.channel import Channel
from adaptd.daemon.execution import VariantCache, rss_bytes, run_job
from adaptd.daemon.sched import name_thread, request_slice_all_threads, set_nice_all_threads
from adaptd.daemon.shm import WorkerMaps


def serve(spec: dict[str, Any]) -> int:
    for fd in (spec["fd"], spec.get("exit_fd")):   # (this process's own: a process the runtime
        if fd is not None:                          # starts must not hold them, adaptd.daemon.procwatch)
            os.set_inheritable(int(fd), False)
    name_thread(f"adaptd-{spec.get('placement', 'worker')}")
    cores = spec.get("cores")
    if cores:
        os.sched_setaffinity(0, cores)
    if spec.get("sched_idle"):   # before the runtime starts its threads: they inherit it
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    elif spec.get("sched_slice_us"):   # [server] sched_slice_us (inherited too, unless reset on fork)
        try:
            request_slice_all_threads(int(spec["sched_slice_us"]))   # numpy's pool is running already
        except OSError:
            pass   # the daemon logged at start whether this kernel keeps a slice
    if spec.get("nice") is not None and spec["nice"] != os.getpriority(os.PRIO_PROCESS, 0):
        set_nice_all_threads(int(spec["nice"]))   # the daemon's (a real-time parent's child starts at 0)
    runtime = spec.get("runtime", "litert")
    if runtime == "litert":
        import ai_edge_litert.interpreter  # noqa: F401  (import now, not on the first request)
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow  # noqa: F401

    channel = Channel.from_fd(int(spec["fd"]))
    reject_nonfinite = bool(spec.get("reject_nonfinite", True))
    cache = VariantCache(int(spec.get("threads", 1)), spec.get("device"))
    maps = WorkerMaps()
    channel.send("ready", {"pid": os.getpid(), "rss_bytes": rss_bytes()})
    while True:
        idle_since_ns = time.monotonic_ns()   # free from here: a run's service time may start here
        try:
            verb, header, bodies = channel.recv()
        except ConnectionError:   # the daemon is gone: nobody to serve
            return 0
        if verb == "run":
            ok, reply, out = run_job(cache, maps, header, bodies, idle_since_ns, reject_nonfinite)
            channel.send("done" if ok else "fail", reply, out)
        elif verb == "load":
            try:
                _, load_ms = cache.get(header["dir"], header["variant"])
                key = (header["dir"], header["variant"])
                channel.send("loaded", {"dir": header["dir"], "variant": header["variant"],
                                        "memory_bytes": cache.memory_bytes.get(key, 0),
                                        "load_ms": load_ms, "rss_bytes": rss_bytes()})
            except Exception as exc:  # noqa: BLE001 - reported to the daemon, worker keeps serving
                channel.send("fail", {"job": None, "code": "WORKER_FAILED", "dir": header.get("dir"),
                                      "variant": header.get("variant"),
                                      "message": f"cannot load {header.get('variant')}: {exc}"})
        elif verb == "ping":
            channel.send("pong", {"n": header.get("n")})
        elif verb == "shm_unmap":
            maps.unmap(header.get("regions", ()))
        elif verb == "unload_except":
            cache.unload_except(set(header.get("dirs", [])))
        elif verb == "stop":
            channel.close()
            return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    try:
        return serve(spec)
    except (KeyboardInterrupt, BrokenPipeError, ConnectionError):   # the daemon is gone: nothing to report
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
