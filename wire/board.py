"""The board id: a stable name for the board a selection store belongs to.

Contract
--------
* A board id is 1 to 64 characters of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit,
  so it is safe as a file name and as a hive partition value (``board_id=<id>``).
* :func:`resolve_board_id` gives the configured id (the top-level ``board_id`` of the daemon's
  config) when there is one, else :func:`machine_board_id`: an id derived from the OS's machine
  id (``/etc/machine-id``, else ``/var/lib/dbus/machine-id``), stable for as long as the OS
  installation is. The machine id itself is not exposed: the derived id is the first 16 hex
  digits of HMAC-SHA256 keyed with the machine id's 16 bytes over ``adaptd-board-id`` (the
  application-specific id systemd recommends over the raw machine id). Without either it
  raises :class:`BoardIdError`, which says to set ``board_id``.
* The daemon records the id in its selection store when it opens it (``daemon/store.py``);
  ``adaptd log export`` writes it on every exported row.
* Pure functions; they read only the machine-id files. Thread-safe.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("adaptd.board")

MACHINE_ID_PATHS: tuple[Path, ...] = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
_BOARD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")
_APP_KEY = b"adaptd-board-id"


class BoardIdError(ValueError):
    """No usable board id: the message says what to set."""


def validate_board_id(value: object, where: str = "board_id") -> str:
    if not isinstance(value, str) or not _BOARD_ID.match(value):
        raise BoardIdError(f"{where}: {value!r} is not a board id: 1 to 64 letters, digits, '.', '_' "
                           "or '-', starting with a letter or digit")
    return value


def derive_board_id(machine_id: str) -> str:
    """The board id derived from a machine id (32 lowercase hex digits)."""
    if not _MACHINE_ID.match(machine_id):
        raise BoardIdError(f"{machine_id!r} is not a machine id (32 hex digits)")
    return hmac.new(bytes.fromhex(machine_id), _APP_KEY, hashlib.sha256).hexdigest()[:16]


def machine_board_id(paths: Sequence[Path] = MACHINE_ID_PATHS) -> str:
    """This machine's derived board id; :class:`BoardIdError` when no machine id is readable."""
    for path in paths:
        try:
            text = Path(path).read_text(encoding="ascii").strip().lower()
        except (OSError, UnicodeDecodeError):
            continue
        if _MACHINE_ID.match(text):
            return derive_board_id(text)
    raise BoardIdError(f"no board id: set board_id in the daemon's config (no machine id in "
                       f"{' or '.join(map(str, paths))} to derive one from)")


def resolve_board_id(configured: str | None, paths: Sequence[Path] = MACHINE_ID_PATHS) -> str:
    """The configured board id, else this machine's derived one (see the module docstring)."""
    if configured is not None:
        return validate_board_id(configured)
    return machine_board_id(paths)


def daemon_board_id(configured: str | None, paths: Sequence[Path] = MACHINE_ID_PATHS) -> str | None:
    """The id the daemon records in its store; None (logged once) when there is none, so a
    machine without a machine id still serves: its exports then need ``--board-id``."""
    try:
        board_id = resolve_board_id(configured, paths)
    except BoardIdError as exc:
        log.warning("%s; the selection store records no board id (exports will need --board-id)", exc)
        return None
    log.info("board id %s (%s)", board_id, "configured" if configured is not None else "derived from the machine id")
    return board_id
