"""Labelled datasets for building variants: loading an ``.npz`` and checking it against a model.

An ``.npz`` holds ``x_val``/``y_val`` (required) and optionally ``x_train``/``y_train`` (both or
neither). ``x_*`` are numeric arrays (N, ...) matching the model's input shape without the
batch dimension (a missing trailing channel of size 1 is added); ``y_*`` are integer class
labels (N,) or one-hot rows (N, C). Every problem raises ``DatasetError`` with one line naming
it. Pure functions, no TensorFlow; the returned arrays are float32 (x) and int64 (y).
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """The dataset is missing, unreadable, or does not fit the model (one-line message)."""


@dataclass
class Dataset:
    x_val: np.ndarray
    y_val: np.ndarray
    x_train: np.ndarray | None = None
    y_train: np.ndarray | None = None
    path: str | None = None
    sha256: str | None = None

    @property
    def n_train(self) -> int:
        return 0 if self.x_train is None else int(len(self.x_train))

    @property
    def n_val(self) -> int:
        return int(len(self.x_val))

    def representative(self, n: int = 100, seed: int = 0) -> np.ndarray:
        """Up to ``n`` inputs for int8 calibration, from the training split if present."""
        x = self.x_train if self.x_train is not None else self.x_val
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(x), size=min(n, len(x)), replace=False)
        return x[np.sort(idx)]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _labels(y: np.ndarray, key: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        y = np.argmax(y, axis=1)
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        raise DatasetError(f"{key}: expected class labels of shape (N,) or one-hot (N, C), got {y.shape}")
    if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
        raise DatasetError(f"{key}: expected integer class labels, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DatasetError(f"{key}: labels must be whole numbers (class indices)")
    return y.astype(np.int64)


def _inputs(x: np.ndarray, key: str) -> np.ndarray:
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or x.ndim < 2:
        raise DatasetError(f"{key}: expected a numeric array (N, ...), got dtype {x.dtype} shape {x.shape}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise DatasetError(f"{key}: contains NaN or infinite values")
    return x


def load_dataset(path: Path) -> Dataset:
    """Read and validate ``path`` (an ``.npz``)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset {path} not found")
    if path.is_dir():
        raise DatasetError(f"dataset {path} is a directory; expected an .npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"dataset {path} is not a readable .npz file ({exc.__class__.__name__})") from exc
    if not isinstance(arrays, dict):
        raise DatasetError(f"dataset {path} is a single array; expected an .npz with x_val and y_val")
    missing = [k for k in ("x_val", "y_val") if k not in arrays]
    if missing:
        raise DatasetError(f"dataset {path} lacks {' and '.join(missing)} (has: {', '.join(sorted(arrays)) or 'nothing'})")
    if ("x_train" in arrays) != ("y_train" in arrays):
        raise DatasetError(f"dataset {path} has only one of x_train/y_train; give both or neither")
    ds = Dataset(x_val=_inputs(arrays["x_val"], "x_val"), y_val=_labels(arrays["y_val"], "y_val"),
                 path=str(path), sha256=file_sha256(path))
    if "x_train" in arrays:
        ds.x_train = _inputs(arrays["x_train"], "x_train")
        ds.y_train = _labels(arrays["y_train"], "y_train")
    for x, y, split in ((ds.x_val, ds.y_val, "val"), (ds.x_train, ds.y_train, "train")):
        if x is None:
            continue
        if len(x) != len(y):
            raise DatasetError(f"x_{split} has {len(x)} samples but y_{split} has {len(y)}")
        if len(x) == 0:
            raise DatasetError(f"x_{split} is empty")
    if ds.x_train is not None and ds.x_train.shape[1:] != ds.x_val.shape[1:]:
        raise DatasetError(f"x_train samples are {ds.x_train.shape[1:]} but x_val samples are {ds.x_val.shape[1:]}")
    return ds


def check_against_model(ds: Dataset, input_shape: tuple[int | None, ...], num_classes: int) -> Dataset:
    """Check (and adapt a missing channel axis of) ``ds`` for a model taking ``(N,) + input_shape``
    and producing ``num_classes`` scores; returns ``ds`` (modified in place)."""
    want = tuple(input_shape)

    def fits(shape: tuple[int, ...]) -> bool:
        return len(shape) == len(want) and all(w is None or w == s for w, s in zip(want, shape))

    def adapt(x: np.ndarray, key: str) -> np.ndarray:
        if fits(x.shape[1:]):
            return x
        if want and want[-1] == 1 and fits(x.shape[1:] + (1,)):
            return x[..., None]
        shown = "(N, " + ", ".join("?" if w is None else str(w) for w in want) + ")"
        raise DatasetError(f"{key} has shape {x.shape} but the model takes {shown}")

    ds.x_val = adapt(ds.x_val, "x_val")
    if ds.x_train is not None:
        ds.x_train = adapt(ds.x_train, "x_train")
    for y, key in ((ds.y_val, "y_val"), (ds.y_train, "y_train")):
        if y is None:
            continue
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise DatasetError(f"{key} has labels in [{lo}, {hi}] but the model has {num_classes} classes (0..{num_classes - 1})")
    return ds
