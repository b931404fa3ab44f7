"""Export the selection store to CSV or Parquet (``adaptd log export``).

Contract
--------
* Reads the store read-only (it may belong to a running daemon) and writes one file whose
  columns are exactly the store's, in PROTOCOL.md §9.1 order (``COLUMN_NAMES``), one row per
  decision, oldest first. Besides ``energy_mj``, every row carries ``energy_source`` and
  ``energy_estimated`` (true when the energy came from a power model, not a sensor), so an
  exported estimate can never pass for a measurement. ``ts`` is Unix seconds; ``time_iso``
  (UTC, ISO 8601) is added after it for people.
* CSV: header row; empty cells for missing values; booleans as ``true``/``false``.
  Parquet needs ``pyarrow`` (the ``report`` extra); it is imported only then.
* Writes to a temporary file next to ``out`` and renames it into place: a failed export
  leaves no partial file.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from adaptd.daemon.store import BOOL_COLUMNS, COLUMN_NAMES, COLUMNS, read_selections

EXPORT_COLUMNS: tuple[str, ...] = (COLUMN_NAMES[0], "time_iso", *COLUMN_NAMES[1:])

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


def _with_iso(records: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for r in records:
        r = dict(r)
        r["time_iso"] = iso_utc(r["ts"])
        yield r


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def write_csv(records: Iterable[dict[str, Any]], out: Path) -> int:
    n = 0
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(EXPORT_COLUMNS)
        for r in _with_iso(records):
            w.writerow([_csv_cell(r.get(c)) for c in EXPORT_COLUMNS])
            n += 1
    return n


def _require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise RuntimeError("Parquet export needs pyarrow: pip install 'adaptd[report]'") from None
    return pyarrow


def write_parquet(records: Iterable[dict[str, Any]], out: Path) -> int:
    pa = _require_pyarrow()
    import pyarrow.parquet as pq

    types = {"REAL": pa.float64(), "TEXT": pa.string(), "INTEGER": pa.int64()}
    schema_fields = []
    for name, sqltype in COLUMNS:
        t = pa.bool_() if name in BOOL_COLUMNS else types[sqltype.split()[0]]
        schema_fields.append(pa.field(name, t, nullable=not sqltype.endswith("NOT NULL")))
        if name == "ts":
            schema_fields.append(pa.field("time_iso", pa.string(), nullable=False))
    schema = pa.schema(schema_fields, metadata={
        "units": "ts: Unix s; *_ms: milliseconds; *_mj: millijoules; accuracy: share in [0,1]",
        "energy": "energy_estimated=true: energy_mj is an estimate from a power model, not a sensor reading",
    })
    rows = list(_with_iso(records))
    columns = {c: [r.get(c) for r in rows] for c in EXPORT_COLUMNS}
    table = pa.Table.from_pydict(columns, schema=schema)
    pq.write_table(table, out)
    return len(rows)


def export_selections(store: Path, out: Path, *, since: float | None = None,
                      model: str | None = None, fmt: str | None = None) -> int:
    """Write the selections (filtered by ``since`` and ``model``) to ``out``; return the row count.

    ``fmt`` is ``"csv"`` or ``"parquet"``; by default taken from ``out``'s suffix."""
    out = Path(out)
    fmt = (fmt or out.suffix.lstrip(".")).lower()
    if fmt in ("pq", "parq"):
        fmt = "parquet"
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"{out}: unknown export format {fmt!r}; use a .csv or .parquet file name")
    if fmt == "parquet":
        _require_pyarrow()
    records = read_selections(Path(store), since=since, model=model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        n = write_csv(records, tmp) if fmt == "csv" else write_parquet(records, tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n
