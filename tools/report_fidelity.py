"""The report's live-fidelity plot: per variant, its agreement with the reference and the accuracy
its requests were judged on, over time, placed beside the model's attainment plot.

Contract
--------
* :func:`fidelity_plot` takes one model's selection records (``accuracy_used``,
  ``accuracy_source``) and its fidelity events (``fidelity_events`` table: each carries the
  window's agreement and interval at the moment of a change) and returns a
  :class:`~adaptd.tools.report_plots.Plot`, or None when neither says anything about live
  fidelity (no event, and every record judged on its validation accuracy).
* Same conventions as :mod:`adaptd.tools.report_plots` (figures without pyplot, the shared time
  axis). Units: shares and accuracies in %.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adaptd.tools.report_plots import Plot, _finish_time_axis, new_figure
from adaptd.tools.report_scales import time_axis


def fidelity_plot(records: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]], model: str,
                  slug: str) -> Plot | None:
    served = [r for r in records if r.get("outcome") == "ok" and r.get("accuracy_used") is not None]
    if not events and not any(r.get("accuracy_source") == "live" for r in served):
        return None
    ts = [float(r["ts"]) for r in (*served, *events)]
    t0, t1 = min(ts), max(ts)
    axis = time_axis(t0, max(t1, t0 + 1.0), origin=t0)
    fig = new_figure((12, 7))
    top, bottom = fig.subplots(2, 1, sharex=True)
    variants = sorted({str(e["variant"]) for e in events} | {str(r["variant"]) for r in served})
    colors = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    levels = {float(e["alarm_agreement"]) for e in events if e.get("alarm_agreement") is not None}
    for v in variants:
        es = [e for e in events if e["variant"] == v and e.get("agreement") is not None]
        if es:
            x = axis.x(np.array([float(e["ts"]) for e in es]))
            y = np.array([e["agreement"] for e in es]) * 100
            lo = y - np.array([e["agreement_low"] for e in es]) * 100
            hi = np.array([e["agreement_high"] for e in es]) * 100 - y
            top.errorbar(x, y, yerr=[lo, hi], fmt="o", color=colors[v], capsize=3, label=v)
            for e, xi, yi in zip(es, x, y):
                top.annotate(str(e["event"]).replace("_", " "), (xi, yi), fontsize=7, xytext=(4, 4),
                             textcoords="offset points")
        rs = [r for r in served if r["variant"] == v]
        for source, marker in (("validation", "."), ("live", "x")):
            pts = [r for r in rs if r.get("accuracy_source") == source]
            if pts:
                bottom.plot(axis.x(np.array([float(r["ts"]) for r in pts])),
                            [r["accuracy_used"] * 100 for r in pts], marker, color=colors[v], ms=4,
                            label=f"{v} ({source})")
    for level in levels:
        top.axhline(level * 100, color="red", ls=":", lw=1, label=f"alarm level {level * 100:g}%")
    top.set_ylabel("agreement with the reference (%)")
    top.set_title(f"{model}: agreement with the reference at each fidelity event (interval at its confidence)")
    bottom.set_ylabel("accuracy judged (%)")
    bottom.set_title(f"{model}: accuracy each served request's min_accuracy was judged against")
    for ax in (top, bottom):
        if ax.get_legend_handles_labels()[0]:   # a panel may have nothing to show (no event yet)
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _finish_time_axis(bottom, axis)
    fig.tight_layout()
    return Plot(f"fidelity_{slug}.png", f"{model}: live fidelity over time",
                "Top: each variant's agreement with the model's reference variant over its window of shadow "
                "comparisons, at each moment its drift alarm was raised or cleared or the source of its accuracy "
                "changed, with the interval. Bottom: the accuracy each served request was judged on, from the "
                "validation split (dots) or from live agreement (crosses, a lower confidence bound). Read it beside "
                "the attainment plot: a variant whose agreement falls stops serving the requests whose bound its "
                "live figure no longer meets.", fig)
