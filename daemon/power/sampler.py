"""The sampler: a child process that reads the power sources at a fixed rate into a ``SampleRing``.

Why a process: at 1 kHz a sampling thread would take the daemon's GIL a thousand times a second
and add jitter to the request path; a separate interpreter has its own GIL and can be pinned or
niced by the operator like any process.

Contract
--------
- ``SamplerProcess(sources, sample_hz, ring_seconds)``: construction is cheap. ``start(timeout_s)``
  creates the ring, launches ``python -m adaptd.daemon.power.sampler`` with a JSON spec, and waits
  until the first sample is published; it raises ``RuntimeError`` with the child's stderr if the
  child fails to start. ``stop()`` asks the child to exit (a flag in the ring header), waits a
  bounded time, kills it if needed, and unlinks the ring; it is idempotent.
- Each sample is timestamped with ``time.monotonic_ns()`` (CLOCK_MONOTONIC) taken at the middle of
  the read of all rails. For ``power`` rails the child integrates with the trapezoid rule into a
  cumulative energy (mJ); for ``counter`` rails it stores the counter (mJ) and derives power from
  the difference. A NaN reading (failed read) holds the previous value and counts an error.
- The child exits on its own when its parent dies (it polls ``getppid`` about ten times a second).
- Pacing: absolute deadlines every 1/sample_hz; if it falls more than 10 periods behind it skips
  ahead rather than bursting. Achieved rate and its own CPU time (``time.process_time_ns``, all
  threads of the child) and wall time are published in the ring header about every 0.1 s.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from . import ring as ringmod
from .ring import SampleRing
from .source import PowerSource, Rail


def source_from_spec(spec: dict) -> PowerSource:
    sensor = spec["sensor"]
    if sensor == "ina3221":
        from .ina3221 import Ina3221Source as cls
    elif sensor == "hwmon":
        from .hwmon import HwmonSource as cls
    elif sensor == "rapl":
        from .rapl import RaplSource as cls
    elif sensor == "nvml":
        from .nvml import NvmlSource as cls
    else:
        raise ValueError(f"unknown sensor {sensor!r}")
    return cls.from_spec(spec)


class SamplerProcess:
    """Parent-side handle of the sampler child (see the module contract)."""

    def __init__(self, sources: list[PowerSource], sample_hz: float, ring_seconds: float) -> None:
        self.sources = sources
        self.rails: tuple[Rail, ...] = tuple(r for s in sources for r in s.rails)
        self.sample_hz = float(sample_hz)
        self.capacity = max(int(ring_seconds * sample_hz) + 16, 64)
        self.ring: SampleRing | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def period_ns(self) -> int:
        return int(1e9 / self.sample_hz)

    def start(self, timeout_s: float = 30.0) -> None:
        self.ring = SampleRing.create(len(self.rails), self.capacity)
        spec = {
            "ring": self.ring.name,
            "n_rails": len(self.rails),
            "capacity": self.capacity,
            "sample_hz": self.sample_hz,
            "kinds": [r.kind for r in self.rails],
            "sources": [s.spec() for s in self.sources],
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "adaptd.daemon.power.sampler", json.dumps(spec)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            close_fds=True,
        )
        deadline = time.monotonic() + timeout_s
        while self.ring.published() == 0:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.stop()
                raise RuntimeError(f"power sampler exited with {self.proc.returncode}: {err.strip()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"power sampler published no sample within {timeout_s} s")
            time.sleep(0.005)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stats(self) -> dict:
        """Sampler health: samples, achieved rate (Hz), CPU share of one core, read errors."""
        h = self.ring.header if self.ring is not None else None
        if h is None:
            h = getattr(self, "_final_header", None)
        if h is None:
            return {"samples": 0, "achieved_hz": 0.0, "cpu_share": 0.0, "read_errors": 0, "alive": False}
        wall_ns, cpu_ns, samples = int(h[ringmod.H_WALL_NS]), int(h[ringmod.H_CPU_NS]), int(h[ringmod.H_SEQ])
        return {
            "samples": samples,
            "achieved_hz": (int(h[ringmod.H_HZ_MILLI]) / 1000.0)
            or (int(h[ringmod.H_STAT_SAMPLES]) * 1e9 / wall_ns if wall_ns else 0.0),
            "cpu_share": cpu_ns / wall_ns if wall_ns > 0 else 0.0,
            "read_errors": int(h[ringmod.H_ERRORS]),
            "alive": self.alive(),
        }

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.ring is not None and self.ring.header is not None:
            self.ring.header[ringmod.H_STOP] = 1
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()
        if self.ring is not None and self.ring.header is not None:
            # Keep the final stats readable after stop: copy the header before unlinking.
            self._final_header = self.ring.header.copy()
            self.ring.close(unlink=True)


def _set_timer_slack_ns(ns: int) -> None:
    """Tighten this process's timer slack so 1 ms sleeps wake on time (Linux; best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, ctypes.c_ulong(ns), 0, 0, 0)  # PR_SET_TIMERSLACK
    except Exception:
        pass


