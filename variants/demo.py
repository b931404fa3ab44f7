"""``adaptd demo build``: the built-in demo model, a small CNN on scikit-learn's digits.

The data ships inside scikit-learn (``sklearn.datasets.load_digits``: 1,797 8x8 images,
values 0..16), so nothing is downloaded. Images are scaled to [0, 1] and upsampled 2x to
16x16 (nearest neighbour); a stratified 80/20 train/validation split with a fixed seed feeds
a two-block CNN trained for a few epochs, which must reach >= 95% float32 validation
accuracy (checked on the Keras model and again on the float32 LiteRT variant; the build fails
loudly otherwise). All variant kinds are then built into ``REPO/digits/<next version>``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "digits"
MIN_ACCURACY = 0.95
SEED = 0


def digits_dataset(upsample: int = 2, seed: int = SEED) -> Any:
    """The demo's ``Dataset``: stratified 80/20 split of scikit-learn's digits, float32 NHWC."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from .dataset import Dataset

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)
    if upsample > 1:
        x = x.repeat(upsample, axis=1).repeat(upsample, axis=2)
    x = x[..., None]
    y = d.target.astype(np.int64)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    h = hashlib.sha256()
    for a in (x_tr, y_tr, x_va, y_va):
        h.update(np.ascontiguousarray(a).tobytes())
    return Dataset(x_val=x_va, y_val=y_va, x_train=x_tr, y_train=y_tr,
                   path="sklearn.datasets.load_digits", sha256=h.hexdigest())


def digits_cnn(input_shape: tuple[int, ...], num_classes: int = 10) -> Any:
    import keras

    inp = keras.Input(input_shape, name="image")
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu")(h)
    out = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(h)
    return keras.Model(inp, out, name="digits_cnn")


def train_digits(ds: Any, epochs: int = 12, seed: int = SEED) -> tuple[Any, float]:
    """Train the demo CNN; return (model, float32 validation accuracy)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = digits_cnn(ds.x_val.shape[1:])
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(ds.x_train, ds.y_train, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    _, acc = model.evaluate(ds.x_val, ds.y_val, verbose=0)
    return model, float(acc)


def build_demo(repo: Path, epochs: int | None = None, kinds: tuple[str, ...] | None = None,
               progress: bool = True, prune_epochs: int = 2, log: Any = print) -> tuple[Path, Any]:
    """Train and build the demo into ``repo``; return (version_dir, manifest)."""
    from .build import ALL_KINDS, BuildOptions, build_entry
    from .convert import SourceModel, quiet_tensorflow

    quiet_tensorflow()
    t0 = time.perf_counter()
    ds = digits_dataset()
    model, acc = train_digits(ds, epochs=epochs or 12)
    log(f"trained the digits CNN in {time.perf_counter() - t0:.1f} s: float32 validation accuracy "
        f"{acc:.4f} (n={ds.n_val})")
    if acc < MIN_ACCURACY:
        raise RuntimeError(f"demo CNN reached only {acc:.4f} validation accuracy (< {MIN_ACCURACY}); "
                           f"try more --epochs")
    source = SourceModel.from_keras(model, "demo", path="adaptd.variants.demo:digits_cnn")
    opts = BuildOptions(kinds=kinds or ALL_KINDS, epochs=prune_epochs, progress=progress)
    version_dir, manifest = build_entry(repo, MODEL_NAME, source, ds, options=opts)
    f32 = next((v for v in manifest.variants if v.name == "float32"), None)
    if f32 is not None and f32.metrics is not None and f32.metrics.accuracy < MIN_ACCURACY:
        raise RuntimeError(f"float32 LiteRT variant reached only {f32.metrics.accuracy:.4f} (< {MIN_ACCURACY})")
    log(f"built {len(manifest.variants)} variants into {version_dir} in {time.perf_counter() - t0:.1f} s")
    return version_dir, manifest
