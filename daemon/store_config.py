"""The ``[store]`` table of the daemon's configuration (validated; see ``systemd/adaptd.toml``).

Contract: :meth:`StoreConfig.from_dict` raises ``ValueError`` naming the first bad key; the object
is frozen (thread-safe). ``daemon/store.py`` re-exports it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


@dataclass(frozen=True)
class StoreConfig:
    """The ``[store]`` table of the daemon's TOML configuration."""

    path: str = "selections.sqlite3"        # relative paths: resolved by the daemon against its state dir
    flush_interval_s: float = 0.5           # a submitted record is committed within this
    retention_days: float | None = 30.0     # None: keep forever
    retention_max_rows: int | None = 1_000_000  # None: no row limit
    publish: bool = True                    # publish each record on the PUB socket
    retention_interval_s: float = 60.0      # how often the writer applies retention
    synchronous: str = "NORMAL"             # SQLite synchronous: NORMAL survives SIGKILL, FULL power loss

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"[store] {key}: {why}")

        if not isinstance(self.path, str) or not self.path:
            raise bad("path", f"must be a non-empty string, got {self.path!r}")
        for key in ("flush_interval_s", "retention_interval_s"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise bad(key, f"must be a finite number of seconds > 0, got {v!r}")
        if self.flush_interval_s > 3600:
            raise bad("flush_interval_s", f"must be at most 3600 s, got {self.flush_interval_s}")
        v = self.retention_days
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not math.isfinite(v) or v <= 0):
            raise bad("retention_days", f"must be a number of days > 0 (or absent for no limit), got {v!r}")
        v = self.retention_max_rows
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise bad("retention_max_rows", f"must be an integer > 0 (or absent for no limit), got {v!r}")
        if not isinstance(self.publish, bool):
            raise bad("publish", f"must be true or false, got {self.publish!r}")
        if not isinstance(self.synchronous, str) or self.synchronous.upper() not in _SYNCHRONOUS:
            raise bad("synchronous", f"must be one of {', '.join(_SYNCHRONOUS)}, got {self.synchronous!r}")

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> StoreConfig:
        """Validate a ``[store]`` table; ``ValueError`` names the first bad key.

        TOML has no null: ``retention_days = 0`` / ``retention_max_rows = 0`` or the strings
        ``"none"``/``"off"`` turn a retention rule off.
        """
        if not isinstance(table, Mapping):
            raise ValueError(f"[store] must be a table, got {type(table).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"[store] unknown key(s): {', '.join(map(str, unknown))}; "
                             f"known: {', '.join(sorted(known))}")
        values = dict(table)
        for key in ("retention_days", "retention_max_rows"):
            v = values.get(key)
            if (isinstance(v, str) and v.lower() in ("none", "off")) or (
                    not isinstance(v, bool) and isinstance(v, (int, float)) and v == 0):
                values[key] = None
        if isinstance(values.get("flush_interval_s"), int) and not isinstance(values["flush_interval_s"], bool):
            values["flush_interval_s"] = float(values["flush_interval_s"])
        return cls(**values)
