"""The selection store: real SQLite files, real PUB sockets, a real child killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from adaptd.daemon.store import (ROWS_PER_STATEMENT, SCHEMA_SQL, SelectionStore, StoreConfig, insert_rows,
                                 record_row)
from adaptd.wire.records import COLUMN_NAMES, read_selections, selection_record, selection_row


def record(i: int, *, ts: float | None = None, model: str = "digits") -> dict:
    return {
        "ts": time.time() if ts is None else ts, "request_id": f"r{i}", "client": "test",
        "model": model, "version": "1", "objective": "latency", "on_infeasible": "reject",
        "min_accuracy": 0.9, "max_latency_ms": 5.0, "max_energy_mj": None,
        "outcome": "ok", "error_code": None, "variant": "int8_full", "placement": "cpu:0-1",
        "reason_code": "selected", "reason": "least latency among 3 arms",
        "predicted_latency_ms": 1.0, "predicted_latency_bound_ms": 1.4, "predicted_queue_ms": 0.0,
        "predicted_energy_mj": 2.0, "predicted_accuracy": 0.95,
        "queue_ms": 0.05, "compute_ms": 0.9, "total_ms": 1.1,
        "energy_mj": 2.1, "energy_source": "estimated:generic", "energy_estimated": True,
        "met_accuracy": True, "met_latency": True, "met_energy": None, "met": True,
    }


# --- config --------------------------------------------------------------------------------

def test_config_defaults_and_validation():
    c = StoreConfig.from_dict({})
    assert c.flush_interval_s <= 1.0 and c.publish and c.retention_days == 30.0
    assert StoreConfig.from_dict({"retention_days": 0, "retention_max_rows": "off"}).retention_max_rows is None
    assert StoreConfig.from_dict({"flush_interval_s": 1}).flush_interval_s == 1.0
    with pytest.raises(ValueError, match="unknown key.*flush_interval\\b"):
        StoreConfig.from_dict({"flush_interval": 1})
    with pytest.raises(ValueError, match="flush_interval_s"):
        StoreConfig.from_dict({"flush_interval_s": -1})
    with pytest.raises(ValueError, match="retention_max_rows"):
        StoreConfig.from_dict({"retention_max_rows": 1.5})
    with pytest.raises(ValueError, match="synchronous"):
        StoreConfig.from_dict({"synchronous": "sometimes"})
    with pytest.raises(ValueError, match="publish"):
        StoreConfig.from_dict({"publish": "yes"})


# --- writing and reading -------------------------------------------------------------------

def test_records_round_trip_in_wal_mode(tmp_path: Path):
    db = tmp_path / "sel.sqlite3"
    store = SelectionStore(StoreConfig(), db)
    store.start()
    t0 = time.time()
    for i in range(500):
        store.submit(record(i, ts=t0 + i, model="digits" if i % 2 else "mnv2"))
    store.close()
    info = store.describe()
    assert info["rows_written"] == 500 and info["pending"] == 0 and info["dropped"] == 0
    rows = list(read_selections(db))
    assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(500)]
    assert set(rows[0]) == set(COLUMN_NAMES)
    assert rows[0]["energy_estimated"] is True and rows[0]["met_energy"] is None
    assert rows[0]["max_energy_mj"] is None and rows[0]["total_ms"] == pytest.approx(1.1)
    assert len(list(read_selections(db, model="digits"))) == 250
    assert len(list(read_selections(db, since=t0 + 400))) == 100
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # None cells are SQL NULLs (bound through the adapter the store registers for None)
    assert conn.execute("SELECT typeof(max_energy_mj), typeof(met_energy), typeof(error_code) FROM selections "
                        "LIMIT 1").fetchone() == ("null", "null", "null")
    assert conn.execute("SELECT COUNT(*) FROM selections WHERE max_energy_mj IS NULL").fetchone()[0] == 500
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"selections_ts", "selections_model_ts"} <= indexes


def test_submit_is_visible_on_disk_within_the_flush_interval(tmp_path: Path):
    db = tmp_path / "sel.sqlite3"
    config = StoreConfig(flush_interval_s=0.2)
    with SelectionStore(config, db) as store:
        store.submit(record(1))
        submitted = time.monotonic()
        conn = sqlite3.connect(db)
        # Poll the file from outside the store: the row must appear, and within the interval.
        while conn.execute("SELECT COUNT(*) FROM selections").fetchone()[0] == 0:
            assert time.monotonic() - submitted < 5.0, "record never reached the database"
        assert time.monotonic() - submitted <= config.flush_interval_s + 0.1
        conn.close()


def test_a_trickle_is_committed_in_few_transactions(tmp_path: Path):
    # One record every 5 ms (a large model served back to back): with no stream subscriber the
    # writer waits quiet_batch_gap_s between transactions, whose cost hardly depends on their size.
    with SelectionStore(StoreConfig(), tmp_path / "sel.sqlite3") as store:
        started = time.monotonic()
        for i in range(60):
            store.submit(record(i))
            time.sleep(0.005)   # the trickle's pace
        elapsed = time.monotonic() - started
    assert store.rows_written == 60
    assert store.batches <= elapsed / 0.1 + 2, (store.batches, elapsed)


def test_a_full_batch_ends_the_wait(tmp_path: Path):
    db = tmp_path / "sel.sqlite3"
    config = StoreConfig(flush_interval_s=120.0)
    with SelectionStore(config, db, quiet_batch_gap_s=60.0, batch_rows=8) as store:
        conn = sqlite3.connect(db)

        def committed_within(rows: int, limit_s: float) -> None:
            since = time.monotonic()
            while conn.execute("SELECT COUNT(*) FROM selections").fetchone()[0] < rows:
                assert time.monotonic() - since < limit_s, f"{rows} row(s) not committed within {limit_s} s"
                time.sleep(0.005)   # the poll's pace

        store.submit(record(0))
        committed_within(1, 20.0)   # the first batch waits for no gap
        for i in range(1, 9):
            store.submit(record(i))
        committed_within(9, 20.0)   # a full batch ends the 60 s gap
        conn.close()


def test_retention_by_age_and_rows(tmp_path: Path):
    db = tmp_path / "sel.sqlite3"
    now = time.time()
    with SelectionStore(StoreConfig(retention_days=None, retention_max_rows=None), db) as store:
        for i in range(100):
            store.submit(record(i, ts=now - 86400 * 10 + i))   # 10 days old
        for i in range(100, 130):
            store.submit(record(i, ts=now - 60 + i - 100))      # recent
    # Reopen with retention: the writer applies it when it starts.
    with SelectionStore(StoreConfig(retention_days=1.0, retention_max_rows=20), db) as store:
        pass
    assert store.describe()["retention_deleted"] == 110
    rows = list(read_selections(db))
    assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(110, 130)]


def test_bad_pub_endpoint_fails_start_and_leaves_nothing_running(tmp_path: Path):
    store = SelectionStore(StoreConfig(), tmp_path / "s.db", ["nonsense://x"])
    with pytest.raises(zmq.ZMQError):
        store.start()
    store.close()


def test_every_record_is_published_with_the_spec_frames(tmp_path: Path):
    endpoint = f"ipc://{tmp_path}/sel.sock"
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"sel.digits")
    with SelectionStore(StoreConfig(), tmp_path / "s.db", [endpoint]) as store:
        sub.connect(endpoint)
        # PUB drops messages until the subscription has propagated: send probes until one
        # arrives (a handshake, not a sleep).
        probes = 0
        while not sub.poll(20):
            store.submit(record(-1))
            probes += 1
            assert probes < 500
        while sub.poll(200):
            sub.recv_multipart()
        store.submit(record(1, model="other"))   # filtered out by the subscription
        for i in range(10):
            store.submit(record(i))
        got = []
        while len(got) < 10:
            assert sub.poll(5000), f"only {len(got)} of 10 published records arrived"
            topic, signature, body = sub.recv_multipart()
            assert topic == b"sel.digits" and signature == b"ADPT01"
            got.append(msgpack.unpackb(body)["request_id"])
        assert got == [f"r{i}" for i in range(10)]
    sub.close()


def test_a_row_is_stored_and_published_as_its_map_is(tmp_path: Path):
    """The daemon's bookkeeping submits ``selection_row``'s tuple: stored as it is, published as
    the map ``selection_record`` makes from the same fields."""
    fields = dict(ts=time.time(), client="c", model="digits", version="1", objective="latency",
                  on_infeasible="best_effort", constraints={"max_latency_ms": 5.0}, outcome="ok", error_code=None,
                  variant="int8_full", placement="cpu:0", reason_code="selected", reason="least latency",
                  predicted={"latency_ms": 1.0, "accuracy": 0.9, "accuracy_source": "live"},
                  timing={"queue_ms": 0.1, "compute_ms": 0.8, "total_ms": 1.0},
                  energy={"energy_mj": 2.0, "source": "estimated:generic", "estimated": True},
                  met={"max_latency_ms": True}, runtime={"cpu_ms": 0.2, "energy_mj": 0.1})
    endpoint = f"ipc://{tmp_path}/sel.sock"
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"sel.digits")
    with SelectionStore(StoreConfig(), tmp_path / "s.db", [endpoint]) as store:
        sub.connect(endpoint)
        probes = 0
        while not sub.poll(20):   # a handshake: PUB drops messages until the subscription is in
            store.submit(selection_row(request_id="probe", **fields))
            probes += 1
            assert probes < 500
        while sub.poll(200):
            sub.recv_multipart()
        store.submit(selection_row(request_id="as-row", **fields))
        store.submit(selection_record(request_id="as-map", **fields))
        published = []
        while len(published) < 2:
            assert sub.poll(5000)
            published.append(msgpack.unpackb(sub.recv_multipart()[2]))
    sub.close()
    as_row, as_map = published
    assert as_row == {**as_map, "request_id": "as-row"} and as_row["met"] is True and as_row["energy_estimated"] is True
    stored = {r["request_id"]: r for r in read_selections(tmp_path / "s.db")}
    assert stored["as-row"] == {**stored["as-map"], "request_id": "as-row"} == as_row


def test_fidelity_events_are_kept_apart_and_published_under_fid(tmp_path: Path):
    """A fidelity event goes to its own table and topic, never among the selection records."""
    from adaptd.wire.records import read_fidelity_events

    endpoint = f"ipc://{tmp_path}/fid.sock"
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"fid.")
    event = {"type": "fidelity", "event": "alarm_raised", "ts": 1.0e9, "model": "digits", "version": "1",
             "variant": "int8_full", "reference": "float32", "n": 40, "agreement": 0.5, "agreement_low": 0.34,
             "agreement_high": 0.66, "confidence": 0.95, "alarm_agreement": 0.9, "accuracy_used": 0.3,
             "accuracy_source": "live", "validation_accuracy": 0.97, "reason": "agreement confidently below 0.9"}
    with SelectionStore(StoreConfig(), tmp_path / "f.db", [endpoint]) as store:
        sub.connect(endpoint)
        probes = 0
        while not sub.poll(20):   # the subscription's handshake, as above
            store.submit({**event, "event": "probe"})
            probes += 1
            assert probes < 500
        while sub.poll(200):
            sub.recv_multipart()
        store.submit(record(0))
        store.submit(event)
        topic, signature, body = sub.recv_multipart() if sub.poll(5000) else (None, None, None)
        assert topic == b"fid.digits" and signature == b"ADPT01" and msgpack.unpackb(body) == event
    sub.close()
    assert [r["request_id"] for r in read_selections(tmp_path / "f.db")] == ["r0"]
    kept = [e for e in read_fidelity_events(tmp_path / "f.db") if e["event"] != "probe"]
    assert kept == [event]


# --- SIGKILL ---------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from adaptd.daemon.store import SelectionStore, StoreConfig
    store = SelectionStore(StoreConfig(flush_interval_s=float(sys.argv[2])), Path(sys.argv[1]))
    store.start()
    print("READY", flush=True)
    i = 0
    while True:
        store.submit({"ts": time.time(), "request_id": f"k{i}", "model": "digits", "met": True,
                      "variant": "float32", "placement": "cpu:0-1", "outcome": "ok"})
        print(f"SUB k{i} {time.monotonic():.6f}", flush=True)
        i += 1
        time.sleep(0.002)   # pacing of the simulated request stream, not synchronisation
""")


