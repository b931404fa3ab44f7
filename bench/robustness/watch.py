"""The daemon seen from outside: its workers, its memory, its log, its health.

Contract
--------
* Only public interfaces: the ``placements`` and ``health`` control messages (PROTOCOL.md §7),
  ``/proc/<pid>/status`` and ``/proc/<pid>/stat``, and the daemon's log file.
* :func:`worker_pids` returns the workers the daemon names, keeping only live processes that
  are really the daemon's children right now (a pid named a moment ago may have exited or been
  reused), so a killer never signals an unrelated or already dead process.
* :class:`RssSampler` samples a pid's VmRSS on its own thread every ``interval_s`` with a
  caller-supplied progress figure (e.g. messages sent so far); :func:`flatness` judges the
  samples. Units: bytes, seconds.
* :class:`LogWatch` counts ``Traceback`` lines in the log written since it was made.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from adaptd.wire import protocol as proto


def control(endpoint: str, kind: str, timeout_s: float = 10.0, **fields: Any) -> dict[str, Any]:
    """One control request on a fresh DEALER socket; the reply header (``ok`` or ``error``).
    Raises TimeoutError when no reply comes within ``timeout_s``."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(proto.encode({"type": kind, "id": f"{kind}-{uuid.uuid4().hex}", **fields}))
        if not sock.poll(timeout_s * 1e3):
            raise TimeoutError(f"no reply to {kind} within {timeout_s} s")
        header, _ = proto.decode(sock.recv_multipart())
        return header
    finally:
        sock.close()


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` from ``/proc/<pid>/stat``; None when it is gone or has exited
    (a zombie waiting for its parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'
    state, ppid = stat[stat.rindex(b")") + 2:].split()[:2]
    return None if state in (b"Z", b"X") else int(ppid)


def cpu_state(pid: int) -> tuple[str, int] | None:
    """``(state, CPU clock ticks used)`` of ``pid`` from ``/proc/<pid>/stat`` (state ``R``
    running, ``S`` sleeping, ``Z`` exited but not yet reaped, ...); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[11]) + int(fields[12])     # state, utime + stime


def wait_idle(pid: int, timeout_s: float = 60.0, quiet_s: float = 0.06) -> None:
    """Return once ``pid`` sleeps and has used no CPU for ``quiet_s`` (it waits for work);
    AssertionError after ``timeout_s``. For a process nothing else can wake meanwhile."""
    deadline = time.monotonic() + timeout_s
    since, last = None, None
    while time.monotonic() < deadline:
        now = cpu_state(pid)
        if now is None:
            raise AssertionError(f"process {pid} is gone")
        if now[0] == "S" and now == last:
            if since is not None and time.monotonic() - since >= quiet_s:
                return
            since = since or time.monotonic()
        else:
            since = None
        last = now
        time.sleep(0.01)     # a polling interval: /proc has no change notification
    raise AssertionError(f"process {pid} did not go idle within {timeout_s} s")


def wait_busy(endpoint: str, name: str, timeout_s: float = 60.0) -> int:
    """The worker pid of placement ``name`` once the daemon says it runs a request (asked over
    ``placements``; each answer is a round trip, so this is no spin); AssertionError after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        p = next(p for p in control(endpoint, "placements")["body"]["placements"] if p["name"] == name)
        if p["busy"]:
            return p["worker_pid"]
    raise AssertionError(f"{name} never ran the request")


def wait_exited(pid: int, timeout_s: float = 10.0) -> None:
    """Return once ``pid`` has exited with all its threads (a zombie its parent has not reaped
    yet, or gone). The leader turns zombie before its other threads are gone, and until the last
    one is, the process's file descriptors are open: a message sent to it then still goes in."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = cpu_state(pid)
        if now is None:
            return
        if now[0] in ("Z", "X"):
            try:
                if len(os.listdir(f"/proc/{pid}/task")) <= 1:
                    return
            except OSError:   # reaped meanwhile
                return
        time.sleep(0.001)    # a polling interval
    raise AssertionError(f"process {pid} did not exit within {timeout_s} s")


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (``/proc/<pid>/task/*/children``)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return out


def worker_pids(endpoint: str, daemon_pid: int, timeout_s: float = 10.0) -> dict[str, int]:
    """``{placement: worker pid}`` for the workers the daemon names that are its children now."""
    reply = control(endpoint, "placements", timeout_s)
    if reply.get("type") != "ok":
        raise RuntimeError(f"placements: {reply}")
    out = {}
    for p in reply["body"]["placements"]:
        pid = p.get("worker_pid")
        if isinstance(pid, int) and parent_pid(pid) == daemon_pid:
            out[p["name"]] = pid
    return out


def rss_bytes(pid: int) -> int | None:
    """VmRSS of ``pid`` in bytes, None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class RssSample:
    t_s: float            # seconds since the sampler started
    rss_bytes: int
    progress: int         # the caller's figure at that moment (messages sent, requests answered)


class RssSampler:
    """Samples ``pid``'s RSS every ``interval_s`` on a daemon thread until :meth:`stop`."""

    def __init__(self, pid: int, progress: Callable[[], int], interval_s: float = 0.25) -> None:
        self.pid = pid
        self.samples: list[RssSample] = []
        self._progress = progress
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            rss = rss_bytes(self.pid)
            if rss is not None:
                self.samples.append(RssSample(time.monotonic() - self._t0, rss, int(self._progress())))
            if self._stop.wait(self._interval_s):
                return

    def stop(self) -> list[RssSample]:
        self._stop.set()
        self._thread.join()
        rss = rss_bytes(self.pid)
        if rss is not None:
            self.samples.append(RssSample(time.monotonic() - self._t0, rss, int(self._progress())))
        return self.samples


@dataclass(frozen=True)
class Flatness:
    """RSS over a run, split by progress: the warm-up (first ``warmup_share``) is left out, and
    the largest sample of the last quarter of the rest is compared with the largest of its first
    quarter. ``flat`` when that growth is within ``max(tolerance_share x first, tolerance_bytes)``
    and no sample exceeds ``ceiling_bytes`` (when given)."""

    start_bytes: int              # first sample
    first_quarter_max: int
    last_quarter_max: int
    peak_bytes: int
    growth_bytes: int
    allowed_growth_bytes: int
    ceiling_bytes: int | None
    samples: int
    flat: bool

    def describe(self) -> str:
        mb = 1 / 2**20
        return (f"RSS start {self.start_bytes * mb:.1f} MiB, first quarter max {self.first_quarter_max * mb:.1f}, "
                f"last quarter max {self.last_quarter_max * mb:.1f}, peak {self.peak_bytes * mb:.1f}, growth "
                f"{self.growth_bytes * mb:+.1f} MiB (allowed {self.allowed_growth_bytes * mb:.1f}"
                + (f", ceiling {self.ceiling_bytes * mb:.0f}" if self.ceiling_bytes else "")
                + f"), {self.samples} samples: {'flat' if self.flat else 'NOT FLAT'}")


def flatness(samples: list[RssSample], *, warmup_share: float = 0.2, tolerance_share: float = 0.10,
             tolerance_bytes: int = 16 << 20, ceiling_bytes: int | None = None) -> Flatness:
    if not samples:
        raise ValueError("no RSS samples")
    end = max(s.progress for s in samples) or 1
    start = warmup_share * end
    steady = [s for s in samples if s.progress >= start] or samples[-1:]
    span = end - start
    first = [s.rss_bytes for s in steady if s.progress <= start + span / 4] or [steady[0].rss_bytes]
    last = [s.rss_bytes for s in steady if s.progress >= end - span / 4] or [steady[-1].rss_bytes]
    peak = max(s.rss_bytes for s in samples)
    growth = max(last) - max(first)
    allowed = max(int(tolerance_share * max(first)), tolerance_bytes)
    flat = growth <= allowed and (ceiling_bytes is None or peak <= ceiling_bytes)
    return Flatness(samples[0].rss_bytes, max(first), max(last), peak, growth, allowed, ceiling_bytes,
                    len(samples), flat)


class LogWatch:
    """Tracebacks the daemon writes to its log after this object is made (or since the log
    began, with ``from_start``)."""

    def __init__(self, path: Path, from_start: bool = False) -> None:
        self.path = Path(path)
        try:
            self._offset = 0 if from_start else self.path.stat().st_size
        except OSError:
            self._offset = 0

    def text(self) -> str:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def tracebacks(self) -> list[str]:
        """Each ``Traceback`` in the new part of the log with the lines that follow it (up to
        the exception line): what a person would read."""
        lines = self.text().splitlines()
        out = []
        for i, line in enumerate(lines):
            if "Traceback (most recent call last)" in line:
                j = i + 1
                while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()):
                    j += 1
                out.append("\n".join(lines[max(0, i - 1):j + 1]))
        return out
