"""Scale decisions for the report's plots: time axes, bin widths and value scales.

Contract
--------
* Pure functions of numbers (no matplotlib, no I/O), so each decision is tested on its own and
  every plot of ``clients/report_plots.py`` makes it the same way, for runs from a fraction of a
  second to months.
* Time: Unix seconds in; a :class:`TimeAxis` puts ``x = ts - origin`` (seconds after the first
  decision) on the axis and says which ticks to draw and how to label them. Runs shorter than
  ``CLOCK_MIN_SPAN_S`` get seconds since the first decision (the wall-clock time of that
  decision in the axis label); longer ones get local wall-clock ticks at human steps (on the
  minute, the hour, midnight), with the date on the first tick and wherever it changes (on every
  tick when the axis spans a day or more). Tick labels are distinct by construction.
* Bins: :func:`nice_bin_width` picks a width from ``HUMAN_STEPS_S`` (50 ms, 10 min, 1 day, ...);
  :func:`format_duration` prints it ("50 ms", "10 min", "1 day"); :func:`time_bins` gives the
  edges (from the first decision for short runs, on multiples of the width for longer ones).
* Values: :func:`value_scale` chooses linear, log (the bulk of the values spans orders of
  magnitude, or more than a few outliers an order of magnitude above a bulk packed near the
  minimum) or clipped (a few outliers would squeeze the rest into a corner; the plot must say
  so, and :attr:`ValueScale.note` is the text).
* Notes: :func:`too_short_for_time_plot` says when a run is too short (too few decisions or too
  few intervals) for a plot over time to mean anything.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
HUMAN_STEPS_S: tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0,
    MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE,
    HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 28 * DAY)
CLOCK_MIN_SPAN_S = 2 * MINUTE      # shorter runs: seconds since the first decision
MAX_TICKS = 8
TARGET_BINS = 40                   # at most this many intervals over a run ...
MIN_PER_BIN = 10                   # ... each with at least this many decisions on average
MIN_BINS = 3                       # fewer intervals than this: nothing to see over time
LOG_RATIO = 30.0                   # bulk (1st..99th percentile) max/min at which a log scale is used
MIN_POINTS_TO_CLIP = 20            # fewer values: never clip (each point is worth showing)
MIN_BULK_SHARE = 0.5               # clip when the bulk would fill less than this of a linear axis
MIN_MIDDLE_SHARE = 0.05            # log when the lower three quarters would fill less than this of it ...
MIN_LOG_SPAN = 10.0                # ... and the values span at least this max/min


def format_duration(seconds: float) -> str:
    """A duration for people, to 3 significant digits: ``"50 ms"``, ``"1.5 s"``, ``"10 min"``,
    ``"2 h"``, ``"1 day"``, ``"30 days"``."""
    s = float(seconds)
    for size, unit, limit in ((1e-3, "ms", 1000), (1.0, "s", 60), (MINUTE, "min", 60), (HOUR, "h", 24)):
        value = float(f"{s / size:.3g}")
        if value < limit:
            return f"{value:g} {unit}"
    days = float(f"{s / DAY:.3g}")
    return f"{days:g} day" + ("" if days == 1 else "s")


def nice_bin_width(span_s: float, n_records: int, target_bins: int = TARGET_BINS,
                   min_per_bin: int = MIN_PER_BIN) -> float:
    """The smallest human step giving at most ``target_bins`` intervals over ``span_s`` and at
    least ``min_per_bin`` decisions per interval on average."""
    span = max(float(span_s), HUMAN_STEPS_S[0])
    lower = max(span / target_bins, span * min_per_bin / max(n_records, 1))
    for width in HUMAN_STEPS_S:
        if width >= lower * (1 - 1e-9):
            return width
    return HUMAN_STEPS_S[-1] * math.ceil(lower / HUMAN_STEPS_S[-1])


def time_bins(t_first: float, t_last: float, n_records: int) -> np.ndarray:
    """Bin edges (Unix s) covering ``[t_first, t_last]``: see the module docstring."""
    span = max(t_last - t_first, 0.0)
    width = nice_bin_width(span, n_records)
    start = t_first if span < CLOCK_MIN_SPAN_S else math.floor(t_first / width) * width
    n = max(1, math.ceil((t_last - start) / width * (1 - 1e-12)))
    if start + n * width <= t_last:   # the last decision sits on an edge: one more interval
        n += 1
    return start + width * np.arange(n + 1)


def too_short_for_time_plot(n_records: int, span_s: float, edges: np.ndarray) -> str | None:
    """Why a plot over time means nothing for ``n_records`` decisions over ``span_s`` binned at
    ``edges`` (:func:`time_bins`), or None."""
    if len(edges) - 1 >= MIN_BINS:
        return None
    return (f"Too short to show change over time: {n_records} decision(s) over {format_duration(span_s)} "
            f"make fewer than {MIN_BINS} intervals of {MIN_PER_BIN} or more decisions; read this plot as "
            "the shares over the whole period.")


@dataclass(frozen=True)
class TimeAxis:
    """How to draw a time axis: data at ``x = ts - origin``; ``ticks``/``labels`` to set."""

    origin: float                 # Unix s at x = 0 (the first decision)
    lo: float                     # x limits
    hi: float
    ticks: tuple[float, ...]
    labels: tuple[str, ...]
    label: str                    # the axis label, unit included
    clock: bool                   # wall-clock labels (True) or seconds since origin (False)

    def x(self, ts: Iterable[float] | np.ndarray) -> np.ndarray:
        return np.asarray(ts, dtype=float) - self.origin


def _local(ts: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ts)   # naive local time


def _tz(ts: float) -> str:
    return time.strftime("%Z", time.localtime(ts)) or "local time"


def _step(span: float, max_ticks: int, smallest: float = 0.0) -> float:
    for step in HUMAN_STEPS_S:
        if step >= smallest and span / step <= max_ticks:
            return step
    return HUMAN_STEPS_S[-1] * math.ceil(span / (max_ticks * HUMAN_STEPS_S[-1]))


def _elapsed_axis(lo_ts: float, hi_ts: float, origin: float, max_ticks: int) -> TimeAxis:
    lo, hi = lo_ts - origin, hi_ts - origin
    step = _step(hi - lo, max_ticks)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    ticks = tuple(k * step for k in range(first, last + 1))
    labels = tuple(f"{t:.{decimals}f}" for t in ticks)
    start = _local(origin)
    label = (f"time since the first decision, {start:%Y-%m-%d %H:%M:%S}.{start.microsecond // 1000:03d} "
             f"{_tz(origin)} (s)")
    return TimeAxis(origin, lo, hi, ticks, labels, label, clock=False)


def _clock_ticks(lo_ts: float, hi_ts: float, step: float) -> list[float]:
    """Unix times of the wall-clock instants that are multiples of ``step`` (local time) in
    ``[lo_ts, hi_ts]``: on the minute, the hour, midnight."""
    start = _local(lo_ts)
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    if step < DAY:
        k = math.ceil((start - midnight).total_seconds() / step - 1e-9)
        while True:
            tick = midnight + _dt.timedelta(seconds=k * step)
            if tick.timestamp() > hi_ts + 1e-6:   # the earlier of a repeated time's two instants
                return sorted(set(out))
            # Around a change of the clocks a wall-clock time may not exist (skipped) or occur
            # twice (both kept): only the instants that read as the tick are ticks.
            for fold in (0, 1):
                ts = tick.replace(fold=fold).timestamp()
                if lo_ts - 1e-6 <= ts <= hi_ts + 1e-6 and _local(ts) == tick:
                    out.append(ts)
            k += 1
    day = midnight if midnight.timestamp() >= lo_ts - 1e-6 else midnight + _dt.timedelta(days=1)
    while day.timestamp() <= hi_ts + 1e-6:
        out.append(day.timestamp())
        day += _dt.timedelta(days=round(step / DAY))
    return out


def _clock_axis(lo_ts: float, hi_ts: float, origin: float, max_ticks: int) -> TimeAxis:
    step = _step(hi_ts - lo_ts, max_ticks, smallest=1.0)
    ticks_ts = _clock_ticks(lo_ts, hi_ts, step)
    if step >= DAY:
        fmt, what = ("%b %d", "date") if hi_ts - lo_ts < 300 * DAY else ("%Y-%m-%d", "date")
    else:
        fmt, what = ("%H:%M:%S", "HH:MM:SS") if step < MINUTE else ("%H:%M", "HH:MM")
    labels, shown, last_date = [], [], None   # shown: each tick's (date, wall-clock text)
    every_date = hi_ts - lo_ts >= DAY   # a time of day would repeat: every tick gets its date
    for ts in ticks_ts:
        t = _local(ts)
        text = t.strftime(fmt)
        key = (t.date(), text)
        if step < DAY and (every_date or t.date() != last_date):
            text = f"{t:%b %d}\n{text}"    # the date on the first tick and wherever it changes
        if key in shown:   # a wall-clock time the clocks went back over: the zones tell the two apart
            first = shown.index(key)
            if not labels[first].endswith(_tz(ticks_ts[first])):
                labels[first] = f"{labels[first]} {_tz(ticks_ts[first])}"
            text = f"{text} {_tz(ts)}"
        last_date = t.date()
        labels.append(text)
        shown.append(key)
    label = f"local time, {_tz(origin)} ({what})"
    return TimeAxis(origin, lo_ts - origin, hi_ts - origin, tuple(ts - origin for ts in ticks_ts),
                    tuple(labels), label, clock=True)


def time_axis(lo_ts: float, hi_ts: float, origin: float | None = None, max_ticks: int = MAX_TICKS) -> TimeAxis:
    """The axis for ``[lo_ts, hi_ts]`` (Unix s), data placed at ``ts - origin`` (default ``lo_ts``)."""
    origin = lo_ts if origin is None else origin
    hi_ts = max(hi_ts, lo_ts + HUMAN_STEPS_S[0])
    if hi_ts - lo_ts < CLOCK_MIN_SPAN_S:
        return _elapsed_axis(lo_ts, hi_ts, origin, max_ticks)
    return _clock_axis(lo_ts, hi_ts, origin, max_ticks)


@dataclass(frozen=True)
class ValueScale:
    """How to scale an axis of values: ``kind`` is ``"linear"``, ``"log"`` or ``"clipped"``."""

    kind: str
    limits: tuple[float, float] | None = None   # None: matplotlib's own
    beyond: int = 0                             # values outside the limits (clipped only)
    beyond_max: float | None = None             # the largest of all values (clipped only)

    @property
    def suffix(self) -> str:
        """What an axis label adds: ``", log scale"``, ``", axis clipped"`` or nothing."""
        return {"log": ", log scale", "clipped": ", axis clipped"}.get(self.kind, "")

    def note(self, unit: str, what: str = "request(s)") -> str | None:
        if self.kind != "clipped":
            return None
        return (f"axis clipped: {self.beyond} {what} beyond it (up to {self.beyond_max:.3g} {unit}), "
                "drawn on its edge")


def value_scale(values: Iterable[float | None], *, log_ratio: float = LOG_RATIO,
                min_points_to_clip: int = MIN_POINTS_TO_CLIP) -> ValueScale:
    """Linear, log or clipped, for an axis showing ``values`` (None and NaN ignored).

    The bulk is the 1st to 99th percentile (all values when there are fewer than
    ``min_points_to_clip``). Log when the values are positive and the bulk's max/min is at least
    ``log_ratio``; else clipped when the bulk would fill less than ``MIN_BULK_SHARE`` of a linear
    axis (outliers stretch it), to the values within half the bulk's width of it. Outliers that are
    more than 1% of the values reach into the bulk and escape that test: log, when the values are
    positive, span at least ``MIN_LOG_SPAN`` (max/min) and the lowest three quarters would fill
    less than ``MIN_MIDDLE_SHARE`` of a linear axis (a run's first loads among fast requests);
    else linear."""
    v = np.array([np.nan if x is None else float(x) for x in values], dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return ValueScale("linear")
    vmin, vmax = float(v.min()), float(v.max())
    clip_ok = v.size >= min_points_to_clip
    lo_b, hi_b = (float(x) for x in np.percentile(v, (1, 99))) if clip_ok else (vmin, vmax)
    if vmin > 0 and hi_b / lo_b >= log_ratio:
        return ValueScale("log", (vmin / 1.3, vmax * 1.3))
    bulk = hi_b - lo_b
    if clip_ok and vmax > vmin and bulk < MIN_BULK_SHARE * (vmax - vmin):
        margin = bulk / 2 or max(abs(hi_b) * 0.05, 1e-9)
        kept = v[(v >= lo_b - margin) & (v <= hi_b + margin)]
        pad = (float(kept.max() - kept.min()) or margin) * 0.05
        lo, hi = float(kept.min()) - pad, float(kept.max()) + pad
        return ValueScale("clipped", (lo, hi), int(np.sum((v < lo) | (v > hi))), vmax)
    if vmin > 0 and vmax >= MIN_LOG_SPAN * vmin \
            and float(np.percentile(v, 75)) - vmin < MIN_MIDDLE_SHARE * (vmax - vmin):
        return ValueScale("log", (vmin / 1.3, vmax * 1.3))
    return ValueScale("linear")
