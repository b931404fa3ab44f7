"""The Prometheus endpoint ([metrics]): a real daemon serving the tiny real model, scraped over
real HTTP and parsed with prometheus_client's own parser; every figure fed by requests changes
by exactly the requests sent. With metrics off the daemon opens no TCP port and never imports
prometheus_client; with the package missing or the port taken it does not start, saying why."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter as Tally
from pathlib import Path

import numpy as np
import psutil
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from adaptd.clients import errors as e
from adaptd.clients.client import Client
from adaptd.daemon.metrics_records import DURATION_BUCKETS_S, RecordMetrics
from adaptd.daemon.store import SelectionStore, StoreConfig
from adaptd.tools.launch import DaemonProcess, to_toml

from .conftest import taken_port

DEADLINE_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digits(n: int = 1) -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().images[:n].astype(np.float32) / 16.0)[..., None]


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """``sample name -> {sorted label items: value}`` from one real HTTP scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    """One sample's value (0 when absent: a labelled child appears on its first increment)."""
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def total(samples, name: str, **match) -> float:
    """The sum over the samples of ``name`` whose labels include ``match``."""
    return sum(v for k, v in samples.get(name, {}).items() if set(match.items()) <= set(k))


def listening_ports(pid: int) -> set[int]:
    return {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


@pytest.fixture(scope="module")
def daemon(tiny_repository, tmp_path_factory):
    repo, model, _ = tiny_repository
    port = free_port()
    d = DaemonProcess.start(repo, tmp_path_factory.mktemp("metrics"),
                            config={"metrics": {"enabled": True, "port": port}, "store": {"flush_interval_s": 0.2}})
    try:
        yield d, model, port
    finally:
        d.stop()


# --- a running daemon ---------------------------------------------------------------------------

@pytest.mark.slow
def test_counters_and_histograms_change_by_exactly_the_requests_sent(daemon):
    d, model, port = daemon
    with Client(d.endpoint, timeout_ms=30_000) as c:
        c.health()   # earlier requests' bookkeeping done before the baseline
        before = scrape(port)
        served: Tally = Tally()
        total_ms, energy_mj, met_latency = Tally(), 0.0, Tally()
        first = None
        for i in range(6):
            r = c.infer(model, digits(), max_latency_ms=1000.0, objective="latency" if i % 2 else "energy")
            first = first or r
            s = r.selection
            arm = (model, s.variant, s.placement)
            served[arm] += 1
            total_ms[arm] += s.timing.total_ms
            assert s.energy.estimated   # this machine has no power sensor
            energy_mj += max(0.0, s.energy.energy_mj)
            met_latency[s.constraints_met["max_latency_ms"]] += 1
        rejected: Tally = Tally()
        for _ in range(2):
            with pytest.raises(e.InfeasibleError) as info:
                c.infer(model, digits(), max_latency_ms=1e-6)
            closest = info.value.closest or {}
            rejected[(model, closest.get("variant", ""), closest.get("placement", ""))] += 1
        with pytest.raises(e.BadInputError) as info:   # NaN: refused by the worker, after the choice
            c.infer(model, np.full((1, 8, 8, 1), np.nan, np.float32))
        bad_arm = (model, info.value.details["variant"], info.value.details["placement"])
        with pytest.raises(e.BadInputError):            # a wrong shape: refused before any choice, no record
            c.infer(model, np.zeros((1, 3, 3, 1), np.float32))
        replayed = c.infer(model, digits(), request_id=first.request_id)
        assert replayed.selection.replayed

        # Records are counted in the deferred bookkeeping, done before a control reply; the
        # daemon's state is published once a second: wait for it, with a deadline.
        deadline = time.monotonic() + DEADLINE_S
        while True:
            c.health()
            after = scrape(port)
            if (total(after, "adaptd_error_replies_total") - total(before, "adaptd_error_replies_total") >= 4
                    and value(after, "adaptd_replay_hits_total") > value(before, "adaptd_replay_hits_total")) \
                    or time.monotonic() > deadline:
                break

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    def arm_labels(arm):
        return dict(zip(("model", "variant", "placement"), arm))

    for arm, n in served.items():
        assert delta("adaptd_requests_total", **arm_labels(arm), outcome="ok", code="") == n
        for hist in ("adaptd_request_duration_seconds", "adaptd_queue_duration_seconds",
                     "adaptd_compute_duration_seconds"):
            assert delta(f"{hist}_count", **arm_labels(arm)) == n
            assert delta(f"{hist}_bucket", **arm_labels(arm), le="+Inf") == n
        assert delta("adaptd_request_duration_seconds_sum", **arm_labels(arm)) == pytest.approx(
            total_ms[arm] / 1e3, rel=1e-9)
    assert total(after, "adaptd_requests_total", outcome="ok") - total(before, "adaptd_requests_total",
                                                                       outcome="ok") == 6
    for arm, n in rejected.items():
        assert delta("adaptd_requests_total", **arm_labels(arm), outcome="rejected", code="INFEASIBLE") == n
    assert total(after, "adaptd_requests_total", outcome="rejected") - total(
        before, "adaptd_requests_total", outcome="rejected") == 2
    assert delta("adaptd_requests_total", **arm_labels(bad_arm), outcome="error", code="BAD_INPUT") == 1
    assert total(after, "adaptd_requests_total", outcome="error") - total(
        before, "adaptd_requests_total", outcome="error") == 1
    # every error reply: the two rejections, the NaN and the wrong shape (which made no record)
    assert delta("adaptd_error_replies_total", code="INFEASIBLE") == 2
    assert delta("adaptd_error_replies_total", code="BAD_INPUT") == 2
    assert total(after, "adaptd_error_replies_total") - total(before, "adaptd_error_replies_total") == 4
    assert delta("adaptd_replay_hits_total") == 1
    for met, n in met_latency.items():
        assert delta("adaptd_constraints_total", model=model, kind="latency", met=str(met).lower()) == n
    assert total(after, "adaptd_constraints_total", kind="accuracy") == 0   # none was asked for

    # energy: in joules, labelled estimated as the replies are, never measured here
    assert total(after, "adaptd_energy_joules_total", source="estimated") - total(
        before, "adaptd_energy_joules_total", source="estimated") == pytest.approx(energy_mj / 1e3, rel=1e-9, abs=1e-15)
    assert total(after, "adaptd_energy_joules_total", source="measured") == 0
    assert value(after, "adaptd_power_estimated", source=next(dict(k)["source"] for k in
                                                               after["adaptd_power_estimated"])) == 1.0
    assert value(after, "adaptd_power_sample_rate_hertz") == 0.0   # no sensor, no sampler

    # buckets resolve tens of microseconds, up to seconds
    les = sorted(float(dict(k)["le"]) for k in after["adaptd_compute_duration_seconds_bucket"]
                 if dict(k)["model"] == model and dict(k)["placement"] == next(iter(served))[2]
                 and dict(k)["variant"] == next(iter(served))[1])
    assert les[0] <= 20e-6 and les[1] <= 50e-6 and les[-2] >= 10.0 and math.isinf(les[-1])
    assert tuple(les[:-1]) == pytest.approx(DURATION_BUCKETS_S)


@pytest.mark.slow
def test_gauges_per_placement_selector_and_store(daemon):
    d, model, port = daemon
    with Client(d.endpoint, timeout_ms=30_000) as c:
        placements = [p["name"] for p in c.placements()["placements"]]
        c.infer(model, digits(), max_latency_ms=1000.0)
        arms = [a for a in c.stats()["arms"] if a["model"] == model]
        samples = scrape(port)
    for p in placements:
        assert value(samples, "adaptd_queue_depth", placement=p) == 0.0
        assert value(samples, "adaptd_worker_up", placement=p) == 1.0
        assert (("placement", p),) in samples["adaptd_worker_restarts_total"]
    assert value(samples, "adaptd_queue_limit") == 32
    # the selector's state: every arm, with the accuracy it uses and a latency bound in seconds
    accuracy = {(dict(k)["variant"], dict(k)["placement"]): v
                for k, v in samples["adaptd_selector_accuracy_ratio"].items() if dict(k)["model"] == model}
    assert set(accuracy) == {(a["variant"], a["placement"]) for a in arms}
    bounds = [v for k, v in samples["adaptd_selector_latency_bound_seconds"].items() if dict(k)["model"] == model]
    assert len(bounds) == len(arms) and all(0 < b < 1.0 for b in bounds)
    assert all(dict(k)["source"] == "estimated" for k in samples["adaptd_selector_energy_estimate_joules"])
    assert 0 <= value(samples, "adaptd_snapshot_age_seconds") < 5.0
    assert value(samples, "adaptd_store_lag_seconds") >= 0.0
    # the store catches up: nothing left uncommitted once the writer has run
    deadline = time.monotonic() + DEADLINE_S
    while value(samples, "adaptd_store_pending_records") or value(samples, "adaptd_store_lag_seconds"):
        assert time.monotonic() < deadline, "the store never caught up"
        samples = scrape(port)
    assert value(samples, "adaptd_store_records_written_total") >= 1
    assert value(samples, "process_resident_memory_bytes") > 0
    # names follow the rules: prefix, and no label holds a request id
    for name, series in samples.items():
        assert name.startswith(("adaptd_", "process_")), name
        for labels in series:
            assert not {"request_id", "client", "id"} & {k for k, _ in labels}, (name, labels)


@pytest.mark.slow
def test_a_worker_killed_from_outside_counts_one_restart(tiny_repository, tmp_path):
    repo, model, _ = tiny_repository
    port = free_port()   # worker processes exist only with process isolation
    d = DaemonProcess.start(repo, tmp_path, config={"metrics": {"enabled": True, "port": port},
                                                    "placements": {"isolation": "process"}})
    with d, Client(d.endpoint, timeout_ms=30_000) as c:
        victim = c.placements()["placements"][0]
        before = value(scrape(port), "adaptd_worker_restarts_total", placement=victim["name"])
        os.kill(victim["worker_pid"], signal.SIGKILL)
        deadline = time.monotonic() + DEADLINE_S
        while True:   # the restart shows once the daemon has seen the death and published (about 1 s)
            samples = scrape(port)
            if value(samples, "adaptd_worker_restarts_total", placement=victim["name"]) > before:
                break
            assert time.monotonic() < deadline, "no restart counted"
            c.health()
        assert value(samples, "adaptd_worker_restarts_total", placement=victim["name"]) == before + 1
        c.infer(model, digits(), placement=victim["name"])   # the new worker serves


@pytest.mark.slow
def test_the_endpoint_listens_on_loopback_only_and_goes_with_the_daemon(daemon):
    d, _, port = daemon
    conns = [c for c in psutil.Process(d.proc.pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    assert [(c.laddr.ip, c.laddr.port) for c in conns] == [("127.0.0.1", port)]


@pytest.mark.slow
def test_with_metrics_off_no_port_is_opened_and_prometheus_client_is_not_imported(tiny_repository, tmp_path):
    repo, model, _ = tiny_repository
    # PYTHONVERBOSE: the interpreter itself logs every module it imports, to the daemon's log
    d = DaemonProcess.start(repo, tmp_path / "off", env={"PYTHONVERBOSE": "1"})
    try:
        with Client(d.endpoint, timeout_ms=30_000) as c:
            c.infer(model, digits(), max_latency_ms=1000.0)
            c.health()
        assert listening_ports(d.proc.pid) == set()
    finally:
        d.stop()
    log = d.log_path.read_text(errors="replace")
    assert re.search(r"^import 'zmq' ", log, re.M), "the import trace is there"
    assert not re.search(r"^import 'prometheus_client", log, re.M)


def serve_fails(tmp_path: Path, repo: Path, metrics: dict, prelude: str = "") -> subprocess.CompletedProcess:
    run = Path(f"/tmp/adaptd-t-{tmp_path.name[-10:]}")
    config = {"repository": str(repo), "state_dir": str(tmp_path), "runtime_dir": str(run),
              "power": {"source": "estimated", "idle_window_s": 0.05}, "metrics": metrics}
    (tmp_path / "adaptd.toml").write_text(to_toml(config))
    code = f"{prelude}\nimport sys\nfrom adaptd.cli.main import main\nsys.exit(main(['serve', '--config', " \
           f"{str(tmp_path / 'adaptd.toml')!r}]))"
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(run, ignore_errors=True)   # (made by the daemon before it gave up: not under tmp_path)


@pytest.mark.slow
def test_without_the_package_the_daemon_does_not_start_and_names_the_extra(tiny_repository, tmp_path):
    repo, _, _ = tiny_repository
    # sys.modules[name] = None is Python's own way of making an import fail as if absent
    out = serve_fails(tmp_path, repo, {"enabled": True, "port": free_port()},
                      prelude="import sys; sys.modules['prometheus_client'] = None")
    assert out.returncode != 0
    assert "pip install 'adaptd[metrics]'" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_taken_port_stops_the_start_with_one_line(tiny_repository, tmp_path):
    repo, _, _ = tiny_repository
    with taken_port() as port:
        out = serve_fails(tmp_path, repo, {"enabled": True, "port": port})
    assert out.returncode != 0
    assert f"[metrics] cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


# --- the parts, without a daemon ----------------------------------------------------------------

def record(**fields):
    base = {"model": "m", "variant": "v", "placement": "cpu:0", "outcome": "ok", "error_code": None,
            "reason_code": "selected", "total_ms": 0.5, "queue_ms": 0.1, "compute_ms": 0.05, "energy_mj": 2.0,
            "energy_estimated": True, "met_accuracy": None, "met_latency": True, "met_energy": None}
    return {**base, **fields}


def test_records_feed_the_families_in_base_units():
    registry = CollectorRegistry()
    m = RecordMetrics()
    registry.register(m)
    m.observe(record())
    m.observe(record(energy_mj=-0.3, energy_estimated=False, reason_code="probe", met_latency=False))
    m.observe(record(outcome="rejected", error_code="INFEASIBLE", variant=None, placement=None, total_ms=None,
                     energy_mj=None))
    m.observe({"nonsense": object()})   # a broken record is logged, never raised
    arm = {"model": "m", "variant": "v", "placement": "cpu:0"}
    get = registry.get_sample_value
    assert get("adaptd_requests_total", {**arm, "outcome": "ok", "code": ""}) == 2
    assert get("adaptd_requests_total", {"model": "m", "variant": "", "placement": "", "outcome": "rejected",
                                         "code": "INFEASIBLE"}) == 1
    assert get("adaptd_request_duration_seconds_sum", arm) == pytest.approx(1e-3)
    assert get("adaptd_compute_duration_seconds_bucket", {**arm, "le": "5e-05"}) == 2
    assert get("adaptd_compute_duration_seconds_bucket", {**arm, "le": "3e-05"}) == 0
    assert get("adaptd_energy_joules_total", {**arm, "source": "estimated"}) == pytest.approx(2e-3)
    assert get("adaptd_energy_joules_total", {**arm, "source": "measured"}) == 0   # below zero adds nothing
    assert get("adaptd_probes_total", arm) == 1
    assert get("adaptd_constraints_total", {"model": "m", "kind": "latency", "met": "true"}) == 1
    assert get("adaptd_constraints_total", {"model": "m", "kind": "latency", "met": "false"}) == 1
    assert get("adaptd_constraints_total", {"model": "m", "kind": "energy", "met": "true"}) is None


def test_the_store_reports_its_oldest_uncommitted_record(tmp_path):
    now = [1000.0]
    store = SelectionStore(StoreConfig(flush_interval_s=0.05), tmp_path / "s.sqlite3", clock=lambda: now[0])
    assert store.oldest_pending_ts() is None and store.lag_s() == 0.0
    from adaptd.wire.records import selection_record

    def rec(ts):
        return selection_record(ts=ts, request_id="r", client="c", model="m", version="1", objective="latency",
                                on_infeasible="reject", constraints={}, outcome="ok", error_code=None, variant="v",
                                placement="p", reason_code="selected", reason="", predicted=None)

    store.submit(rec(990.0))
    store.submit(rec(995.0))
    assert store.oldest_pending_ts() == 990.0 and store.lag_s() == 10.0
    store.start()
    store.close()   # commits every record submitted before it
    assert store.describe()["rows_written"] == 2
    assert store.oldest_pending_ts() is None and store.lag_s() == 0.0
