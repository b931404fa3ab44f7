"""The plots of ``adaptd report``: one function per plot, each returning a :class:`Plot` (a figure
with its title, explanation and notes) or None when there is nothing to plot.

Contract
--------
* Figures are ``matplotlib.figure.Figure`` objects on an Agg canvas, made without pyplot: no
  global matplotlib state, no display, nothing to close; matplotlib is imported only when a
  figure is made (``RuntimeError`` naming ``adaptd[report]`` without it). Callers save them
  (``fig.savefig``) and may inspect their axes (the tests do).
* Every scale decision comes from ``clients/report_scales.py``, the same for every plot: time
  axes (seconds since the first decision for short runs, local wall-clock ticks for long ones),
  bin widths at human values, log or clipped value axes (said in the axis label and, when
  clipped, in a note on the plot). A run too short for a plot over time to mean anything gets a
  note on that plot; :attr:`Plot.notes` repeats every note for the page.
* Energy from a power model rather than a sensor is labelled "estimated" in every title, axis
  label and legend where it appears.
* Units: ms, mJ, accuracy in %, shares in %.
"""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adaptd.tools.report_scales import (
    TimeAxis,
    ValueScale,
    format_duration,
    time_axis,
    time_bins,
    too_short_for_time_plot,
    value_scale,
)

MIN_POINTS_TO_JUDGE = 10   # fewer predicted/measured pairs: too few to judge the predictions


@dataclass
class Plot:
    name: str                 # PNG file name
    title: str
    explanation: str
    fig: Any                  # matplotlib.figure.Figure
    notes: list[str] = field(default_factory=list)


def new_figure(figsize: tuple[float, float]):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise RuntimeError("adaptd report needs matplotlib: pip install 'adaptd[report]'") from None
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def num(values: Iterable[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def energy_kind(records: Sequence[Mapping[str, Any]]) -> str:
    """'estimated', 'measured' or 'measured and estimated', over records that carry energy."""
    kinds = {bool(r.get("energy_estimated")) for r in records if r.get("energy_mj") is not None}
    if kinds == {True}:
        return "estimated"
    if kinds == {False}:
        return "measured"
    return "measured and estimated" if kinds else "none"


def energy_axis(kind: str) -> str:
    return {"estimated": "energy, ESTIMATED (mJ", "measured": "energy, measured (mJ"}.get(
        kind, "energy (mJ; estimated where marked")


def _note_on(ax, text: str, where: str = "center") -> None:
    x, y, ha, va = {"center": (0.5, 0.5, "center", "center"), "lower right": (0.98, 0.03, "right", "bottom"),
                    "upper left": (0.02, 0.97, "left", "top")}[where]
    ax.text(x, y, textwrap.fill(text, 70), transform=ax.transAxes, ha=ha, va=va, fontsize=8.5, zorder=10,
            bbox={"facecolor": "#fff6d6", "alpha": 0.92, "edgecolor": "#e0b000"})


def _binned(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, TimeAxis, str | None]:
    """Time bins over the records' ``ts``: (edges, each record's bin index, the time axis, the
    note when the run is too short for a plot over time)."""
    ts = num(r["ts"] for r in records)
    t_first, t_last = float(ts.min()), float(ts.max())
    edges = time_bins(t_first, t_last, len(records))
    idx = np.clip(np.searchsorted(edges, ts, side="right") - 1, 0, len(edges) - 2)
    return (edges, idx, time_axis(float(edges[0]), float(edges[-1]), origin=t_first),
            too_short_for_time_plot(len(records), t_last - t_first, edges))


def _finish_time_axis(ax, axis: TimeAxis) -> None:
    ax.set_xlim(axis.lo, axis.hi)
    ax.set_xticks(axis.ticks, axis.labels)
    ax.set_xlabel(axis.label)


def _apply_scale(ax, scale: ValueScale, which: str) -> None:
    if scale.kind == "log":
        getattr(ax, f"set_{which}scale")("log")
    if scale.limits is not None:
        getattr(ax, f"set_{which}lim")(*scale.limits)


# --- over time ----------------------------------------------------------------------------------

def mix_plot(records: Sequence[Mapping[str, Any]], model: str, slug: str) -> Plot | None:
    rs = [r for r in records if r.get("outcome") == "ok"]
    if not rs:
        return None
    edges, idx, axis, note = _binned(rs)
    per = format_duration(edges[1] - edges[0])
    fig = new_figure((10, 7))
    axes = fig.subplots(2, 1, sharex=True)
    xs = axis.x(np.repeat(edges, 2)[1:-1])     # each interval's share held across it
    for ax, key, label in ((axes[0], "variant", "variant"), (axes[1], "placement", "placement")):
        names = sorted({str(r.get(key)) for r in rs})
        counts = np.zeros((len(names), len(edges) - 1))
        for i, r in zip(idx, rs):
            counts[names.index(str(r.get(key))), i] += 1
        totals = counts.sum(axis=0)
        shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0) * 100
        ax.stackplot(xs, np.repeat(shares, 2, axis=1), labels=names, alpha=0.85)
        ax.set_ylim(0, 100)
        ax.set_ylabel("share of requests served (%)")
        ax.set_title(f"{model}: {label} chosen, share per {per}")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, title=label)
    _finish_time_axis(axes[1], axis)
    if note:
        _note_on(axes[0], note)
    fig.tight_layout()
    return Plot(f"mix_{slug}.png", f"{model}: variant and placement mix over time",
                f"Each band is the share of the requests answered in each {per} interval that ran on a "
                "given model variant (top) or placement, i.e. processor and thread setting (bottom); "
                "blank intervals had no request. A change in the bands shows the daemon switching its "
                "choice as load, constraints or its cost estimates changed.", fig, [note] if note else [])


