"""End to end: ``adaptd demo build`` trains the digits CNN and builds every variant (slow)."""

from __future__ import annotations

import time

import pytest

from adaptd.variants.build import ALL_KINDS


@pytest.mark.slow
def test_demo_build_end_to_end(tmp_path, capsys) -> None:
    from adaptd.cli.main import main
    from adaptd.variants.repository import resolve

    t0 = time.perf_counter()
    assert main(["demo", "build", "--repository", str(tmp_path / "demo"), "--no-progress"]) == 0
    elapsed = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert "digits v1" in out and "float32" in out
    vdir, m = resolve(tmp_path / "demo", "digits")
    assert [v.name for v in m.variants] == list(ALL_KINDS)
    f32 = m.variant("float32").metrics.accuracy
    assert f32 >= 0.95
    for v in m.variants:  # every variant keeps most of float32's accuracy
        assert v.metrics.accuracy >= f32 - 0.05, (v.name, v.metrics.accuracy)
    assert m.variant("pruned90").sparsity >= 0.895
    assert elapsed < 300
