"""Bad input to ``adaptd variants build`` / ``zoo``: one clear error line, exit 1, nothing written."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adaptd.cli.main import main


def _build(capsys, model: Path, data: Path, repo: Path, *extra: str) -> tuple[int, str]:
    rc = main(["variants", "build", str(model), "--data", str(data), "--repository", str(repo),
               "--no-progress", "--kinds", "float32", *extra])
    err = capsys.readouterr().err
    return rc, "\n".join(ln for ln in err.splitlines() if ln.startswith("adaptd: error:"))


def _nothing_published(repo: Path) -> bool:
    return not repo.exists() or all(p.name == "sentinel" for p in repo.iterdir())


@pytest.fixture
def data(tiny_source) -> dict[str, np.ndarray]:
    with np.load(tiny_source[1]) as z:
        return {k: z[k] for k in z.files}


def test_unreadable_model(tmp_path, tiny_source, capsys) -> None:
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a zip")
    rc, err = _build(capsys, bad, tiny_source[1], tmp_path / "repo")
    assert rc == 1 and "cannot load .keras file" in err and _nothing_published(tmp_path / "repo")


@pytest.mark.parametrize("name", ["model.h5", "model.onnx"])
def test_unsupported_model_format(tmp_path, tiny_source, capsys, name) -> None:
    (tmp_path / name).write_bytes(b"x")
    rc, err = _build(capsys, tmp_path / name, tiny_source[1], tmp_path / "repo")
    assert rc == 1 and "unsupported format" in err


def test_directory_that_is_not_a_saved_model(tmp_path, tiny_source, capsys) -> None:
    (tmp_path / "dir").mkdir()
    rc, err = _build(capsys, tmp_path / "dir", tiny_source[1], tmp_path / "repo")
    assert rc == 1 and "not a SavedModel" in err


def test_missing_model(tmp_path, tiny_source, capsys) -> None:
    rc, err = _build(capsys, tmp_path / "nope.keras", tiny_source[1], tmp_path / "repo")
    assert rc == 1 and "not found" in err


@pytest.mark.parametrize("drop, message", [("y_val", "lacks y_val"), ("x_val", "lacks x_val"),
                                           ("y_train", "only one of x_train/y_train")])
def test_dataset_missing_keys(tmp_path, tiny_source, data, capsys, drop, message) -> None:
    d = {k: v for k, v in data.items() if k != drop}
    np.savez(tmp_path / "d.npz", **d)
    rc, err = _build(capsys, tiny_source[0], tmp_path / "d.npz", tmp_path / "repo")
    assert rc == 1 and message in err and _nothing_published(tmp_path / "repo")


def test_dataset_shape_mismatch(tmp_path, tiny_source, data, capsys) -> None:
    np.savez(tmp_path / "d.npz", x_val=np.zeros((10, 9, 9, 1), np.float32), y_val=np.zeros(10, np.int64))
    rc, err = _build(capsys, tiny_source[0], tmp_path / "d.npz", tmp_path / "repo")
    assert rc == 1 and "x_val has shape (10, 9, 9, 1) but the model takes (N, 8, 8, 1)" in err


def test_dataset_label_range_mismatch(tmp_path, tiny_source, data, capsys) -> None:
    y = data["y_val"].copy()
    y[0] = 12
    np.savez(tmp_path / "d.npz", x_val=data["x_val"], y_val=y)
    rc, err = _build(capsys, tiny_source[0], tmp_path / "d.npz", tmp_path / "repo")
    assert rc == 1 and "labels in [0, 12] but the model has 10 classes" in err


def test_dataset_length_mismatch_and_garbage(tmp_path, tiny_source, data, capsys) -> None:
    np.savez(tmp_path / "d.npz", x_val=data["x_val"], y_val=data["y_val"][:-1])
    rc, err = _build(capsys, tiny_source[0], tmp_path / "d.npz", tmp_path / "repo")
    assert rc == 1 and "x_val has 300 samples but y_val has 299" in err
    (tmp_path / "g.npz").write_bytes(b"garbage")
    rc, err = _build(capsys, tiny_source[0], tmp_path / "g.npz", tmp_path / "repo")
    assert rc == 1 and "not a readable .npz" in err


def test_repository_path_is_a_file(tmp_path, tiny_source, capsys) -> None:
    f = tmp_path / "repo"
    f.write_text("i am a file")
    rc, err = _build(capsys, tiny_source[0], tiny_source[1], f)
    assert rc == 1 and "is a file" in err and f.read_text() == "i am a file"


def test_unknown_kind(tmp_path, tiny_source, capsys) -> None:
    rc, err = _build(capsys, tiny_source[0], tiny_source[1], tmp_path / "repo", "--kinds", "float32,int4")
    assert rc == 1 and "unknown variant kind(s) int4" in err


def test_disk_write_failure_leaves_nothing(tmp_path, tiny_source) -> None:
    """A real write failure: the child may write at most 96 KiB per file (RLIMIT_FSIZE).

    TensorFlow's converter writes scratch files that scale with the model and hits the limit
    first; its own error text is unspecific, so the build probes the scratch space when a
    conversion fails and names the write failure. Our own writes map OSError to
    "write failed PATH: reason" too (test_write_errors_become_one_line)."""
    import keras

    inp = keras.Input((8, 8, 1))
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.Dense(600)(keras.layers.Flatten()(inp)))
    keras.Model(inp, out).save(tmp_path / "wide.keras")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "sentinel").write_text("x")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (96 * 1024, 96 * 1024))

    proc = subprocess.run(
        [sys.executable, "-m", "adaptd", "variants", "build", str(tmp_path / "wide.keras"),
         "--data", str(tiny_source[1]), "--repository", str(repo), "--no-progress", "--kinds", "float32"],
        capture_output=True, text=True, timeout=240, preexec_fn=limit,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("adaptd: error:")]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "write failed" in errors[0] and "File too large" in errors[0], errors[0]
    assert _nothing_published(repo), sorted(p.name for p in repo.iterdir())


def test_zoo_list_and_bad_names(capsys, tmp_path) -> None:
    assert main(["variants", "zoo", "--list", "x"]) == 0
    out = capsys.readouterr().out
    for name in ("MobileNetV2", "MobileNetV3Small", "ResNet50", "InceptionV3", "VGG16", "EfficientNetB0"):
        assert name in out
    assert main(["variants", "zoo", "NoSuchNet", "--repository", str(tmp_path / "z")]) == 1
    assert "unknown architecture 'NoSuchNet'" in capsys.readouterr().err
    assert main(["variants", "zoo", "InceptionV3", "--input-size", "32", "--repository", str(tmp_path / "z")]) == 1
    assert "--input-size >= 75" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_write_errors_become_one_line() -> None:
    from adaptd.cli.variants import user_error_from

    err = user_error_from(OSError(27, "File too large", "/repo/.tmp-m-1/float32.tflite"))
    assert str(err) == "write failed /repo/.tmp-m-1/float32.tflite: File too large"