def attainment_plot(records: Sequence[Mapping[str, Any]], model: str, slug: str) -> Plot | None:
    keys = ("min_accuracy", "max_latency_ms", "max_energy_mj")
    rs = [r for r in records if any(r.get(k) is not None for k in keys)]
    if not rs:
        return None
    edges, idx, axis, note = _binned(rs)
    per = format_duration(edges[1] - edges[0])
    nb = len(edges) - 1
    centers = axis.x((edges[:-1] + edges[1:]) / 2)
    fig = new_figure((12, 4.8))
    ax = fig.subplots()

    def share(pred, among=lambda r: True) -> np.ndarray:
        hit, den = np.zeros(nb), np.zeros(nb)
        for i, r in zip(idx, rs):
            if among(r):
                den[i] += 1
                hit[i] += bool(pred(r))
        return np.where(den > 0, hit / np.maximum(den, 1) * 100, np.nan)

    ax.plot(centers, share(lambda r: r.get("outcome") == "ok" and r.get("met")), "-o", ms=3, lw=2,
            label="all constraints met (of all constrained requests)")
    for key, flag, label in (("min_accuracy", "met_accuracy", "accuracy bound met"),
                             ("max_latency_ms", "met_latency", "latency bound met"),
                             ("max_energy_mj", "met_energy", "energy bound met")):
        if any(r.get(key) is not None for r in rs):
            extra = " (energy estimated)" if key == "max_energy_mj" and energy_kind(rs) != "measured" else ""
            ax.plot(centers, share(lambda r, f=flag: r.get(f),
                                   lambda r, k=key: r.get(k) is not None and r.get("outcome") == "ok"),
                    "--", marker=".", lw=1, label=f"{label}{extra} (of served requests with it)")
    ax.plot(centers, share(lambda r: r.get("outcome") == "rejected"), ":", marker=".", color="red", lw=1.5,
            label="rejected as infeasible")
    ax.plot(centers, share(lambda r: r.get("outcome") == "error"), ":", marker=".", color="black", lw=1,
            label="error")
    ax.set_ylim(-2, 102)
    ax.set_ylabel("share of requests (%)")
    ax.set_title(f"{model}: constraint attainment per {per}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _finish_time_axis(ax, axis)
    if note:
        _note_on(ax, note)
    fig.tight_layout()
    return Plot(f"attainment_{slug}.png", f"{model}: constraint attainment over time",
                f"Per {per} interval, of the requests that set at least one constraint (minimum accuracy, "
                "maximum latency, maximum energy): the share whose reply met all of them, per constraint, and "
                "the shares rejected because no choice was predicted to meet them or that failed. Latency is "
                "judged on the measured total time in the daemon; energy on the measured (or, without a power "
                "sensor, estimated) energy.", fig, [note] if note else [])


# --- predictions and distributions --------------------------------------------------------------

def _scatter_panel(ax, pts: list[tuple], placements: list[str], unit: str, xl: str, yl: str, title: str) -> list[str]:
    """Predicted (x) against measured (y), one colour per placement, one scale on both axes."""
    colors = {p: f"C{i % 10}" for i, p in enumerate(placements)}
    scale = value_scale([v for x in pts for v in x[:2]])
    _apply_scale(ax, scale, "x")
    _apply_scale(ax, scale, "y")
    x_all, y_all = num(x[0] for x in pts), num(x[1] for x in pts)
    lo, hi = scale.limits or (float(min(x_all.min(), y_all.min())), float(max(x_all.max(), y_all.max())))
    on_edge = 0
    for p in placements:
        sel = [i for i, x in enumerate(pts) if str(x[2]) == p]
        if not sel:
            continue
        est = " (estimated)" if len(pts[sel[0]]) == 4 and all(pts[i][3] for i in sel) else ""
        xs, ys = np.clip(x_all[sel], lo, hi), np.clip(y_all[sel], lo, hi)
        edge = (xs != x_all[sel]) | (ys != y_all[sel])
        on_edge += int(edge.sum())
        ax.scatter(xs[~edge], ys[~edge], s=8, alpha=0.5, color=colors[p], label=f"{p}{est}")
        if edge.any():
            ax.scatter(xs[edge], ys[edge], s=30, marker="^", color=colors[p], edgecolors="black", linewidths=0.5,
                       clip_on=False, zorder=5)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="prediction = measurement")
    ax.set_xlabel(f"{xl}{scale.suffix})")
    ax.set_ylabel(f"{yl}{scale.suffix})")
    err = np.array([abs(y - x) / y for x, y in zip(x_all, y_all) if y], float)
    ax.set_title(title + (f"\nmedian |error| {np.median(err) * 100:.1f}%, within 10%: "
                          f"{np.mean(err <= 0.10) * 100:.0f}% of requests" if err.size else ""))
    ax.legend(fontsize=8, title="placement", loc="lower right")
    notes = []
    if scale.kind == "clipped":
        notes.append(f"axes clipped: {on_edge} request(s) beyond them (up to {scale.beyond_max:.3g} {unit}), "
                     "drawn on the edge as triangles")
    if len(pts) < MIN_POINTS_TO_JUDGE:
        notes.append(f"only {len(pts)} request(s): too few to judge the predictions.")
    if notes:   # under the axis label, inside the figure (tight_layout makes room for it)
        ax.annotate(textwrap.fill("; ".join(notes), 60), xy=(0.5, 0), xycoords="axes fraction",
                    xytext=(0, -42), textcoords="offset points", ha="center", va="top", fontsize=8.5,
                    bbox={"facecolor": "#fff6d6", "alpha": 0.92, "edgecolor": "#e0b000"})
    return [f"{title}: {n}" for n in notes]


