"""The selection benchmark's scores: attainment, energy and latency against the oracle, and the
table of them over repetitions (median and min-max).

Contract
--------
* :func:`score` turns one policy's records of a run (and the oracle's of the same run) into plain
  figures; :func:`host_factor` says how much costlier the same pinned work was in one run than in
  the oracle's; :func:`table` renders repetitions as a Markdown table. Pure: no I/O.
"""

from __future__ import annotations

import math
import statistics

from selection_oracle import pct


def host_factor(run: dict, oracle: dict, which: int) -> float | None:
    """How much costlier the same pinned work on the twins was in this run than in the oracle's
    run of the same repetition: the median over arms measured in both of the ratio of their
    medians (``which``: 0 latency, 1 energy). The policies run one after another, a minute or
    more apart, on a shared host whose speed drifts by 10-20% over such spans; dividing a
    policy's ratio to the oracle by this factor compares them as if on the same host."""
    ratios = [run[k][which] / oracle[k][which] for k in run.keys() & oracle.keys()
              if oracle[k][which] and oracle[k][which] > 0 and run[k][which] == run[k][which]]
    return statistics.median(ratios) if len(ratios) >= 10 else None


# ----------------------------------------------------------------------------- scoring
def score(records: list[dict], oracle: list[dict], host_energy: float | None = None,
          host_latency: float | None = None) -> dict:
    feas = {r["i"]: r.get("oracle_feasible", False) for r in oracle if r["scored"]}
    orc = {r["i"]: r for r in oracle if r["scored"] and r["outcome"] == "ok"}
    rs = [r for r in records if r["scored"]]
    ok = [r for r in rs if r["outcome"] == "ok"]
    fr = [r for r in rs if feas.get(r["i"])]
    met_f = [r for r in fr if r["outcome"] == "ok" and r["met"]]
    both = [r for r in fr if r["outcome"] == "ok" and r["i"] in orc]
    lat = [r["total_ms"] for r in ok]
    en = [r["energy_mj"] for r in ok if r.get("energy_mj") is not None]
    acc = [r["accuracy"] for r in ok if r.get("accuracy") is not None]

    def ratio(key):
        a = [r[key] for r in both if r.get(key) is not None and orc[r["i"]].get(key) is not None]
        b = [orc[r["i"]][key] for r in both if r.get(key) is not None and orc[r["i"]].get(key) is not None]
        return sum(a) / sum(b) if b and sum(b) > 0 else None

    def attain(sub):
        return sum(1 for r in sub if r["outcome"] == "ok" and r["met"]) / len(sub) if sub else None

    def is_tight(r):
        return "1.3f" in r["entry"] or "1.2e" in r["entry"]

    tight = [r for r in fr if is_tight(r)]
    loose = [r for r in fr if not is_tight(r)]
    # judged against this run's own measurements of the twins at the moment of each request, so
    # the host's drift between runs does not move requests in or out of the feasible set
    here = [r for r in rs if r.get("feasible_here")]
    by_entry = {}
    for r in fr:
        by_entry.setdefault(f"{r['model']} | {r['entry']}", []).append(r)
    # the daemon's own latency prediction against what met judges (total_ms), served requests
    under = [r["total_ms"] - r["predicted_bound_ms"] for r in ok
             if r.get("predicted_bound_ms") is not None and r.get("total_ms") is not None]
    by_phase = {}
    for on in (False, True):
        f_on = [r for r in fr if r["on"] == on]
        by_phase["on" if on else "off"] = (sum(1 for r in f_on if r["outcome"] == "ok" and r["met"]) / len(f_on)
                                           if f_on else None)
    placements = {}
    for r in ok:
        key = f"{'on' if r['on'] else 'off'}:{r['placement']}"
        placements[key] = placements.get(key, 0) + 1
    energy_ratio = ratio("energy_mj")
    return {
        "scored": len(rs), "feasible": len(fr), "served": len(ok),
        "rejected": sum(1 for r in rs if r["outcome"] == "rejected"),
        "rejected_feasible": sum(1 for r in fr if r["outcome"] == "rejected"),
        "errors": sum(1 for r in rs if r["outcome"].startswith("error")),
        "attainment": len(met_f) / len(fr) if fr else None,
        "attainment_by_phase": by_phase,
        "attainment_tight": attain(tight), "attainment_loose": attain(loose),
        "feasible_here": len(here), "attainment_here": attain(here),
        "attainment_here_tight": attain([r for r in here if is_tight(r)]),
        "attainment_here_loose": attain([r for r in here if not is_tight(r)]),
        "rejected_feasible_here": sum(1 for r in here if r["outcome"] == "rejected"),
        "n_tight": len(tight), "n_loose": len(loose),
        "attainment_by_entry": {k: [attain(v), len(v)] for k, v in sorted(by_entry.items())},
        "total_minus_predicted_bound_ms_p50": pct(under, 50) if under else None,
        "share_total_above_predicted_bound": (sum(1 for u in under if u > 0) / len(under)) if under else None,
        "met_of_served": sum(1 for r in ok if r["met"]) / len(ok) if ok else None,
        "energy_mj_mean": statistics.fmean(en) if en else None,
        "latency_ms_p50": pct(lat, 50), "latency_ms_p99": pct(lat, 99), "latency_ms_mean": statistics.fmean(lat) if lat else None,
        "accuracy_mean_digits": statistics.fmean(acc) if acc else None,
        "energy_ratio_to_oracle": energy_ratio, "latency_ratio_to_oracle": ratio("total_ms"),
        "host_factor_energy": host_energy, "host_factor_latency": host_latency,
        "energy_ratio_to_oracle_host_adjusted": (energy_ratio / host_energy
                                                 if host_energy and energy_ratio is not None else None),
        "n_compared_to_oracle": len(both),
        "late_ms_p99": pct([r["late_ms"] for r in rs], 99),
        "phase_changed_in_flight": sum(1 for r in rs if "on_after" in r and r["on_after"] != r["on"]),
        "probes": sum(1 for r in ok if r.get("reason") == "probe"),
        "placements": dict(sorted(placements.items())),
    }


