"""Export and report on a store filled through the real SelectionStore (real SQLite file)."""

from __future__ import annotations

import csv
import re
import time
from pathlib import Path

import numpy as np
import pytest

from adaptd.cli.main import main
from adaptd.tools.export import EXPORT_COLUMNS, parse_since
from adaptd.tools.report import summarize
from adaptd.tools.report_plots import pareto_front as _pareto
from adaptd.daemon.store import SelectionStore, StoreConfig
from adaptd.wire.records import read_selections

ARMS = {  # variant: (accuracy, latency ms on cpu:0-1, energy mJ)
    "float32": (0.962, 4.3, 20.0), "float16": (0.961, 4.4, 20.5),
    "int8_dynamic": (0.955, 8.0, 30.0), "int8_full": (0.950, 5.6, 18.0), "pruned80": (0.941, 4.3, 19.0),
}
PLACEMENTS = {"cpu:0-1": 1.0, "cpu:0": 1.9}


def realistic_records(n: int, t0: float, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ts = t0 + i * 0.05
        cons = [{"min_accuracy": 0.95, "max_latency_ms": 6.0}, {"max_latency_ms": 5.0},
                {"max_energy_mj": 19.0}, {}][i % 4]
        variant = list(ARMS)[int(rng.integers(len(ARMS)))] if i > n // 2 else ["float32", "int8_full"][i % 2]
        placement = list(PLACEMENTS)[int(rng.integers(2))]
        acc, lat, en = ARMS[variant]
        lat *= PLACEMENTS[placement]
        measured = lat * float(rng.lognormal(0, 0.15))
        energy = en * PLACEMENTS[placement] * float(rng.lognormal(0, 0.1))
        outcome = "ok" if i % 37 else "rejected"
        if i % 101 == 0:
            outcome = "error"
        rec = {
            "ts": ts, "request_id": f"req-{i}", "client": "bench", "model": "digits" if i % 5 else "mnv2",
            "version": "1", "objective": ["latency", "energy", "accuracy"][i % 3], "on_infeasible": "reject",
            "min_accuracy": cons.get("min_accuracy"), "max_latency_ms": cons.get("max_latency_ms"),
            "max_energy_mj": cons.get("max_energy_mj"), "outcome": outcome,
            "error_code": {"ok": None, "rejected": "INFEASIBLE", "error": "WORKER_FAILED"}[outcome],
            "variant": variant, "placement": placement,
            "reason_code": {"ok": "selected", "rejected": "infeasible", "error": "selected"}[outcome],
            "reason": "least latency among 10 arms predicted to meet the constraints",
            "predicted_latency_ms": lat, "predicted_latency_bound_ms": lat * 1.3, "predicted_queue_ms": 0.1,
            "predicted_energy_mj": en * PLACEMENTS[placement], "predicted_accuracy": acc,
            "queue_ms": None, "compute_ms": None, "total_ms": None, "energy_mj": None,
            "energy_source": "estimated:generic-x86", "energy_estimated": True,
            "met_accuracy": None, "met_latency": None, "met_energy": None, "met": None,
        }
        if outcome == "ok":
            rec.update(queue_ms=0.1, compute_ms=measured * 0.9, total_ms=measured, energy_mj=energy)
            met = {}
            if "min_accuracy" in cons:
                met["met_accuracy"] = acc >= cons["min_accuracy"]
            if "max_latency_ms" in cons:
                met["met_latency"] = measured <= cons["max_latency_ms"]
            if "max_energy_mj" in cons:
                met["met_energy"] = energy <= cons["max_energy_mj"]
            rec.update(met)
            rec["met"] = all(met.values()) if met else None
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, list[dict]]:
    path = tmp_path_factory.mktemp("store") / "selections.sqlite3"
    records = realistic_records(1200, time.time() - 600)
    with SelectionStore(StoreConfig(), path) as s:
        for r in records:
            s.submit(r)
    assert s.describe()["rows_written"] == 1200
    return path, records


def test_parse_since():
    assert parse_since("30m", now=10_000.0) == 10_000.0 - 1800
    assert parse_since("2d", now=200_000.0) == 200_000.0 - 172800
    assert parse_since("1700000000") == 1.7e9
    assert parse_since("2025-01-01T00:00:00Z") == 1735689600.0
    assert parse_since(None) is None
    with pytest.raises(ValueError, match="duration"):
        parse_since("yesterday-ish")


