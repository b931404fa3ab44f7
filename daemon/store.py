"""The selection store: every decision, durable in SQLite and live on a ZeroMQ PUB socket.

Contract
--------
* Lifecycle: ``SelectionStore(config, path, pub_endpoints)`` is cheap (no I/O) ->
  :meth:`~SelectionStore.start` opens the database (creating it and its schema), binds the
  PUB endpoints and starts the writer thread; it raises (``sqlite3.Error``, ``zmq.ZMQError``,
  ``OSError``) if either fails, and then nothing is left running -> :meth:`submit` any
  number of times -> :meth:`close` commits every record submitted before it, closes the PUB
  socket and joins the writer. ``close`` is idempotent; no restart after close.
* Threads: :meth:`submit` is called from ONE thread, the daemon's main loop, on the request
  path. It is O(1) and never blocks or does I/O: it appends to a ``collections.deque`` and
  sets an event. Everything else (SQLite, the PUB socket, retention) happens in the writer
  thread, which alone owns the connection and the socket (ZeroMQ sockets are not
  thread-safe). :meth:`describe`, :meth:`oldest_pending_ts` and :meth:`lag_s` may be called
  from any thread (they read counters and the queue's head).
* Durability: records are inserted in batches, one transaction per batch. A record is
  committed at most ``flush_interval_s`` after its ``submit`` (default 0.5 s; the writer
  sleeps at most half the interval between batches). Between two batches the writer waits at
  least ``min_batch_gap_s`` (20 ms) while the stream has a subscriber, so that it stays live,
  and ``quiet_batch_gap_s`` (100 ms) while it has none, or until ``batch_rows`` records wait: a
  transaction costs the writer about 0.25 ms of CPU and a record 0.02 ms more, so a transaction
  per record or two (a model served every few ms) made the store cost 0.15 ms per request. The
  database runs in WAL mode. With ``synchronous = "NORMAL"`` (the default) a commit is
  written to the WAL file, i.e. into the operating system's page cache, before ``COMMIT``
  returns, but not fsynced: a process killed with SIGKILL loses nothing committed (the
  kernel still holds and later writes those pages; ``tests/test_store.py`` kills a real
  child to check), while a *power loss* may lose the last commits. Set
  ``synchronous = "FULL"`` to fsync every batch and survive power loss too, at the cost of
  one fsync per batch.
* Records: a map, or the row ``adaptd.wire.records.selection_row`` made (what the daemon's
  bookkeeping submits: the writer stores it as it is, and makes its map only to publish it).
* Publishing: as the writer dequeues a record it publishes it on PUB with the frames of
  PROTOCOL.md §9: ``[b"sel.<model>", b"ADPT01", msgpack(record)]``. A fidelity event (a map
  with ``type: fidelity``, :mod:`adaptd.daemon.fidelity`) goes the same way under
  ``fid.<model>`` and into the ``fidelity_events`` table instead of ``selections``. The stream is best
  effort (a slow subscriber loses messages); the database is the durable record. The socket is
  an XPUB: the writer counts subscriptions and, while there are none, packs nothing (a
  record's msgpack and send were the writer's largest cost per record).
* Retention: every ``retention_interval_s`` the writer deletes rows older than
  ``retention_days`` and then the oldest rows beyond ``retention_max_rows``; ``None`` turns
  either rule off.
* Failure: a batch whose insert fails is retried on the next wake-up; after three failed
  attempts its records are counted in ``dropped`` (reported by :meth:`describe`, and logged)
  rather than blocking the daemon. In normal operation ``dropped`` is 0.
* Board id: a store made with ``board_id`` records it (table ``meta``, key ``board_id``) when the
  writer opens the database, replacing a different one recorded before (logged); a store made
  without one leaves what is recorded. :func:`adaptd.wire.records.read_board_id` reads it back
  (None for a store that has none, e.g. one written by an older adaptd). The ``meta`` table does not change the
  schema version: older readers ignore it.
* Units: ``ts`` is Unix time in seconds; ``*_ms`` milliseconds; ``*_mj`` millijoules;
  accuracy a share in [0, 1]. Booleans are stored as 0/1 and read back as ``bool``.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import zmq

from adaptd.daemon.sched import name_thread
from adaptd.daemon.store_config import StoreConfig   # the [store] table; imported from here too
from adaptd.wire.protocol import SIGNATURE
from adaptd.wire.records import COLUMN_NAMES, COLUMNS, FIDELITY_COLUMN_NAMES, FIDELITY_COLUMNS, row_record

log = logging.getLogger("adaptd.store")

SCHEMA_VERSION = 5
# Columns added since version 1, in order: an older store gains them on open (ALTER TABLE).
ADDED_IN_2 = (("predicted_energy_bound_mj", "REAL"),)
ADDED_IN_3 = (("latency_confidence", "REAL"), ("predicted_latency_confidence", "REAL"))
ADDED_IN_4 = (("runtime_cpu_ms", "REAL"), ("runtime_energy_mj", "REAL"))
ADDED_IN_5 = (("accuracy_used", "REAL"), ("accuracy_source", "TEXT"))   # live fidelity (docs/fidelity.md)
ADDED_SINCE = {1: ADDED_IN_2 + ADDED_IN_3 + ADDED_IN_4 + ADDED_IN_5, 2: ADDED_IN_3 + ADDED_IN_4 + ADDED_IN_5,
               3: ADDED_IN_4 + ADDED_IN_5, 4: ADDED_IN_5}

SCHEMA_SQL = (
    "CREATE TABLE IF NOT EXISTS selections (\n    id INTEGER PRIMARY KEY,\n    "
    + ",\n    ".join(f"{name} {sqltype}" for name, sqltype in COLUMNS)
    + "\n);\n"
    "CREATE INDEX IF NOT EXISTS selections_ts ON selections (ts);\n"
    "CREATE INDEX IF NOT EXISTS selections_model_ts ON selections (model, ts);\n"
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);\n"
    "CREATE TABLE IF NOT EXISTS fidelity_events (\n    id INTEGER PRIMARY KEY,\n    "
    + ",\n    ".join(f"{name} {sqltype}" for name, sqltype in FIDELITY_COLUMNS)
    + "\n);\n"
    "CREATE INDEX IF NOT EXISTS fidelity_events_ts ON fidelity_events (ts);\n"
)

# A None bound to a statement goes through the sqlite3 module's adaptation (it is not one of the
# exact types bound directly: int, float, str, bytearray), whose search for an adapter asks the
# protocol type for ``__adapt__`` and gets an AttributeError, its message formatted and dropped:
# about 0.3 us a None, half a record's insert here (9.3 against 4.6 us a row with 16 None cells
# of 38). An adapter registered for None ends the search at once: an empty dict's ``get`` is a C
# call that answers None for any value, which is bound as NULL as before. (The registry is the
# process's; None is bound the same way for every connection in it.)
sqlite3.register_adapter(type(None), {}.get)

ROWS_PER_STATEMENT = 64   # rows one INSERT carries at most (38 columns: 2,432 variables)
OLD_VARIABLE_LIMIT = 999  # SQLite's variables per statement before 3.32 (where getlimit is missing)


@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, columns: tuple[str, ...], rows: int) -> str:
    one = f"({', '.join('?' for _ in columns)})"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * rows)}"


def insert_rows(conn: sqlite3.Connection, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """``rows`` into ``table``, as many to a statement as SQLite's variable limit allows, at most
    ``ROWS_PER_STATEMENT``. The sqlite3 module lets go of the interpreter lock around each
    statement's step: one step per row (``executemany``) made the writer wait for the lock at
    every request the main thread served meanwhile."""
    try:
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    except AttributeError:   # Python < 3.11
        limit = OLD_VARIABLE_LIMIT
    per = max(1, min(ROWS_PER_STATEMENT, limit // len(columns)))
    for at in range(0, len(rows), per):
        chunk = rows[at:at + per]
        conn.execute(_insert_sql(table, columns, len(chunk)), [v for row in chunk for v in row])


def _cell(name: str, value: Any) -> Any:
    """A record value as SQLite stores it: scalars as is, bools as 0/1, the rest as JSON."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if name == "reason" and isinstance(value, Mapping):  # the reply's {code, text} map
        return str(value.get("text", ""))
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)


