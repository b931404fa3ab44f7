"""EnergyMeter: per-execution energy, measured where the board can and estimated where it cannot.

Lifecycle
---------
``EnergyMeter.from_config(cfg)`` detects sources and loads the profile (cheap; raises
``PowerSourceUnavailable`` for a forced source that is absent, ``ValueError`` for a bad profile)
-> ``start()`` launches the sampler process (if any sensor) and measures idle power over
``idle_window_s`` (blocks that long) -> ``attribute(...)`` any number of times -> ``close()``
(idempotent). A meter is not restartable after ``close``.

Threads and processes
---------------------
The sampler is a child process writing a shared-memory ring (``sampler.py``, ``ring.py``); the
daemon side never samples. ``attribute`` and ``describe`` may be called from any thread,
concurrently with each other and with the idle re-measurement thread (one lock guards the idle
figures and the execution history; ring reads take no lock). ``close`` must not race an
``attribute`` call in flight (the daemon closes the meter after its request loop has stopped).

Units: time ns (``time.monotonic_ns()``, CLOCK_MONOTONIC, comparable across processes on Linux),
power mW, energy mJ, CPU time s.

Attribution
-----------
Per execution on [t0_ns, t1_ns] and per rail r: ``E_r = integral of (P_r(t) - idle_r) dt``, from
the ring's cumulative energy interpolated linearly at t0 and t1 (trapezoid rule between samples;
counter rails are differenced directly). The result is not clamped at zero: an execution whose
dynamic power is below sensor noise may read slightly negative, which keeps averages unbiased.

Which rails: a CPU placement is charged its share of the CPU rail(s); a GPU placement its share
of the CPU rail(s) plus the GPU rail(s) in full. A rail feeding both CPU and GPU (Orin/Xavier NX
``VDD_CPU_GPU_CV``, or the board input when it is the only rail) is charged in full to a GPU
placement and shared for a CPU placement. SoC and DDR rails are not charged.

Sharing a rail between concurrent executions (the rule, simple and documented):
- CPU rail: execution X receives the fraction ``cpu_X / (cpu_X + sum_Y cpu_Y * |X n Y| / |Y|)``
  of the rail's dynamic energy over X's interval, where Y ranges over the executions already
  attributed (on any placement) whose intervals overlap X, and ``cpu_Y * |X n Y| / |Y|`` is Y's
  CPU time assumed spread evenly over its interval. Executions still running when X is attributed
  are not known yet, so when two executions overlap, the one attributed first is charged for the
  whole overlap and the second only its share: the pair's total can exceed the rail's energy by at
  most the overlap's dynamic energy. Activity of processes that are not executions (the daemon
  itself, other programs) during X's interval is charged to X.
- GPU rail: the daemon runs at most one execution at a time per GPU placement, so the GPU rail is
  charged in full to the GPU execution. If intervals of GPU executions overlap anyway, each is
  charged in full and ``describe()["gpu_overlaps"]`` counts it.

Waiting for samples: ``attribute`` needs a sample at or after t1. It waits for the sampler to pass
t1 for at most ``2 x sample period`` (plus the publish lag on AArch64; see ``ring.py``), polling;
if the sampler has not got there by then it holds the last sample's power up to t1. So the call
blocks at most about 2 ms at 1 kHz, 20 ms at 100 Hz. ``attribute(..., wait=False)`` never waits
(it holds the last published sample's power up to t1): the daemon's request path uses it, trading
sub-sample precision for not delaying replies.

Estimated roles: a role with no sensor uses the power profile (``estimated.py``); the reading is
then labelled ``estimated:<profile>`` (``+measured:...`` for the part that was measured), and
``estimated`` is True. A fully estimated meter needs no ``start`` and never blocks.

Idle power: measured at ``start`` as the mean power per rail over ``idle_window_s`` (energy
difference over the window, consistent with the attribution integral). Re-measured, from the
ring, when ``idle_remeasure_s > 0`` has passed since the last measurement and the board has been
idle over the last ``idle_window_s``: no execution attributed in the window, and host CPU busy
time in the window, minus the sampler's own, below ``idle_cpu_max_cores`` (10% of one core).

Failure: if the sampler dies or the interval is older than the ring, ``attribute`` returns
``energy_mj=None`` with the reason in ``source``; it never raises for sensor trouble.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from adaptd.daemon.sched import name_thread

from . import ring as ringmod
from .config import PowerConfig
from .detect import Detection, detect
from .sampler import SamplerProcess


class EnergyReading(NamedTuple):   # (made once a request: half a frozen dataclass's cost)
    energy_mj: float | None  # None only if it could not be determined (``source`` says why)
    source: str              # "measured:<sensor>:<rail>[+<rail>...]" or "estimated:<profile>[+measured:...]"
    estimated: bool          # True iff source starts with "estimated"


@dataclass(frozen=True)
class _Execution:
    t0_ns: int
    t1_ns: int
    cpu_time_s: float
    kind: str


class EnergyMeter:
    """Facade over detection, the sampler and attribution (see the module contract)."""

    HISTORY = 256            # executions kept for the rail-sharing rule
    ORDER_SLACK_NS = 50_000_000   # attribution may lag completion by up to this (see _record_and_share)
    IDLE_GUARD_NS = 200_000_000  # idle window ends this long before "now" when re-measuring

    def __init__(self, config: PowerConfig, detection: Detection, *, idle_cpu_max_cores: float = 0.1) -> None:
        self.config = config
        self.detection = detection
        self.idle_cpu_max_cores = idle_cpu_max_cores
        self._sampler = (
            SamplerProcess(detection.sources, config.sample_hz, config.ring_seconds) if detection.sources else None
        )
        n = len(detection.rails)
        self._idle_mw = np.zeros(n)
        self._idle_at_ns = 0
        self._idle_count = 0
        self._lock = threading.Lock()
        self._history: deque[_Execution] = deque(maxlen=self.HISTORY)
        self._last_exec_end_ns = 0
        self._gpu_overlaps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._closed = False
        d = detection
        self._cpu = np.array(d.cpu_rails, dtype=int)
        self._gpu_only = np.array([i for i in d.gpu_rails if i not in d.cpu_rails], dtype=int)
        self._both = np.array([i for i in d.cpu_rails if i in d.gpu_rails], dtype=int)
        self._cpu_only = np.array([i for i in d.cpu_rails if i not in d.gpu_rails], dtype=int)
        # Without a CPU rail a CPU placement's energy is its CPU time at the profile's power: per
        # placement object (by identity, kept alive here), that power and the label, made once.
        self._estimated_cpu: dict[int, tuple[Any, float, str]] = {}

    @classmethod
    def from_config(cls, config: PowerConfig) -> "EnergyMeter":
        return cls(config, detect(config))

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._closed:
            raise RuntimeError("EnergyMeter is closed")
        if self._started:
            return
        self._started = True
        if self._sampler is None:
            return
        self._sampler.start()
        ring = self._sampler.ring
        first = ring.latest()
        t_a = first[0]
        window_ns = int(self.config.idle_window_s * 1e9)
        deadline = time.monotonic() + self.config.idle_window_s + 5.0
        while True:
            last = ring.latest()
            if last is not None and last[0] >= t_a + window_ns:
                break
            if time.monotonic() > deadline or not self._sampler.alive():
                break
            self._stop.wait(min(0.01, self.config.idle_window_s / 10))
        idle = self._mean_power(t_a, last[0] if last else t_a)
        if idle is not None:
            with self._lock:
                self._idle_mw = idle
                self._idle_at_ns = last[0]
                self._idle_count = 1
        if self.config.idle_remeasure_s > 0:
            self._thread = threading.Thread(target=self._idle_loop, name="adaptd-power-idle", daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._sampler is not None:
            self._sampler.stop()

    def __enter__(self) -> "EnergyMeter":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- attribution ----------------------------------------------------------------------
    def attribute(self, placement, t0_ns: int, t1_ns: int, cpu_time_s: float, *,
                  wait: bool = True) -> EnergyReading:
        """Energy of one execution. ``wait=False`` never blocks: samples not yet published are
        replaced by holding the last sample's power up to ``t1_ns`` (the daemon's request path).
        A placement's ``kind`` and ``cores`` must not change (the daemon's are frozen): without a
        CPU rail, its power is looked up once."""
        known = self._estimated_cpu.get(id(placement))
        if known is not None and known[0] is placement and t1_ns >= t0_ns:   # (a few µs live: once a request)
            cpu_s = float(cpu_time_s)   # (max() written out: once a request)
            return EnergyReading((0.0 if cpu_s < 0.0 else cpu_s) * known[1], known[2], True)
        if t1_ns < t0_ns:
            raise ValueError(f"t1_ns ({t1_ns}) < t0_ns ({t0_ns})")
        kind = getattr(placement, "kind", "cpu")
        if kind not in ("cpu", "gpu"):
            raise ValueError(f"placement.kind must be 'cpu' or 'gpu'; got {kind!r}")
        cores = tuple(getattr(placement, "cores", ()) or ())
        wall_s = (t1_ns - t0_ns) / 1e9
        cpu_time_s = max(float(cpu_time_s), 0.0)
        profile = self.detection.profile

        use_gpu = kind == "gpu"
        estimated_mj = 0.0
        estimated = False
        if not len(self._cpu):
            estimated_mj += profile.cpu_energy_mj(cores, cpu_time_s)
            estimated = True
        if use_gpu and not len(self.detection.gpu_rails):
            estimated_mj += profile.gpu_energy_mj(wall_s)
            estimated = True

        est_label = profile.source_label
        if not len(self._cpu) and not (use_gpu and len(self._gpu_only)):   # fully estimated: no rail to
            if not use_gpu:                                                 # share, no history needed
                if len(self._estimated_cpu) >= 64:   # (placements of many reloads)
                    self._estimated_cpu.clear()
                self._estimated_cpu[id(placement)] = (placement, profile.busy_core_mw(cores), est_label)
            return EnergyReading(estimated_mj, est_label, True)
        rails_used = list(self._cpu) + (list(self._gpu_only) if use_gpu else [])
        measured_label = self._measured_label(rails_used)
        label = est_label + ("+" + measured_label if measured_label else "") if estimated else measured_label

        share = self._record_and_share(_Execution(t0_ns, t1_ns, cpu_time_s, kind))
        dyn = self._dynamic_mj(t0_ns, t1_ns, wait)
        if isinstance(dyn, str):
            return EnergyReading(None, f"{label} (unavailable: {dyn})", estimated)
        energy = share * float(dyn[self._cpu_only].sum()) if len(self._cpu_only) else 0.0
        if len(self._both):
            energy += float(dyn[self._both].sum()) * (1.0 if use_gpu else share)
        if use_gpu and len(self._gpu_only):
            energy += float(dyn[self._gpu_only].sum())
        return EnergyReading(energy + estimated_mj, label, estimated)

    def predict_mj(self, placement, latency_ms: float) -> float:
        """An *estimated* energy for an execution never measured: the power profile applied to
        ``latency_ms`` with every thread of the placement busy (an upper-end guess). The selector
        uses it as a prior until measurements replace it; it is always labelled estimated."""
        wall_s = max(float(latency_ms), 0.0) / 1e3
        cores = tuple(getattr(placement, "cores", ()) or ())
        threads = max(int(getattr(placement, "threads", 1) or 1), 1)
        profile = self.detection.profile
        energy_mj = profile.cpu_energy_mj(cores, wall_s * threads)
        if getattr(placement, "kind", "cpu") == "gpu":
            energy_mj += profile.gpu_energy_mj(wall_s)
        return energy_mj

    def runtime_energy_mj(self, cpu_s: float) -> tuple[float, str]:
        """The estimated energy of ``cpu_s`` of the daemon's own CPU time (on no placement's cores
        in particular: the profile's default per-core power) and its label, ``estimated:<profile>``."""
        profile = self.detection.profile   # (cpu_energy_mj((), cpu_s) written out: asked every request)
        return (0.0 if cpu_s < 0.0 else cpu_s) * profile.default_busy_core_mw, profile.source_label

    def _measured_label(self, rails_used: list[int]) -> str:
        by_sensor: dict[str, list[str]] = {}
        for i in rails_used:
            r = self.detection.rails[i]
            by_sensor.setdefault(r.sensor, []).append(r.name)
        return "+".join(f"measured:{s}:" + "+".join(names) for s, names in by_sensor.items())

    def _record_and_share(self, x: _Execution) -> float:
        """Record ``x`` and return its share of the CPU rail (the module's sharing rule)."""
        with self._lock:
            others = 0.0
            # Newest first. The history is in attribution order, which is completion order up to
            # the daemon's handling delay (ORDER_SLACK_NS): once an execution ended that long
            # before X started, it and every older one cannot overlap X. This keeps the call
            # O(executions overlapping X) instead of O(history) on the request path.
            for y in reversed(self._history):
                if y.t1_ns < x.t0_ns - self.ORDER_SLACK_NS:
                    break
                overlap = min(x.t1_ns, y.t1_ns) - max(x.t0_ns, y.t0_ns)
                if overlap <= 0:
                    continue
                dur = max(y.t1_ns - y.t0_ns, 1)
                others += y.cpu_time_s * overlap / dur
                if x.kind == "gpu" and y.kind == "gpu":
                    self._gpu_overlaps += 1
            self._history.append(x)
            self._last_exec_end_ns = max(self._last_exec_end_ns, x.t1_ns)
        if x.cpu_time_s <= 0.0:
            return 1.0 if others <= 0.0 else 0.0
        return x.cpu_time_s / (x.cpu_time_s + others)

    def _dynamic_mj(self, t0_ns: int, t1_ns: int, wait: bool = True) -> np.ndarray | str:
        """Per-rail energy above idle over [t0, t1] (mJ), or a reason string if unavailable."""
        s = self._sampler
        if s is None or s.ring is None or s.ring.header is None:
            return "sampler not started" if not self._closed else "meter closed"
        ring = s.ring
        period_ns = s.period_ns
        deadline = time.monotonic_ns() + ((2 + ringmod.PUBLISH_LAG) * period_ns if wait else 0)
        while True:
            last = ring.latest()
            if last is not None and last[0] >= t1_ns:
                break
            now = time.monotonic_ns()
            if now >= deadline or not s.alive():
                break
            time.sleep(min(period_ns / 4e9, (deadline - now) / 1e9))
        got = ring.samples_between(t0_ns, t1_ns)
        if got is None:
            return "interval older than the sample ring or before the first sample"
        t, e, p = got
        with self._lock:
            idle = self._idle_mw.copy()
        e0, e1 = _energy_at(t, e, p, t0_ns), _energy_at(t, e, p, t1_ns)
        return (e1 - e0) - idle * ((t1_ns - t0_ns) / 1e9)

    def latest_sample(self) -> tuple[int, dict[str, float]] | None:
        """The newest published sample: (t_ns, {rail: power_mw}), or None (no sensor/sample)."""
        s = self._sampler
        if s is None or s.ring is None or s.ring.header is None:
            return None
        got = s.ring.latest()
        if got is None:
            return None
        return got[0], {r.name: float(got[2][i]) for i, r in enumerate(self.detection.rails)}

    def wait_for_sample(self, t_ns: int, timeout_s: float = 5.0) -> bool:
        """Block until the sampler has published a sample at or after ``t_ns`` (polling at a
        quarter sample period); False on timeout, sampler death, or when there is no sensor."""
        s = self._sampler
        if s is None or s.ring is None:
            return False
        deadline = time.monotonic() + timeout_s
        while True:
            got = s.ring.latest() if s.ring.header is not None else None
            if got is not None and got[0] >= t_ns:
                return True
            if time.monotonic() > deadline or not s.alive():
                return False
            time.sleep(s.period_ns / 4e9)

    # -- idle power -----------------------------------------------------------------------
    def _mean_power(self, t_a: int, t_b: int) -> np.ndarray | None:
        if t_b <= t_a or self._sampler is None:
            return None
        got = self._sampler.ring.samples_between(t_a, t_b)
        if got is None:
            return None
        t, e, p = got
        return (_energy_at(t, e, p, t_b) - _energy_at(t, e, p, t_a)) / ((t_b - t_a) / 1e9)

    def remeasure_idle(self, t_end_ns: int | None = None) -> bool:
        """Re-measure idle over ``[t_end - idle_window, t_end]`` from the ring (default: now minus
        a 0.2 s guard) if no execution overlaps it. Returns True if the idle figures changed.
        The idle thread calls this when the board is idle; the daemon may call it too."""
        if self._sampler is None or self._sampler.ring is None or self._sampler.ring.header is None:
            return False
        t_b = (time.monotonic_ns() - self.IDLE_GUARD_NS) if t_end_ns is None else t_end_ns
        t_a = t_b - int(self.config.idle_window_s * 1e9)
        with self._lock:
            if any(x.t1_ns > t_a and x.t0_ns < t_b for x in self._history):
                return False
        idle = self._mean_power(t_a, t_b)
        if idle is None:
            return False
        with self._lock:
            self._idle_mw = idle
            self._idle_at_ns = t_b
            self._idle_count += 1
        return True

    def _idle_loop(self) -> None:
        import psutil

        name_thread("adaptd-power")   # (its Python name alone is not the kernel's: top and /proc show this)

        window_ns = int(self.config.idle_window_s * 1e9)
        tick_s = max(min(self.config.idle_window_s / 4, 1.0), 0.05)
        hist: deque[tuple[int, float, int]] = deque()  # (t_ns, host busy core-s, sampler cpu ns)
        while not self._stop.wait(tick_s):
            now = time.monotonic_ns()
            ct = psutil.cpu_times()
            busy = sum(ct) - ct.idle - getattr(ct, "iowait", 0.0)
            hdr = self._sampler.ring.header if self._sampler and self._sampler.ring else None
            if hdr is None:
                return
            hist.append((now, busy, int(hdr[ringmod.H_CPU_NS])))
            while len(hist) > 2 and hist[1][0] <= now - window_ns - self.IDLE_GUARD_NS:
                hist.popleft()
            with self._lock:
                due = now - self._idle_at_ns >= self.config.idle_remeasure_s * 1e9
                quiet_execs = self._last_exec_end_ns < now - window_ns - self.IDLE_GUARD_NS
            if not (due and quiet_execs) or now - hist[0][0] < window_ns:
                continue
            t_old, busy_old, samp_old = hist[0]
            span_s = (now - t_old) / 1e9
            other_cores = ((busy - busy_old) - (hist[-1][2] - samp_old) / 1e9) / span_s
            if other_cores <= self.idle_cpu_max_cores:
                self.remeasure_idle()

    # -- health ---------------------------------------------------------------------------
    def describe(self) -> dict:
        d = self.detection
        prof = d.profile
        st = self._sampler.stats() if self._sampler is not None else None
        with self._lock:
            idle = self._idle_mw.copy()
            idle_at, idle_count, gpu_overlaps = self._idle_at_ns, self._idle_count, self._gpu_overlaps
        roles = {}
        for role, idx in (("cpu", d.cpu_rails), ("gpu", d.gpu_rails)):
            roles[role] = self._measured_label(list(idx)) if idx else prof.source_label
        estimated = any(v.startswith("estimated") for v in roles.values())
        measured = self._measured_label(sorted(set(d.cpu_rails) | set(d.gpu_rails)))
        if not measured:
            source = prof.source_label
        elif estimated:
            source = f"{prof.source_label}+{measured}"
        else:
            source = measured
        rails = []
        for i, r in enumerate(d.rails):
            used = [role for role, idx in (("cpu", d.cpu_rails), ("gpu", d.gpu_rails)) if i in idx]
            rails.append({"name": r.name, "sensor": r.sensor, "role": r.role, "kind": r.kind,
                          "used_for": used, "idle_mw": float(idle[i])})
        return {
            "source": source,
            "estimated": estimated,
            "profile": prof.name if estimated else None,
            "profile_approximate": prof.approximate if estimated else None,
            "roles": roles,
            "rails": rails,
            "idle_mw": {r.name: float(idle[i]) for i, r in enumerate(d.rails)},
            "idle_measured_at_ns": idle_at,
            "idle_measurements": idle_count,
            "sample_hz": st["achieved_hz"] if st else 0.0,
            "sample_hz_configured": self.config.sample_hz if d.sources else 0.0,
            "sampler_cpu_share": st["cpu_share"] if st else 0.0,
            "sampler_alive": st["alive"] if st else False,
            "sampler_pid": self._sampler.proc.pid if self._sampler and self._sampler.proc else None,
            "samples": st["samples"] if st else 0,
            "read_errors": st["read_errors"] if st else 0,
            "gpu_overlaps": gpu_overlaps,
            "notes": dict(d.notes),
        }


def _energy_at(t: np.ndarray, e: np.ndarray, p: np.ndarray, t_ns: int) -> np.ndarray:
    """Cumulative energy per rail at ``t_ns`` (mJ): linear between samples, last power held after
    the newest sample, first sample's value before it (callers never ask before it)."""
    if t_ns >= t[-1]:
        return e[-1] + p[-1] * ((t_ns - int(t[-1])) / 1e9)
    i = int(np.searchsorted(t, t_ns, side="right")) - 1
    if i < 0:
        return e[0].copy()
    dt = int(t[i + 1]) - int(t[i])
    frac = (t_ns - int(t[i])) / dt if dt > 0 else 0.0
    return e[i] + (e[i + 1] - e[i]) * frac
