"""Manifest schema, repository layout and metrics: fast, no TensorFlow."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from adaptd.variants.manifest import (SCHEMA, Manifest, ManifestError, load_manifest, save_manifest)
from adaptd.variants.metrics import classification_metrics
from adaptd.variants import repository as R


def _variant(name: str = "float32", **kw) -> dict:
    v = {
        "name": name, "kind": name, "runtime": "litert", "path": f"{name}.tflite",
        "quantization": "none", "pruning": None, "sparsity": 0.0, "size_bytes": 10,
        "sha256": "ab" * 32, "memory_bytes": 100,
        "metrics": {"accuracy": 0.9, "precision_macro": 0.8, "recall_macro": 0.85, "f1_macro": 0.82, "n": 50},
        "latency_ms_1thread": {"median": 1.5, "p90": 2.0, "n": 20},
        "inputs": [{"name": "x", "dtype": "int8", "shape": [1, 8, 8, 1],
                    "quantization": {"scale": 0.0039, "zero_point": -128}}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 10], "quantization": None}],
        "structure": {"flops": 10, "ops": {"CONV_2D": 1}},
    }
    v.update(kw)
    return v


def _doc(**kw) -> dict:
    d = {
        "schema": SCHEMA, "model": "m", "version": "3", "created_at": "2025-01-01T00:00:00Z",
        "adaptd_version": "0.1.0", "tools": {"tensorflow": "2.21.0", "keras": "3", "litert": "2.3.0"},
        "source": {"path": "m.keras", "format": "keras", "sha256": None},
        "task": {"kind": "classification", "num_classes": 10, "accuracy_known": True, "prediction_output": "y"},
        "dataset": {"path": "d.npz", "sha256": "cd" * 32, "n_train": 5, "n_val": 50},
        "inputs": [{"name": "image", "dtype": "float32", "shape": [1, 8, 8, 1], "quantization": None}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 10], "quantization": None}],
        "variants": [_variant(), _variant("pruned75", pruning={"target_sparsity": 0.75, "method": "magnitude",
                                                               "fine_tuned": True}, sparsity=0.751)],
    }
    d.update(kw)
    return d


def test_manifest_round_trips_through_dict_and_file(tmp_path: Path) -> None:
    doc = _doc()
    m = Manifest.from_dict(doc)
    assert m.to_dict() == doc
    save_manifest(m, tmp_path)
    assert load_manifest(tmp_path) == m
    assert json.loads((tmp_path / "manifest.json").read_text()) == doc
    assert m.variant("pruned75").pruning.fine_tuned is True


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(schema="adaptd.manifest/9"), "schema"),
    (lambda d: d.pop("task"), "task"),
    (lambda d: d.update(version="v1"), "version"),
    (lambda d: d["variants"][0].update(path="../escape.tflite"), "path"),
    (lambda d: d["variants"][0].update(runtime="onnx"), "runtime"),
    (lambda d: d["variants"][0].update(sparsity=1.5), "sparsity"),
    (lambda d: d["variants"][0]["metrics"].pop("f1_macro"), "f1_macro"),
    (lambda d: d["variants"][0]["inputs"][0].update(shape="1x8"), "shape"),
    (lambda d: d["variants"].append(copy.deepcopy(d["variants"][0])), "duplicate"),
    (lambda d: d.pop("inputs"), "inputs"),
    (lambda d: d["task"].update(prediction_output="nope"), "prediction_output"),
    (lambda d: d["variants"][0]["outputs"].append(dict(d["outputs"][0], name="z")), r"outputs: 2, but the model has 1"),
    (lambda d: d["inputs"][0].update(preprocessing={"from": "uint8", "scale": 0.0, "offset": 0, "in_model": False}),
     "scale"),
])
def test_manifest_validation_names_the_field(mutate, field) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(ManifestError, match=field):
        Manifest.from_dict(doc)


def test_load_manifest_rejects_bad_json(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_staging_publishes_atomically_and_never_overwrites(tmp_path: Path) -> None:
    m = Manifest.from_dict(_doc(version="1"))
    with R.staging(tmp_path, "m", "1") as d:
        assert d.name.startswith(".tmp-m-") and d.parent == tmp_path
        assert R.list_versions(tmp_path, "m") == []  # nothing visible while building
        (d / "float32.tflite").write_bytes(b"x")
        save_manifest(m, d)
    assert R.list_models(tmp_path) == ["m"]
    vdir, loaded = R.resolve(tmp_path, "m")
    assert vdir == tmp_path / "m" / "1" and loaded == m
    with pytest.raises(R.RepositoryError, match="never overwritten"):
        with R.staging(tmp_path, "m", "1"):
            pass
    assert R.next_version(tmp_path, "m") == "2"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with R.staging(tmp_path, "m", "1") as d:
            (d / "half.tflite").write_bytes(b"x")
            raise RuntimeError("boom")
    assert R.list_models(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_repository_path_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(R.RepositoryError, match="is a file"):
        R.check_repository(f, create=True)
    with pytest.raises(R.RepositoryError, match="is a file"):
        R.check_repository(f / "sub", create=True)


def test_versions_sort_numerically_and_ignore_junk(tmp_path: Path) -> None:
    for v in ("2", "10", "9"):
        d = tmp_path / "m" / v
        d.mkdir(parents=True)
        save_manifest(Manifest.from_dict(_doc(version=v)), d)
    (tmp_path / "m" / "11").mkdir()  # no manifest: unfinished, ignored
    (tmp_path / ".tmp-m-dead").mkdir()
    assert R.list_versions(tmp_path, "m") == ["2", "9", "10"]
    assert R.version_dir(tmp_path, "m") == tmp_path / "m" / "10"
    assert R.next_version(tmp_path, "m") == "12"
    assert R.remove_stale_staging(tmp_path) == []            # too new: a build may be about to lock it
    assert R.remove_stale_staging(tmp_path, grace_s=0) == [tmp_path / ".tmp-m-dead"]


BUILDER = """
import sys
from pathlib import Path
from adaptd.variants import repository as R
with R.staging(Path(sys.argv[1]), sys.argv[2], "1") as d:
    (d / "half.tflite").write_bytes(b"x")
    print(d, flush=True)
    sys.stdin.read()   # builds until told to stop (stdin closed) or killed
    raise SystemExit(3)   # and then fails: nothing is published
