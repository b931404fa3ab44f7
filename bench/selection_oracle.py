"""The selection benchmark's measuring twins and its oracle.

Contract
--------
* :class:`ArmTable` keeps, per arm of a twin model (a copy of each benchmarked model under the
  ``twin-`` prefix, which the policies never serve) and per load state, the last ``window``
  (total latency ms, energy mJ) of pinned requests sent on the run's cadence; :meth:`ArmTable.cost`
  reads an arm's percentile figures, :meth:`ArmTable.medians` the run's host-speed reference.
* :func:`oracle_pick` is the oracle: the arm whose recent twin figures meet a request's bounds at
  least cost. Used from the benchmark's one thread; times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from adaptd.clients.client import Client
from adaptd.clients.errors import AdaptdError

TWIN = "twin-"   # model-name prefix of the measured copies


def pct(values, q):
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else float("nan")


class ArmTable:
    """Per (model, variant, placement) and load state, the last ``window`` (latency, energy)."""

    def __init__(self, cat: dict, window: int, interval_s: float) -> None:
        self.cat = cat
        self.samples: dict[tuple, deque] = {}
        self.window = window
        self.interval_s = interval_s        # the run's cadence (see ``cadence_s``)
        self.late_s = interval_s / 4        # a slot later than this is skipped (``measure_at``)
        self.order = [(TWIN + m, v, p) for m in sorted(cat) for (v, p) in cat[m]["arms"]]
        self.next = 0
        self.skipped = 0   # slots passed before the previous reply came (see ``measure_at``)

    def add(self, key: tuple, on: bool, total_ms: float, energy_mj: float | None) -> None:
        self.samples.setdefault((key, on), deque(maxlen=self.window)).append((total_ms, energy_mj))

    def cost(self, key: tuple, on: bool, q: float = 50.0) -> tuple[float, float] | None:
        """(latency, energy) of arm ``key`` = (model, variant, placement), measured on its twin, at
        percentile ``q`` of the state's recent samples (median by default)."""
        s = self.samples.get(((TWIN + key[0], *key[1:]), on))
        if not s:
            return None
        lat = pct([x[0] for x in s], q)
        es = [x[1] for x in s if x[1] is not None]
        return lat, (pct(es, q) if es else float("nan"))

    def medians(self) -> dict[str, tuple[float, float]]:
        """Per arm (both load states together, at least 4 samples): median (latency, energy),
        keyed ``model|variant|placement``: the run's host-speed reference (see ``host_factor``)."""
        out: dict[str, list] = {}
        for (key, _), samples in self.samples.items():
            out.setdefault("|".join(key), []).extend(samples)
        return {k: (pct([x[0] for x in v], 50), pct([x[1] for x in v if x[1] is not None], 50))
                for k, v in out.items() if len(v) >= 4}

    def measure_grid(self, client: Client, inputs: dict, on_fn, start: float, n: int) -> None:
        """``measure_at`` the ``n`` slots of the cadence from monotonic time ``start`` on."""
        for k in range(n):
            self.measure_at(client, inputs, on_fn, start + k * self.interval_s)

    def measure_at(self, client: Client, inputs: dict, on_fn, at: float) -> None:
        """Measure the next arm round-robin with a request sent at monotonic time ``at``, a slot
        of the run's one cadence (``cadence_s``), so that it follows the same idle as the
        stream's requests do: the total latency of a request grows with the idle before it (the
        wake-up of the daemon and its worker). A slot already more than ``late_s`` past, because
        the previous reply came late, is skipped rather than sent with less idle before it."""
        now = time.monotonic()
        if now > at + self.late_s:
            self.skipped += 1
            return
        if at > now:
            time.sleep(at - now)
        m, v, p = self.order[self.next % len(self.order)]
        self.next += 1
        on = on_fn()
        try:
            r = client.infer(m, inputs[m[len(TWIN):]], variant=v, placement=p)
        except AdaptdError:
            return
        if on_fn() != on:   # the phase changed during the execution: ambiguous, drop it
            return
        s = r.selection
        self.add((m, v, p), on, s.timing.total_ms, s.energy.energy_mj)


def oracle_pick(table: ArmTable, cat: dict, req: dict, on: bool, q: float) -> tuple[str, str] | None:
    """Feasible: the arm's percentile-``q`` latency and energy in this load state meet the bounds;
    best: the least median objective (then the other median, then the arm's names)."""
    best, best_key = None, None
    for v, p in cat[req["model"]]["arms"]:
        c = table.cost((req["model"], v, p), on, q)
        med = table.cost((req["model"], v, p), on)
        if c is None:
            continue
        lat, en = c
        acc = cat[req["model"]]["variants"][v]["accuracy"]
        if req.get("min_accuracy") is not None and (acc is None or acc < req["min_accuracy"]):
            continue
        if req.get("max_latency_ms") is not None and not lat <= req["max_latency_ms"]:
            continue
        if req.get("max_energy_mj") is not None and not en <= req["max_energy_mj"]:
            continue
        key = (med[1], med[0]) if req["objective"] == "energy" else (med[0], med[1])
        key = key + (v, p)
        if best_key is None or key < best_key:
            best, best_key = (v, p), key
    return best
