"""The selection record (PROTOCOL.md §9.1): its fields, how the daemon builds one, how it is read.

Contract
--------
* :data:`COLUMNS` names every field of a record in the spec's order with its SQL type; the
  daemon's store (:mod:`adaptd.daemon.store`) has one column each, and the stream publishes the
  same map. :func:`selection_row` is the one place a record is built (as the store's row;
  :func:`selection_record` and :func:`row_record` give its map).
* Readers (:func:`read_selections`, :func:`read_board_id`) open a store read-only, so a running
  daemon's store can be read (by ``adaptd report``, ``adaptd log export``, tests) without
  importing the daemon. A store of an older schema reads its missing columns as None.
* Pure but for the readers' SQLite I/O; safe from any thread (each call opens its own
  connection).
* Units: ``ts`` Unix seconds; ``*_ms`` milliseconds; ``*_mj`` millijoules; accuracy a share.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

# One column per PROTOCOL.md §9.1 field, in the spec's order: (name, SQL type).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("ts", "REAL NOT NULL"),
    ("request_id", "TEXT"),
    ("client", "TEXT"),
    ("model", "TEXT"),
    ("version", "TEXT"),
    ("objective", "TEXT"),
    ("on_infeasible", "TEXT"),
    ("min_accuracy", "REAL"),
    ("max_latency_ms", "REAL"),
    ("max_energy_mj", "REAL"),
    ("latency_confidence", "REAL"),
    ("outcome", "TEXT"),
    ("error_code", "TEXT"),
    ("variant", "TEXT"),
    ("placement", "TEXT"),
    ("reason_code", "TEXT"),
    ("reason", "TEXT"),
    ("predicted_latency_ms", "REAL"),
    ("predicted_latency_bound_ms", "REAL"),
    ("predicted_queue_ms", "REAL"),
    ("predicted_energy_mj", "REAL"),
    ("predicted_energy_bound_mj", "REAL"),
    ("predicted_accuracy", "REAL"),
    ("predicted_latency_confidence", "REAL"),
    ("queue_ms", "REAL"),
    ("compute_ms", "REAL"),
    ("total_ms", "REAL"),
    ("energy_mj", "REAL"),
    ("energy_source", "TEXT"),
    ("energy_estimated", "INTEGER"),
    ("met_accuracy", "INTEGER"),
    ("met_latency", "INTEGER"),
    ("met_energy", "INTEGER"),
    ("met", "INTEGER"),
    ("runtime_cpu_ms", "REAL"),
    ("runtime_energy_mj", "REAL"),
    ("accuracy_used", "REAL"),
    ("accuracy_source", "TEXT"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)
BOOL_COLUMNS = frozenset({"energy_estimated", "met_accuracy", "met_latency", "met_energy", "met"})

# The fidelity event (PROTOCOL.md §9.3, docs/fidelity.md §5): a variant's drift alarm raised or
# cleared, or the source of the accuracy its requests are judged on changed. Published on the
# stream under ``fid.<model>`` and kept in the store's ``fidelity_events`` table (one column each).
FIDELITY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ts", "REAL NOT NULL"),
    ("event", "TEXT"),
    ("model", "TEXT"),
    ("version", "TEXT"),
    ("variant", "TEXT"),
    ("reference", "TEXT"),
    ("n", "INTEGER"),
    ("agreement", "REAL"),
    ("agreement_low", "REAL"),
    ("agreement_high", "REAL"),
    ("confidence", "REAL"),
    ("alarm_agreement", "REAL"),
    ("accuracy_used", "REAL"),
    ("accuracy_source", "TEXT"),
    ("validation_accuracy", "REAL"),
    ("reason", "TEXT"),
)
FIDELITY_COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in FIDELITY_COLUMNS)



def selection_row(*, ts: float, request_id: str, client: str, model: str, version: str, objective: str,
                  on_infeasible: str, constraints: Mapping[str, float | None], outcome: str,
                  error_code: str | None, variant: str | None, placement: str | None, reason_code: str,
                  reason: str, predicted: Mapping[str, Any] | None, timing: Mapping[str, float] | None = None,
                  energy: Mapping[str, Any] | None = None,
                  met: Mapping[str, bool] | None = None,
                  runtime: Mapping[str, Any] | None = None) -> tuple[Any, ...]:
    """A §9.1 record as the store's row: one value per :data:`COLUMNS` entry, in their order,
    as SQLite keeps it (booleans as 0/1). ``constraints``: the request's (keys of PROTOCOL.md
    §4; absent = unset); ``predicted``: the reply's ``predicted`` map; ``timing`` and
    ``energy``: the reply's maps (None when nothing ran); ``met``: the reply's
    ``constraints_met`` (None when nothing ran); ``runtime``: the reply's ``runtime`` map (the
    daemon's own cost; None when nothing ran). :func:`row_record` makes it the record's map."""
    p = predicted or {}
    get = constraints.get
    return (
        ts, request_id, client, model, version, objective, on_infeasible,
        get("min_accuracy"), get("max_latency_ms"), get("max_energy_mj"), get("latency_confidence"),
        outcome, error_code, variant, placement, reason_code, reason,
        p.get("latency_ms"), p.get("latency_bound_ms"), p.get("queue_ms"), p.get("energy_mj"),
        p.get("energy_bound_mj"), p.get("accuracy"), p.get("latency_confidence"),
        *_ran(outcome == "ok", p, timing, energy, met, runtime),
        p.get("accuracy_used", p.get("accuracy")), p.get("accuracy_source"),
    )


# The columns of what ran (queue_ms .. runtime_energy_mj): the rest of a row is the request's,
# its client's and its decision's.
_RAN_START, _RAN_END = COLUMN_NAMES.index("queue_ms"), COLUMN_NAMES.index("runtime_energy_mj") + 1
_OUTCOME = COLUMN_NAMES.index("outcome")


def _ran(ok: bool, p: Mapping[str, Any], timing: Mapping[str, float] | None, energy: Mapping[str, Any] | None,
         met: Mapping[str, bool] | None, runtime: Mapping[str, Any] | None) -> tuple[Any, ...]:
    met = met or {}
    met_accuracy, met_latency, met_energy = met.get("min_accuracy"), met.get("max_latency_ms"), met.get("max_energy_mj")
    ran = bool(timing)
    return (
        timing.get("queue_ms") if ran else None, timing.get("compute_ms") if ran else None,
        timing.get("total_ms") if ran else None,
        energy.get("energy_mj") if energy else None, energy.get("source") if energy else None,
        int(bool(energy.get("estimated")) if energy else bool(p.get("energy_estimated", False))),
        None if met_accuracy is None else int(met_accuracy), None if met_latency is None else int(met_latency),
        None if met_energy is None else int(met_energy),
        int(all(met.values())) if ok else 0,
        runtime.get("cpu_ms") if runtime else None, runtime.get("energy_mj") if runtime else None,
    )


def repeat_row(row: tuple[Any, ...], *, ts: float, request_id: str, predicted: Mapping[str, Any] | None,
               timing: Mapping[str, float] | None, energy: Mapping[str, Any] | None,
               met: Mapping[str, bool] | None, runtime: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """:func:`selection_row`'s row for another request that differs from ``row``'s only by its
    id, time and what ran: the same header but for its id, client, decision (``predicted``
    its map) and arm. What ran is computed as :func:`selection_row` does; the rest is ``row``'s."""
    return ((ts, request_id) + row[2:_RAN_START]
            + _ran(row[_OUTCOME] == "ok", predicted or {}, timing, energy, met, runtime) + row[_RAN_END:])