"""


def test_staging_left_by_a_killed_build_is_swept_and_a_running_one_is_not(tmp_path: Path) -> None:
    """A build killed with SIGKILL leaves its staging dir; the next build removes it. A build
    still running (a real second process holding its lock) keeps its own."""
    def builder(model: str) -> tuple[subprocess.Popen, Path]:
        proc = subprocess.Popen([sys.executable, "-c", BUILDER, str(tmp_path), model],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return proc, Path(proc.stdout.readline().strip())

    killed, killed_dir = builder("a")
    running, running_dir = builder("b")
    try:
        killed.kill()
        killed.wait()
        killed.stdin.close()
        killed.stdout.close()
        assert killed_dir.is_dir() and killed_dir.name.startswith(R.STAGING_PREFIX)
        old = time.time() - 2 * R.STAGING_GRACE_S
        for d in (killed_dir, running_dir):
            os.utime(d, (old, old))
        with R.staging(tmp_path, "c", "1") as d:
            (d / "manifest.json").write_text("{}")
        assert not killed_dir.exists()
        assert running_dir.is_dir() and (running_dir / "half.tflite").is_file()
        assert R.remove_stale_staging(tmp_path, grace_s=0) == []
    finally:
        running.stdin.close()
        code = running.wait()
        running.stdout.close()
    assert code == 3
    assert not running_dir.exists()          # a build that fails removes its own
    assert R.list_models(tmp_path) == ["c"]


def test_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 400)
    p = np.where(rng.random(400) < 0.7, y, rng.integers(0, 6, 400))  # class 5 only predicted
    m = classification_metrics(y, p)
    P, Rc, F, _ = precision_recall_fscore_support(y, p, average="macro", zero_division=0)
    assert m.accuracy == pytest.approx(accuracy_score(y, p))
    assert (m.precision_macro, m.recall_macro, m.f1_macro) == pytest.approx((P, Rc, F))
    assert m.n == 400


V1 = {
    "schema": "adaptd.manifest/1", "model": "old", "version": "1", "created_at": "2025-01-01T00:00:00Z",
    "adaptd_version": "0.1.0", "tools": {"tensorflow": "2.18.0", "keras": "3", "litert": "2.0.0"},
    "source": {"path": "m.keras", "format": "keras", "sha256": None},
    "task": {"kind": "classification", "num_classes": 10, "accuracy_known": True},
    "dataset": None,
    "variants": [_variant()],
}


def test_schema_1_manifests_still_load_and_are_written_back_as_the_current_schema(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(V1))
    m = load_manifest(tmp_path)
    assert m.schema == "adaptd.manifest/1"
    assert m.inputs == m.variants[0].inputs and m.outputs == m.variants[0].outputs
    assert m.task.prediction_output == "y" and m.prediction_index == 0
    again = m.to_dict()
    assert again["schema"] == SCHEMA and again["inputs"][0]["name"] == "x"
    assert Manifest.from_dict(again).variants == m.variants


def _with_preprocessing(pre: dict, dtype: str = "float32", shape: list | None = None) -> dict:
    doc = _doc()
    doc["inputs"][0].update(preprocessing=pre, dtype=dtype, shape=shape or [1, 8, 8, 3])
    for v in doc["variants"]:
        v["inputs"][0].update(preprocessing=pre, shape=shape or [1, 8, 8, 3])
    return doc


def test_preprocessing_round_trips_on_the_model_and_every_variant() -> None:
    pre = {"from": "uint8", "scale": [0.017, 0.0175, 0.0171], "offset": [-2.1, -2.0, -1.8], "in_model": False}
    doc = _with_preprocessing(pre)
    m = Manifest.from_dict(doc)
    assert m.to_dict() == doc
    p = m.inputs[0].preprocessing
    assert p.channels == 3 and p.scale == (0.017, 0.0175, 0.0171) and m.variants[1].inputs[0].preprocessing == p


@pytest.mark.parametrize("pre, dtype, shape, message", [
    ({"from": "uint8", "scale": [0.1, 0.2], "offset": 0.0, "in_model": False}, "float32", None, "per-channel"),
    ({"from": "uint8", "scale": 1 / 255, "offset": 0.0, "in_model": False}, "int8", None, "not float"),
    ({"from": "uint8", "scale": 1 / 255, "offset": 0.0, "in_model": True}, "float32", None, "in_model"),
    ({"from": "int16", "scale": 1.0, "offset": 0.0, "in_model": False}, "float32", None, "from"),
    ({"from": "uint8", "scale": 1.0, "offset": float("inf"), "in_model": False}, "float32", None, "finite"),
])
def test_preprocessing_that_does_not_fit_the_input_is_refused(pre, dtype, shape, message) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(_with_preprocessing(pre, dtype, shape))


def test_variant_preprocessing_must_agree_with_the_model() -> None:
    doc = _with_preprocessing({"from": "uint8", "scale": 1 / 255, "offset": 0.0, "in_model": False})
    del doc["variants"][1]["inputs"][0]["preprocessing"]
    with pytest.raises(ManifestError, match=r"variants\[pruned75\].inputs\[0\].preprocessing: differs"):
        Manifest.from_dict(doc)
