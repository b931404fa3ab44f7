"""Export the selection store to CSV, Parquet or a partitioned Parquet dataset (``adaptd log export``).

Contract
--------
* Reads the store read-only (it may belong to a running daemon). Columns: ``board_id`` first,
  then the store's, in PROTOCOL.md §9.1 order (``COLUMN_NAMES``), with ``time_iso`` (UTC, ISO
  8601, for people) after ``ts`` (Unix seconds): ``EXPORT_COLUMNS``. One row per decision,
  oldest first. Besides ``energy_mj``, every row carries ``energy_source`` and
  ``energy_estimated`` (true when the energy came from a power model, not a sensor), so an
  exported estimate can never pass for a measurement.
* Every row carries the board id (:func:`export_board_id`): the one given (``--board-id``), else
  the one the daemon recorded in the store (``daemon/board.py``), else this machine's derived id
  (for a store written before adaptd recorded one; the CLI says so).
* Formats, from ``out``: a ``.csv`` file (header row; empty cells for missing values; booleans
  ``true``/``false``); a ``.parquet`` file; or a directory (a name without a suffix, or an
  existing directory): a Parquet dataset partitioned hive-style,
  ``out/board_id=<id>/model=<model>/date=<YYYY-MM-DD, UTC>/selections-0.parquet``, so the
  exports of many boards gathered in one directory read as one table (DuckDB, Spark, pandas);
  the partition columns live in the paths, not in the files. A dataset export writes whole days:
  ``since`` is taken back to the start of its UTC day, and each (board, model, day) partition it
  writes replaces that partition in ``out`` (re-exporting never duplicates rows; other boards'
  and other days' partitions are left alone). Parquet needs ``pyarrow`` (the ``report`` extra),
  imported only then.
* Writes to a temporary file (or directory) next to ``out`` and renames it into place: a failed
  export leaves no partial file or partition.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from adaptd.wire.board import BoardIdError, machine_board_id, validate_board_id
from adaptd.wire.records import BOOL_COLUMNS, COLUMN_NAMES, COLUMNS, read_board_id, read_selections

EXPORT_COLUMNS: tuple[str, ...] = ("board_id", COLUMN_NAMES[0], "time_iso", *COLUMN_NAMES[1:])
PARTITION_COLUMNS: tuple[str, ...] = ("board_id", "model", "date")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.I)
_UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """``--since``: a duration back from now (``90s``, ``30m``, ``1h``, ``2d``, ``1w``), an ISO
    8601 time (local time when it has no zone) or Unix seconds. Returns Unix seconds."""
    if value is None or value == "":
        return None
    now = time.time() if now is None else now
    m = _DURATION.match(value)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2).lower()]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"--since {value!r}: expected a duration like 30m, 1h, 2d, "
                         "an ISO time like 2025-01-31T12:00 or Unix seconds") from None


def iso_utc(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="milliseconds")


def utc_day_start(ts: float) -> float:
    """Unix seconds of 00:00 UTC on the day of ``ts``."""
    return float(ts // 86400 * 86400)


def export_board_id(store: Path, given: str | None = None) -> tuple[str, str]:
    """The board id an export of ``store`` writes on every row, and where it came from."""
    if given is not None:
        return validate_board_id(given, "--board-id"), "given"
    recorded = read_board_id(Path(store))
    if recorded is not None:
        return recorded, "recorded in the store"
    try:
        return machine_board_id(), "this machine's: the store records none"
    except BoardIdError:
        raise ValueError(f"{store} records no board id and this machine has no machine id to derive "
                         "one from: pass --board-id") from None


def _rows(records: Iterable[dict[str, Any]], board_id: str) -> Iterable[dict[str, Any]]:
    for r in records:
        r = dict(r)
        r["board_id"] = board_id
        r["time_iso"] = iso_utc(r["ts"])
        yield r


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def write_csv(records: Iterable[dict[str, Any]], out: Path, board_id: str) -> int:
    n = 0
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(EXPORT_COLUMNS)
        for r in _rows(records, board_id):
            w.writerow([_csv_cell(r.get(c)) for c in EXPORT_COLUMNS])
            n += 1
    return n


def _require_pyarrow():
    try:
        import pyarrow
        import pyarrow.dataset  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise RuntimeError("Parquet export needs pyarrow: pip install 'adaptd[report]'") from None
    return pyarrow


def arrow_table(records: Iterable[dict[str, Any]], board_id: str, *, with_date: bool = False):
    """The export as a ``pyarrow.Table`` (``EXPORT_COLUMNS``, plus ``date`` when ``with_date``)."""
    pa = _require_pyarrow()
    types = {"REAL": pa.float64(), "TEXT": pa.string(), "INTEGER": pa.int64()}
    schema_fields = [pa.field("board_id", pa.string(), nullable=False)]
    for name, sqltype in COLUMNS:
        t = pa.bool_() if name in BOOL_COLUMNS else types[sqltype.split()[0]]
        schema_fields.append(pa.field(name, t, nullable=not sqltype.endswith("NOT NULL")))
        if name == "ts":
            schema_fields.append(pa.field("time_iso", pa.string(), nullable=False))
    columns_out = list(EXPORT_COLUMNS)
    if with_date:
        schema_fields.append(pa.field("date", pa.string(), nullable=False))
        columns_out.append("date")
    schema = pa.schema(schema_fields, metadata={
        "units": "ts: Unix s; *_ms: milliseconds; *_mj: millijoules; accuracy: share in [0,1]",
        "energy": "energy_estimated=true: energy_mj is an estimate from a power model, not a sensor reading",
        "board_id": "the board whose daemon made the decision (adaptd board id)",
        "date": "the UTC day of ts (YYYY-MM-DD)",
    })
    rows = list(_rows(records, board_id))
    if with_date:
        for r in rows:
            r["date"] = r["time_iso"][:10]
    return pa.Table.from_pydict({c: [r.get(c) for r in rows] for c in columns_out}, schema=schema)


def write_parquet(records: Iterable[dict[str, Any]], out: Path, board_id: str) -> int:
    import pyarrow.parquet as pq

    table = arrow_table(records, board_id)
    pq.write_table(table, out)
    return table.num_rows


def write_dataset(records: Iterable[dict[str, Any]], out: Path, board_id: str) -> int:
    """Write the hive-partitioned dataset (see the module docstring) into directory ``out``."""
    pa = _require_pyarrow()
    import pyarrow.dataset as ds

    table = arrow_table(records, board_id, with_date=True)
    out.mkdir(parents=True, exist_ok=True)
    if table.num_rows == 0:
        return 0
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ds.write_dataset(table, tmp, format="parquet", basename_template="selections-{i}.parquet",
                         partitioning=ds.partitioning(pa.schema([table.schema.field(c) for c in PARTITION_COLUMNS]),
                                                      flavor="hive"),
                         preserve_order=True, max_partitions=1 << 20, existing_data_behavior="error")
        for written in sorted(tmp.glob("board_id=*/model=*/date=*")):
            dest = out / written.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}") if dest.exists() else None
            if old is not None:
                os.replace(dest, old)
            os.replace(written, dest)
            if old is not None:
                shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return table.num_rows


def export_format(out: Path, fmt: str | None = None) -> str:
    """``"csv"``, ``"parquet"`` or ``"dataset"``: ``fmt``, else from ``out`` (module docstring)."""
    if fmt is None:
        fmt = "dataset" if out.is_dir() or not out.suffix else out.suffix.lstrip(".")
    fmt = fmt.lower()
    if fmt in ("pq", "parq"):
        fmt = "parquet"
    if fmt not in ("csv", "parquet", "dataset"):
        raise ValueError(f"{out}: unknown export format {fmt!r}; use a .csv or .parquet file name, or a "
                         "directory (a name without a suffix) for a Parquet dataset partitioned by board, "
                         "model and date")
    if fmt == "dataset" and out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file: a dataset export needs a directory")
    return fmt


def export_selections(store: Path, out: Path, *, since: float | None = None, model: str | None = None,
                      fmt: str | None = None, board_id: str | None = None) -> int:
    """Write the selections (filtered by ``since`` and ``model``) to ``out``; return the row count.

    ``fmt``: ``"csv"``, ``"parquet"`` or ``"dataset"``, by default from ``out``
    (:func:`export_format`); ``board_id``: by default :func:`export_board_id`'s."""
    out = Path(out)
    fmt = export_format(out, fmt)
    if fmt != "csv":
        _require_pyarrow()
    board_id, _ = export_board_id(store, board_id)
    if fmt == "dataset":
        records = read_selections(Path(store), since=None if since is None else utc_day_start(since), model=model)
        return write_dataset(records, out, board_id)
    records = read_selections(Path(store), since=since, model=model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        n = write_csv(records, tmp, board_id) if fmt == "csv" else write_parquet(records, tmp, board_id)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n
