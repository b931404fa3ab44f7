"""Bad input on the paths for users' own models (several inputs or outputs, a ready ``.tflite``,
uint8 frames): one clear error line, exit 1, nothing published. And what a build shows on the
terminal: the lines to act on, not the converter's own output, which goes to the build log."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from adaptd.cli.main import main


def _build(capsys, model: Path, repo: Path, *extra: str) -> tuple[int, list[str]]:
    rc = main(["variants", "build", str(model), "--repository", str(repo), "--no-progress", *map(str, extra)])
    err = capsys.readouterr().err
    return rc, [ln for ln in err.splitlines() if ln.startswith("adaptd: error:")]


def _refused(capsys, tmp_path: Path, model: Path, *extra: str) -> str:
    repo = tmp_path / "repo"
    rc, errors = _build(capsys, model, repo, *extra)
    assert rc == 1 and len(errors) == 1, errors
    assert not repo.exists() or not any(repo.iterdir()), sorted(p.name for p in repo.iterdir())
    return errors[0]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Untrained tiny models (errors come before any training matters) and a matching dataset."""
    import keras
    import tensorflow as tf

    d = tmp_path_factory.mktemp("user-error-sources")
    keras.utils.set_random_seed(0)
    top, bottom = keras.Input((32,), name="top"), keras.Input((32,), name="bottom")
    h = keras.layers.Concatenate()([top, bottom])
    keras.Model({"top": top, "bottom": bottom}, keras.layers.Dense(10, activation="softmax")(h)).save(d / "pair.keras")
    inp = keras.Input((8, 8, 3), name="frame")
    h = keras.layers.Dense(8)(keras.layers.Flatten()(inp))
    keras.Model(inp, [keras.layers.Dense(2, activation="softmax", name="parity")(h),
                      keras.layers.Dense(10, activation="softmax", name="digit")(h)]).save(d / "heads.keras")
    keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h)).save(d / "frames.keras")
    mlp = keras.Sequential([keras.Input((64,), name="features"), keras.layers.Dense(10, activation="softmax")])
    conv = tf.lite.TFLiteConverter.from_keras_model(mlp)
    (d / "mlp.tflite").write_bytes(conv.convert())
    rng = np.random.default_rng(0)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rng.random((1, 64), dtype=np.float32)] for _ in range(10))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.uint8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (d / "quant.tflite").write_bytes(conv.convert())
    y = np.arange(60) % 10
    np.savez(d / "mlp.npz", x_val=rng.random((60, 64), dtype=np.float32), y_val=y)
    np.savez(d / "frames.npz", x_val=rng.integers(0, 256, (60, 8, 8, 3)).astype(np.uint8), y_val=y)
    return {"dir": d, "pair": d / "pair.keras", "heads": d / "heads.keras", "frames": d / "frames.keras",
            "mlp": d / "mlp.tflite", "quant": d / "quant.tflite", "mlp_data": d / "mlp.npz",
            "frames_data": d / "frames.npz", "y": y}


# --- a .tflite that is not a model --------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    (b"this is not a flatbuffer at all", "is not a TFLite model (no TFL3 flatbuffer identifier)"),
    (b"\x1c\x00\x00\x00TFL3" + b"\xff" * 64, "LiteRT cannot load it"),
    (b"", "is not a TFLite model"),
])
def test_a_tflite_that_is_not_a_model(tmp_path, sources, capsys, content, message) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(content)
    assert message in _refused(capsys, tmp_path, bad, "--data", sources["mlp_data"])


# --- inputs that do not match the model's names or shapes ---------------------------------


def _pair_data(tmp_path: Path, sources, **arrays: np.ndarray) -> Path:
    path = tmp_path / "pair.npz"
    np.savez(path, y_val=sources["y"], **arrays)
    return path


def _half(n: int = 60, width: int = 32) -> np.ndarray:
    return np.random.default_rng(1).random((n, width), dtype=np.float32)


@pytest.mark.parametrize("arrays, message", [
    ({"x_val": _half()}, "the model has 2 inputs (bottom, top): give x_val/bottom and x_val/top instead of x_val"),
    ({"x_val/top": _half(), "x_val/side": _half()}, "dataset has x_val/side, but the model has no input 'side' "
                                                    "(its inputs: bottom, top)"),
    ({"x_val/top": _half()}, "dataset lacks x_val/bottom (the model's inputs: bottom, top)"),
    ({"x_val/top": _half(width=31), "x_val/bottom": _half()},
     "x_val/top has shape (60, 31) but the model's input 'top' takes (N, 32)"),
    ({"x_val/top": _half(59), "x_val/bottom": _half()}, "x_val/top has 59 samples but y_val has 60"),
    ({"x_val": _half(), "x_val/top": _half()}, "has both x_val and x_val/<input> arrays"),
])
def test_inputs_that_do_not_match_the_model(tmp_path, sources, capsys, arrays, message) -> None:
    data = _pair_data(tmp_path, sources, **arrays)
    assert message in _refused(capsys, tmp_path, sources["pair"], "--data", data)