@pytest.mark.parametrize("flush_interval_s", [0.5, 0.2])
def test_sigkill_loses_nothing_older_than_the_flush_interval(tmp_path: Path, flush_interval_s: float):
    db = tmp_path / "kill.sqlite3"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(flush_interval_s)],
                             stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        assert child.stdout.readline().strip() == "READY"
        submitted: list[tuple[str, float]] = []
        first = None
        for line in child.stdout:
            _, rid, t = line.split()
            submitted.append((rid, float(t)))
            first = first or float(t)
            if float(t) - first > 3 * flush_interval_s + 0.5:
                break
        killed_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    margin_s = 0.1   # scheduling slack on a loaded 2-core machine
    old_enough = {rid for rid, t in submitted if t < killed_at - flush_interval_s - margin_s}
    assert len(old_enough) > 100
    on_disk = {r["request_id"] for r in read_selections(db)}   # read-only, WAL replayed
    missing = sorted(old_enough - on_disk, key=lambda r: int(r[1:]))
    assert not missing, f"{len(missing)} records older than the flush interval were lost: {missing[:5]}"


@pytest.mark.parametrize("version", [1, 2, 4])
def test_an_older_store_gains_the_new_columns_and_keeps_its_rows(tmp_path: Path, version: int):
    """A store written by schema version 1 (no predicted_energy_bound_mj) or 2 (no
    latency_confidence, predicted_latency_confidence) is migrated on open: old rows read back
    with NULL in the new columns, new rows carry them."""
    from adaptd.daemon.store import ADDED_SINCE, SCHEMA_VERSION, connect
    from adaptd.wire.records import COLUMNS

    db = tmp_path / f"v{version}.sqlite3"
    added = {name for name, _ in ADDED_SINCE[version]}
    v1 = [(n, t) for n, t in COLUMNS if n not in added]
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE selections (id INTEGER PRIMARY KEY, "
                 + ", ".join(f"{n} {t}" for n, t in v1) + ")")
    old = record(0)
    conn.execute(f"INSERT INTO selections ({', '.join(n for n, _ in v1)}) VALUES ({', '.join('?' for _ in v1)})",
                 [int(old[n]) if isinstance(old.get(n), bool) else old.get(n) for n, _ in v1])
    conn.execute(f"PRAGMA user_version={version}")
    conn.commit()
    conn.close()

    # read as it is (log analysis of an old store, no daemon has opened it since)
    (before,) = list(read_selections(db))
    assert before["request_id"] == "r0" and before["predicted_energy_bound_mj"] is None
    assert before["latency_confidence"] is None
    connect(db).close()
    store = SelectionStore(StoreConfig(), db)
    store.start()
    store.submit({**record(1), "predicted_energy_bound_mj": 2.6, "latency_confidence": 0.99,
                  "predicted_latency_confidence": 0.99})
    store.close()
    rows = list(read_selections(db))
    assert [r["request_id"] for r in rows] == ["r0", "r1"]
    assert rows[0]["predicted_energy_bound_mj"] is None and rows[0]["predicted_energy_mj"] == 2.0
    assert rows[0]["latency_confidence"] is None and rows[0]["predicted_latency_confidence"] is None
    assert rows[1]["predicted_energy_bound_mj"] == 2.6
    assert rows[1]["latency_confidence"] == 0.99 and rows[1]["predicted_latency_confidence"] == 0.99
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_migration_cut_short_is_finished_by_the_next_open(tmp_path: Path):
    """A daemon killed between two ALTER TABLEs of a migration leaves some new columns added and
    the old user_version: the next open adds only what is still missing."""
    from adaptd.daemon.store import ADDED_SINCE, SCHEMA_VERSION, connect
    from adaptd.wire.records import COLUMN_NAMES, COLUMNS

    db = tmp_path / "half.sqlite3"
    added = [name for name, _ in ADDED_SINCE[1]]
    cols = [(n, t) for n, t in COLUMNS if n not in added[1:]]   # the first new column made it
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE selections (id INTEGER PRIMARY KEY, " + ", ".join(f"{n} {t}" for n, t in cols) + ")")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    connect(db).close()
    conn = sqlite3.connect(db)
    present = [row[1] for row in conn.execute("PRAGMA table_info(selections)")]
    assert set(COLUMN_NAMES) <= set(present) and len(present) == len(set(present))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_the_store_records_its_board_id(tmp_path: Path, caplog):
    from adaptd.wire.records import read_board_id

    db = tmp_path / "b.sqlite3"
    with SelectionStore(StoreConfig(), db) as s:    # no id given: none recorded
        s.submit(record(0))
    assert read_board_id(db) is None
    with SelectionStore(StoreConfig(), db, board_id="tx2-a") as s:
        assert s.describe()["board_id"] == "tx2-a"
    assert read_board_id(db) == "tx2-a"
    with SelectionStore(StoreConfig(), db) as s:    # a store opened without one keeps it
        pass
    assert read_board_id(db) == "tx2-a"
    with caplog.at_level("WARNING", logger="adaptd.store"):
        with SelectionStore(StoreConfig(), db, board_id="tx2-b") as s:
            pass
    assert read_board_id(db) == "tx2-b"
    assert any("board id changed from tx2-a to tx2-b" in r.getMessage() for r in caplog.records)
    assert [r["request_id"] for r in read_selections(db)] == ["r0"]


