"""The built repository: real conversions, real LiteRT and TensorFlow runs (tiny_repository)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adaptd.variants.build import ALL_KINDS
from adaptd.variants.manifest import Manifest, load_manifest
from adaptd.variants.repository import resolve
from adaptd.variants.runtime import load_variant
from adaptd.variants.structure import describe_tflite, prunable_sparsity


@pytest.fixture(scope="module")
def built(tiny_repository, tiny_source):
    repo, model, version = tiny_repository
    vdir, manifest = resolve(repo, model, version)
    data = np.load(tiny_source[1])
    return vdir, manifest, data["x_val"].astype(np.float32), data["y_val"]


def _top1(vdir: Path, manifest: Manifest, name: str, x: np.ndarray) -> np.ndarray:
    v = load_variant(vdir, manifest.variant(name), num_threads=2)
    return np.concatenate([np.argmax(v.run([x[i:i + 50]])[0], axis=-1) for i in range(0, len(x), 50)])


def test_every_kind_is_built_and_recorded(built) -> None:
    vdir, m, x, y = built
    assert [v.name for v in m.variants] == list(ALL_KINDS)
    assert m.task.num_classes == 10 and m.task.accuracy_known
    assert m.dataset.n_train == 1200 and m.dataset.n_val == 300
    for v in m.variants:
        path = vdir / v.path
        assert path.exists(), v.name
        assert v.size_bytes > 0 and v.memory_bytes >= 0 and v.latency_ms_1thread.n > 0
        assert v.latency_ms_1thread.p90 >= v.latency_ms_1thread.median > 0
        assert v.metrics is not None and v.metrics.n == 300
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == v.sha256
        assert {"flops", "params", "nonzero_params", "weight_bytes", "activation_bytes", "ops",
                "op_flops", "compute_dtype"} <= set(v.structure)
    assert m.variant("float32_tf").runtime == "tensorflow"
    assert m.variant("float32_tf").structure == m.variant("float32").structure
    assert m.variant("int8_full").structure["compute_dtype"] == "int8"
    assert m.variant("float16").structure["compute_dtype"] == "float16"
    assert m.variant("float32").structure["flops"] > 0


def test_manifest_on_disk_round_trips(built) -> None:
    vdir, m, _, _ = built
    again = Manifest.from_dict(m.to_dict())
    assert again == m == load_manifest(vdir / "manifest.json")


def test_recorded_metrics_are_reproducible(built) -> None:
    vdir, m, x, y = built
    for name in ("float32", "int8_full", "pruned90"):
        acc = float(np.mean(_top1(vdir, m, name, x) == y))
        assert acc == pytest.approx(m.variant(name).metrics.accuracy, abs=1e-9), name
    assert m.variant("float32").metrics.accuracy > 0.8


@pytest.mark.parametrize("name", ["int8_full", "pruned75_int8"])
def test_int8_variants_take_float_input_and_agree_with_float32(built, name) -> None:
    vdir, m, x, _ = built
    rec = m.variant(name)
    (spec,) = rec.inputs
    assert spec.dtype == "int8" and spec.quantization is not None and spec.quantization.scale > 0
    assert rec.outputs[0].dtype == "int8" and rec.outputs[0].quantization is not None
    ref = _top1(vdir, m, "float32" if name == "int8_full" else "pruned75", x)
    got = _top1(vdir, m, name, x)
    assert np.mean(got == ref) >= 0.9
    # already-quantized input is passed unchanged and gives the same answer
    v = load_variant(vdir, rec, num_threads=1)
    q = spec.quantization
    xi = np.clip(np.round(x[:20] / q.scale) + q.zero_point, -128, 127).astype(np.int8)
    out_f, out_i = v.run([x[:20]])[0], v.run([xi])[0]
    assert out_f.dtype == np.float32 and np.array_equal(out_f, out_i)
    assert np.all(out_f >= 0) and np.allclose(out_f.sum(axis=1), 1.0, atol=0.05)  # dequantized


@pytest.mark.parametrize("name, target", [("pruned50", 0.5), ("pruned75", 0.75), ("pruned90", 0.9),
                                          ("pruned75_int8", 0.75)])
def test_pruned_variants_have_the_sparsity_claimed(built, name, target) -> None:
    vdir, m, _, _ = built
    rec = m.variant(name)
    measured, zeros, total = prunable_sparsity(vdir / rec.path)
    assert rec.sparsity == pytest.approx(measured)
    assert measured >= target - 0.005, (name, measured)
    assert rec.pruning.target_sparsity == target and rec.pruning.fine_tuned is True
    assert describe_tflite(vdir / rec.path)["nonzero_params"] < describe_tflite(vdir / "float32.tflite")["params"]
    assert m.variant("float32").sparsity < 0.05


def test_batch_size_can_differ_from_recorded(built) -> None:
    vdir, m, x, _ = built
    v = load_variant(vdir, m.variant("float32"), num_threads=1)
    one = np.concatenate([v.run([x[i:i + 1]])[0] for i in range(7)])
    seven = v.run([x[:7]])[0]
    assert seven.shape == (7, 10)
    np.testing.assert_allclose(one, seven, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        v.run([x[:2, :4]])
    with pytest.raises(ValueError, match="input"):
        v.run([x[:1], x[:1]])


def test_tensorflow_variant_matches_float32(built) -> None:
    vdir, m, x, _ = built
    tf_v = load_variant(vdir, m.variant("float32_tf"), device="/CPU:0")
    lite = load_variant(vdir, m.variant("float32"))
    np.testing.assert_allclose(tf_v.run([x[:16]])[0], lite.run([x[:16]])[0], atol=1e-4)


def test_runtime_import_does_not_import_tensorflow(built) -> None:
    vdir, m, _, _ = built
    code = (
        "import sys, numpy as np; from pathlib import Path\n"
        "from adaptd.variants.manifest import load_manifest\n"
        "from adaptd.variants.runtime import load_variant\n"
        f"m = load_manifest(Path({str(vdir)!r}))\n"
        f"v = load_variant(Path({str(vdir)!r}), m.variant('int8_full'), num_threads=1)\n"
        "v.run([np.zeros((1, 8, 8, 1), np.float32)])\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_show_prints_the_table(tiny_repository, capsys) -> None:
    from adaptd.cli.main import main

    repo, model, version = tiny_repository
    assert main(["variants", "show", "--repository", str(repo), model]) == 0
    out = capsys.readouterr().out
    for k in ALL_KINDS:
        assert k in out
    assert main(["variants", "kinds"]) == 0
