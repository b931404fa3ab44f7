"""Unexpected faults, logged without flooding the log.

Contract
--------
* :meth:`FaultLog.log` logs one fault: its traceback at most once per ``every_s`` (60 s) per
  kind (the exception's type and the line that raised it), one line otherwise, so a client or a
  broken part that keeps triggering the same fault cannot fill the disk. It never raises.
* The table of kinds is cleared when it passes 256 entries (a flood of distinct faults logs a
  traceback each, which is what an operator wants to see).
* Main thread only (not thread-safe); times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import logging
import time

TRACEBACK_EVERY_S = 60.0   # a fault's traceback is logged at most this often per kind


class FaultLog:
    def __init__(self, logger: logging.Logger, every_s: float = TRACEBACK_EVERY_S) -> None:
        self._log, self._every_s = logger, every_s
        self._last: dict[str, float] = {}

    def log(self, exc: BaseException, where: str) -> None:
        """Log ``exc``, an unexpected fault ``where`` (``"on a request"``): "internal error <where>"."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        place = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
        kind = f"{type(exc).__name__}@{place}"
        now = time.monotonic()
        if now - self._last.get(kind, -self._every_s) >= self._every_s:
            if len(self._last) > 256:
                self._last.clear()
            self._last[kind] = now
            self._log.error("internal error %s (further ones like it are logged in one line for %.0f s)", where,
                            self._every_s, exc_info=exc)
        else:
            self._log.error("internal error %s: %s: %s (at %s)", where, type(exc).__name__,
                            str(exc).splitlines()[0][:200] if str(exc) else "", place)