def run(spec: dict) -> int:
    ring = SampleRing.attach(spec["ring"], spec["n_rails"], spec["capacity"])
    sources = [source_from_spec(s) for s in spec["sources"]]
    for s in sources:
        s.open()
    n = spec["n_rails"]
    counter = np.array([k == "counter" for k in spec["kinds"]], dtype=bool)
    any_counter, any_power = bool(counter.any()), bool((~counter).any())
    slices, start = [], 0
    for s in sources:
        slices.append(slice(start, start + len(s.rails)))
        start += len(s.rails)
    period_ns = int(1e9 / spec["sample_hz"])
    _set_timer_slack_ns(1000)

    raw = np.zeros(n)
    val = np.zeros(n)  # last good reading per rail (mW for power rails, mJ for counter rails)
    energy = np.zeros(n)
    power = np.zeros(n)
    counter_base = np.zeros(n)
    header = ring.header
    parent = os.getppid()
    errors = 0
    t_prev = None
    cpu0, wall0 = time.process_time_ns(), time.monotonic_ns()
    header[ringmod.H_PID] = os.getpid()
    header[ringmod.H_START_NS] = wall0
    next_ns = wall0
    k = 0
    hz_k0, hz_t0 = 0, wall0
    stats_ns = wall0
    try:
        while header[ringmod.H_STOP] == 0:
            t_a = time.monotonic_ns()
            for s, sl in zip(sources, slices):
                s.read(raw[sl])
            t_b = time.monotonic_ns()
            t = (t_a + t_b) // 2
            bad = np.isnan(raw)
            if bad.any():
                errors += int(bad.sum())
                raw[bad] = val[bad]  # hold the previous reading
            if t_prev is None:
                if any_counter:
                    counter_base[counter] = raw[counter]
                power[~counter] = raw[~counter]
            else:
                dt_s = (t - t_prev) / 1e9
                if any_power:
                    pw = ~counter
                    energy[pw] += (val[pw] + raw[pw]) * 0.5 * dt_s
                    power[pw] = raw[pw]
                if any_counter:
                    power[counter] = (raw[counter] - val[counter]) / dt_s if dt_s > 0 else 0.0
                    energy[counter] = raw[counter] - counter_base[counter]
            val[:] = raw
            t_prev = t
            ring.append(t, energy, power)
            k += 1
            now = time.monotonic_ns()
            if now - stats_ns >= 100_000_000:  # publish health about ten times a second
                stats_ns = now
                header[ringmod.H_CPU_NS] = time.process_time_ns() - cpu0
                header[ringmod.H_WALL_NS] = now - wall0
                header[ringmod.H_STAT_SAMPLES] = k
                header[ringmod.H_ERRORS] = errors
                if now - hz_t0 >= 500_000_000:
                    header[ringmod.H_HZ_MILLI] = int((k - hz_k0) * 1e12 / (now - hz_t0))
                    hz_k0, hz_t0 = k, now
                if os.getppid() != parent:
                    break
            next_ns += period_ns
            if next_ns > now:
                time.sleep((next_ns - now) / 1e9)
            elif now - next_ns > 10 * period_ns:
                next_ns = now  # far behind: skip ahead instead of bursting
    finally:
        header[ringmod.H_CPU_NS] = time.process_time_ns() - cpu0
        header[ringmod.H_WALL_NS] = time.monotonic_ns() - wall0
        header[ringmod.H_STAT_SAMPLES] = k
        header[ringmod.H_ERRORS] = errors
        for s in sources:
            s.close()
        del header
        ring.close()
    return 0


if __name__ == "__main__":
    sys.exit(run(json.loads(sys.argv[1])))
