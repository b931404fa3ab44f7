"""The request path's rehearsal at start (adaptd.daemon.rehearsal): a real daemon rehearses its
request path before it reports ready, and nothing of the rehearsal is seen outside: no request
counted, no arm's statistics, no record in the selection store, nothing learnt. The tiny CNN's
repository, real placement threads and interpreters, a real store."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from adaptd.clients.client import Client
from adaptd.daemon.config import Config
from adaptd.daemon.dispatch import Dispatcher
from adaptd.daemon.placements import Placement
from adaptd.daemon.power import EnergyMeter
from adaptd.daemon.registry import load_registry
from adaptd.daemon.rehearsal import PINNED, UNPINNED, Rehearsal, rehearse
from adaptd.daemon.server import Daemon
from adaptd.tools.launch import DaemonProcess
from adaptd.wire import protocol as proto

CORE = min(os.sched_getaffinity(0))
PLACEMENT = Placement(f"cpu:{CORE}", "cpu", "litert", (CORE,), 1, None, "one core")


def on_a_thread_of_its_own(d: Daemon, budget_s: float) -> tuple[Rehearsal, set[int], set[int]]:
    """``rehearse(d)`` on a thread of its own, as the daemon's main thread (an inline run moves
    the calling thread onto the placement's cores: not this test process's main thread), with
    that thread's cores before and after it."""
    out = {}

    def run() -> None:
        before = os.sched_getaffinity(0)
        out["done"] = rehearse(d, budget_s)
        out["cores"] = before, os.sched_getaffinity(0)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return out["done"], *out["cores"]


def dry_run(d: Daemon) -> dict:
    """The daemon's own policy's decision for an unpinned request of the model, changing nothing."""
    entry = d.registry.newest()[0]
    x = np.zeros([1, *entry.manifest.inputs[0].shape[1:]], np.float32)
    request = proto.parse_request(proto.request_header("r", entry.name, [x], constraints={"max_latency_ms": 50.0}))
    choice = d.policy.choose(entry, request, entry.arms, d.pool, time.monotonic(), dry_run=True)
    return {"arm": (choice.arm.variant.name, choice.arm.placement.name), **choice.predicted}


class KeepFrontend:
    """What the daemon's own frontend was asked to send (the rehearsal must send nothing through it)."""

    admin: set = set()
    sent_on: set = set()
    streams = SimpleNamespace(backlogged=False)

    def __init__(self) -> None:
        self.sent: list = []

    def send(self, route, frames) -> bool:
        self.sent.append(frames)
        return True


@contextlib.contextmanager
def assembled(repo: Path, tmp_path: Path, isolation: str):
    """A daemon's parts, started and loaded as start-up leaves them, with a frontend and a store
    that keep what they are given: ``(daemon, store, dispatcher)``, stopped after."""
    config = Config.from_dict({"repository": str(repo), "state_dir": str(tmp_path), "runtime_dir": str(tmp_path)})
    store = SimpleNamespace(submitted=[])
    store.submit = store.submitted.append
    d = Daemon(config)
    registry = load_registry(repo, [PLACEMENT], 1)
    pool = Dispatcher([PLACEMENT], 8, isolation=isolation)
    meter = EnergyMeter.from_config(config.power)
    d.assemble(registry=registry, placements=[PLACEMENT], pool=pool, meter=meter, store=store, frontend=KeepFrontend())
    try:
        pool.start()
        assert not pool.wait_ready(60)
        d.policy.reset(registry)
        d.admission.prepare(registry)
        entry = registry.newest()[0]
        for arm in entry.arms:
            pool.preload(arm.placement.name, entry.version_dir, arm.variant.name)
        assert not pool.wait_loaded(60)
        yield d, store, pool
    finally:
        pool.stop()
        meter.close()


