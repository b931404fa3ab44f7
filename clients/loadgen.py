"""``adaptd load``: drive the daemon with MLPerf-LoadGen-like scenarios.

Contract
--------
* Scenarios (MLPerf LoadGen's definitions):
  - ``single-stream``: one request at a time; the next is sent when the last returned.
  - ``server``: requests arrive as a Poisson process at ``rate_per_s`` (exponential gaps,
    seeded); each is sent at its arrival time, with at most ``concurrency`` outstanding.
    A request's latency is counted from its *scheduled* arrival, so a client that falls
    behind (concurrency cap reached) shows up as latency, not as a silently lower rate.
* A constraint mix (TOML, :func:`load_mix`) assigns each request a constraint set drawn by
  weight (seeded, reproducible).
* Results (:class:`LoadResult`): client-observed latency p50/p90/p99 of served requests (ms),
  attainment = share of all issued requests served with every constraint met (the reply's
  ``met``; a rejected, failed or timed-out request counts as not met), the shares rejected
  (``INFEASIBLE``), failed and timed out, throughput (replies per second of wall time), per
  mix entry and per arm breakdowns, and whether any energy figure was estimated.
* :func:`run_scenario` is the reusable entry for benchmarks; :func:`run_load` is the CLI.
  Each call creates and closes its own client; not for use from inside a running event loop
  (it runs its own with ``asyncio.run`` for the server scenario).
* Units: ms, mJ, seconds, requests per second.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adaptd.clients.client import Client, InferResult
from adaptd.clients.errors import AdaptdError, InfeasibleError, RequestTimeout

SCENARIOS = ("single-stream", "server")
_CONSTRAINT_KEYS = ("min_accuracy", "max_latency_ms", "max_energy_mj", "latency_confidence")


@dataclass(frozen=True)
class MixEntry:
    """One constraint set of a mix and its relative weight."""

    name: str
    weight: float = 1.0
    min_accuracy: float | None = None
    max_latency_ms: float | None = None
    max_energy_mj: float | None = None
    objective: str = "latency"
    on_infeasible: str = "reject"
    latency_confidence: float | None = None

    def request_kwargs(self) -> dict[str, Any]:
        return {"min_accuracy": self.min_accuracy, "max_latency_ms": self.max_latency_ms,
                "max_energy_mj": self.max_energy_mj, "objective": self.objective,
                "on_infeasible": self.on_infeasible, "latency_confidence": self.latency_confidence}


DEFAULT_MIX = (MixEntry("unconstrained"),)


def parse_mix(doc: Mapping[str, Any], where: str = "mix") -> tuple[MixEntry, ...]:
    """A mix from a parsed TOML document: ``[[mix]]`` tables with ``weight``, optional ``name``,
    constraints (``min_accuracy``, ``max_latency_ms``, ``max_energy_mj``, ``latency_confidence``), ``objective`` and
    ``on_infeasible``. ``ValueError`` names the offending entry and key."""
    entries = doc.get("mix")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: expected one or more [[mix]] tables")
    allowed = {"name", "weight", *_CONSTRAINT_KEYS, "objective", "on_infeasible"}
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, Mapping):
            raise ValueError(f"{where}: mix[{i}] must be a table")
        unknown = set(e) - allowed
        if unknown:
            raise ValueError(f"{where}: mix[{i}]: unknown key(s) {', '.join(sorted(unknown))}")
        w = e.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"{where}: mix[{i}].weight must be a number > 0, got {w!r}")
        kw: dict[str, Any] = {}
        for k in _CONSTRAINT_KEYS:
            v = e.get(k)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"{where}: mix[{i}].{k} must be a number, got {v!r}")
                kw[k] = float(v)
        if e.get("objective", "latency") not in ("latency", "energy", "accuracy"):
            raise ValueError(f"{where}: mix[{i}].objective must be latency, energy or accuracy")
        if e.get("on_infeasible", "reject") not in ("reject", "best_effort"):
            raise ValueError(f"{where}: mix[{i}].on_infeasible must be reject or best_effort")
        name = str(e.get("name") or "+".join(f"{k}={kw[k]:g}" for k in kw) or "unconstrained")
        out.append(MixEntry(name, float(w), objective=e.get("objective", "latency"),
                            on_infeasible=e.get("on_infeasible", "reject"), **kw))
    return tuple(out)


def load_mix(path: Path | None) -> tuple[MixEntry, ...]:
    if path is None:
        return DEFAULT_MIX
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    with open(path, "rb") as f:
        return parse_mix(tomllib.load(f), str(path))


# --- statistics ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    mix: str
    scheduled_s: float          # seconds since the run started
    latency_ms: float | None    # client-observed, None if no reply
    outcome: str                # ok, rejected, error, timeout
    met: bool | None = None
    variant: str | None = None
    placement: str | None = None
    daemon_total_ms: float | None = None
    energy_mj: float | None = None
    energy_estimated: bool = False
    error_code: str | None = None


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float | None]:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    return {f"p{q:g}": (float(np.percentile(a, q)) if a.size else None) for q in qs}


@dataclass
class LoadResult:
    scenario: str
    model: str
    requests: int
    duration_s: float
    throughput_rps: float
    target_rate_per_s: float | None
    latency_ms: dict[str, float | None]          # p50, p90, p99 of served requests (client-observed)
    daemon_total_ms: dict[str, float | None]     # the same from the replies' timing.total_ms
    attainment: float                            # share of issued requests served with all constraints met
    rejected_share: float
    error_share: float
    timeout_share: float
    energy_estimated: bool
    mean_energy_mj: float | None
    by_mix: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_arm: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        lat = self.latency_ms
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines = [
            f"{self.scenario} on {self.model}: {self.requests} requests in {self.duration_s:.2f} s, "
            f"throughput {self.throughput_rps:.1f} req/s"
            + (f" (target {self.target_rate_per_s:g} req/s)" if self.target_rate_per_s else ""),
            f"latency (client-observed, served requests): p50 {f(lat['p50'])} ms, p90 {f(lat['p90'])} ms, "
            f"p99 {f(lat['p99'])} ms",
            f"attainment {self.attainment * 100:.1f}% (all constraints met); rejected {self.rejected_share * 100:.1f}%,"
            f" errors {self.error_share * 100:.1f}%, timeouts {self.timeout_share * 100:.1f}%",
        ]
        if self.mean_energy_mj is not None:
            lines.append(f"mean energy {self.mean_energy_mj:.3f} mJ per request"
                         + (" (ESTIMATED from a power model, not measured)" if self.energy_estimated else " (measured)"))
        for name, m in self.by_mix.items():
            lines.append(f"  mix {name}: {m['requests']} requests, attainment {m['attainment'] * 100:.1f}%, "
                         f"rejected {m['rejected_share'] * 100:.1f}%, p90 {f(m['latency_ms']['p90'])} ms")
        if self.by_arm:
            lines.append("  arms: " + ", ".join(f"{k} {v}" for k, v in sorted(self.by_arm.items(), key=lambda kv: -kv[1])))
        if self.errors:
            lines.append("  errors: " + ", ".join(f"{k} {v}" for k, v in self.errors.items()))
        return "\n".join(lines)


def summarize(samples: Sequence[Sample], *, scenario: str, model: str, duration_s: float,
              target_rate_per_s: float | None = None) -> LoadResult:
    n = len(samples)

    def share(pred, among: Sequence[Sample]) -> float:
        return sum(1 for s in among if pred(s)) / len(among) if among else 0.0

    served = [s for s in samples if s.outcome == "ok"]
    energy = [s.energy_mj for s in served if s.energy_mj is not None]
    by_mix: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.mix].append(s)
    for name, ss in groups.items():
        by_mix[name] = {
            "requests": len(ss),
            "attainment": share(lambda s: s.outcome == "ok" and s.met is not False, ss),
            "rejected_share": share(lambda s: s.outcome == "rejected", ss),
            "latency_ms": percentiles([s.latency_ms for s in ss if s.outcome == "ok"]),
        }
    replies = sum(1 for s in samples if s.outcome != "timeout")
    return LoadResult(
        scenario=scenario, model=model, requests=n, duration_s=duration_s,
        throughput_rps=replies / duration_s if duration_s > 0 else 0.0, target_rate_per_s=target_rate_per_s,
        latency_ms=percentiles([s.latency_ms for s in served]),
        daemon_total_ms=percentiles([s.daemon_total_ms for s in served]),
        # A request with no constraints that was served counts as met (met is None then).
        attainment=share(lambda s: s.outcome == "ok" and s.met is not False, samples),
        rejected_share=share(lambda s: s.outcome == "rejected", samples),
        error_share=share(lambda s: s.outcome == "error", samples),
        timeout_share=share(lambda s: s.outcome == "timeout", samples),
        energy_estimated=any(s.energy_estimated for s in served),
        mean_energy_mj=float(np.mean(energy)) if energy else None,
        by_mix=by_mix, by_arm=dict(Counter(f"{s.variant}@{s.placement}" for s in served)),
        errors=dict(Counter(s.error_code for s in samples if s.error_code)),
    )


def _sample(mix: str, scheduled_s: float, latency_ms: float | None, result: InferResult | None = None,
            error: BaseException | None = None) -> Sample:
    if result is not None:
        sel = result.selection
        constrained = bool(sel.constraints_met)
        return Sample(mix, scheduled_s, latency_ms, "ok", sel.met if constrained else None, sel.variant,
                      sel.placement, sel.timing.total_ms, sel.energy.energy_mj, sel.energy.estimated)
    if isinstance(error, RequestTimeout):
        return Sample(mix, scheduled_s, None, "timeout", error_code="TIMEOUT")
    if isinstance(error, InfeasibleError):
        return Sample(mix, scheduled_s, latency_ms, "rejected", error_code=error.code)
    code = error.code if isinstance(error, AdaptdError) else type(error).__name__
    return Sample(mix, scheduled_s, latency_ms, "error", error_code=code)


# --- scenarios -----------------------------------------------------------------------------------

def run_scenario(endpoint: str | None, model: str, inputs: Any, *, scenario: str = "single-stream",
                 requests: int = 200, duration_s: float | None = None, rate_per_s: float = 50.0,
                 mix: Sequence[MixEntry] = DEFAULT_MIX, concurrency: int = 64, seed: int = 0,
                 timeout_ms: float = 30_000.0, version: str | None = None,
                 samples_out: list[Sample] | None = None) -> LoadResult:
    """Run one scenario and return its statistics (see the module docstring).

    Stops after ``requests`` requests or ``duration_s`` seconds, whichever comes first.
    ``samples_out``, if given, receives every per-request :class:`Sample`."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    if requests <= 0 or (duration_s is not None and duration_s <= 0):
        raise ValueError("requests and duration_s must be > 0")
    rng = np.random.default_rng(seed)
    weights = np.array([m.weight for m in mix], float)
    choice = rng.choice(len(mix), size=requests, p=weights / weights.sum())
    if scenario == "single-stream":
        samples, elapsed = _single_stream(endpoint, model, inputs, [mix[i] for i in choice], duration_s,
                                          timeout_ms, version)
        target = None
    else:
        if rate_per_s <= 0 or concurrency <= 0:
            raise ValueError("rate_per_s and concurrency must be > 0")
        arrivals = np.cumsum(rng.exponential(1.0 / rate_per_s, size=requests))
        arrivals -= arrivals[0]
        samples, elapsed = asyncio.run(_server(endpoint, model, inputs, [mix[i] for i in choice], arrivals,
                                               duration_s, concurrency, timeout_ms, version))
        target = rate_per_s
    if samples_out is not None:
        samples_out.extend(samples)
    return summarize(samples, scenario=scenario, model=model, duration_s=elapsed, target_rate_per_s=target)


