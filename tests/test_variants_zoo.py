"""End to end: ``adaptd variants zoo`` builds a real ``keras.applications`` network (random
weights, nothing downloaded) and the daemon serves every variant it built (slow).

The benchmarks run on zoo models; this keeps the path they depend on under test, at a small
input size so that it fits the suite: MobileNetV3Small at 32x32, float32, full-integer int8 and
50%-pruned.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from adaptd.clients.client import Client
from adaptd.daemon.launch import DaemonProcess

pytestmark = pytest.mark.slow

KINDS = ("float32", "int8_full", "pruned50")


def test_zoo_build_end_to_end_and_served(tmp_path, capsys) -> None:
    from adaptd.clients.cli import main
    from adaptd.variants.repository import resolve

    repo = tmp_path / "zoo"
    assert main(["variants", "zoo", "MobileNetV3Small", "--input-size", "32", "--kinds", ",".join(KINDS),
                 "--repository", str(repo), "--no-progress"]) == 0
    assert "MobileNetV3Small-32" in capsys.readouterr().out
    vdir, m = resolve(repo, "MobileNetV3Small-32")
    assert m.task.accuracy_known is False and m.dataset is None
    assert [v.name for v in m.variants] == list(KINDS)
    for v in m.variants:
        data = (vdir / v.path).read_bytes()
        assert len(data) == v.size_bytes and hashlib.sha256(data).hexdigest() == v.sha256
        assert v.metrics is None                      # random weights: accuracy is unknown, not guessed
        assert v.latency_ms_1thread.median > 0 and v.memory_bytes > 0
        assert tuple(v.inputs[0].shape) == (1, 32, 32, 3) and tuple(v.outputs[0].shape) == (1, 1000)
    f32, int8, pruned = (m.variant(k) for k in KINDS)
    assert int8.size_bytes < f32.size_bytes / 2       # int8 weights: about a quarter of float32's
    assert int8.inputs[0].dtype == "int8" and int8.inputs[0].quantization is not None
    assert 0.45 <= pruned.sparsity <= 0.55, pruned.sparsity

    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    with DaemonProcess.start(repo, tmp_path / "d", config={"placements": {"tensorflow": "off"}}) as d, \
            Client(d.endpoint, timeout_ms=60_000) as client:
        outputs = {}
        for kind in KINDS:
            r = client.infer("MobileNetV3Small-32", x, variant=kind)
            assert r.selection.variant == kind
            outputs[kind] = np.asarray(r.outputs[0])
            assert outputs[kind].shape == (1, 1000) and np.isfinite(outputs[kind]).all()
    # The float networks end in a softmax: their outputs are a probability distribution.
    for kind in ("float32", "pruned50"):
        assert abs(float(outputs[kind].sum()) - 1.0) < 1e-3, (kind, outputs[kind].sum())
    # The int8 one's come back dequantized with its output's scale and zero point, so they are
    # whole steps of that scale inside [0, 1]. (With random weights the softmax is nearly flat,
    # about 0.001 per class, under one step of 1/256: int8 cannot tell the classes apart here.)
    q = int8.outputs[0].quantization
    steps = outputs["int8_full"] / q.scale
    assert np.allclose(steps, np.round(steps), atol=1e-3)
    assert 0.0 <= outputs["int8_full"].min() and outputs["int8_full"].max() <= 1.0