def test_a_store_without_the_meta_table_has_no_board_id(tmp_path: Path):
    """A store an older adaptd wrote (only the selections table) reads back with no board id."""
    from adaptd.wire.records import COLUMNS, read_board_id

    db = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE selections (id INTEGER PRIMARY KEY, " + ", ".join(f"{n} {t}" for n, t in COLUMNS) + ")")
    conn.execute("PRAGMA user_version=3")
    conn.commit()
    conn.close()
    assert read_board_id(db) is None


@pytest.mark.parametrize("variable_limit", [None, 999, 100, 37])
def test_rows_go_in_many_to_a_statement_within_sqlites_variable_limit(tmp_path, variable_limit):
    """Old SQLite (before 3.32, as on Ubuntu 18.04 and 20.04) allows 999 variables a statement:
    the rows per INSERT follow the connection's limit, down to one row when even that is over it."""
    conn = sqlite3.connect(tmp_path / "s.sqlite3")
    conn.executescript(SCHEMA_SQL)
    if variable_limit is not None:
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variable_limit)
    rows = [record_row(record(i)) for i in range(3 * ROWS_PER_STATEMENT + 5)]
    if variable_limit is not None and variable_limit < len(COLUMN_NAMES):
        with pytest.raises(sqlite3.OperationalError):   # not even one row fits: SQLite says so
            insert_rows(conn, "selections", COLUMN_NAMES, rows)
        return
    with conn:
        insert_rows(conn, "selections", COLUMN_NAMES, rows)
    got = conn.execute("SELECT id, request_id FROM selections ORDER BY id").fetchall()
    assert [r[1] for r in got] == [record(i)["request_id"] for i in range(len(rows))]