_AS_IS = frozenset((type(None), int, float, str))   # exact types: bool (an int) goes to _cell


def record_row(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """A §9.1 record as a row of ``selections`` (unknown keys ignored, missing ones NULL)."""
    row: list[Any] = []
    append, get = row.append, record.get
    for name in COLUMN_NAMES:   # most cells are stored as they are: 2.7 us a record here, 5.0 through _cell
        value = get(name)
        append(value if type(value) in _AS_IS else _cell(name, value))
    if row[0] is None:
        row[0] = time.time()
    return tuple(row)


def _ts(item: Mapping[str, Any] | tuple[Any, ...]) -> float | None:
    """A queued record's ``ts`` (a row's first cell)."""
    return item[0] if type(item) is tuple else item.get("ts")


def fidelity_row(event: Mapping[str, Any]) -> tuple[Any, ...]:
    """A fidelity event (``type: fidelity``) as a row of ``fidelity_events``."""
    return tuple(_cell(name, event.get(name)) for name in FIDELITY_COLUMN_NAMES)


def connect(path: Path, *, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """Open (creating if needed) a store for writing: WAL mode, schema in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise sqlite3.OperationalError(f"{path}: cannot switch to WAL mode (got {mode!r})")
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.execute("PRAGMA busy_timeout=5000")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, *ADDED_SINCE, SCHEMA_VERSION):
        conn.close()
        raise sqlite3.OperationalError(
            f"{path}: selection store schema version {version}; this adaptd writes version {SCHEMA_VERSION}")
    # Older rows keep NULL in the new columns. Only columns still missing are added, so a
    # migration cut short (a daemon killed between two ALTERs) is finished by the next open.
    present = {row[1] for row in conn.execute("PRAGMA table_info(selections)")}
    for name, sqltype in ADDED_SINCE.get(version, ()):
        if name not in present:
            conn.execute(f"ALTER TABLE selections ADD COLUMN {name} {sqltype}")
    conn.executescript(SCHEMA_SQL)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn


def record_board_id(conn: sqlite3.Connection, board_id: str) -> None:
    """Record ``board_id`` as the store's board (see the module docstring)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'board_id'").fetchone()
    if row is not None and row[0] == board_id:
        return
    if row is not None:
        log.warning("selection store: board id changed from %s to %s; exports label every row %s",
                    row[0], board_id, board_id)
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('board_id', ?)", (board_id,))


class SelectionStore:
    """Durable, batched record of every selection, also published live (see module docstring)."""

    _MAX_ATTEMPTS = 3

    def __init__(self, config: StoreConfig, path: Path, pub_endpoints: Sequence[str] = (),
                 context: zmq.Context | None = None, *, min_batch_gap_s: float = 0.02,
                 quiet_batch_gap_s: float = 0.1, batch_rows: int = 256,
                 clock: Any = time.time, guard: Any = None, board_id: str | None = None) -> None:
        self.config = config
        self._guard = guard   # called on the PUB socket before it binds (CurveZMQ: adaptd.daemon.auth)
        self.path = Path(path)
        self.board_id = board_id
        self.pub_endpoints = tuple(pub_endpoints) if config.publish else ()
        self._context = context
        self._clock = clock
        # The writer sleeps at most half the flush interval, so a record waits at most that plus
        # two batches' inserts (the one under way when it came, and its own) and a retention
        # pass: within the flush interval. It waits at least a batch gap, to batch under load.
        self._max_sleep_s = config.flush_interval_s / 2.0
        self._min_gap_s = min(min_batch_gap_s, self._max_sleep_s)
        self._quiet_gap_s = min(quiet_batch_gap_s, self._max_sleep_s)
        self._batch_rows = batch_rows
        self._queue: collections.deque[Mapping[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._batch_full = threading.Event()   # batch_rows records wait: the gap ends early
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self._closed = False
        # counters (written by the writer thread, read anywhere)
        self.rows_written = 0
        self.published = 0
        self.subscriptions = 0      # the stream's live subscriptions (by topic prefix)
        self.dropped = 0
        self.batches = 0
        self.last_flush_ts: float | None = None
        self.last_error: str | None = None
        self.retention_deleted = 0
        self._uncommitted_ts: float | None = None   # ts of the oldest record the writer holds uncommitted

    # --- request path ---------------------------------------------------------------------

    def submit(self, record: Mapping[str, Any] | tuple[Any, ...]) -> None:
        """Queue one §9.1 selection record (a map, or the row ``selection_row`` made for one), or
        a fidelity event. O(1), no I/O, never blocks."""
        queue = self._queue
        queue.append(record)
        if not self._wake.is_set():
            self._wake.set()
        elif len(queue) >= self._batch_rows and not self._batch_full.is_set():
            self._batch_full.set()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None or self._closed:
            raise RuntimeError("SelectionStore.start() called twice or after close()")
        self._thread = threading.Thread(target=self._run, name="adaptd-store", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._closed = True
            raise self._start_error

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._batch_full.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> SelectionStore:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "board_id": self.board_id,
            "rows_written": self.rows_written,
            "pending": len(self._queue),
            "batches": self.batches,
            "last_flush_ts": self.last_flush_ts,
            "published": self.published,
            "pub_endpoints": list(self.pub_endpoints),
            "dropped": self.dropped,
            "retention_deleted": self.retention_deleted,
            "flush_interval_s": self.config.flush_interval_s,
            "synchronous": self.config.synchronous.upper(),
            "last_error": self.last_error,
        }

    def oldest_pending_ts(self) -> float | None:
        """The ``ts`` (Unix s) of the oldest record submitted and not yet committed, or None.

        Any thread. Reads the queue's head before the writer's own oldest: the writer publishes a
        record's ts before taking it off the queue and clears it after the commit, so a reader
        never misses the oldest record; for an instant after a commit it may still see it."""
        try:
            head = _ts(self._queue[0])
        except IndexError:
            head = None
        held = self._uncommitted_ts
        return held if held is not None else head

    def lag_s(self) -> float:
        """How long the oldest record not yet committed has waited (s; 0.0 when none waits). Any thread."""
        ts = self.oldest_pending_ts()
        return 0.0 if ts is None else max(0.0, self._clock() - ts)

    # --- writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        name_thread("adaptd-store")
        conn: sqlite3.Connection | None = None
        pub: zmq.Socket | None = None
        try:
            conn = connect(self.path, synchronous=self.config.synchronous)
            if self.board_id is not None:
                record_board_id(conn, self.board_id)
            if self.pub_endpoints:
                ctx = self._context or zmq.Context.instance()
                pub = ctx.socket(zmq.XPUB)   # a PUB that hears subscriptions: none, nothing to pack
                pub.setsockopt(zmq.LINGER, 0)
                pub.setsockopt(zmq.SNDHWM, 10_000)
                if self._guard is not None:
                    self._guard(pub)
                for endpoint in self.pub_endpoints:
                    pub.bind(endpoint)
        except BaseException as exc:  # reported to start()'s caller
            self._start_error = exc
            if pub is not None:
                pub.close(0)
            if conn is not None:
                conn.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._apply_retention(conn)   # once at start, then every retention_interval_s
            self._loop(conn, pub)
        finally:
            if pub is not None:
                pub.close(0)
            conn.close()

    def _loop(self, conn: sqlite3.Connection, pub: zmq.Socket | None) -> None:
        pending: list[tuple[Any, ...]] = []   # rows dequeued (and published) but not committed
        events: list[tuple[Any, ...]] = []    # fidelity events dequeued, not committed
        attempts = 0
        next_retention = time.monotonic() + self.config.retention_interval_s
        last_batch = -math.inf
        while True:
            stopping = self._stop.is_set()
            if not stopping:
                self._wake.wait(self._max_sleep_s)
                # Coalesce records into one transaction, but never past the flush deadline: a
                # short gap while the stream has listeners, a longer one (or a full batch) else.
                listening = pub is not None and self._subscribed(pub)
                gap_ends = last_batch + (self._min_gap_s if listening else self._quiet_gap_s)
                while len(self._queue) < self._batch_rows and not self._stop.is_set():
                    remaining = gap_ends - time.monotonic()
                    if remaining <= 0:
                        break
                    self._batch_full.wait(remaining)   # set by submit (a full batch) or close
                    self._batch_full.clear()           # (one left from the last drain: wait again)
                self._wake.clear()
            listening = pub is not None and self._subscribed(pub)   # again: one may have come meanwhile
            while self._queue:
                if not pending:   # published before the pop: oldest_pending_ts never skips it
                    self._uncommitted_ts = _ts(self._queue[0])
                record = self._queue.popleft()
                if type(record) is tuple:   # a row already (the daemon's bookkeeping)
                    if record[0] is None:   # (as record_row does)
                        record = (time.time(), *record[1:])
                    if listening:
                        self._publish(pub, row_record(record))
                    pending.append(record)
                    continue
                fidelity = record.get("type") == "fidelity"
                if listening:
                    self._publish(pub, record, "fid" if fidelity else "sel")
                if fidelity:
                    events.append(fidelity_row(record))
                else:
                    pending.append(record_row(record))
            if pending or events:
                try:
                    with conn:  # one transaction per batch
                        conn.execute("BEGIN")
                        insert_rows(conn, "selections", COLUMN_NAMES, pending)
                        insert_rows(conn, "fidelity_events", FIDELITY_COLUMN_NAMES, events)
                except sqlite3.Error as exc:
                    attempts += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.error("selection store: batch of %d failed (attempt %d): %s",
                              len(pending) + len(events), attempts, exc)
                    if attempts >= self._MAX_ATTEMPTS or stopping:
                        self.dropped += len(pending) + len(events)
                        pending, events = [], []
                        self._uncommitted_ts = None
                        attempts = 0
                else:
                    self.rows_written += len(pending)
                    self.batches += 1
                    self.last_flush_ts = self._clock()
                    pending, events = [], []
                    self._uncommitted_ts = None
                    attempts = 0
                last_batch = time.monotonic()
            if time.monotonic() >= next_retention and not stopping:
                self._apply_retention(conn)
                next_retention = time.monotonic() + self.config.retention_interval_s
            if stopping and not self._queue:
                return

    def _subscribed(self, pub: zmq.Socket) -> bool:
        """Whether any subscriber listens (XPUB hands the writer each subscribe and unsubscribe):
        with none, records are not packed for the stream at all."""
        while True:
            try:
                message = pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return self.subscriptions > 0
            if message[:1] == b"\x01":
                self.subscriptions += 1
            elif message[:1] == b"\x00":
                self.subscriptions = max(0, self.subscriptions - 1)

    def _publish(self, pub: zmq.Socket, record: Mapping[str, Any], kind: str = "sel") -> None:
        model = record.get("model") or ""
        try:
            pub.send_multipart([f"{kind}.{model}".encode(), SIGNATURE,
                                msgpack.packb(dict(record), use_bin_type=True, default=str)],
                               flags=zmq.NOBLOCK)
            self.published += 1
        except zmq.Again:  # PUB drops for slow subscribers: best effort by design
            pass
        except (zmq.ZMQError, TypeError, ValueError) as exc:
            self.last_error = f"publish: {exc}"

    def _apply_retention(self, conn: sqlite3.Connection) -> None:
        try:
            deleted = 0
            with conn:
                conn.execute("BEGIN")
                if self.config.retention_days is not None:
                    cutoff = self._clock() - self.config.retention_days * 86400.0
                    deleted += conn.execute("DELETE FROM selections WHERE ts < ?", (cutoff,)).rowcount
                    conn.execute("DELETE FROM fidelity_events WHERE ts < ?", (cutoff,))
                if self.config.retention_max_rows is not None:
                    count = conn.execute("SELECT COUNT(*) FROM selections").fetchone()[0]
                    excess = count - self.config.retention_max_rows
                    if excess > 0:
                        deleted += conn.execute(
                            "DELETE FROM selections WHERE id IN "
                            "(SELECT id FROM selections ORDER BY ts ASC, id ASC LIMIT ?)", (excess,)).rowcount
            self.retention_deleted += max(deleted, 0)
        except sqlite3.Error as exc:
            self.last_error = f"retention: {exc}"
            log.error("selection store: retention failed: %s", exc)
