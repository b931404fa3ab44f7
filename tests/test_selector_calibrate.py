"""``adaptd calibrate`` on tiny real .tflite models: profile with LiteRT, hold out, fit, store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

tf = pytest.importorskip("tensorflow")

from adaptd.cli.main import main
from adaptd.selector import ArmSpec, Request, Selector, StructuralPredictor
from adaptd.selector.fit import CALIBRATION_FILE, load_calibration, load_predictor
from adaptd.variants.calibrate import calibrate, write_calibration


def _tiny(width: int) -> tf.keras.Model:
    import keras

    return keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(width, 3, activation="relu"),
        keras.layers.DepthwiseConv2D(3),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for model, width in (("tiny_a", 8), ("tiny_b", 24)):
        d = root / model / "1"
        d.mkdir(parents=True)
        m = _tiny(width)
        variants = []
        for kind, quant in (("float32", "none"), ("int8_dynamic", "dynamic_int8")):
            conv = tf.lite.TFLiteConverter.from_keras_model(m)
            if quant == "dynamic_int8":
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
            (d / f"{kind}.tflite").write_bytes(conv.convert())
            variants.append({"name": kind, "kind": kind, "runtime": "litert", "path": f"{kind}.tflite",
                             "quantization": quant, "metrics": None})
        variants.append({"name": "float32_tf", "kind": "float32_tf", "runtime": "tensorflow",
                         "path": "saved_model", "quantization": "none", "metrics": None})  # skipped
        (d / "manifest.json").write_text(json.dumps({"schema": "adaptd.manifest/1", "model": model,
                                                     "version": "1", "variants": variants}))
    return root


def test_calibrate_profiles_holds_out_and_round_trips(repo):
    core = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    placements = [{"name": f"cpu:{core}", "kind": "cpu", "runtime": "litert", "cores": [core], "threads": 1}]
    doc = calibrate(repo, placements, repeats=3, warmup=1, rounds=2)
    assert os.sched_getaffinity(0) == before  # affinity restored
    assert len(doc["records"]) == 4 and all(r["latency_ms"] > 0 for r in doc["records"])
    assert doc["holdout"]["method"] == "leave-one-model-out" and doc["holdout"]["n"] == 4
    assert doc["holdout"]["mape"] >= 0
    assert doc["device"]["cores"]
    path = write_calibration(repo, doc)
    assert path == repo / CALIBRATION_FILE and not list(repo.glob(".calibration-*"))
    assert load_calibration(repo)["holdout"] == json.loads(json.dumps(doc["holdout"]))
    pred = load_predictor(repo)
    assert load_predictor(repo / "calibration.json").to_dict() == pred.to_dict()   # the file itself, as config names it
    assert isinstance(pred, StructuralPredictor)
    # the fitted prior feeds a selector
    manifest = json.loads((repo / "tiny_b" / "1" / "manifest.json").read_text())
    from adaptd.variants.structure import describe_tflite

    for v in manifest["variants"]:
        if v["runtime"] == "litert":
            v["structure"] = describe_tflite(repo / "tiny_b" / "1" / v["path"])
    sel = Selector.from_manifests([manifest], placements, predictor=pred)
    assert all(isinstance(a, ArmSpec) and a.prior_latency_ms > 0 for a in sel.arms)
    assert sel.choose(Request("tiny_b"), 0.0).code == "selected"


def test_cli_calibrate(repo, capsys):
    rc = main(["calibrate", "--repository", str(repo), "--repeats", "2", "--rounds", "2", "--models", "tiny_a", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "held-out latency error" in out and "random-25%" in out
    assert load_calibration(repo)["records"][0]["model"] == "tiny_a"


def test_cli_calibrate_unknown_model(repo, capsys):
    rc = main(["calibrate", "--repository", str(repo), "--models", "nope", "--no-progress"])
    assert rc == 1 and "nope" in capsys.readouterr().err


def test_rounds_recorded(repo):
    core = min(os.sched_getaffinity(0))
    placements = [{"name": "c", "kind": "cpu", "runtime": "litert", "cores": [core], "threads": 1}]
    doc = calibrate(repo, placements, models=["tiny_a"], repeats=2, warmup=0, rounds=3)
    for r in doc["records"]:
        assert len(r["round_medians_ms"]) == 3 and r["latency_ms"] == min(r["round_medians_ms"])
    assert doc["measurement_spread"]["median"] >= 0


def test_structure_lists_kernels_and_calibration_fits_the_kernel_model(repo):
    from adaptd.variants.structure import describe_tflite

    st = describe_tflite(repo / "tiny_b" / "1" / "float32.tflite")
    ops = [layer["op"] for layer in st["layers"]]
    assert ops[:2] == ["CONV_2D", "DEPTHWISE_CONV_2D"] and "FULLY_CONNECTED" in ops
    conv = st["layers"][0]
    assert conv["kernel"] == [3, 3] and conv["stride"] == [1, 1] and conv["out_shape"] == [1, 14, 14, 24]
    assert conv["in_shapes"] == [[1, 16, 16, 3]] and conv["dtype"] == "float32" and conv["count"] == 1
    assert conv["flops"] == 2 * 14 * 14 * 24 * 27 and conv["weight_bytes"] == 4 * (24 * 27 + 24)
    assert conv["act_bytes"] == 4 * (16 * 16 * 3 + 14 * 14 * 24)
    assert sum(layer["flops"] * layer["count"] for layer in st["layers"]) == st["flops"]
    assert all(layer["delegated"] for layer in st["layers"]) and st["delegate_partitions"] >= 1
    hybrid = describe_tflite(repo / "tiny_b" / "1" / "int8_dynamic.tflite")
    assert {layer["dtype"] for layer in hybrid["layers"] if layer["op"] == "CONV_2D"} <= {"mixed", "float32"}
    # calibration describes the files (the manifests here carry no structure): kernel model fitted
    core = min(os.sched_getaffinity(0))
    placements = [{"name": "c", "kind": "cpu", "runtime": "litert", "cores": [core], "threads": 1}]
    doc = calibrate(repo, placements, repeats=2, warmup=0, rounds=1)
    assert "layer_coef" in doc["predictor"]["placements"]["c"]
    assert doc["holdout"]["totals_mape"] is not None
