"""Live fidelity end to end: a real daemon, real LiteRT interpreters, real sockets and store.

The tiny model's validation digits are served by ``int8_full`` under a ``min_accuracy`` bound;
shadow runs of ``float32`` on the same inputs measure their agreement. With the inputs as they
are nothing changes. Shifted to ``4x + 0.75`` (beyond int8_full's calibrated input range, where
float32 stays right: tests/test_fidelity_estimator.py) int8_full's figure falls within a bounded
number of requests, the alarm is raised and published, and the request moves to a variant whose
figure still meets its bound.

The daemon runs the ``static`` policy (priors only, never updated) over a copy of the repository
whose manifest makes int8_full the fastest prior: the variant a request gets then depends on the
accuracy figures alone, which is what is under test.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
import uuid

import msgpack
import numpy as np
import pytest
import zmq

from adaptd.tools.launch import DaemonProcess
from adaptd.wire import protocol as proto
from adaptd.wire.records import read_fidelity_events, read_selections

BOUND = 0.935          # int8_full (0.94), int8_dynamic and float32 (0.9367) meet it on validation
PRIORS_MS = {"int8_full": 0.001, "int8_dynamic": 0.002}   # every other variant keeps its (slower) prior
SHARE = 0.5            # of requests shadowed once a window holds min_samples (30) comparisons
# Shifted requests within which the request must have moved: the estimator needs about 35 shifted
# comparisons after a window full of agreement (docs/fidelity.md §3), i.e. about 70 at this share.
SHIFTED_WITHIN = 150


@pytest.fixture(scope="module")
def repo(tiny_repository, tmp_path_factory):
    src, model, version = tiny_repository
    dst = tmp_path_factory.mktemp("fid-repo") / "repo"
    shutil.copytree(src, dst)
    path = dst / model / version / "manifest.json"
    manifest = json.loads(path.read_text())
    for v in manifest["variants"]:
        v["latency_ms_1thread"]["median"] = PRIORS_MS.get(v["name"], 0.05)
    path.write_text(json.dumps(manifest))
    return dst, model, version


@pytest.fixture(scope="module")
def digits(tiny_source) -> np.ndarray:
    return np.load(tiny_source[1])["x_val"].astype(np.float32)


def start(repo, workdir, **fidelity) -> DaemonProcess:
    return DaemonProcess.start(repo[0], workdir, config={
        "selector": {"policy": "static"},
        "placements": {"load": "eager"},
        "fidelity": {"reservoir": True, "share": SHARE, **fidelity},
    })


def infer(d: DaemonProcess, model: str, x: np.ndarray) -> dict:
    header = proto.request_header(uuid.uuid4().hex, model, [x[None]], constraints={"min_accuracy": BOUND})
    reply, _ = d.request(header, [x[None]])
    assert reply["type"] == "result", reply
    return reply


def control(d: DaemonProcess, kind: str, admin: bool = False, **fields) -> tuple[dict, list[bytes]]:
    return d.request({"type": kind, "id": uuid.uuid4().hex, **fields}, admin=admin)


def fidelity_of(d: DaemonProcess, variant: str) -> dict:
    (model,) = control(d, "stats")[0]["body"]["fidelity"]["models"]
    return model["variants"][variant]


def wait_compared(d: DaemonProcess, n: int, timeout_s: float = 10.0) -> dict:
    """The stats' fidelity section once ``n`` shadow comparisons have been made (they run after
    the replies, so the last ones may still be under way when the last reply arrives)."""
    deadline = time.monotonic() + timeout_s
    while True:
        fid = control(d, "stats")[0]["body"]["fidelity"]
        if fid["shadow"]["compared"] >= n or time.monotonic() > deadline:
            return fid


def worker_processes(d: DaemonProcess) -> list:
    import psutil
    return [p for p in psutil.Process(d.proc.pid).children() if "adaptd.daemon.worker_process" in p.cmdline()]


def test_without_a_shift_nothing_changes(repo, digits, tmp_path):
    with start(repo, tmp_path / "d") as d:
        replies = [infer(d, repo[1], x) for x in digits[:80]]
        assert {r["variant"] for r in replies} == {"int8_full"}
        assert all(r["predicted"]["accuracy_source"] == "validation" for r in replies)
        assert all(r["predicted"]["accuracy_used"] == r["predicted"]["accuracy"] for r in replies)
        fid = wait_compared(d, 30)
        shadow = fid["shadow"]
        assert shadow["compared"] >= 30, shadow   # every request shadowed while the window fills
        v = fid["models"][0]["variants"]["int8_full"]
        assert v["accuracy_source"] == "validation" and v["accuracy_used"] == v["validation_accuracy"]
        assert not v["alarm"]
        a = v["agreement"]
        assert a["n"] == shadow["compared"] and a["agreement_low"] > 0.85, a
        health = control(d, "health")[0]["body"]
        assert health["requests"] >= 80
        # The shadows' cost is the runtime's: float32 served no request, so its arms stay empty;
        # the shadow CPU stayed within the budget (one second of bucket plus one run beyond it).
        stats = control(d, "stats")[0]["body"]
        assert sum(a["count"] for a in stats["arms"] if a["variant"] == "float32") == 0
        budget = shadow["budget_ms_per_s"] * (health["uptime_s"] + 1.0)
        assert 0 < shadow["cpu_ms_measured"] <= budget + 5.0, shadow
        assert stats["runtime"]["shadow_cpu_ms"] == shadow["cpu_ms_measured"]
        assert shadow["energy_mj"] > 0 and shadow["energy_estimated"]
        # The reference's runs are short: all made inline, and no shadow worker was started.
        assert shadow["offloaded"] == 0 and shadow["cpu_ms_in_process"] == shadow["cpu_ms_measured"], shadow
        assert worker_processes(d) == []
        from adaptd.cli.commands import describe_stats
        text = describe_stats(stats)   # what `adaptd stats` prints
        line = next(ln for ln in text.splitlines() if " int8_full " in f" {ln} " and "validation" in ln)
        assert "ALARM" not in line and "estimated" in text.splitlines()[-1]
    assert d.proc.returncode == 0
    assert read_fidelity_events(d.store_path) == []
    rows = list(read_selections(d.store_path))
    assert len(rows) == 80 and {r["variant"] for r in rows} == {"int8_full"}
    assert {r["accuracy_source"] for r in rows} == {"validation"}


def test_a_shift_moves_the_request_to_a_variant_that_still_meets_its_bound(repo, digits, tmp_path):
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    with start(repo, tmp_path / "d") as d, sub:
        sub.connect(d.pub_endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, b"fid.")
        before = [infer(d, repo[1], x) for x in digits[:40]]
        assert {r["variant"] for r in before} == {"int8_full"}
        shifted = digits * np.float32(4.0) + np.float32(0.75)
        moved_at = None
        for i, x in enumerate(shifted[:SHIFTED_WITHIN]):
            r = infer(d, repo[1], x)
            if r["variant"] != "int8_full":
                moved_at = i
                break
        assert moved_at is not None, f"still on int8_full after {SHIFTED_WITHIN} shifted requests"
        assert r["predicted"]["accuracy_used"] >= BOUND and r["constraints_met"]["min_accuracy"]
        assert r["variant"] not in ("int8_full", "pruned75_int8")
        after = [infer(d, repo[1], x) for x in shifted[moved_at + 1:moved_at + 21]]
        assert {a["variant"] for a in after} == {r["variant"]}   # it stays off int8_full
        v = fidelity_of(d, "int8_full")
        assert v["accuracy_source"] == "live" and v["accuracy_used"] < BOUND and v["alarm"], v
        assert v["agreement"]["agreement_high"] < 0.9
        # The alarm was published on the stream, under fid.<model>
        assert sub.poll(10_000), "no fidelity event on the stream"
        topic, signature, body = sub.recv_multipart()
        assert topic == f"fid.{repo[1]}".encode() and signature == proto.SIGNATURE
        event = msgpack.unpackb(body)
        assert event["type"] == "fidelity" and event["variant"] == "int8_full"
        # The inputs where it disagreed were kept, and export as data `variants build` accepts
        assert control(d, "fidelity_export", model=repo[1])[0]["code"] == proto.FORBIDDEN
        reply, bodies = control(d, "fidelity_export", admin=True, model=repo[1])
        assert reply["type"] == "ok" and reply["body"]["items"] > 0, reply
        data = np.load(io.BytesIO(bodies[0]))
        assert data["x_val"].shape[1:] == (8, 8, 1) and len(data["y_val"]) == reply["body"]["items"]
        assert data["x_val"].min() >= 0.75 - 1e-6    # shifted inputs only
        out = tmp_path / "shifted.npz"   # the command, on the admin endpoint, writes data the build reads
        cli = subprocess.run([sys.executable, "-m", "adaptd", "fidelity", "export", repo[1], "--out", str(out),
                              "--endpoint", d.admin_endpoint], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        from adaptd.variants.dataset import load_dataset
        assert len(load_dataset(out).y_val) >= reply["body"]["items"]
    assert d.proc.returncode == 0
    events = read_fidelity_events(d.store_path)
    kinds = {(e["variant"], e["event"]) for e in events}
    assert {("int8_full", "accuracy_live"), ("int8_full", "alarm_raised")} <= kinds, kinds
    rows = list(read_selections(d.store_path))
    assert all(r["accuracy_used"] >= BOUND and r["met_accuracy"] for r in rows)
    assert [r["variant"] for r in rows[:40]] == ["int8_full"] * 40
    from adaptd.tools.report import render_report
    _, plots = render_report(rows, tmp_path / "report", fidelity_events=events)
    assert f"fidelity_{repo[1]}.png" in {p.name for p in plots}


def test_a_reference_measured_longer_than_inline_starts_the_shadow_worker_while_serving(repo, digits, tmp_path):
    """A reference whose build's latency says it runs inline, but whose runs measure longer than
    inline_max_ms, is given to the shadow worker once measured: the worker starts then, while
    the daemon serves (the loop polls its descriptors from then on), and takes the next runs."""
    src = tmp_path / "repo"
    shutil.copytree(repo[0], src)
    path = src / repo[1] / repo[2] / "manifest.json"
    manifest = json.loads(path.read_text())
    # The reference's prior: slower than int8_full's (which serves), and predicted within
    # inline_max_ms (0.008 ms with cpu:0-1's 2 threads) while a run takes over 0.01 ms of CPU.
    for v in manifest["variants"]:
        if v["name"] == "float32":
            v["latency_ms_1thread"]["median"] = 0.004
    path.write_text(json.dumps(manifest))
    with DaemonProcess.start(src, tmp_path / "d", config={
            "selector": {"policy": "static"}, "placements": {"load": "eager", "inline_max_ms": 0.01},
            "fidelity": {"share": SHARE}}) as d:
        assert worker_processes(d) == []   # none at start: the reference was predicted inline
        replies = []
        while len(replies) < 600 and control(d, "stats")[0]["body"]["fidelity"]["shadow"]["offloaded"] == 0:
            replies += [infer(d, repo[1], x) for x in digits[len(replies) % 200:][:10]]
        shadow = control(d, "stats")[0]["body"]["fidelity"]["shadow"]
        assert shadow["offloaded"] >= 1 and shadow["cpu_ms_in_process"] > 0, shadow   # inline first, then offloaded
        (idle,) = worker_processes(d)
        assert json.loads(idle.cmdline()[-1]).get("sched_idle")


def test_long_shadow_runs_go_to_the_idle_priority_worker(repo, digits, tmp_path):
    """A reference slower than inline_max_ms (here every one: the limit is 0) runs in the shadow
    worker, a process under SCHED_IDLE that is not a placement: no request is answered from it,
    it is not listed, and its runs are compared like any other. It is started, and ready with
    the reference, before the daemon is: the first request's shadow run goes to it."""
    import os

    with DaemonProcess.start(repo[0], tmp_path / "d", config={
            "selector": {"policy": "static"}, "placements": {"load": "eager", "inline_max_ms": 0.0},
            "fidelity": {"share": SHARE}}) as d:
        (idle,) = worker_processes(d)   # before any request
        replies = [infer(d, repo[1], digits[0])]
        deadline = time.monotonic() + 10.0   # (the shadow decision is made after the reply)
        while (shadow := control(d, "stats")[0]["body"]["fidelity"]["shadow"])["runs"] == 0 \
                and time.monotonic() < deadline:
            pass
        assert shadow["runs"] == shadow["offloaded"] == 1, shadow
        # A run is offered only while the worker is idle: the window fills within a bounded number
        while len(replies) < 600 and control(d, "stats")[0]["body"]["fidelity"]["shadow"]["compared"] < 30:
            replies += [infer(d, repo[1], x) for x in digits[len(replies) % 200:][:10]]
        fid = wait_compared(d, 30)
        shadow = fid["shadow"]
        assert shadow["compared"] >= 30 and shadow["offloaded"] == shadow["runs"] >= shadow["compared"], shadow
        assert shadow["cpu_ms_in_process"] == 0.0 and shadow["cpu_ms_measured"] > 0, shadow
        assert worker_processes(d) == [idle] and json.loads(idle.cmdline()[-1]).get("sched_idle")
        assert os.sched_getscheduler(idle.pid) == os.SCHED_IDLE
        assert idle.cpu_times().user > 0   # it ran the shadows
        placements = control(d, "placements")[0]["body"]["placements"]
        assert "shadow" not in {p["name"] for p in placements}
        assert {r["placement"] for r in replies} <= {p["name"] for p in placements}