def fmt(x, spec=".3g"):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def median_spread(vals):
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)


def table(per_rep: list[dict]) -> str:
    cols = [("attainment", "attain. of feasible", ".1%"), ("attainment_here", "attain., feasible in own run", ".1%"),
            ("attainment_here_tight", "own run, tight", ".1%"), ("rejected_feasible_here", "own run, rejected", ".0f"),
            ("attainment_by_phase.off", "load off", ".1%"),
            ("attainment_by_phase.on", "load on", ".1%"), ("attainment_tight", "tight bounds", ".1%"),
            ("attainment_loose", "loose bounds", ".1%"), ("rejected_feasible", "rejected feasible", ".0f"),
            ("energy_mj_mean", "energy mJ/req (est.)", ".3g"), ("energy_ratio_to_oracle", "energy / oracle", ".3f"),
            ("host_factor_energy", "host factor (energy)", ".3f"),
            ("energy_ratio_to_oracle_host_adjusted", "energy / oracle, host-adjusted", ".3f"),
            ("latency_ms_p50", "lat p50 ms", ".3g"), ("latency_ms_p99", "lat p99 ms", ".3g"),
            ("latency_ratio_to_oracle", "lat mean / oracle", ".3f"), ("accuracy_mean_digits", "digits acc.", ".4f")]
    head = "| policy | " + " | ".join(c[1] for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for pol in per_rep[0]["scores"]:
        cells = []
        for key, _, spec in cols:
            vals = []
            for rep in per_rep:
                s = rep["scores"][pol]
                v = s
                for k in key.split("."):
                    v = v.get(k) if isinstance(v, dict) else None
                vals.append(v)
            med, lo, hi = median_spread(vals)
            if med is None:
                cells.append("-")
            elif len(per_rep) > 1:
                cells.append(f"{fmt(med, spec)} ({fmt(lo, spec)}-{fmt(hi, spec)})")
            else:
                cells.append(fmt(med, spec))
        lines.append(f"| {pol} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
