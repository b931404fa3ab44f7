"""End to end: a zoo network (``keras.applications``, random weights, nothing downloaded) built
into variants and served by the daemon (slow).

The benchmarks run on zoo models; this keeps the path they depend on under test, at a small
input size so that it fits the suite: MobileNetV3Small at 32x32, float32, full-integer int8 and
50%-pruned, 10 classes. A randomly initialised MobileNet's softmax is flat (0.1 for every class
whatever the input), so what the variants compute is not compared with each other here: the
trained demo model's build checks that every variant keeps float32's accuracy
(``test_variants_demo.py``). This test checks the zoo path itself: the manifest, the files, and
that the daemon serves every variant and returns what its interpreter computes.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from adaptd.clients.client import Client
from adaptd.tools.launch import DaemonProcess

pytestmark = pytest.mark.slow

KINDS = ("float32", "int8_full", "pruned50")
MODEL = "MobileNetV3Small-32"


def test_zoo_build_end_to_end_and_served(tmp_path) -> None:
    from adaptd.variants.runtime import load_variant
    from adaptd.variants.zoo import build_zoo

    repo = tmp_path / "zoo"
    vdir, m = build_zoo("MobileNetV3Small", repo, input_size=32, kinds=KINDS, progress=False, classes=10)
    assert m.model == MODEL and m.task.accuracy_known is False and m.dataset is None
    assert [v.name for v in m.variants] == list(KINDS)
    for v in m.variants:
        data = (vdir / v.path).read_bytes()
        assert len(data) == v.size_bytes and hashlib.sha256(data).hexdigest() == v.sha256
        assert v.metrics is None                      # random weights: accuracy is unknown, not guessed
        assert v.latency_ms_1thread.median > 0 and v.memory_bytes > 0
        assert tuple(v.inputs[0].shape) == (1, 32, 32, 3) and tuple(v.outputs[0].shape) == (1, 10)
    f32, int8, pruned = (m.variant(k) for k in KINDS)
    assert int8.size_bytes < f32.size_bytes / 2       # int8 weights: about a quarter of float32's
    assert int8.inputs[0].dtype == "int8" and int8.inputs[0].quantization is not None
    assert 0.45 <= pruned.sparsity <= 0.55, pruned.sparsity

    # MobileNetV3 takes 0..255 and rescales inside; four different images
    xs = np.random.default_rng(0).uniform(0, 255, (4, 1, 32, 32, 3)).astype(np.float32)
    with DaemonProcess.start(repo, tmp_path / "d", config={"placements": {"tensorflow": "off"}}) as d, \
            Client(d.endpoint, timeout_ms=60_000) as client:
        placement = next(p for p in client.placements()["placements"] if p["threads"] == 1)["name"]
        served = {k: np.concatenate([np.asarray(client.infer(MODEL, x, variant=k, placement=placement).outputs[0])
                                     for x in xs]) for k in KINDS}
    for kind in KINDS:
        # the daemon returns what the interpreter computes here on the same input (same thread count)
        local = load_variant(vdir, m.variant(kind), num_threads=1)
        here = np.concatenate([local.run([x])[0] for x in xs])
        np.testing.assert_allclose(served[kind], here, rtol=1e-5, atol=1e-6, err_msg=kind)
        # a softmax head: every row is a probability distribution (int8: to within its steps)
        np.testing.assert_allclose(served[kind].sum(axis=1), 1.0, atol=0.02 if kind == "int8_full" else 1e-4)


@pytest.mark.parametrize("arch, frames_in_model", [("MobileNetV2", False), ("EfficientNetB0", True)])
def test_zoo_architectures_build_small_and_run_through_litert(tmp_path, arch, frames_in_model) -> None:
    """A converter change that breaks a real architecture fails here: two more keras.applications
    networks (inverted residuals with ReLU6; squeeze-and-excitation with swish and the network's
    own rescaling layers) at 32x32, float32 and int8 dynamic-range, loaded and run through LiteRT
    on uint8 frames (the preprocessing every zoo model declares) and on float input."""
    from adaptd.variants.runtime import load_variant
    from adaptd.variants.zoo import build_zoo

    vdir, m = build_zoo(arch, tmp_path / "zoo", input_size=32, kinds=("float32", "int8_dynamic"), progress=False,
                        classes=10, measure=False)
    assert m.model == f"{arch}-32" and [v.name for v in m.variants] == ["float32", "int8_dynamic"]
    pre = m.inputs[0].preprocessing
    assert pre.in_model is frames_in_model and (pre.scale, pre.offset) == ((1.0, 0.0) if frames_in_model else (2 / 255, -1.0))
    f32, dyn = m.variants
    assert dyn.structure["compute_dtype"] == "mixed" and dyn.size_bytes < f32.size_bytes / 2
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    as_float = frames.astype(np.float32) * np.float32(pre.scale) + np.float32(pre.offset)
    for rec in m.variants:
        assert tuple(rec.inputs[0].shape) == (1, 32, 32, 3) and tuple(rec.outputs[0].shape) == (1, 10)
        v = load_variant(vdir, rec, num_threads=1)
        on_frames, on_floats = v.run([frames])[0], v.run([as_float])[0]
        assert on_frames.shape == (2, 10) and np.all(np.isfinite(on_frames))
        np.testing.assert_allclose(on_frames.sum(axis=1), 1.0, atol=1e-4)       # a softmax head
        np.testing.assert_array_equal(on_frames, on_floats)                      # the same input, either way
