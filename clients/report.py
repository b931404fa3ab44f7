"""``adaptd report``: an HTML page with PNG plots of the daemon's selections.

Contract
--------
* :func:`build_report(records, out_dir, ...)` writes ``out_dir/index.html`` and one PNG per
  plot, and returns the page's path; :func:`run_report(args)` is the CLI entry (reads the store
  read-only with ``--since``/``--model``). Written for a reader who never saw the daemon: every
  plot has a title, axis labels with units and a short explanation; the page opens with a
  summary table and a glossary of the terms (arm, placement, constraint, attainment).
* Plots: variant and placement mix over time; constraint attainment over time; predicted
  versus measured latency and energy; per-arm latency distributions; and per model the Pareto
  frontier of accuracy against latency and against energy, per placement.
* Energy from a power model rather than a sensor is labelled "estimated" in every title,
  axis label, legend and table where it appears.
* matplotlib (Agg backend, no display) is imported only here, lazily; without it a
  ``RuntimeError`` says to install ``adaptd[report]``. No global matplotlib state is changed
  beyond selecting Agg; each figure is closed after saving.
* Units: ms, mJ, accuracy in %, time axes in local wall-clock time.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 110


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("adaptd report needs matplotlib: pip install 'adaptd[report]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.dates  # noqa: F401
    import matplotlib.pyplot as plt

    return plt


def _arm(r: Mapping[str, Any]) -> str:
    return f"{r.get('variant')} @ {r.get('placement')}"


def _num(values: Iterable[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _pct(a: np.ndarray, q: float) -> float | None:
    a = a[~np.isnan(a)]
    return float(np.percentile(a, q)) if a.size else None


def energy_kind(records: Sequence[Mapping[str, Any]]) -> str:
    """'estimated', 'measured' or 'measured and estimated', over records that carry energy."""
    kinds = {bool(r.get("energy_estimated")) for r in records if r.get("energy_mj") is not None}
    if kinds == {True}:
        return "estimated"
    if kinds == {False}:
        return "measured"
    return "measured and estimated" if kinds else "none"


def _energy_axis(kind: str) -> str:
    return {"estimated": "energy, ESTIMATED (mJ)", "measured": "energy, measured (mJ)"}.get(
        kind, "energy (mJ; estimated where marked)")


def _time_bins(ts: np.ndarray, target: int = 40) -> np.ndarray:
    lo, hi = float(ts.min()), float(ts.max())
    span = max(hi - lo, 1e-3)
    nice = [0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
            4 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400]
    width = next((w for w in nice if span / w <= target), nice[-1])
    start = math.floor(lo / width) * width
    n = max(1, math.ceil((hi - start) / width + 1e-9))
    return start + width * np.arange(n + 1)


def _binned(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, list]:
    """Time bins over the records' ``ts``: (bin edges, each record's bin index, bin centres as dates)."""
    ts = _num(r["ts"] for r in records)
    edges = _time_bins(ts)
    idx = np.clip(np.searchsorted(edges, ts, side="right") - 1, 0, len(edges) - 2)
    return edges, idx, _dates((edges[:-1] + edges[1:]) / 2)


def _dates(ts: np.ndarray):
    return [_dt.datetime.fromtimestamp(t) for t in ts]


def _finish_time_axis(ax, plt) -> None:
    import matplotlib.dates as mdates

    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.set_xlabel("time (local, HH:MM:SS)")
    for label in ax.get_xticklabels():
        label.set_rotation(30)
        label.set_ha("right")


# --- summary -----------------------------------------------------------------------------------

def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per model and per arm counts, latency percentiles, mean energy and attainment."""
    out: dict[str, Any] = {"requests": len(records), "outcomes": dict(Counter(r.get("outcome") for r in records))}
    if records:
        out["from_ts"] = min(r["ts"] for r in records)
        out["to_ts"] = max(r["ts"] for r in records)
    arms = []
    groups: dict[tuple, list] = defaultdict(list)
    for r in records:
        if r.get("outcome") == "ok":
            groups[(r.get("model"), r.get("version"), r.get("variant"), r.get("placement"))].append(r)
    ok_total = Counter(r.get("model") for r in records if r.get("outcome") == "ok")
    for (model, version, variant, placement), rs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        lat = _num(r.get("total_ms") for r in rs)
        en = _num(r.get("energy_mj") for r in rs)
        with_c = [r for r in rs if r.get("met") is not None]
        acc = [r.get("predicted_accuracy") for r in rs if r.get("predicted_accuracy") is not None]
        arms.append({
            "model": model, "version": version, "variant": variant, "placement": placement,
            "count": len(rs), "share": len(rs) / ok_total[model],
            "p50_ms": _pct(lat, 50), "p90_ms": _pct(lat, 90), "p99_ms": _pct(lat, 99),
            "mean_energy_mj": float(np.nanmean(en)) if np.isfinite(en).any() else None,
            "energy_kind": energy_kind(rs),
            "accuracy": float(np.mean(acc)) if acc else None,
            "attainment": (sum(1 for r in with_c if r["met"]) / len(with_c)) if with_c else None,
        })
    out["arms"] = arms
    constrained = [r for r in records if any(r.get(k) is not None for k in ("min_accuracy", "max_latency_ms", "max_energy_mj"))]
    met = sum(1 for r in constrained if r.get("outcome") == "ok" and r.get("met"))
    out["constrained_requests"] = len(constrained)
    out["attainment"] = met / len(constrained) if constrained else None
    out["energy_kind"] = energy_kind(records)
    return out


