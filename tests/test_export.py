"""`adaptd log export`: the board id on every row, and the hive-partitioned Parquet dataset that
makes the exports of many boards one table (real stores written through SelectionStore, real
Parquet files, the README's DuckDB query run verbatim)."""

from __future__ import annotations

import csv
import re
import statistics
import time
from pathlib import Path

import pytest

from adaptd.cli.main import main
from adaptd.tools.export import EXPORT_COLUMNS, export_board_id, utc_day_start
from adaptd.wire.board import machine_board_id
from adaptd.daemon.store import SelectionStore, StoreConfig

pa_ds = pytest.importorskip("pyarrow.dataset")
pq = pytest.importorskip("pyarrow.parquet")

README = Path(__file__).resolve().parents[1] / "README.md"
DAY = 86400.0


def records(n: int, t0: float, step_s: float, *, seed: int) -> list[dict]:
    """Decisions of two models over two arms; every third sets a latency bound."""
    out = []
    for i in range(n):
        ok = (i + seed) % 11 != 0
        bound = 5.0 if i % 3 == 0 else None
        total = 1.0 + ((i * 7 + seed) % 13) / 4
        out.append({
            "ts": t0 + i * step_s, "request_id": f"b{seed}-{i}", "client": "t", "model": ["digits", "mnv2"][i % 2],
            "version": "1", "objective": "latency", "on_infeasible": "reject", "max_latency_ms": bound,
            "outcome": "ok" if ok else "rejected", "error_code": None if ok else "INFEASIBLE",
            "variant": ["float32", "int8_full"][(i // 2) % 2], "placement": "cpu:0-1",
            "reason_code": "selected" if ok else "infeasible", "reason": "",
            "total_ms": total if ok else None, "energy_mj": 2 * total if ok else None,
            "energy_source": "estimated:generic", "energy_estimated": True,
            "met_latency": (total <= 5.0) if ok and bound else None,
            "met": (total <= 5.0) if ok and bound else (None if ok else False),
        })
    return out


def make_store(path: Path, recs: list[dict], board_id: str | None) -> Path:
    with SelectionStore(StoreConfig(retention_days=None), path, board_id=board_id) as s:
        for r in recs:
            s.submit(r)
    return path


def partitions(root: Path) -> set[str]:
    return {str(p.parent.relative_to(root)) for p in root.rglob("*.parquet")}


def test_every_exported_row_carries_the_board_id(tmp_path: Path, capsys):
    recs = records(40, 1_750_000_000.0, 1.0, seed=1)
    store = make_store(tmp_path / "a.sqlite3", recs, "tx2-a")
    assert main(["log", "export", "--store", str(store), "--out", str(tmp_path / "a.csv")]) == 0
    assert "board tx2-a (recorded in the store)" in capsys.readouterr().err
    with open(tmp_path / "a.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == EXPORT_COLUMNS and EXPORT_COLUMNS[0] == "board_id"
    assert len(rows) == 40 and {r["board_id"] for r in rows} == {"tx2-a"}
    assert main(["log", "export", "--store", str(store), "--out", str(tmp_path / "a.parquet"),
                 "--board-id", "renamed"]) == 0
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.column_names == list(EXPORT_COLUMNS)
    assert set(table.column("board_id").to_pylist()) == {"renamed"}
    assert main(["log", "export", "--store", str(store), "--out", str(tmp_path / "b.csv"), "--board-id", "a/b"]) == 1
    assert "--board-id" in capsys.readouterr().err and not (tmp_path / "b.csv").exists()


def test_a_store_that_records_no_board_id_is_labelled_with_this_machines(tmp_path: Path, capsys):
    try:
        this_machine = machine_board_id()
    except ValueError:
        pytest.skip("this machine has no machine id")
    store = make_store(tmp_path / "old.sqlite3", records(5, 1_750_000_000.0, 1.0, seed=2), None)
    assert export_board_id(store) == (this_machine, "this machine's: the store records none")
    assert main(["log", "export", "--store", str(store), "--out", str(tmp_path / "o.csv")]) == 0
    assert "the store records none" in capsys.readouterr().err
    with open(tmp_path / "o.csv", newline="") as f:
        assert {r["board_id"] for r in csv.DictReader(f)} == {this_machine}


def test_a_directory_gets_a_hive_partitioned_dataset_and_reexport_replaces_it(tmp_path: Path):
    t0 = 1_750_032_000.0          # 2025-06-16 00:00 UTC
    recs = records(300, t0 + 3600, 800.0, seed=3)   # 66.5 h from 01:00: three UTC days
    store = make_store(tmp_path / "a.sqlite3", recs, "tx2-a")
    out = tmp_path / "fleet"
    assert main(["log", "export", "--store", str(store), "--out", str(out)]) == 0
    expected = {f"board_id=tx2-a/model={m}/date={d}" for m in ("digits", "mnv2")
                for d in ("2025-06-16", "2025-06-17", "2025-06-18")}
    assert partitions(out) == expected
    one = pq.read_table(next((out / "board_id=tx2-a" / "model=digits" / "date=2025-06-17").glob("*.parquet")))
    assert "board_id" not in one.column_names and "model" not in one.column_names   # they are in the path
    assert one.column("ts").to_pylist() == sorted(one.column("ts").to_pylist())
    table = pa_ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 300 and set(table.column("board_id").to_pylist()) == {"tx2-a"}
    by_id = {r["request_id"]: r for r in table.to_pylist()}
    for r in recs:
        row = by_id[r["request_id"]]
        assert row["model"] == r["model"] and row["ts"] == r["ts"]
        assert row["date"] == time.strftime("%Y-%m-%d", time.gmtime(r["ts"]))
    # Again, from mid-way through the last day: whole days are written and replace theirs, no duplicates.
    since = recs[-5]["ts"]
    assert main(["log", "export", "--store", str(store), "--out", str(out), "--since", repr(since)]) == 0
    table = pa_ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 300 and len(set(table.column("request_id").to_pylist())) == 300
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]   # no temporary left
    assert utc_day_start(since) == t0 + 2 * DAY


def test_an_existing_file_is_not_a_dataset(tmp_path: Path, capsys):
    store = make_store(tmp_path / "a.sqlite3", records(5, 1_750_000_000.0, 1.0, seed=4), "tx2-a")
    (tmp_path / "fleet").write_text("not a directory")
    assert main(["log", "export", "--store", str(store), "--out", str(tmp_path / "fleet")]) == 1
    assert "needs a directory" in capsys.readouterr().err
    assert (tmp_path / "fleet").read_text() == "not a directory"


def readme_fleet_query() -> str:
    text = README.read_text()
    m = re.search(r"<!-- fleet-query -->\n```sql\n(.*?)```", text, re.S)
    assert m, "README.md has no fleet query block"
    return m.group(1)


def test_the_readme_duckdb_query_over_two_boards_exports(tmp_path: Path, monkeypatch):
    duckdb = pytest.importorskip("duckdb")   # the test extra
    t0 = 1_750_032_000.0
    boards = {"tx2-lab-01": records(200, t0, 120.0, seed=5), "tx2-lab-02": records(150, t0 + 600, 300.0, seed=6)}
    for i, (board, recs) in enumerate(boards.items()):
        # the first board's daemon recorded its id; the second's store is labelled at export
        store = make_store(tmp_path / f"{board}.sqlite3", recs, board if i == 0 else None)
        extra = [] if i == 0 else ["--board-id", board]
        assert main(["log", "export", "--store", str(store), "--out", str(tmp_path / "fleet"), *extra]) == 0
    monkeypatch.chdir(tmp_path)
    result = duckdb.sql(readme_fleet_query())
    rows = [dict(zip(result.columns, row)) for row in result.fetchall()]
    assert result.columns == ["board_id", "model", "variant", "placement", "requests", "median_ms", "met_pct",
                              "mean_energy_mj", "energy_estimated"]
    assert {r["board_id"] for r in rows} == set(boards)
    for board, recs in boards.items():
        for model in ("digits", "mnv2"):
            for variant in ("float32", "int8_full"):
                ok = [r for r in recs if r["model"] == model and r["variant"] == variant and r["outcome"] == "ok"]
                (row,) = [x for x in rows if (x["board_id"], x["model"], x["variant"]) == (board, model, variant)]
                assert row["requests"] == len(ok)
                assert row["median_ms"] == pytest.approx(statistics.median(r["total_ms"] for r in ok), abs=1e-3)
                met = [r["met"] for r in ok if r["met"] is not None]
                assert row["met_pct"] == pytest.approx(100 * sum(met) / len(met), abs=0.05)
                assert row["energy_estimated"] is True