def predicted_plot(records: Sequence[Mapping[str, Any]]) -> Plot | None:
    rs = [r for r in records if r.get("outcome") == "ok"]
    lat = [(r["predicted_latency_ms"], r["total_ms"], r.get("placement")) for r in rs
           if r.get("predicted_latency_ms") is not None and r.get("total_ms") is not None]
    en = [(r["predicted_energy_mj"], r["energy_mj"], r.get("placement"), bool(r.get("energy_estimated")))
          for r in rs if r.get("predicted_energy_mj") is not None and r.get("energy_mj") is not None]
    if not lat and not en:
        return None
    kind = energy_kind([r for r in rs if r.get("predicted_energy_mj") is not None])
    fig = new_figure((11, 5))
    axes = fig.subplots(1, 2)
    placements = sorted({str(x[2]) for x in lat + [e[:3] for e in en]})
    notes: list[str] = []
    for ax, pts, unit, xl, yl, title in (
            (axes[0], lat, "ms", "predicted latency (ms", "measured total latency (ms", "latency: predicted vs measured"),
            (axes[1], en, "mJ", f"predicted {energy_axis(kind)}", energy_axis(kind),
             f"energy: predicted vs {'ESTIMATED' if kind == 'estimated' else kind}")):
        if not pts:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        notes += _scatter_panel(ax, pts, placements, unit, xl, yl, title)
    fig.tight_layout()
    return Plot("predicted_vs_measured.png", "Predicted versus measured latency and energy",
                "Each dot is one request: what the daemon predicted when it chose (horizontal) against what "
                "it then measured (vertical). Dots on the dashed diagonal were predicted exactly; above it the "
                "execution was slower or costlier than predicted. Predicted latency includes the expected queue "
                "wait; measured latency is the total time from receiving the request to replying (a variant's "
                "first request includes loading it). Where values span orders of magnitude the axes are "
                "logarithmic; where a few outliers would squeeze the rest into a corner the axes are clipped "
                "and the outliers drawn on the edge. "
                + ("Energy here is ESTIMATED from a power model (this machine has no power sensor), "
                   "not measured." if kind == "estimated" else
                   "Energy is the sensor's reading with idle power deducted." if kind == "measured" else
                   "Energy is a sensor reading where available and an estimate elsewhere (see the legend)."),
                fig, notes)


