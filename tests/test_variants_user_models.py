"""Models as users bring them, built with ``adaptd variants build``, served by the real daemon and
queried through the client (slow):

* ``pair``: a functional Keras model with two named inputs (the top and bottom halves of a
  digit), float32 / int8_full / float32_tf;
* ``heads``: one input, two class-score outputs (parity, digit); the digit is the prediction;
* ``mlp``: a ready float32 ``.tflite`` (an MLP on 64 features), built with the default kinds:
  what can be derived from it is, the rest is skipped with a line each;
* ``mlp-quant``: a ready full-integer ``.tflite`` with uint8 input and output, served as itself;
* ``frames``: a CNN on 8x8x3 uint8 frames that declares its preprocessing (x = frame / 255), so
  a client sends the frames and every variant, float or integer, gets what it takes.

Each has its accuracy in the manifest; through the daemon, every variant's accuracy is the one
recorded and the float variants' top-1 equals the source model's on the validation split.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest

from adaptd.cli.main import main
from adaptd.clients.client import Client, infer_message
from adaptd.tools.launch import DaemonProcess
from adaptd.variants.manifest import load_manifest

pytestmark = pytest.mark.slow


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.random.default_rng(0).permutation(len(d.target))
    return (d.images.astype(np.float32) / 16.0)[idx], d.target.astype(np.int64)[idx]


def _fit(model, x, y, epochs: int = 12) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(5e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)


def _build(*args: str) -> None:
    assert main(["variants", "build", *map(str, args), "--no-progress", "--epochs", "1"]) == 0


class Entry:
    """What a test needs of one built model."""

    def __init__(self, name: str, inputs: dict[str, np.ndarray], y: np.ndarray, source_top1: np.ndarray) -> None:
        self.name, self.inputs, self.y, self.source_top1 = name, inputs, y, source_top1

    def ordered(self, manifest) -> list[np.ndarray]:
        """The validation inputs in the model's order (the order the daemon takes them in)."""
        return [self.inputs[t.name] for t in manifest.inputs]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[str, Entry]]:
    import keras
    import tensorflow as tf

    src = tmp_path_factory.mktemp("user-sources")
    repo = src / "repo"
    x, y = _digits()
    xt, yt, xv, yv = x[:1200], y[:1200], x[1200:1500], y[1200:1500]
    entries: dict[str, Entry] = {}
    keras.utils.set_random_seed(0)

    # two named inputs: the top and the bottom half of each digit
    halves = {"top": lambda a: a[:, :4].reshape(len(a), 32), "bottom": lambda a: a[:, 4:].reshape(len(a), 32)}
    top, bottom = keras.Input((32,), name="top"), keras.Input((32,), name="bottom")
    h = keras.layers.Concatenate()([keras.layers.Dense(24, activation="relu")(top),
                                    keras.layers.Dense(24, activation="relu")(bottom)])
    pair = keras.Model({"top": top, "bottom": bottom}, keras.layers.Dense(10, activation="softmax", name="digit")(h))
    _fit(pair, {k: f(xt) for k, f in halves.items()}, yt)
    val = {k: f(xv) for k, f in halves.items()}
    pair.save(src / "pair.keras")
    np.savez(src / "pair.npz", y_val=yv, y_train=yt, **{f"x_val/{k}": v for k, v in val.items()},
             **{f"x_train/{k}": f(xt) for k, f in halves.items()})
    _build(src / "pair.keras", "--data", src / "pair.npz", "--repository", repo, "--kinds", "float32,int8_full,float32_tf")
    entries["pair"] = Entry("pair", val, yv, np.argmax(pair.predict(val, verbose=0), axis=-1))

    # two class-score outputs; the digit is the prediction
    inp = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Flatten()(keras.layers.Conv2D(6, 3, activation="relu")(inp))
    h = keras.layers.Dense(24, activation="relu")(h)
    heads = keras.Model(inp, [keras.layers.Dense(2, activation="softmax", name="parity")(h),
                              keras.layers.Dense(10, activation="softmax", name="digit")(h)])
    heads.compile(optimizer=keras.optimizers.Adam(5e-3), loss=["sparse_categorical_crossentropy"] * 2)
    heads.fit(xt[..., None], [yt % 2, yt], epochs=12, batch_size=32, verbose=0)
    heads.save(src / "heads.keras")
    np.savez(src / "heads.npz", x_val=xv[..., None], y_val=yv, x_train=xt[..., None], y_train=yt)
    _build(src / "heads.keras", "--data", src / "heads.npz", "--repository", repo, "--prediction-output", "digit",
           "--kinds", "float32,int8_full,pruned50")
    entries["heads"] = Entry("heads", {"image": xv[..., None]}, yv,
                             np.argmax(heads.predict(xv[..., None], verbose=0)[1], axis=-1))

    # ready .tflite files: a float32 MLP on 64 features, and its full-integer uint8 conversion
    mlp = keras.Sequential([keras.Input((64,), name="features"), keras.layers.Dense(32, activation="relu"),
                            keras.layers.Dense(10, activation="softmax")])
    _fit(mlp, xt.reshape(-1, 64), yt)
    conv = tf.lite.TFLiteConverter.from_keras_model(mlp)
    (src / "mlp.tflite").write_bytes(conv.convert())
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([xt[i:i + 1].reshape(1, 64)] for i in range(100))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.uint8
    with warnings.catch_warnings():          # the converter's own notice about input statistics
        warnings.simplefilter("ignore")
        (src / "mlp-quant.tflite").write_bytes(conv.convert())
    np.savez(src / "mlp.npz", x_val=xv.reshape(-1, 64), y_val=yv, x_train=xt.reshape(-1, 64), y_train=yt)
    _build(src / "mlp.tflite", "--data", src / "mlp.npz", "--repository", repo)
    _build(src / "mlp-quant.tflite", "--data", src / "mlp.npz", "--repository", repo)
    from ai_edge_litert.interpreter import Interpreter

    for name in ("mlp", "mlp-quant"):
        runner = Interpreter(model_path=str(src / f"{name}.tflite")).get_signature_runner()
        (key, detail), = runner.get_input_details().items()
        scale, zp = detail["quantization"]
        feats = xv.reshape(-1, 64)
        rows = []
        for i in range(len(feats)):
            row = feats[i:i + 1] if not scale else \
                np.clip(np.round(feats[i:i + 1] / np.float32(scale)) + zp, 0, 255).astype(np.uint8)
            rows.append(np.argmax(next(iter(runner(**{key: row}).values())), axis=-1))
        entries[name] = Entry(name, {key: feats}, yv, np.concatenate(rows))

    # uint8 camera-like frames, preprocessing declared: x = frame / 255
    frames = np.repeat(np.round(x[..., None] * 255).astype(np.uint8), 3, axis=-1)
    ft, fv = frames[:1200], frames[1200:1500]
    scaled = lambda f: f.astype(np.float32) * np.float32(1 / 255)  # noqa: E731  (what the runtime computes)
    inp = keras.Input((8, 8, 3), name="frame")
    h = keras.layers.MaxPooling2D()(keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp))
    cnn = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(h)))
    _fit(cnn, scaled(ft), yt)
    cnn.save(src / "frames.keras")
    np.savez(src / "frames.npz", x_val=fv, y_val=yv, x_train=ft, y_train=yt)
    _build(src / "frames.keras", "--data", src / "frames.npz", "--repository", repo,
           "--preprocess", "frame=uint8:1/255:0", "--kinds", "float32,int8_full")
    entries["frames"] = Entry("frames", {"frame": fv}, yv, np.argmax(cnn.predict(scaled(fv), verbose=0), axis=-1))
    return repo, entries


