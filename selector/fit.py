"""Fitting the structural predictor to a device's calibration records, and reading a stored
calibration back.

Contract
--------
* :func:`fit_calibration` evaluates the predictor on arms held out from the records (leave one
  model out when there are at least two models, else a seeded random quarter of the arms), for
  the predictor as used (the kernel-level model where a structure lists ``layers``) and, for
  comparison, for the per-op-type totals model alone; then fits it on every record. Records:
  dicts with ``model``, ``structure``, ``quantization``, ``placement``, ``placement_kind``,
  ``threads``, ``latency_ms`` and optionally ``energy_mj`` (what ``adaptd calibrate`` measures,
  :mod:`adaptd.variants.calibrate`).
* :func:`load_calibration` and :func:`load_predictor` read ``REPOSITORY/calibration.json`` (or the
  file itself): the only file this package reads; nothing here writes one.
* Pure otherwise (numpy); units ms, mJ.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .predictor import StructuralPredictor

CALIBRATION_FILE = "calibration.json"
SCHEMA = "adaptd.calibration/1"


def fit_calibration(records: Sequence[Mapping[str, Any]], seed: int = 0) -> tuple[StructuralPredictor, dict]:
    """(the predictor fitted on every record, the held-out errors: ``method``, ``mape``,
    ``mean_ape``, ``n``, ``per_model``, ``totals_mape``, ``totals_per_model``)."""
    if len({r["model"] for r in records}) >= 2:
        method = "leave-one-model-out"
        held = holdout_errors(records, "model")
        totals = holdout_errors(records, "model", kernel_model=False)
    else:
        method = "random-25%-of-arms"
        test = np.random.default_rng(seed).random(len(records)) < 0.25
        held = _split_errors(records, test)
        totals = _split_errors(records, test, kernel_model=False)
    holdout = {"method": method, "mape": held["mape"], "mean_ape": held["mean_ape"], "n": held["n"],
               "per_model": held.get("per_group", {}),
               "totals_mape": totals["mape"], "totals_per_model": totals.get("per_group", {})}
    return StructuralPredictor().fit(records), holdout


def _split_errors(records: Sequence[Mapping[str, Any]], test: np.ndarray, **params: Any) -> dict:
    train = [r for r, t in zip(records, test) if not t]
    held = [r for r, t in zip(records, test) if t]
    if not train or not held:
        return {"mape": None, "mean_ape": None, "n": 0}
    p = StructuralPredictor(**params).fit(train)
    errs = []
    for r in held:
        pr = p.predict(r["structure"], r["quantization"],
                       {"name": r["placement"], "kind": r["placement_kind"], "threads": r["threads"]})
        if pr is not None:
            errs.append(abs(pr["latency_ms"] - r["latency_ms"]) / r["latency_ms"])
    return {"mape": float(np.median(errs)) if errs else None,
            "mean_ape": float(np.mean(errs)) if errs else None, "n": len(errs)}


def holdout_errors(records: Sequence[Mapping[str, Any]], group_key: str = "model",
                   **params: Any) -> dict:
    """Leave-one-group-out absolute percentage errors: for each group (model), fit on the others
    and predict its arms. Returns {"mape": median APE, "mean_ape", "n", "per_group": {...}, "errors"}."""
    groups = sorted({str(r[group_key]) for r in records})
    errors = []
    per_group = {}
    for g in groups:
        train = [r for r in records if str(r[group_key]) != g]
        test = [r for r in records if str(r[group_key]) == g]
        if not train:
            continue
        pred = StructuralPredictor(**params).fit(train)
        ape = []
        for r in test:
            p = pred.predict(r["structure"], r.get("quantization"),
                             {"name": r["placement"], "kind": r.get("placement_kind", "cpu"),
                              "threads": r.get("threads", 1)})
            if p is None:
                continue
            ape.append(abs(p["latency_ms"] - float(r["latency_ms"])) / float(r["latency_ms"]))
        per_group[g] = float(np.median(ape)) if ape else None
        errors.extend(ape)
    return {
        "mape": float(np.median(errors)) if errors else None,
        "mean_ape": float(np.mean(errors)) if errors else None,
        "n": len(errors),
        "per_group": per_group,
        "errors": [float(e) for e in errors],
    }


def load_calibration(location: Path) -> dict | None:
    """The calibration document at ``location``: a repository (its ``calibration.json``) or the
    file itself; None when there is none."""
    path = Path(location)
    if path.is_dir():
        path = path / CALIBRATION_FILE
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not an {SCHEMA} document")
    return doc


def load_predictor(location: Path) -> StructuralPredictor | None:
    """The calibrated predictor at ``location`` (as :func:`load_calibration`), or None if never
    calibrated."""
    doc = load_calibration(location)
    return None if doc is None else StructuralPredictor.from_dict(doc["predictor"])
