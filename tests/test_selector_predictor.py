"""Structural predictor: fit/predict on synthetic graphs with a known cost law, JSON round trip,
placement fallback, held-out error, NNLS."""

from __future__ import annotations

import json

import numpy as np
import pytest
from adaptd.selector import StructuralPredictor, holdout_errors, variant_records
from adaptd.selector.predictor import (
    compute_class,
    feature_names,
    features,
    nnls,
    op_group,
)


def synth_structure(rng, scale):
    conv = float(rng.uniform(5e6, 5e8)) * scale
    dw = float(rng.uniform(1e6, 5e7)) * scale
    fc = float(rng.uniform(1e5, 5e6))
    ops = {"CONV_2D": int(rng.integers(5, 60)), "DEPTHWISE_CONV_2D": int(rng.integers(0, 20)),
           "FULLY_CONNECTED": 1, "ADD": int(rng.integers(0, 20))}
    return {"flops": int(conv + dw + fc), "params": 1000, "nonzero_params": 1000,
            "weight_bytes": int(rng.uniform(1e5, 1e8)), "activation_bytes": int(rng.uniform(1e5, 2e7)),
            "ops": ops, "op_flops": {"CONV_2D": conv, "DEPTHWISE_CONV_2D": dw, "FULLY_CONNECTED": fc,
                                     "ADD": 1e5}, "compute_dtype": "float32"}


def true_latency(structure, quant, threads):
    cls = compute_class(quant)
    per_mflop = {"f32": 0.02, "hybrid": 0.03, "int8": 0.015}[cls]
    of = structure["op_flops"]
    ms = per_mflop * (of["CONV_2D"] + 0.5 * of["FULLY_CONNECTED"]) / 1e6 + 0.06 * of["DEPTHWISE_CONV_2D"] / 1e6
    ms += 0.01 * sum(structure["ops"].values()) + 0.2
    return ms / threads ** 0.8


def records(n_models=6, seed=0, energy=True):
    rng = np.random.default_rng(seed)
    out = []
    for m in range(n_models):
        st = synth_structure(rng, rng.uniform(0.2, 2.0))
        for q in ("none", "float16", "dynamic_int8", "full_int8"):
            for pl, threads in (("cpu:0", 1), ("cpu:all", 2)):
                lat = true_latency(st, q, threads) * float(rng.lognormal(0, 0.02))
                out.append({"model": f"m{m}", "variant": q, "structure": st, "quantization": q,
                            "placement": pl, "placement_kind": "cpu", "threads": threads, "latency_ms": lat,
                            "energy_mj": lat * (1.5 * threads) if energy else None})
    return out


def test_op_groups_and_classes():
    assert op_group("DEPTHWISE_CONV_2D") == op_group("DepthwiseConv2D") == "dw"
    assert op_group("CONV_2D") == op_group("Conv2D") == "conv"
    assert op_group("FULLY_CONNECTED") == op_group("Dense") == op_group("BATCH_MATMUL") == "fc"
    assert op_group("ADD") == "other"
    assert compute_class("float16") == "f32" and compute_class("dynamic_int8") == "hybrid"
    assert compute_class("full_int8") == "int8" and compute_class(None, "int8") == "int8"
    assert features({"ops": {}, "op_flops": {}}, "none").shape == (len(feature_names()),)
    assert features({"ops": {}, "op_flops": {}}, "none", memory_terms=True).shape == (len(feature_names(True)),)
    # DEQUANTIZE of float16 weights is folded at load: not an op per inference
    f16 = features({"ops": {"CONV_2D": 2, "DEQUANTIZE": 2}, "op_flops": {"CONV_2D": 4e6, "DEQUANTIZE": 1e6}}, "float16")
    f32 = features({"ops": {"CONV_2D": 2}, "op_flops": {"CONV_2D": 4e6}}, "none")
    assert (f16 == f32).all()


def test_fit_predict_and_round_trip():
    recs = records()
    p = StructuralPredictor().fit(recs)
    errs = [abs(p.predict(r["structure"], r["quantization"], r["placement"])["latency_ms"] - r["latency_ms"])
            / r["latency_ms"] for r in recs]
    assert np.median(errs) < 0.05
    q = StructuralPredictor.from_dict(json.loads(json.dumps(p.to_dict())))
    for r in recs[:8]:
        assert q.predict(r["structure"], r["quantization"], r["placement"]) == \
            p.predict(r["structure"], r["quantization"], r["placement"])
    pr = p.predict(recs[0]["structure"], "none", "cpu:all")
    assert pr["energy_mj"] == pytest.approx(3.0 * pr["latency_ms"], rel=0.01) and pr["energy_estimated"]
    assert all(c >= 0 for pl in p.placements_.values() for c in pl["coef"])


def test_no_energy_gives_none_and_unknown_placement_fallback():
    p = StructuralPredictor().fit(records(energy=False))
    st = records()[0]["structure"]
    assert p.predict(st, "none", "cpu:0")["energy_mj"] is None
    assert p.predict(st, "none", "gpu:9") is None
    near = p.predict(st, "none", {"name": "cpu:a57x4", "kind": "cpu", "threads": 4})
    base = p.predict(st, "none", "cpu:all")
    assert near["latency_ms"] == pytest.approx(base["latency_ms"] * (2 / 4) ** 0.75)
    assert p.predict(st, "none", {"name": "gpu:0", "kind": "gpu", "threads": 1}) is None
    assert p.predict_record({"name": "x"}, "cpu:0") is None


def test_holdout_on_synthetic_law():
    h = holdout_errors(records(n_models=8))
    assert h["n"] == 8 * 8 and h["mape"] < 0.10


def test_from_dict_rejects_other_schema():
    with pytest.raises(ValueError):
        StructuralPredictor.from_dict({"schema": "something/1"})


def test_nnls_matches_brute_force_small():
    rng = np.random.default_rng(1)
    for _ in range(30):
        a = rng.normal(size=(12, 3))
        b = rng.normal(size=12)
        x = nnls(a, b)
        assert (x >= 0).all()
        # brute force over active sets
        best = np.inf
        for mask in range(8):
            cols = [j for j in range(3) if mask >> j & 1]
            y = np.zeros(3)
            if cols:
                sol = np.linalg.lstsq(a[:, cols], b, rcond=None)[0]
                if (sol < 0).any():
                    continue
                y[cols] = sol
            best = min(best, np.linalg.norm(a @ y - b))
        assert np.linalg.norm(a @ x - b) <= best + 1e-9


def test_variant_records_accepts_list_or_map():
    m, v, recs = variant_records({"model": "x", "version": 2, "variants": {"a": {"kind": "float32"}}})
    assert (m, v, recs[0]["name"]) == ("x", "2", "a")