# --- plots ---------------------------------------------------------------------------------------

class _Page:
    def __init__(self, out_dir: Path, plt) -> None:
        self.out_dir, self.plt = out_dir, plt
        self.sections: list[tuple[str, str, str]] = []   # (title, png name, explanation html)

    def save(self, fig, name: str, title: str, explanation: str) -> None:
        fig.tight_layout()
        fig.savefig(self.out_dir / name, dpi=DPI)
        self.plt.close(fig)
        self.sections.append((title, name, explanation))


def _plot_mix(page: _Page, records: Sequence[Mapping[str, Any]], model: str, slug: str) -> None:
    plt = page.plt
    rs = [r for r in records if r.get("outcome") == "ok"]
    if not rs:
        return
    edges, idx, centers = _binned(rs)
    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for ax, key, label in ((axes[0], "variant", "variant"), (axes[1], "placement", "placement")):
        names = sorted({str(r.get(key)) for r in rs})
        counts = np.zeros((len(names), len(edges) - 1))
        for i, r in zip(idx, rs):
            counts[names.index(str(r.get(key))), i] += 1
        totals = counts.sum(axis=0)
        shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0) * 100
        ax.stackplot(centers, shares, labels=names, alpha=0.85)
        ax.set_ylim(0, 100)
        ax.set_ylabel("share of requests served (%)")
        ax.set_title(f"{model}: {label} chosen, share per {edges[1] - edges[0]:g} s interval")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, title=label)
    _finish_time_axis(axes[1], plt)
    page.save(fig, f"mix_{slug}.png", f"{model}: variant and placement mix over time",
              "Each band is the share of the requests answered in a time interval that ran on a given "
              "model variant (top) or placement, i.e. processor and thread setting (bottom). A change in "
              "the bands shows the daemon switching its choice as load, constraints or its cost estimates changed.")


def _plot_attainment(page: _Page, records: Sequence[Mapping[str, Any]], model: str, slug: str) -> None:
    plt = page.plt
    rs = [r for r in records if any(r.get(k) is not None for k in ("min_accuracy", "max_latency_ms", "max_energy_mj"))]
    if not rs:
        return
    edges, idx, centers = _binned(rs)
    nb = len(edges) - 1
    fig, ax = plt.subplots(figsize=(12, 4.8))

    def share(pred, among=lambda r: True) -> np.ndarray:
        num, den = np.zeros(nb), np.zeros(nb)
        for i, r in zip(idx, rs):
            if among(r):
                den[i] += 1
                num[i] += bool(pred(r))
        return np.where(den > 0, num / np.maximum(den, 1) * 100, np.nan)

    ax.plot(centers, share(lambda r: r.get("outcome") == "ok" and r.get("met")), "-o", ms=3, lw=2,
            label="all constraints met (of all constrained requests)")
    for key, flag, label in (("min_accuracy", "met_accuracy", "accuracy bound met"),
                             ("max_latency_ms", "met_latency", "latency bound met"),
                             ("max_energy_mj", "met_energy", "energy bound met")):
        if any(r.get(key) is not None for r in rs):
            extra = " (energy estimated)" if key == "max_energy_mj" and energy_kind(rs) != "measured" else ""
            ax.plot(centers, share(lambda r, f=flag: r.get(f),
                                   lambda r, k=key: r.get(k) is not None and r.get("outcome") == "ok"),
                    "--", lw=1, label=f"{label}{extra} (of served requests with it)")
    ax.plot(centers, share(lambda r: r.get("outcome") == "rejected"), ":", color="red", lw=1.5,
            label="rejected as infeasible")
    ax.plot(centers, share(lambda r: r.get("outcome") == "error"), ":", color="black", lw=1, label="error")
    ax.set_ylim(-2, 102)
    ax.set_ylabel("share of requests (%)")
    ax.set_title(f"{model}: constraint attainment per {edges[1] - edges[0]:g} s interval")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _finish_time_axis(ax, plt)
    page.save(fig, f"attainment_{slug}.png", f"{model}: constraint attainment over time",
              "Of the requests that set at least one constraint (minimum accuracy, maximum latency, maximum "
              "energy), the share whose reply met all of them, per constraint, and the shares rejected "
              "because no choice was predicted to meet them or that failed. Latency is judged on the "
              "measured total time in the daemon; energy on the measured (or, without a power sensor, "
              "estimated) energy.")


