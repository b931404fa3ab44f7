"""The load generator: its statistics, its mix file, and both scenarios against a real ROUTER."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import zmq

from adaptd.clients.loadgen import (
    MixEntry, Sample, load_mix, parse_mix, percentiles, run_scenario, summarize,
)
from adaptd.wire import protocol as p


def test_percentiles_and_summary():
    assert percentiles(list(range(1, 101))) == {"p50": 50.5, "p90": pytest.approx(90.1), "p99": pytest.approx(99.01)}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}
    samples = ([Sample("a", 0, 1.0, "ok", True, "f32", "cpu", 0.8, 2.0, True)] * 6
               + [Sample("a", 0, 9.0, "ok", False, "f32", "cpu", 8.0, 2.0, True)] * 2
               + [Sample("b", 0, 0.5, "rejected", error_code="INFEASIBLE")]
               + [Sample("b", 0, None, "timeout", error_code="TIMEOUT")])
    r = summarize(samples, scenario="server", model="m", duration_s=2.0, target_rate_per_s=5.0)
    assert r.requests == 10 and r.throughput_rps == 4.5
    assert r.attainment == 0.6 and r.rejected_share == 0.1 and r.timeout_share == 0.1
    assert r.latency_ms["p50"] == 1.0 and r.energy_estimated and r.mean_energy_mj == 2.0
    assert r.by_mix["a"]["attainment"] == 0.75 and r.by_mix["b"]["rejected_share"] == 0.5
    assert r.by_arm == {"f32@cpu": 8} and r.errors == {"INFEASIBLE": 1, "TIMEOUT": 1}
    assert "ESTIMATED" in r.describe()


def test_mix_file(tmp_path: Path):
    f = tmp_path / "mix.toml"
    f.write_text('[[mix]]\nname = "strict"\nweight = 3\nmin_accuracy = 0.95\nmax_latency_ms = 5\n'
                 '[[mix]]\nweight = 1\nmax_energy_mj = 20\nobjective = "energy"\non_infeasible = "best_effort"\n')
    a, b = load_mix(f)
    assert a == MixEntry("strict", 3.0, 0.95, 5.0, None)
    assert b.name == "max_energy_mj=20" and b.objective == "energy" and b.on_infeasible == "best_effort"
    (c,) = parse_mix({"mix": [{"max_latency_ms": 5, "latency_confidence": 0.99}]})
    assert c.request_kwargs()["latency_confidence"] == 0.99 and c.request_kwargs()["max_latency_ms"] == 5.0
    for bad, msg in (({"mix": [{"weight": 0}]}, "weight"), ({"mix": [{"max_latency": 5}]}, "unknown"),
                     ({"mix": []}, "one or more"), ({"mix": [{"objective": "speed"}]}, "objective")):
        with pytest.raises(ValueError, match=msg):
            parse_mix(bad)


class Responder:
    """A ROUTER thread answering every inference at once: met unless max_latency_ms < 1,
    INFEASIBLE when min_accuracy > 0.99."""

    def __init__(self, endpoint: str) -> None:
        ctx = zmq.Context.instance()
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.count = 0
        self.max_outstanding_seen = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            env, *frames = self.sock.recv_multipart()
            h, bodies = p.decode(frames)
            self.count += 1
            c = h.get("constraints", {})
            if c.get("min_accuracy", 0) > 0.99:
                reply = p.error_header("INFEASIBLE", "no arm", h["id"])
                self.sock.send_multipart([env, *p.encode(reply)])
                continue
            met = {k: not (k == "max_latency_ms" and v < 1) for k, v in c.items()}
            out = np.zeros((1, 10), np.float32)
            reply = {"type": "result", "id": h["id"], "model": h["model"], "version": "1",
                     "variant": "float32", "placement": "cpu:0-1", "outputs": [p.tensor_header(out)],
                     "timing": {"queue_ms": 0.0, "compute_ms": 0.1, "total_ms": 0.2},
                     "energy": {"energy_mj": 1.0, "source": "estimated:generic", "estimated": True},
                     "predicted": {}, "constraints_met": met, "met": all(met.values()),
                     "reason": {"code": "selected", "text": ""}, "replayed": False}
            self.sock.send_multipart([env, *p.encode(reply, [out])])

    def close(self) -> None:
        self._stop.set()
        self.thread.join()
        self.sock.close(0)


MIX = (MixEntry("loose", 2.0, max_latency_ms=50.0), MixEntry("tight", 1.0, max_latency_ms=0.5),
       MixEntry("impossible", 1.0, min_accuracy=0.999))


def test_single_stream_scenario(tmp_path: Path):
    endpoint = f"ipc://{tmp_path}/d.sock"
    daemon = Responder(endpoint)
    try:
        r = run_scenario(endpoint, "digits", np.zeros((1, 8, 8, 1), np.float32), scenario="single-stream",
                         requests=400, mix=MIX, seed=1)
    finally:
        daemon.close()
    assert daemon.count == 400 and r.requests == 400 and r.timeout_share == 0
    assert r.by_mix["loose"]["attainment"] == 1.0 and r.by_mix["tight"]["attainment"] == 0.0
    assert r.by_mix["impossible"]["rejected_share"] == 1.0
    assert r.attainment == pytest.approx(r.by_mix["loose"]["requests"] / 400)
    assert 0.35 < r.by_mix["loose"]["requests"] / 400 < 0.65   # weight 2 of 4
    assert r.latency_ms["p50"] <= r.latency_ms["p90"] <= r.latency_ms["p99"]


def test_server_scenario_keeps_the_poisson_rate(tmp_path: Path):
    endpoint = f"ipc://{tmp_path}/d.sock"
    daemon = Responder(endpoint)
    try:
        r = run_scenario(endpoint, "digits", np.zeros((1, 8, 8, 1), np.float32), scenario="server",
                         requests=300, rate_per_s=300.0, mix=MIX, seed=2, concurrency=16)
    finally:
        daemon.close()
    assert daemon.count == 300 and r.requests == 300
    # 300 exponential gaps at 300/s: about one second; the achieved rate is near the target.
    assert 200 < r.throughput_rps < 420
    assert r.target_rate_per_s == 300.0 and r.rejected_share > 0


def test_duration_limit(tmp_path: Path):
    endpoint = f"ipc://{tmp_path}/d.sock"
    daemon = Responder(endpoint)
    try:
        r = run_scenario(endpoint, "digits", np.zeros((1, 4), np.float32), scenario="server",
                         requests=10_000, rate_per_s=100.0, duration_s=0.5)
    finally:
        daemon.close()
    assert 20 < r.requests < 100
