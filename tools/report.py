"""``adaptd report``: an HTML page with PNG plots of the daemon's selections.

Contract
--------
* :func:`build_report(records, out_dir, ...)` writes ``out_dir/index.html`` and one PNG per
  plot, and returns the page's path; :func:`render_report` does the same and also returns the
  :class:`~adaptd.tools.report_plots.Plot` objects (their figures stay inspectable);
  :func:`run_report(args)` is the CLI entry (reads the store read-only with
  ``--since``/``--model``). Written for a reader who never saw the daemon: every plot has a
  title, axis labels with units and a short explanation; the page opens with a summary table
  and a glossary of the terms (arm, placement, constraint, attainment), and repeats under each
  plot its notes (a run too short for it, a clipped axis).
* Plots (``clients/report_plots.py``, scales from ``clients/report_scales.py``, readable for
  runs from a second to months): variant and placement mix over time; constraint attainment
  over time, beside live fidelity (``tools/report_fidelity.py``: each variant's agreement with
  the reference at its fidelity events and the accuracy requests were judged on); predicted versus measured latency and energy; per-arm latency distributions; and
  per model the Pareto frontier of accuracy against latency and against energy, per placement.
* Energy from a power model rather than a sensor is labelled "estimated" in every title,
  axis label, legend and table where it appears.
* matplotlib is imported only when plotting (Agg canvas, no pyplot, no global state); without it
  a ``RuntimeError`` says to install ``adaptd[report]``.
* Units: ms, mJ, accuracy in %, time axes in seconds since the first decision or local time.
"""

from __future__ import annotations

import datetime as _dt
import html
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adaptd.tools.report_fidelity import fidelity_plot
from adaptd.tools.report_plots import (
    Plot,
    attainment_plot,
    energy_kind,
    latency_plot,
    mix_plot,
    num,
    pareto_plot,
    predicted_plot,
)
from adaptd.tools.report_scales import format_duration

DPI = 110


def _pct(a: np.ndarray, q: float) -> float | None:
    a = a[~np.isnan(a)]
    return float(np.percentile(a, q)) if a.size else None


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
        lat = num(r.get("total_ms") for r in rs)
        en = num(r.get("energy_mj") for r in rs)
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


def report_plots(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any],
                 fidelity_events: Sequence[Mapping[str, Any]] = ()) -> list[Plot]:
    """Every plot of the page, in page order (records sorted by time)."""
    plots: list[Plot | None] = []
    models = sorted({str(r.get("model")) for r in records})
    by_model = {m: [r for r in records if str(r.get("model")) == m] for m in models}
    for model in models:
        events = [e for e in fidelity_events if str(e.get("model")) == model]
        plots += [mix_plot(by_model[model], model, _slug(model)), attainment_plot(by_model[model], model, _slug(model)),
                  fidelity_plot(by_model[model], events, model, _slug(model))]
    if records:
        plots.append(predicted_plot(records))
    for model in models:
        plots += [latency_plot(by_model[model], model, _slug(model)),
                  pareto_plot([a for a in summary["arms"] if str(a["model"]) == model], model, _slug(model))]
    return [p for p in plots if p is not None]


def render_report(records: Sequence[Mapping[str, Any]], out_dir: Path, *, repository: Path | None = None,
                  title: str = "adaptd selection report", source: str = "",
                  fidelity_events: Sequence[Mapping[str, Any]] = ()) -> tuple[Path, list[Plot]]:
    """Write the page and its PNGs; return the page's path and the plots (figures kept)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = sorted(records, key=lambda r: r["ts"])
    summary = summarize(records)
    repo_acc = _repository_accuracy(repository)
    for a in summary["arms"]:
        key = (a["model"], str(a["version"]), a["variant"])
        if key in repo_acc:
            a["accuracy"] = repo_acc[key]
    plots = report_plots(records, summary, fidelity_events)
    for plot in plots:
        plot.fig.savefig(out_dir / plot.name, dpi=DPI)
    index = out_dir / "index.html"
    index.write_text(_html(summary, plots, title, source), encoding="utf-8")
    return index, plots


def build_report(records: Sequence[Mapping[str, Any]], out_dir: Path, *, repository: Path | None = None,
                 title: str = "adaptd selection report", source: str = "",
                 fidelity_events: Sequence[Mapping[str, Any]] = ()) -> Path:
    return render_report(records, out_dir, repository=repository, title=title, source=source,
                         fidelity_events=fidelity_events)[0]


def _html(summary: Mapping[str, Any], plots: Sequence[Plot], title: str, source: str) -> str:
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
        f" (local time{', ' + format_duration(summary['to_ts'] - summary['from_ts']) if summary.get('from_ts') else ''})"
        f"{' read from ' + html.escape(source) if source else ''}. Outcomes: "
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
    if not plots:
        parts.append("<p>No decisions in this period: nothing to plot.</p>")
    for i, plot in enumerate(plots, 1):
        parts.append(f"<h2>{i}. {html.escape(plot.title)}</h2><p>{html.escape(plot.explanation)}</p>"
                     + "".join(f"<p class='note'>{html.escape(n)}</p>" for n in plot.notes)
                     + f"<img src='{html.escape(plot.name)}' alt='{html.escape(plot.title)}'>")
    parts.append(f"<p><small>Generated {when(_dt.datetime.now().timestamp())} by adaptd report.</small></p></body></html>")
    return "\n".join(parts)