def test_outputs_the_prediction_must_be_named_among(tmp_path, sources, capsys) -> None:
    data = sources["frames_data"]
    err = _refused(capsys, tmp_path, sources["heads"], "--data", data)
    assert "2 outputs could be the class scores (parity, digit); name the prediction with --prediction-output" in err
    err = _refused(capsys, tmp_path, sources["heads"], "--data", data, "--prediction-output", "colour")
    assert "no output 'colour' to predict with (outputs: parity, digit)" in err


# --- preprocessing that does not fit ------------------------------------------------------


@pytest.mark.parametrize("model, data, spec, message", [
    ("quant", "mlp_data", "uint8:1/255:0",
     "preprocessing for input 'features' does not fit: the input is uint8, not float"),
    ("pair", None, "top=uint8:0.1,0.2:0", "2 per-channel values, but the input's last axis has 32 entries"),
    ("pair", None, "side=uint8:1:0", "preprocessing for 'side', which is not an input of the model"),
    ("pair", None, "uint8:1:0", "the model has 2 inputs (bottom, top): name the input"),
    ("frames", "frames_data", "frame=int16:1:0", "frames of int16 are not supported (only uint8)"),
    ("frames", "frames_data", "frame=uint8:abc", "expected [NAME=]uint8:SCALE:OFFSET or [NAME=]uint8:model"),
    ("frames", "frames_data", "frame=uint8:0:1", "the scale must be > 0"),
])
def test_preprocessing_that_does_not_fit_the_input(tmp_path, sources, capsys, model, data, spec, message) -> None:
    data_path = sources[data] if data else _pair_data(tmp_path, sources, **{"x_val/top": _half(), "x_val/bottom": _half()})
    err = _refused(capsys, tmp_path, sources[model], "--data", data_path, "--preprocess", spec)
    assert message in err


def test_frames_in_the_dataset_must_be_the_declared_dtype(tmp_path, sources, capsys) -> None:
    data = tmp_path / "d.npz"
    np.savez(data, x_val=np.zeros((60, 8, 8, 3), np.int16), y_val=sources["y"])
    err = _refused(capsys, tmp_path, sources["frames"], "--data", data, "--preprocess", "uint8:1/255:0")
    assert "x_val is int16, but input 'frame' takes uint8 frames (its preprocessing) or float values" in err


# --- kinds a .tflite cannot give ----------------------------------------------------------


@pytest.mark.parametrize("model, kinds, message", [
    ("mlp", "float32,float16", "cannot build float16 from mlp.tflite: float16 weights are chosen by the TensorFlow "
                               "converter, and a .tflite holds no TensorFlow graph"),
    ("mlp", "float32_tf", "cannot build float32_tf from mlp.tflite: a SavedModel needs the TensorFlow graph"),
    ("quant", "float32", "cannot build float32 from quant.tflite: the file's weights are already int8_full"),
])
def test_kinds_a_tflite_cannot_give_are_refused_when_named(tmp_path, sources, capsys, model, kinds, message) -> None:
    err = _refused(capsys, tmp_path, sources[model], "--data", sources["mlp_data"], "--kinds", kinds)
    assert message in err


def test_data_is_required_except_for_a_tflite(tmp_path, sources, capsys) -> None:
    err = _refused(capsys, tmp_path, sources["pair"])
    assert "--data is required for a .keras or SavedModel source" in err


# --- what the terminal shows --------------------------------------------------------------


def test_a_tflite_without_data_builds_what_needs_none_and_says_what_it_skips(tmp_path, sources, capfd) -> None:
    repo = tmp_path / "repo"
    assert main(["variants", "build", str(sources["mlp"]), "--repository", str(repo), "--no-progress"]) == 0
    out, err = capfd.readouterr()
    from adaptd.variants.manifest import load_manifest

    m = load_manifest(repo / "mlp" / "1")
    assert [v.name for v in m.variants] == ["float32", "pruned50", "pruned75", "pruned90"]
    assert all(v.metrics is None for v in m.variants) and m.task.accuracy_known is False
    skipped = [ln for ln in err.splitlines() if ln.startswith("not built:")]
    assert [ln.split(":")[1].strip() for ln in skipped] == ["float16", "int8_dynamic", "int8_full", "pruned75_int8",
                                                            "float32_tf"]
    assert "give --data" in next(ln for ln in skipped if "int8_full" in ln)
    assert f"build log: {repo / 'mlp' / '1' / 'build.log'}" in out


def test_the_converter_output_goes_to_the_build_log_not_the_terminal(tmp_path, sources, capfd) -> None:
    repo = tmp_path / "repo"
    capfd.readouterr()
    assert main(["variants", "build", str(sources["pair"]), "--data",
                 str(_pair_data(tmp_path, sources, **{"x_val/top": _half(), "x_val/bottom": _half()})),
                 "--repository", str(repo), "--no-progress", "--kinds", "float32,int8_full"]) == 0
    out, err = capfd.readouterr()
    log = (repo / "pair" / "1" / "build.log").read_text()
    assert "fully_quantize" in log                           # the MLIR quantizer's own line ...
    for noise in ("fully_quantize", "Warning", "WARNING", "oneDNN", "Saved artifact"):
        assert noise not in out + err, noise                 # ... is not on the terminal
    assert out.rstrip().splitlines()[-1] == f"build log: {repo / 'pair' / '1' / 'build.log'}"
    assert err.strip() == ""