@pytest.fixture(scope="module")
def client(built, tmp_path_factory):
    repo, _ = built
    # whole validation splits go in one request: a batch over the default server.max_batch
    with DaemonProcess.start(repo, tmp_path_factory.mktemp("user-daemon"),
                             config={"placements": {"tensorflow": "off"}, "server": {"max_batch": 1024}}) as d, \
            Client(d.endpoint, timeout_ms=60_000) as c:
        yield c


def _manifest(repo: Path, name: str):
    return load_manifest(repo / name / "1")


def _served(client: Client, name: str, variant: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    r = client.infer(name, inputs, variant=variant)
    assert r.selection.variant == variant
    return [np.asarray(o) for o in r.outputs]


def _check_accuracy_through_the_daemon(client, repo, entry: Entry, float_variants: tuple[str, ...]) -> None:
    m = _manifest(repo, entry.name)
    pred = m.prediction_index
    for v in m.variants:
        if v.runtime != "litert":
            continue
        top1 = np.argmax(_served(client, entry.name, v.name, entry.ordered(m))[pred], axis=-1)
        assert v.metrics is not None and v.metrics.n == len(entry.y)
        assert np.mean(top1 == entry.y) == pytest.approx(v.metrics.accuracy, abs=1e-9), v.name
        if v.name in float_variants:
            np.testing.assert_array_equal(top1, entry.source_top1, err_msg=v.name)
    assert m.variant(float_variants[0]).metrics.accuracy > 0.8


def test_two_inputs_by_name(client, built) -> None:
    from adaptd.variants.runtime import load_variant

    repo, entries = built
    e = entries["pair"]
    m = _manifest(repo, "pair")
    assert sorted(t.name for t in m.inputs) == ["bottom", "top"] and [o.name for o in m.outputs] == ["digit"]
    assert m.source.format == "keras" and m.dataset.n_val == 300
    for v in m.variants:   # every variant follows the model's order, under its own tensor names
        assert [tuple(t.shape) for t in v.inputs] == [(1, 32), (1, 32)]
        assert v.inputs[0].name != v.inputs[1].name
    _check_accuracy_through_the_daemon(client, repo, e, ("float32",))
    # the inputs are told apart: swapping them changes the answer
    swapped = _served(client, "pair", "float32", e.ordered(m)[::-1])[0]
    assert np.mean(np.argmax(swapped, axis=-1) == e.y) < 0.5
    # the SavedModel variant takes them by the same names (TensorFlow runtime, here in-process)
    tf_variant = load_variant(repo / "pair" / "1", m.variant("float32_tf"), device="/CPU:0")
    top1 = np.argmax(tf_variant.run(e.ordered(m))[0], axis=-1)
    np.testing.assert_array_equal(top1, e.source_top1)
    assert m.variant("float32_tf").metrics.accuracy == pytest.approx(np.mean(top1 == e.y))


def test_two_outputs_the_named_one_is_the_prediction(client, built) -> None:
    repo, entries = built
    m = _manifest(repo, "heads")
    assert [o.name for o in m.outputs] == ["parity", "digit"]
    assert m.task.prediction_output == "digit" and m.prediction_index == 1 and m.task.num_classes == 10
    assert m.variant("pruned50").pruning.fine_tuned is True
    out = _served(client, "heads", "float32", [entries["heads"].inputs["image"][:5]])
    assert [o.shape for o in out] == [(5, 2), (5, 10)]
    _check_accuracy_through_the_daemon(client, repo, entries["heads"], ("float32",))


def test_a_ready_tflite_is_served_and_what_it_allows_is_derived(client, built) -> None:
    repo, entries = built
    m = _manifest(repo, "mlp")
    src = Path(m.source.path)
    assert m.source.format == "tflite" and m.source.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert [v.name for v in m.variants] == ["float32", "int8_full", "pruned50", "pruned75", "pruned90", "pruned75_int8"]
    assert (repo / "mlp" / "1" / "float32.tflite").read_bytes() == src.read_bytes()   # the file itself
    assert m.variant("pruned90").sparsity >= 0.89 and m.variant("pruned90").pruning.fine_tuned is False
    assert m.variant("int8_full").inputs[0].dtype == "int8"
    _check_accuracy_through_the_daemon(client, repo, entries["mlp"], ("float32",))


def test_a_quantized_tflite_takes_float_input_through_its_own_parameters(client, built) -> None:
    repo, entries = built
    m = _manifest(repo, "mlp-quant")
    (v,) = m.variants
    assert v.name == "int8_full" and v.inputs[0].dtype == "uint8" and v.inputs[0].quantization.scale > 0
    assert v.outputs[0].dtype == "uint8"
    # float features in, the file's own quantization applied: the source file's answers
    _check_accuracy_through_the_daemon(client, repo, entries["mlp-quant"], ("int8_full",))


def test_uint8_frames_reach_every_variant_as_it_expects(client, built) -> None:
    repo, entries = built
    e = entries["frames"]
    m = _manifest(repo, "frames")
    pre = m.inputs[0].preprocessing
    assert pre.source_dtype == "uint8" and pre.scale == pytest.approx(1 / 255) and pre.offset == 0.0
    assert all(v.inputs[0].preprocessing == pre for v in m.variants)
    assert m.variant("int8_full").inputs[0].dtype == "int8"
    # the frames go over the wire as uint8: a quarter of the float32 copy's bytes
    fv = e.inputs["frame"]
    as_frames = sum(memoryview(f).nbytes for f in infer_message("a", "frames", fv)[3:])
    as_floats = sum(memoryview(f).nbytes for f in infer_message("b", "frames", fv.astype(np.float32))[3:])
    assert as_frames * 4 == as_floats == fv.size * 4
    _check_accuracy_through_the_daemon(client, repo, e, ("float32",))
    # the daemon (not the client) picks the variant: uint8 frames are admitted for any of them
    r = client.infer("frames", fv[:3])
    assert r.outputs[0].shape == (3, 10)
    # the int8 variant on frames agrees with the int8 variant on the same input sent as floats
    on_frames = np.argmax(_served(client, "frames", "int8_full", [fv])[0], axis=-1)
    on_floats = np.argmax(_served(client, "frames", "int8_full", [fv.astype(np.float32) / 255])[0], axis=-1)
    assert np.mean(on_frames == on_floats) >= 0.99
