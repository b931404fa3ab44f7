"""The estimated energy source end to end through a real daemon: this machine has no power
sensor the daemon may use, so every energy figure must say it is estimated — in each reply, in
the per-arm statistics, on the live selection stream, in the selection store and in the report."""

from __future__ import annotations

import time

import numpy as np
import pytest

from adaptd.clients.client import Client
from adaptd.tools.report import build_report
from adaptd.clients.subscriber import Subscriber
from adaptd.tools.launch import DaemonProcess
from adaptd.wire.records import read_selections

pytestmark = pytest.mark.slow


def test_every_energy_figure_is_labelled_estimated(tiny_repository, tmp_path):
    repo, model, _ = tiny_repository
    config = {"power": {"source": "estimated", "profile": "tx2"}, "store": {"flush_interval_s": 0.2}}
    with DaemonProcess.start(repo, tmp_path / "d", config=config) as d, \
            Client(d.endpoint, timeout_ms=30_000) as client, Subscriber(d.pub_endpoint, model) as sub:
        x = np.random.default_rng(1).random((1, *client.models()["models"][0]["variants"][0]["inputs"][0]["shape"][1:]),
                                            dtype=np.float32)
        # The subscription is live once a published selection arrives; send until one does.
        client.infer(model, x)
        while sub.recv(timeout_ms=100) is None:
            client.infer(model, x)
        placements = [p["name"] for p in client.placements()["placements"] if p["runtime"] == "litert"]
        replies = [client.infer(model, x, variant=v, placement=p)
                   for v in ("float32", "int8_full", "pruned75") for p in placements]
        replies += [client.infer(model, x, objective=o, max_energy_mj=1e6) for o in ("latency", "energy", "accuracy")]

        for r in replies:
            e = r.selection.energy
            assert e.estimated is True and e.source.startswith("estimated:tx2"), e
            assert e.energy_mj is not None and e.energy_mj >= 0.0
            assert r.selection.predicted.energy_estimated in (True, None)

        streamed = []
        deadline = time.monotonic() + 30
        while len(streamed) < len(replies) and time.monotonic() < deadline:
            rec = sub.recv(timeout_ms=1000)
            if rec is not None and rec.get("outcome") == "ok":
                streamed.append(rec)
        assert streamed and all(rec["energy_estimated"] is True for rec in streamed)
        assert all(rec["energy_source"].startswith("estimated") for rec in streamed)

        stats = client.stats()
        ran = [a for a in stats["arms"] if a["count"]]
        assert len(ran) >= len(placements) * 3
        for arm in ran:
            assert arm["energy_estimated"] is True and arm["energy_source"].startswith("estimated"), arm
            assert arm["energy_mj"]["ewma"] is not None and arm["energy_mj"]["p95"] is not None
        assert stats["energy"]["estimated"] is True
    # The daemon has stopped: the store has every record.
    rows = [r for r in read_selections(d.store_path) if r["outcome"] == "ok"]
    assert len(rows) >= len(replies)
    assert all(r["energy_estimated"] and r["energy_source"].startswith("estimated") for r in rows)
    page = build_report(rows, tmp_path / "report").read_text()
    assert "estimated" in page.lower()
