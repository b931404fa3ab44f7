"""Structural predictor: fit/predict on synthetic graphs with a known cost law, JSON round trip,
placement fallback, held-out error, NNLS."""

from __future__ import annotations

import json

import numpy as np
import pytest
from adaptd.selector import StructuralPredictor, holdout_errors, variant_records
from adaptd.selector.predictor import (
    LAYER_FEATURE_NAMES,
    compute_class,
    feature_names,
    features,
    layer_class,
    layer_features,
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


# ----------------------------------------------------------------------------- kernel-level model
def synth_layers(rng, quant):
    """A random graph as ``structure["layers"]`` records, with the classes describe_tflite gives."""
    int8 = quant == "full_int8"
    mac_dtype = "int8" if int8 else ("mixed" if quant == "dynamic_int8" else "float32")
    act_dtype = "int8" if int8 else "float32"
    layers = []
    for _ in range(int(rng.integers(4, 30))):
        c = int(rng.choice([8, 32, 128, 512]))
        hw = int(rng.choice([7, 14, 28, 56]))
        flops = 2 * hw * hw * c * c
        layers.append({"op": "CONV_2D", "dtype": mac_dtype, "in_shapes": [[1, hw, hw, c]],
                       "out_shape": [1, hw, hw, c], "kernel": [1, 1], "stride": [1, 1], "flops": flops,
                       "weight_bytes": c * c, "act_bytes": 2 * hw * hw * c * (1 if int8 else 4),
                       "count": int(rng.integers(1, 4)), "delegated": True})
        if rng.random() < 0.5:
            layers.append({"op": "DEPTHWISE_CONV_2D", "dtype": mac_dtype, "in_shapes": [[1, hw, hw, c]],
                           "out_shape": [1, hw, hw, c], "kernel": [3, 3], "stride": [1, 1],
                           "flops": 18 * hw * hw * c, "weight_bytes": 9 * c,
                           "act_bytes": 2 * hw * hw * c * (1 if int8 else 4), "count": 1,
                           "delegated": quant != "dynamic_int8"})
        if rng.random() < 0.5:
            layers.append({"op": "ADD", "dtype": act_dtype, "in_shapes": [[1, hw, hw, c]] * 2,
                           "out_shape": [1, hw, hw, c], "flops": hw * hw * c, "weight_bytes": 0,
                           "act_bytes": 3 * hw * hw * c * (1 if int8 else 4), "count": 1,
                           "delegated": not int8 or rng.random() < 0.5})
    return layers


def kernel_latency(layers, quant, threads):
    """A known per-kernel cost law: class-dependent conv speed, slow builtin kernels."""
    conv = {"float32": 0.02, "mixed": 0.008, "int8": 0.006}
    ms = 0.1
    for l in layers:
        n, mf, mb = l["count"], l["flops"] / 1e6, l["act_bytes"] / 1e6
        if not l["delegated"]:
            ms += n * (0.05 * mf + 0.8 * mb + 0.01)
        elif l["op"] == "CONV_2D":
            ms += n * (conv[l["dtype"]] * mf + 0.002)
        elif l["op"] == "DEPTHWISE_CONV_2D":
            ms += n * (0.06 * mf + 0.002)
        else:
            ms += n * (0.3 * mb + 0.002)
    return ms / threads ** 0.8


def layer_records(n_models=8, seed=3):
    rng = np.random.default_rng(seed)
    out = []
    for m in range(n_models):
        for q in ("none", "dynamic_int8", "full_int8"):
            layers = synth_layers(rng, q)
            st = {"ops": {}, "op_flops": {}, "layers": layers,
                  "delegate_partitions": 1 + sum(not l["delegated"] for l in layers)}
            for l in layers:
                st["ops"][l["op"]] = st["ops"].get(l["op"], 0) + l["count"]
                st["op_flops"][l["op"]] = st["op_flops"].get(l["op"], 0) + l["count"] * l["flops"]
            for pl, threads in (("cpu:0", 1), ("cpu:all", 2)):
                lat = kernel_latency(layers, q, threads) * float(rng.lognormal(0, 0.02))
                out.append({"model": f"m{m}", "variant": q, "structure": st, "quantization": q,
                            "placement": pl, "placement_kind": "cpu", "threads": threads, "latency_ms": lat,
                            "energy_mj": None})
    return out


def test_layer_features_classes_and_delegation():
    st = {"delegate_partitions": 3, "layers": [
        {"op": "CONV_2D", "dtype": "mixed", "flops": 2e6, "act_bytes": 1e6, "weight_bytes": 1e6, "count": 2,
         "delegated": True},
        {"op": "CONV_2D", "dtype": "float16", "flops": 1e6, "act_bytes": 0, "weight_bytes": 1e6, "count": 1},
        {"op": "DEPTHWISE_CONV_2D", "dtype": "mixed", "flops": 3e6, "act_bytes": 1e6, "weight_bytes": 0,
         "count": 1, "delegated": False},
        {"op": "HARD_SWISH", "dtype": "int8", "flops": 1e6, "act_bytes": 2e6, "weight_bytes": 0, "count": 1,
         "delegated": False},
        {"op": "RESHAPE", "dtype": "float32", "flops": 0, "act_bytes": 9e9, "count": 1}]}
    x = dict(zip(LAYER_FEATURE_NAMES, layer_features(st, "dynamic_int8")))
    assert x["mflop_mac_hybrid"] == pytest.approx(4 + 1)  # the float-weight conv of a hybrid variant too
    assert x["weight_mb"] == pytest.approx(2 + 2)  # float16 weights run as float32
    assert x["n_kernels"] == 3 and x["builtin_n_kernels"] == 2
    assert x["builtin_mflop_mac"] == 3 and x["builtin_act_mb_other_int8"] == 2
    assert x["delegate_partitions"] == 3 and x["const"] == 1
    assert layer_class({"op": "ADD", "dtype": "float32"}, "dynamic_int8") == "f32"
    assert layer_class({"op": "CONV_2D"}, "full_int8") == "int8"
    assert layer_features({"ops": {"CONV_2D": 1}}, "none") is None


def test_kernel_model_recovers_kernel_law_on_held_out_models():
    recs = layer_records()
    kernel = holdout_errors(recs)
    totals = holdout_errors(recs, kernel_model=False)
    assert kernel["n"] == len(recs) and kernel["mape"] < 0.05
    assert kernel["mape"] < totals["mape"]


def test_kernel_model_degrades_to_totals_without_layers_and_round_trips():
    recs = layer_records(n_models=5)
    p = StructuralPredictor().fit(recs)
    assert all("layer_coef" in v for v in p.placements_.values())
    st = recs[0]["structure"]
    bare = {k: v for k, v in st.items() if k != "layers"}
    with_layers = p.predict(st, "none", "cpu:0")["latency_ms"]
    totals_only = StructuralPredictor(kernel_model=False).fit(recs).predict(st, "none", "cpu:0")["latency_ms"]
    assert p.predict(bare, "none", "cpu:0")["latency_ms"] == pytest.approx(totals_only)
    assert with_layers != pytest.approx(totals_only)
    d = json.loads(json.dumps(p.to_dict()))
    assert StructuralPredictor.from_dict(d).predict(st, "none", "cpu:0") == p.predict(st, "none", "cpu:0")
    # a calibration written before the kernel-level model still loads, as the totals model
    old = {k: v for k, v in d.items() if k != "layer_feature_names"}
    old["params"] = {k: v for k, v in old["params"].items() if k != "kernel_model"}
    q = StructuralPredictor.from_dict(old)
    assert q.predict(st, "none", "cpu:0")["latency_ms"] == pytest.approx(p.predict(bare, "none", "cpu:0")["latency_ms"])
    # records mixing structures with and without layers: the kernel model is fitted on those with
    mixed = [dict(r, structure={k: v for k, v in r["structure"].items() if k != "layers"}) if i % 3 == 0 else r
             for i, r in enumerate(recs)]
    m = StructuralPredictor().fit(mixed)
    assert all(0 < v["layer_n"] < v["n"] for v in m.placements_.values())