def selection_record(**fields: Any) -> dict[str, Any]:
    """A §9.1 record as a map (what the stream publishes): :func:`selection_row`'s arguments."""
    return row_record(selection_row(**fields))


def row_record(row: Sequence[Any]) -> dict[str, Any]:
    """A ``selections`` row (:func:`selection_row`, or one read back) as the record's map."""
    record = dict(zip(COLUMN_NAMES, row))
    for name in BOOL_COLUMNS:
        if record[name] is not None:
            record[name] = bool(record[name])
    return record


# --- readers (export, report) -----------------------------------------------------------------

def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to a store (which may be in use by a running daemon)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"selection store {path} does not exist")
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def read_board_id(path: Path) -> str | None:
    """The board id recorded in a store, or None."""
    conn = open_readonly(path)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
            return None
        row = conn.execute("SELECT value FROM meta WHERE key = 'board_id'").fetchone()
        return None if row is None else str(row[0])
    finally:
        conn.close()


def read_selections(path: Path, since: float | None = None, model: str | None = None,
                    until: float | None = None) -> Iterator[dict[str, Any]]:
    """Selection records (§9.1 dicts) ordered by time; ``since``/``until`` are Unix seconds."""
    where, params = [], []
    if since is not None:
        where.append("ts >= ?")
        params.append(float(since))
    if until is not None:
        where.append("ts < ?")
        params.append(float(until))
    if model is not None:
        where.append("model = ?")
        params.append(model)
    conn = open_readonly(path)
    try:
        # A store of an older schema, read without a daemon having migrated it: its missing
        # columns read as NULL.
        present = {row[1] for row in conn.execute("PRAGMA table_info(selections)")}
        columns = [name if name in present else f"NULL AS {name}" for name in COLUMN_NAMES]
        sql = f"SELECT {', '.join(columns)} FROM selections"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts, id"
        for row in conn.execute(sql, params):
            yield row_record(row)
    finally:
        conn.close()


def read_fidelity_events(path: Path, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
    """Fidelity events (``type: fidelity`` maps) ordered by time; none from a store that has no
    ``fidelity_events`` table (written before schema version 5)."""
    conn = open_readonly(path)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'fidelity_events'") \
                .fetchone() is None:
            return []
        sql = f"SELECT {', '.join(FIDELITY_COLUMN_NAMES)} FROM fidelity_events WHERE ts >= ? AND ts < ? ORDER BY ts, id"
        rows = conn.execute(sql, (-1e308 if since is None else float(since), 1e308 if until is None else float(until)))
        return [{"type": "fidelity", **dict(zip(FIDELITY_COLUMN_NAMES, row))} for row in rows]
    finally:
        conn.close()