def test_a_rehearsal_answers_every_request_with_a_result_through_parts_of_its_own(tiny_repository, tmp_path):
    """Its requests run on the placement's interpreters; the daemon's own request path,
    frontend, statistics and store see none of them, and its dispatcher keeps its callbacks."""
    repo, _, _ = tiny_repository
    with assembled(repo, tmp_path, "thread") as (d, store, pool):
        callbacks = (pool.on_load_failed, pool.on_down)
        decided = dry_run(d)
        done, cores_before, cores_after = on_a_thread_of_its_own(d, budget_s=60.0)
        assert done == Rehearsal(PINNED + UNPINNED, PINNED + UNPINNED, {})
        assert cores_after == cores_before   # (put back after its inline runs)
        assert dry_run(d) == decided   # the daemon's policy learnt nothing
        assert d.path.requests == 0 and d.path.inferences == 0 and not d.path.pending
        assert d.frontend.sent == [] and store.submitted == []
        d.books.flush()
        entry = d.registry.newest()[0]
        assert all(d.books.stats_of(entry, arm).latency_ms.count == 0 and d.books.stats_of(entry, arm).errors == 0
                   for arm in entry.arms)
        assert (pool.on_load_failed, pool.on_down) == callbacks


def test_a_rehearsal_runs_nothing_in_a_worker_process(tiny_repository, tmp_path):
    """With every placement in a worker process there is nothing it may run: it sends nothing."""
    repo, _, _ = tiny_repository
    with assembled(repo, tmp_path, "process") as (d, store, _):
        assert on_a_thread_of_its_own(d, budget_s=60.0)[0] == Rehearsal()
        assert d.frontend.sent == [] and store.submitted == []


def test_a_rehearsal_runs_no_variant_whose_run_its_build_did_not_measure(tiny_repository, tmp_path):
    """A build that did not measure its variants records their run as 0 ms: unknown, not short."""
    repo, model, version = tiny_repository
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    manifest_path = copy / model / version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for variant in manifest["variants"]:
        variant["latency_ms_1thread"] = {"median": 0.0, "p90": 0.0, "n": 0}
    manifest_path.write_text(json.dumps(manifest))
    with assembled(copy, tmp_path, "thread") as (d, store, _):
        assert on_a_thread_of_its_own(d, budget_s=60.0)[0] == Rehearsal()
        assert d.frontend.sent == [] and store.submitted == []


def test_a_rehearsal_that_fails_is_logged_and_the_start_goes_on(caplog):
    broken = SimpleNamespace(pool=None, registry=None)   # (nothing it can rehearse with)
    with caplog.at_level(logging.WARNING, logger="adaptd"):
        assert rehearse(broken) == Rehearsal()
    assert "rehearsal failed" in caplog.text


def test_a_started_daemon_has_rehearsed_and_counts_nothing_of_it(tiny_repository, tmp_path):
    """A real daemon: its rehearsal ran before ready (its log says how it went), and what a client
    sees after start is the daemon's first request: no statistics, no record stored, until it."""
    repo, model, _ = tiny_repository
    config = {"log_level": "debug", "placements": {"tensorflow": "off"}}
    with DaemonProcess.start(repo, tmp_path / "d", config=config) as d, Client(d.endpoint) as client:
        assert client.health()["errors"] == 0   # (its requests: the launcher's and this one, control requests)
        assert all(a["count"] == 0 and a["errors"] == 0 for a in client.stats()["arms"])
        shape = next(m for m in client.models()["models"] if m["name"] == model)["variants"][0]["inputs"][0]["shape"]
        client.infer(model, [np.zeros([1, *shape[1:]], np.float32)])
        assert sum(a["count"] for a in client.stats()["arms"]) == 1
        log = d.log()
    rehearsed = next(line for line in log.splitlines() if "request path rehearsed" in line)
    sent, results = (int(n) for n in re.search(r"(\d+) requests, (\d+) results, errors none", rehearsed).groups())
    assert 0 < sent == results   # (how many in its time budget: on a loaded host, fewer)
    with sqlite3.connect(Path(tmp_path / "d" / "selections.sqlite3")) as db:
        assert db.execute("SELECT COUNT(*) FROM selections").fetchone()[0] == 1