def _plot_predicted(page: _Page, records: Sequence[Mapping[str, Any]]) -> None:
    plt = page.plt
    rs = [r for r in records if r.get("outcome") == "ok"]
    lat = [(r["predicted_latency_ms"], r["total_ms"], r.get("placement")) for r in rs
           if r.get("predicted_latency_ms") is not None and r.get("total_ms") is not None]
    en = [(r["predicted_energy_mj"], r["energy_mj"], r.get("placement"), bool(r.get("energy_estimated")))
          for r in rs if r.get("predicted_energy_mj") is not None and r.get("energy_mj") is not None]
    if not lat and not en:
        return
    kind = energy_kind([r for r in rs if r.get("predicted_energy_mj") is not None])
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    placements = sorted({str(x[2]) for x in lat + [e[:3] for e in en]})
    colors = {p: f"C{i % 10}" for i, p in enumerate(placements)}
    for ax, pts, xl, yl, title in (
            (axes[0], lat, "predicted latency (ms)", "measured total latency (ms)", "latency: predicted vs measured"),
            (axes[1], en, f"predicted {_energy_axis(kind)}", _energy_axis(kind),
             f"energy: predicted vs {'ESTIMATED' if kind == 'estimated' else kind}")):
        if not pts:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        for p in placements:
            sel = [x for x in pts if str(x[2]) == p]
            if not sel:
                continue
            est_note = ""
            if len(sel[0]) == 4:
                est_note = " (estimated)" if all(x[3] for x in sel) else ""
            ax.scatter([x[0] for x in sel], [x[1] for x in sel], s=8, alpha=0.5, color=colors[p], label=f"{p}{est_note}")
        vals = np.array([v for x in pts for v in x[:2]], float)
        lo, hi = float(np.nanmin(vals)), float(np.nanmax(vals))
        pad = (hi - lo) * 0.05 or 0.1
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="prediction = measurement")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(title)
        ax.legend(fontsize=8, title="placement")
        err = np.array([abs(x[1] - x[0]) / x[1] for x in pts if x[1]], float)
        if err.size:
            ax.text(0.02, 0.98, f"median |error| {np.median(err) * 100:.1f}%\nwithin 10%: {np.mean(err <= 0.10) * 100:.0f}%",
                    transform=ax.transAxes, va="top", fontsize=8,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    page.save(fig, "predicted_vs_measured.png", "Predicted versus measured latency and energy",
              "Each dot is one request: what the daemon predicted when it chose (horizontal) against what "
              "it then measured (vertical). Dots on the dashed diagonal were predicted exactly; above it the "
              "execution was slower or costlier than predicted. Predicted latency includes the expected queue "
              "wait; measured latency is the total time from receiving the request to replying. "
              + ("Energy here is ESTIMATED from a power model (this machine has no power sensor), "
                 "not measured." if kind == "estimated" else
                 "Energy is the sensor's reading with idle power deducted." if kind == "measured" else
                 "Energy is a sensor reading where available and an estimate elsewhere (see the legend)."))


def _plot_latency_dist(page: _Page, records: Sequence[Mapping[str, Any]], model: str, slug: str) -> None:
    plt = page.plt
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.get("outcome") == "ok" and r.get("total_ms") is not None:
            groups[_arm(r)].append(float(r["total_ms"]))
    if not groups:
        return
    names = sorted(groups, key=lambda n: np.median(groups[n]))
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(names) + 1.8))
    import matplotlib

    horizontal = ({"orientation": "horizontal"} if tuple(map(int, matplotlib.__version__.split(".")[:2])) >= (3, 10)
                  else {"vert": False})
    ax.boxplot([groups[n] for n in names], **horizontal, showfliers=True, whis=(1, 99),
               flierprops={"markersize": 2, "alpha": 0.4})
    ax.set_yticks(range(1, len(names) + 1), [f"{n}  (n={len(groups[n])})" for n in names], fontsize=8)
    ax.set_xlabel("measured total latency per request (ms)")
    ax.set_title(f"{model}: latency distribution per arm (variant @ placement)")
    if max(max(v) for v in groups.values()) / max(min(min(v) for v in groups.values()), 1e-6) > 50:
        ax.set_xscale("log")
        ax.set_xlabel("measured total latency per request (ms, log scale)")
    page.save(fig, f"latency_{slug}.png", f"{model}: per-arm latency distributions",
              "For each arm (a model variant on a placement) that served requests: the box spans the 25th to "
              "75th percentile of the measured total latency, the line inside is the median, whiskers reach "
              "the 1st and 99th percentiles and dots are the requests beyond them. Arms are sorted by median.")


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated (lower cost and higher accuracy), sorted by cost."""
    front, best = [], -math.inf
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((cost, acc))
            best = acc
    return front


def _plot_pareto(page: _Page, arms: Sequence[Mapping[str, Any]], model: str, slug: str) -> bool:
    plt = page.plt
    arms = [a for a in arms if a.get("accuracy") is not None]
    if not arms:
        return False
    kind = energy_kind([{"energy_mj": a["mean_energy_mj"], "energy_estimated": a["energy_kind"] != "measured"}
                        for a in arms if a.get("mean_energy_mj") is not None])
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    placements = sorted({str(a["placement"]) for a in arms})
    for ax, key, xl in ((axes[0], "p50_ms", "median measured latency (ms)"),
                        (axes[1], "mean_energy_mj", f"mean {_energy_axis(kind)} per request")):
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
            front = _pareto([(x[0], x[1]) for x in pts])
            ax.step([f[0] for f in front], [f[1] for f in front], where="post", color=color, lw=1.5)
        if not any_pts:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(xl)
        ax.set_ylabel("top-1 validation accuracy (%)")
        ax.legend(fontsize=8, title="placement (line: Pareto frontier)")
    axes[0].set_title(f"{model}: accuracy vs latency")
    axes[1].set_title(f"{model}: accuracy vs energy" + (" (ESTIMATED)" if kind == "estimated" else ""))
    page.save(fig, f"pareto_{slug}.png", f"{model}: Pareto frontier of accuracy against latency and energy",
              "Each point is a variant on a placement that served requests in this period: its validation "
              "accuracy against its measured median latency (left) and mean energy per request (right). The "
              "stepped line per placement is the Pareto frontier: the variants for which no other variant on "
              "that placement is both at least as fast (or frugal) and more accurate. Variants below the "
              "line are never the best choice there. A compressed variant that is not left of the float one "
              "did not save time or energy on this device."
              + (" Energy is ESTIMATED from a power model, not measured." if kind == "estimated" else ""))
    return True


def _repository_accuracy(repository: Path | None) -> dict[tuple[str, str, str], float]:
    if repository is None:
        return {}
    from adaptd.variants.manifest import MANIFEST_FILE, ManifestError, load_manifest

    acc: dict[tuple[str, str, str], float] = {}
    for path in Path(repository).glob(f"*/*/{MANIFEST_FILE}"):
        try:
            m = load_manifest(path)
        except ManifestError:
            continue
        for v in m.variants:
            if v.metrics is not None:
                acc[(m.model, m.version, v.name)] = v.metrics.accuracy
    return acc


# --- page ----------------------------------------------------------------------------------------

def _fmt(v: Any, digits: int = 2, scale: float = 1.0) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return f"{v * scale:.{digits}f}"
    return html.escape(str(v))


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s)


def build_report(records: Sequence[Mapping[str, Any]], out_dir: Path, *, repository: Path | None = None,
                 title: str = "adaptd selection report", source: str = "") -> Path:
    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = sorted(records, key=lambda r: r["ts"])
    page = _Page(out_dir, plt)
    summary = summarize(records)
    repo_acc = _repository_accuracy(repository)
    for a in summary["arms"]:
        key = (a["model"], str(a["version"]), a["variant"])
        if key in repo_acc:
            a["accuracy"] = repo_acc[key]
    models = sorted({str(r.get("model")) for r in records})
    for model in models:
        rs = [r for r in records if str(r.get("model")) == model]
        slug = _slug(model)
        _plot_mix(page, rs, model, slug)
        _plot_attainment(page, rs, model, slug)
    if records:
        _plot_predicted(page, records)
    for model in models:
        rs = [r for r in records if str(r.get("model")) == model]
        _plot_latency_dist(page, rs, model, _slug(model))
        _plot_pareto(page, [a for a in summary["arms"] if str(a["model"]) == model], model, _slug(model))
    index = out_dir / "index.html"
    index.write_text(_html(summary, page.sections, title, source), encoding="utf-8")
    return index


def _html(summary: Mapping[str, Any], sections: Sequence[tuple[str, str, str]], title: str, source: str) -> str:
    def when(ts: float | None) -> str:
        return "&ndash;" if ts is None else _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")

    kind = summary["energy_kind"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}",
        "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}",
        "th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #eee}",
        ".note{background:#fff6d6;padding:0.5em 1em;border-left:4px solid #e0b000}dt{font-weight:bold}",
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{summary['requests']} decisions from {when(summary.get('from_ts'))} to {when(summary.get('to_ts'))}"
        f" (local time){' read from ' + html.escape(source) if source else ''}. Outcomes: "
        + (", ".join(f"{html.escape(str(k))}: {v}" for k, v in sorted(summary["outcomes"].items(), key=lambda kv: str(kv[0]))) or "none")
        + (f". Of {summary['constrained_requests']} requests that set constraints, "
           f"{summary['attainment'] * 100:.1f}% were served with all of them met." if summary["attainment"] is not None else ".")
        + "</p>",
        "<dl><dt>arm</dt><dd>a model variant (for example float32, float16, int8 quantized, pruned) run on a "
        "placement.</dd><dt>placement</dt><dd>where it runs: a processor (CPU cores or GPU) and thread setting.</dd>"
        "<dt>constraints</dt><dd>bounds a request sets: minimum accuracy, maximum latency (ms), maximum energy (mJ)."
        "</dd><dt>attainment</dt><dd>the share of requests whose reply met every constraint they set.</dd>"
        "<dt>latency</dt><dd>measured in the daemon, from receiving the request to sending the reply, in ms.</dd>"
        "<dt>energy</dt><dd>of one inference with the idle power deducted, in millijoules (mJ).</dd></dl>",
    ]
    if kind in ("estimated", "measured and estimated"):
        parts.append("<p class='note'><b>Energy is estimated</b>" + (" for some requests" if kind != "estimated" else "")
                     + ": on a machine without power sensors the daemon computes energy from a power model "
                     "applied to measured CPU and wall time. Estimated figures are marked "
                     "&ldquo;estimated&rdquo; throughout; they are not measurements.</p>")
    parts.append("<h2>Summary per arm</h2><table><tr><th class='l'>model</th><th class='l'>variant</th>"
                 "<th class='l'>placement</th><th>requests</th><th>share of model's served (%)</th>"
                 "<th>accuracy (%)</th><th>p50 latency (ms)</th><th>p90 latency (ms)</th><th>p99 latency (ms)</th>"
                 "<th>mean energy (mJ)</th><th class='l'>energy source</th><th>constraints met (%)</th></tr>")
    for a in summary["arms"]:
        parts.append(
            f"<tr><td class='l'>{_fmt(a['model'])}:{_fmt(a['version'])}</td><td class='l'>{_fmt(a['variant'])}</td>"
            f"<td class='l'>{_fmt(a['placement'])}</td><td>{a['count']}</td><td>{_fmt(a['share'], 1, 100)}</td>"
            f"<td>{_fmt(a['accuracy'], 1, 100)}</td><td>{_fmt(a['p50_ms'], 3)}</td><td>{_fmt(a['p90_ms'], 3)}</td>"
            f"<td>{_fmt(a['p99_ms'], 3)}</td><td>{_fmt(a['mean_energy_mj'], 3)}</td>"
            f"<td class='l'>{html.escape(a['energy_kind'].upper() if a['energy_kind'] == 'estimated' else a['energy_kind'])}</td>"
            f"<td>{_fmt(a['attainment'], 1, 100)}</td></tr>")
    parts.append("</table>")
    if not sections:
        parts.append("<p>No decisions in this period: nothing to plot.</p>")
    for i, (sec_title, png, text) in enumerate(sections, 1):
        parts.append(f"<h2>{i}. {html.escape(sec_title)}</h2><p>{html.escape(text)}</p>"
                     f"<img src='{html.escape(png)}' alt='{html.escape(sec_title)}'>")
    parts.append(f"<p><small>Generated {when(_dt.datetime.now().timestamp())} by adaptd report.</small></p></body></html>")
    return "\n".join(parts)


def run_report(args: argparse.Namespace) -> int:
    from adaptd.clients.cli import UserError
    from adaptd.clients.export import parse_since
    from adaptd.daemon.store import read_selections

    try:
        records = list(read_selections(args.store, since=parse_since(args.since), model=args.model))
        index = build_report(records, args.out, repository=getattr(args, "repository", None),
                             source=str(args.store))
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {index} ({len(records)} decisions)")
    return 0
