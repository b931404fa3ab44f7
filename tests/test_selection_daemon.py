"""The selector in the real daemon follows a change of regime: when the placement it prefers
suddenly slows down, traffic moves off it within a bounded number of requests and stays off, but
for the bounded share of probes.

The slow-down is real, not simulated: the preferred placement's worker is throttled the way a
CPU-bandwidth limit (cgroup ``cpu.max``) throttles a group, allowed to run for 1 ms in every
16 ms, by stopping and continuing it with SIGSTOP / SIGCONT (any user may do that to their own
processes; writing cgroups needs privilege). Its executions, which the worker times on the wall
clock as it always does, take many times longer. Busy loops on the worker's core with the worker
reniced did this in earlier versions, but how much a niced process loses to its neighbours
depends on the kernel's scheduler (EEVDF's lag limits, autogroups, the daemon's own short
``sched_slice_us``), and on one machine it lost nothing; a duty cycle does not depend on any of it.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
import psutil
import pytest

from adaptd.clients.client import Client
from adaptd.tools.launch import DaemonProcess

pytestmark = pytest.mark.slow

MOVE_WITHIN = 10       # requests after the slow-down by which traffic must have moved
RUN_S, STOPPED_S = 0.001, 0.015   # the throttle's duty cycle: 1 ms of every 16 ms


@contextlib.contextmanager
def throttled(process: psutil.Process):
    """Stop and continue ``process`` on a fixed duty cycle until the block exits; it is left running."""
    done = threading.Event()
    failed: list[BaseException] = []

    def cycle() -> None:
        try:
            while not done.is_set():
                process.suspend()
                done.wait(STOPPED_S)
                process.resume()
                done.wait(RUN_S)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread below
            failed.append(exc)

    thread = threading.Thread(target=cycle, name="throttle", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        with contextlib.suppress(psutil.NoSuchProcess):
            process.resume()
    if failed:   # e.g. the worker died: the test did not measure what it says it did
        raise RuntimeError("the throttle stopped early") from failed[0]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores for two single-core placements")
def test_a_slowed_placement_loses_its_traffic(slow_repository, tmp_path):
    cores = sorted(os.sched_getaffinity(0))[:2]
    names = [f"cpu:{c}" for c in cores]
    config = {"placements": {"include": names, "load": "eager", "isolation": "process"},   # the worker is throttled
              "selector": {"probe_interval_s": 1.0, "probe_share": 0.05}}
    x = np.random.default_rng(0).random((1, 32, 32, 8), dtype=np.float32)
    with DaemonProcess.start(slow_repository, tmp_path / "d", config=config) as d, Client(d.endpoint) as client:
        codes = []

        def placement() -> tuple[str, float]:
            s = client.infer("slow", x, objective="latency").selection
            codes.append(s.reason.code)
            return s.placement, s.timing.total_ms

        warm = [placement() for _ in range(30)]
        # The placement the selector prefers now: a dry run's, which comes after every execution
        # so far has reached the policy (it learns a steady caller's in batches, so its latest
        # choice may predate the last few).
        favourite = client.explain("slow", objective="latency").placement
        warm_ms = float(np.median([ms for p, ms in warm[10:] if p == favourite] or [ms for _, ms in warm[10:]]))
        worker = psutil.Process(next(p["worker_pid"] for p in client.placements()["placements"]
                                     if p["name"] == favourite))
        with throttled(worker):
            chosen = [placement() for _ in range(MOVE_WITHIN)]
            after = [p for p, _ in (placement() for _ in range(40))]
    # The slow-down was real: what ran on the throttled placement took clearly longer ...
    slowed = [ms for p, ms in chosen if p == favourite]
    assert slowed and max(slowed) > 2 * warm_ms, (warm_ms, chosen)
    # ... and traffic left it within MOVE_WITHIN requests ...
    assert any(p != favourite for p, _ in chosen), f"traffic stayed on the slowed {favourite}: {chosen}"
    # ... and stayed off but for probes (at most probe_share of decisions, plus one).
    assert after.count(favourite) <= 0.05 * 40 + 2, after


def test_unmeasured_arms_have_estimated_energy_priors(tiny_repository, tmp_path):
    """Before any execution, every arm has an energy prediction (the power model applied to its
    latency prior, labelled estimated), so an energy bound can be met from the first request."""
    repo, model, _ = tiny_repository
    with DaemonProcess.start(repo, tmp_path / "d") as d, Client(d.endpoint) as client:
        e = client.explain(model, max_energy_mj=1e6, objective="energy")
        assert e.feasible and e.alternatives
        for alt in e.alternatives:
            assert alt["energy_mj"] is not None and alt["energy_mj"] > 0, alt
            assert alt["energy_estimated"] is True
        r = client.infer(model, np.zeros((1, 8, 8, 1), np.float32), max_energy_mj=1e6, objective="energy")
        assert r.selection.reason.code in ("selected", "probe") and r.selection.predicted.energy_mj is not None