def test_csv_export_has_every_row_and_column(store, tmp_path: Path):
    path, records = store
    out = tmp_path / "sel.csv"
    assert main(["log", "export", "--store", str(path), "--out", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records)
    assert tuple(rows[0]) == EXPORT_COLUMNS
    assert {"energy_mj", "energy_source", "energy_estimated"} <= set(rows[0])
    assert rows[0]["request_id"] == "req-0" and rows[-1]["request_id"] == "req-1199"
    assert all(r["energy_estimated"] == "true" for r in rows)
    assert all(r["energy_source"] == "estimated:generic-x86" for r in rows)
    ok = [r for r in rows if r["outcome"] == "ok"]
    assert ok and all(float(r["total_ms"]) > 0 for r in ok)
    rejected = [r for r in rows if r["outcome"] == "rejected"]
    assert rejected and all(r["total_ms"] == "" and r["error_code"] == "INFEASIBLE" for r in rejected)
    # model filter
    out2 = tmp_path / "mnv2.csv"
    assert main(["log", "export", "--store", str(path), "--out", str(out2), "--model", "mnv2"]) == 0
    with open(out2, newline="") as f:
        assert len(list(csv.DictReader(f))) == sum(1 for r in records if r["model"] == "mnv2")


def test_parquet_export_types_and_since(store, tmp_path: Path):
    pq = pytest.importorskip("pyarrow.parquet")   # the report extra; installed in the test venv
    path, records = store
    out = tmp_path / "sel.parquet"
    cutoff = records[600]["ts"]
    assert main(["log", "export", "--store", str(path), "--out", str(out), "--since", repr(cutoff)]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 600
    assert table.column_names == list(EXPORT_COLUMNS)
    assert str(table.schema.field("energy_estimated").type) == "bool"
    assert str(table.schema.field("total_ms").type) == "double"
    assert table.column("request_id")[0].as_py() == "req-600"
    assert b"estimate" in table.schema.metadata[b"energy"]


def test_export_rejects_unknown_format(store, tmp_path: Path, capsys):
    path, _ = store
    assert main(["log", "export", "--store", str(path), "--out", str(tmp_path / "x.xlsx")]) == 1
    assert "unknown export format" in capsys.readouterr().err
    assert not (tmp_path / "x.xlsx").exists()


def test_pareto_frontier():
    pts = [(4.3, 96.2), (4.4, 96.1), (8.0, 95.5), (5.6, 95.0), (4.0, 94.1), (3.0, 90.0)]
    assert _pareto(pts) == [(3.0, 90.0), (4.0, 94.1), (4.3, 96.2)]


def test_summary_counts(store):
    _, records = store
    s = summarize(records)
    assert s["requests"] == 1200
    assert sum(a["count"] for a in s["arms"]) == s["outcomes"]["ok"]
    assert all(a["energy_kind"] == "estimated" for a in s["arms"])
    assert 0 < s["attainment"] < 1


def test_report_writes_a_readable_page_with_nontrivial_plots(store, tmp_path: Path):
    import matplotlib.image as mpimg

    path, records = store
    out = tmp_path / "report"
    assert main(["report", "--store", str(path), "--out", str(out), "--since", "1h"]) == 0
    page = (out / "index.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    expected = {f"{kind}_{m}.png" for kind in ("mix", "attainment", "latency", "pareto") for m in ("digits", "mnv2")}
    assert expected | {"predicted_vs_measured.png"} == set(pngs)
    for name in pngs:
        assert f"src='{name}'" in page
        img = mpimg.imread(out / name)
        assert img.shape[0] > 300 and img.shape[1] > 600
        assert (out / name).stat().st_size > 20_000, name
        # non-trivial: many distinct colours, not a blank canvas
        flat = (img[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
        assert len(np.unique(flat, axis=0)) > 50, name
    for text in ("Summary per arm", "p99 latency (ms)", "Pareto frontier", "constraint attainment",
                 "Predicted versus measured", "Energy is estimated", "ESTIMATED", "1200 decisions",
                 "int8_full", "cpu:0-1"):
        assert text in page, text
    # a --since that excludes everything still writes a page that says so
    out2 = tmp_path / "empty"
    assert main(["report", "--store", str(path), "--out", str(out2), "--since", repr(time.time() + 60)]) == 0
    assert "No decisions in this period" in (out2 / "index.html").read_text()


def test_read_selections_filters(store):
    path, records = store
    assert len(list(read_selections(path, model="digits"))) == sum(r["model"] == "digits" for r in records)


# --- readable at any run length: the figures' own axes, as rendered ------------------------------

def draw(plots) -> dict:
    for p in plots:
        p.fig.canvas.draw()
    return {p.name: p for p in plots}


def tick_labels(ax) -> list[str]:
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(labels) >= 3 and all(labels), labels
    assert len(set(labels)) == len(labels), f"repeated tick labels: {labels}"
    return labels


def axis_use(ax, which: str, values) -> float:
    """The share of the drawn axis that the middle 98% of ``values`` spans (in the axis' scale)."""
    lo, hi = getattr(ax, f"get_{which}lim")()
    p1, p99 = np.percentile(np.asarray(values, float), [1, 99])
    f = np.log10 if getattr(ax, f"get_{which}scale")() == "log" else (lambda v: v)
    return float((f(p99) - f(p1)) / (f(hi) - f(lo)))


def scatter_offsets(ax) -> np.ndarray:
    from matplotlib.collections import PathCollection

    return np.concatenate([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])


def texts(fig) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)


def stored(tmp_path: Path, records: list[dict]) -> list[dict]:
    path = tmp_path / "selections.sqlite3"
    with SelectionStore(StoreConfig(retention_days=None), path) as s:
        for r in records:
            s.submit(r)
    return list(read_selections(path))


def test_a_one_minute_store_gets_seconds_since_the_first_decision(store, tmp_path: Path):
    from adaptd.tools.report import render_report

    path, _ = store
    index, plots = render_report(list(read_selections(path)), tmp_path / "r")
    plots = draw(plots)
    ax = plots["mix_digits.png"].fig.axes[1]
    labels = tick_labels(ax)
    assert all(re.fullmatch(r"\d+", t) for t in labels), labels     # whole seconds over a minute
    assert ax.get_xlabel().startswith("time since the first decision") and ax.get_xlabel().endswith("(s)")
    assert plots["mix_digits.png"].fig.axes[0].get_title() == "digits: variant chosen, share per 2 s"
    assert "Too short" not in index.read_text()


def test_a_multi_hour_store_gets_clock_ticks_and_a_first_load_outlier_is_clipped(tmp_path: Path):
    from adaptd.tools.report import render_report

    records = realistic_records(3000, time.time() - 7 * 3600, seed=3)
    span = 6 * 3600
    for i, r in enumerate(records):
        r["ts"] = records[0]["ts"] + span * i / (len(records) - 1)
    assert records[1]["outcome"] == "ok" and records[1]["model"] == "digits"
    records[1]["total_ms"] = 70.0       # a variant's first request, its load included
    index, plots = render_report(stored(tmp_path, records), tmp_path / "r")
    plots = draw(plots)
    page = index.read_text()
    for name in ("mix_digits.png", "attainment_digits.png", "mix_mnv2.png", "attainment_mnv2.png"):
        fig = plots[name].fig
        ax = fig.axes[-1] if name.startswith("mix") else fig.axes[0]
        labels = tick_labels(ax)
        assert all(re.fullmatch(r"(\w{3} \d{2}\n)?\d{2}:\d{2}", t) for t in labels), labels
        assert re.search(r"\n\d{2}:\d{2}$", labels[0]), "the first tick names the date"
        assert ax.get_xlabel().startswith("local time")
        assert fig.axes[0].get_title().endswith("per 10 min"), fig.axes[0].get_title()
    lat = plots["predicted_vs_measured.png"].fig.axes[0]
    assert "axis clipped" in lat.get_xlabel() and "axis clipped" in lat.get_ylabel()
    assert lat.get_ylim()[1] < 70
    measured = [r["total_ms"] for r in records if r["outcome"] == "ok"]
    assert axis_use(lat, "y", measured) > 0.6, "the bulk of the requests fills the plot"
    assert lat.get_ylim()[1] == pytest.approx(scatter_offsets(lat)[:, 1].max())   # the outlier on the edge
    dist = plots["latency_digits.png"].fig.axes[0]
    assert "axis clipped" in dist.get_xlabel() and dist.get_xlim()[1] < 70
    assert "1 request(s) beyond it (up to 70 ms)" in texts(plots["latency_digits.png"].fig)
    lo, hi = lat.get_ylim()
    beyond = sum(1 for r in records if r["outcome"] == "ok"
                 and not all(lo <= r[k] <= hi for k in ("predicted_latency_ms", "total_ms")))
    assert 1 <= beyond <= 5
    assert f"axes clipped: {beyond} request(s) beyond them (up to 70 ms)" in page
    assert "Too short" not in page and "0.0999" not in page


def test_a_store_too_short_to_plot_over_time_says_so(tmp_path: Path):
    from adaptd.tools.report import render_report

    records = realistic_records(8, time.time() - 60, seed=4)
    for i, r in enumerate(records):
        r["ts"] = records[0]["ts"] + 0.005 * i      # 8 decisions in 35 ms
    index, plots = render_report(stored(tmp_path, records), tmp_path / "r")
    plots = draw(plots)
    page = index.read_text()
    for name in ("mix_digits.png", "attainment_digits.png"):
        assert "Too short to show change over time" in texts(plots[name].fig), name
        assert any(n.startswith("Too short to show change over time") for n in plots[name].notes)
        tick_labels(plots[name].fig.axes[-1])
    assert page.count("Too short to show change over time") >= 2
    ok = sum(r["outcome"] == "ok" for r in records)
    assert f"only {ok} request(s): too few to judge the predictions" in texts(plots["predicted_vs_measured.png"].fig)
    assert "only one arm served requests" in texts(plots["pareto_mnv2.png"].fig)