def latency_plot(records: Sequence[Mapping[str, Any]], model: str, slug: str) -> Plot | None:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.get("outcome") == "ok" and r.get("total_ms") is not None:
            groups[f"{r.get('variant')} @ {r.get('placement')}"].append(float(r["total_ms"]))
    if not groups:
        return None
    names = sorted(groups, key=lambda n: np.median(groups[n]))
    fig = new_figure((10, 0.45 * len(names) + 1.8))
    ax = fig.subplots()
    import matplotlib

    horizontal = ({"orientation": "horizontal"} if tuple(map(int, matplotlib.__version__.split(".")[:2])) >= (3, 10)
                  else {"vert": False})
    ax.boxplot([groups[n] for n in names], **horizontal, showfliers=True, whis=(1, 99),
               flierprops={"markersize": 2, "alpha": 0.4})
    ax.set_yticks(range(1, len(names) + 1), [f"{n}  (n={len(groups[n])})" for n in names], fontsize=8)
    scale = value_scale(v for vs in groups.values() for v in vs)
    _apply_scale(ax, scale, "x")
    ax.set_xlabel(f"measured total latency per request (ms{scale.suffix})")
    ax.set_title(f"{model}: latency distribution per arm (variant @ placement)")
    notes = []
    if scale.kind == "clipped":
        notes.append(f"{model} latency: " + scale.note("ms").replace("drawn on its edge", "not drawn"))
        _note_on(ax, notes[-1].split(": ", 1)[1], "lower right")
    fig.tight_layout()
    return Plot(f"latency_{slug}.png", f"{model}: per-arm latency distributions",
                "For each arm (a model variant on a placement) that served requests: the box spans the 25th to "
                "75th percentile of the measured total latency, the line inside is the median, whiskers reach "
                "the 1st and 99th percentiles and dots are the requests beyond them. Arms are sorted by median; "
                "an arm with few requests (n) says little.", fig, notes)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated (lower cost and higher accuracy), sorted by cost."""
    front, best = [], -math.inf
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((cost, acc))
            best = acc
    return front


def pareto_plot(arms: Sequence[Mapping[str, Any]], model: str, slug: str) -> Plot | None:
    arms = [a for a in arms if a.get("accuracy") is not None]
    if not arms:
        return None
    kind = energy_kind([{"energy_mj": a["mean_energy_mj"], "energy_estimated": a["energy_kind"] != "measured"}
                        for a in arms if a.get("mean_energy_mj") is not None])
    fig = new_figure((11, 5))
    axes = fig.subplots(1, 2)
    placements = sorted({str(a["placement"]) for a in arms})
    for ax, key, xl in ((axes[0], "p50_ms", "median measured latency (ms"),
                        (axes[1], "mean_energy_mj", f"mean {energy_axis(kind)} per request")):
        scale = value_scale((a.get(key) for a in arms), min_points_to_clip=10**9)   # every arm is shown
        _apply_scale(ax, scale, "x")
        any_pts = False
        for i, p in enumerate(placements):
            pts = [(a[key], a["accuracy"] * 100, a["variant"]) for a in arms
                   if str(a["placement"]) == p and a.get(key) is not None]
            if not pts:
                continue
            any_pts = True
            color, marker = f"C{i % 10}", "osD^v<>"[i % 7]
            ax.scatter([x[0] for x in pts], [x[1] for x in pts], color=color, marker=marker, s=40, alpha=0.6,
                       label=f"{p}{' (estimated energy)' if key == 'mean_energy_mj' and kind == 'estimated' else ''}")
            for x, y, v in pts:
                ax.annotate(v, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            front = pareto_front([(x[0], x[1]) for x in pts])
            ax.step([f[0] for f in front], [f[1] for f in front], where="post", color=color, lw=1.5)
        if not any_pts:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(f"{xl}{scale.suffix})")
        ax.set_ylabel("top-1 validation accuracy (%)")
        ax.legend(fontsize=8, title="placement (line: Pareto frontier)")
    axes[0].set_title(f"{model}: accuracy vs latency")
    axes[1].set_title(f"{model}: accuracy vs energy" + (" (ESTIMATED)" if kind == "estimated" else ""))
    notes = []
    if len(arms) < 2:
        notes.append(f"{model}: only one arm served requests in this period: there is no frontier to compare.")
        _note_on(axes[0], notes[-1])
    fig.tight_layout()
    return Plot(f"pareto_{slug}.png", f"{model}: Pareto frontier of accuracy against latency and energy",
                "Each point is a variant on a placement that served requests in this period: its validation "
                "accuracy against its measured median latency (left) and mean energy per request (right). The "
                "stepped line per placement is the Pareto frontier: the variants for which no other variant on "
                "that placement is both at least as fast (or frugal) and more accurate. Variants below the "
                "line are never the best choice there. A compressed variant that is not left of the float one "
                "did not save time or energy on this device."
                + (" Energy is ESTIMATED from a power model, not measured." if kind == "estimated" else ""),
                fig, notes)
