"""The build's log file: what TensorFlow, Keras and the TFLite converter print goes there.

Contract
--------
* ``BuildLog()`` creates the log as a temporary file (``adaptd-build-*.log`` in the temporary
  directory). While it is entered (``with log:``, re-entrant), the process's file descriptors
  1 and 2 point at the log, so the converter's C++ lines (``fully_quantize: 0, inference_type:
  6 ...``), TensorFlow's start-up notices and Keras's export messages land there, and Python
  warnings (``UserWarning: Statistics for quantized inputs ...``) are written there too instead
  of to the terminal. ``terminal`` is a text stream on the terminal as it was before (progress
  bars and the lines the user must act on go there).
* ``note(line)`` writes a line to the terminal and to the log; ``write(text)`` to the log only.
* ``publish(directory)`` copies the log to ``directory/build.log`` (the build's staging
  directory, so the log is published with the version) and returns that path once the version
  is published (``published_at``); ``discard()`` removes the temporary file. After a failure
  the temporary file is kept and ``path`` names it.
* Not thread-safe, and process-wide while entered (file descriptors are per process): one
  build at a time in a process, which is how builds run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, TextIO

LOG_NAME = "build.log"


def _flush_all() -> None:
    """Flush Python's and C's standard streams, so that what was written so far lands where the
    file descriptors point now (the converter writes through C stdio, buffered for a file)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


class BuildLog:
    """See the module contract."""

    def __init__(self) -> None:
        fd, name = tempfile.mkstemp(prefix="adaptd-build-", suffix=".log")
        os.close(fd)
        self.path = Path(name)
        self._depth = 0
        self._saved: list[int] = []
        self._terminal_fd: int | None = None
        self.terminal: TextIO = sys.stderr
        self._warnings: Any = None
        self.published_at: Path | None = None

    def write(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def note(self, line: str) -> None:
        """A line the user must see: on the terminal and in the log."""
        self.write(line)
        print(line, file=self.terminal, flush=True)

    def __enter__(self) -> BuildLog:
        self._depth += 1
        if self._depth > 1:
            return self
        _flush_all()
        self._terminal_fd = os.dup(2)
        self.terminal = os.fdopen(os.dup(self._terminal_fd), "w", buffering=1, encoding="utf-8",
                                  errors="replace")
        self._saved = [os.dup(1), os.dup(2)]
        log_fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
        finally:
            os.close(log_fd)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("default")

        def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                 line: Any = None) -> None:
            self.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        _flush_all()
        self._warnings.__exit__(None, None, None)
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in (*self._saved, self._terminal_fd):
            os.close(fd)
        self._saved = []
        self.terminal.close()
        self.terminal = sys.stderr

    def publish(self, directory: Path) -> Path:
        """Copy the log into ``directory`` (a staging directory); returns the copy's name there."""
        target = Path(directory) / LOG_NAME
        shutil.copyfile(self.path, target)
        os.chmod(target, 0o644)
        return target

    def discard(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