def _single_stream(endpoint, model, inputs, entries, duration_s, timeout_ms, version):
    samples = []
    with Client(endpoint, timeout_ms=timeout_ms, retries=0, name="adaptd-load") as c:
        t0 = time.perf_counter()
        for entry in entries:
            start = time.perf_counter()
            if duration_s is not None and start - t0 >= duration_s:
                break
            try:
                r = c.infer(model, inputs, version=version, **entry.request_kwargs())
                samples.append(_sample(entry.name, start - t0, (time.perf_counter() - start) * 1e3, r))
            except AdaptdError as exc:
                samples.append(_sample(entry.name, start - t0, (time.perf_counter() - start) * 1e3, error=exc))
        elapsed = time.perf_counter() - t0
    return samples, elapsed


async def _server(endpoint, model, inputs, entries, arrivals, duration_s, concurrency, timeout_ms, version):
    from adaptd.clients.aio import AsyncClient

    samples: list[Sample] = []
    sem = asyncio.Semaphore(concurrency)
    async with AsyncClient(endpoint, timeout_ms=timeout_ms, retries=0, name="adaptd-load") as c:
        t0 = time.perf_counter()

        async def one(entry: MixEntry, at_s: float) -> None:
            async with sem:
                try:
                    r = await c.infer(model, inputs, version=version, **entry.request_kwargs())
                    samples.append(_sample(entry.name, at_s, (time.perf_counter() - t0 - at_s) * 1e3, r))
                except AdaptdError as exc:
                    samples.append(_sample(entry.name, at_s, (time.perf_counter() - t0 - at_s) * 1e3, error=exc))

        tasks = []
        for entry, at_s in zip(entries, arrivals):
            if duration_s is not None and at_s >= duration_s:
                break
            delay = at_s - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)   # the arrival schedule itself, not synchronisation
            tasks.append(asyncio.create_task(one(entry, float(at_s))))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    return samples, elapsed
