"""Labelled datasets for building variants: loading an ``.npz`` and checking it against a model.

An ``.npz`` holds the validation split (required) and optionally a training split:

* inputs: ``x_val`` for a single-input model, or one ``x_val/<input name>`` per input of the model
  (the model's input names; ``adaptd`` lists them in its error when they do not match); likewise
  ``x_train`` / ``x_train/<input name>``. Each is a numeric array (N, ...) matching that input's
  shape without the batch dimension (a missing trailing channel of size 1 is added);
* labels: ``y_val`` / ``y_train``, integer class labels (N,) or one-hot rows (N, C), for the
  model's prediction output.

Inputs keep the dtype a client would send where it means something: ``uint8`` frames for an
input that declares preprocessing (see docs/manifest.md), the model's own integer dtype for an
integer input; everything else becomes float32. ``Dataset.float_inputs`` gives what the source
model computes on (frames scaled and offset); ``Dataset.val_inputs`` what a variant is sent.
Every problem raises ``DatasetError`` with one line naming it. Pure functions, no TensorFlow.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .tensors import TensorSpec

class DatasetError(ValueError):
    """The dataset is missing, unreadable, or does not fit the model (one-line message)."""


def _as_dict(x: np.ndarray | dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    if x is None or isinstance(x, dict):
        return x
    return {"": x}


@dataclass
class Dataset:
    """``x_*``: one array (single input) or ``{input name: array}``; after
    ``check_against_model`` always the latter, in the model's input order (``inputs``)."""

    x_val: np.ndarray | dict[str, np.ndarray]
    y_val: np.ndarray
    x_train: np.ndarray | dict[str, np.ndarray] | None = None
    y_train: np.ndarray | None = None
    path: str | None = None
    sha256: str | None = None
    inputs: tuple[TensorSpec, ...] = ()

    @property
    def n_train(self) -> int:
        x = _as_dict(self.x_train)
        return 0 if x is None else int(len(next(iter(x.values()))))

    @property
    def n_val(self) -> int:
        return int(len(next(iter(_as_dict(self.x_val).values()))))

    def _checked(self) -> None:
        if not self.inputs:
            raise RuntimeError("the dataset has not been checked against the model (check_against_model)")

    def val_inputs(self, start: int = 0, stop: int | None = None) -> list[np.ndarray]:
        """Validation inputs ``[start:stop]``, in the model's order, as a client sends them."""
        self._checked()
        return [a[start:stop] for a in self.x_val.values()]

    def float_inputs(self, split: str, index: np.ndarray | None = None) -> list[np.ndarray] | None:
        """``split`` ("train" or "val") as float32 model inputs (frames preprocessed), rows
        ``index`` (default all); None when the split is absent."""
        self._checked()
        x = self.x_train if split == "train" else self.x_val
        if x is None:
            return None
        out = []
        for spec, a in zip(self.inputs, x.values()):
            a = a if index is None else a[index]
            pre = spec.preprocessing
            if pre is not None and a.dtype == np.dtype(pre.source_dtype):
                f = np.multiply(a, np.asarray(pre.scale, np.float32), dtype=np.float32)
                f += np.asarray(pre.offset, np.float32)
                out.append(f)
            else:
                out.append(a.astype(np.float32) if spec.dtype.startswith("float") else a)
        return out

    def representative(self, n: int = 100, seed: int = 0) -> list[np.ndarray]:
        """Up to ``n`` float inputs for int8 calibration, from the training split if present."""
        split = "train" if self.x_train is not None else "val"
        total = self.n_train if split == "train" else self.n_val
        idx = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
        return self.float_inputs(split, idx)


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
    if x.dtype.kind in "fcb":
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise DatasetError(f"{key}: contains NaN or infinite values")
    return x


def _split_inputs(arrays: dict[str, np.ndarray], split: str, path: Path) -> dict[str, np.ndarray] | None:
    """``x_<split>`` or ``{name: x_<split>/<name>}``; None when the split has neither."""
    plain = f"x_{split}"
    named = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(plain + "/")}
    if plain in arrays and named:
        raise DatasetError(f"dataset {path} has both {plain} and {plain}/<input> arrays; give one form")
    if plain in arrays:
        return {"": _inputs(arrays[plain], plain)}
    if not named:
        return None
    return {name: _inputs(a, f"{plain}/{name}") for name, a in named.items()}


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
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, AttributeError) as exc:
        raise DatasetError(f"dataset {path} is not a readable .npz file ({exc.__class__.__name__})") from exc
    has_x_val = "x_val" in arrays or any(k.startswith("x_val/") for k in arrays)
    has_x_train = "x_train" in arrays or any(k.startswith("x_train/") for k in arrays)
    missing = [k for k, present in (("x_val", has_x_val), ("y_val", "y_val" in arrays)) if not present]
    if missing:
        raise DatasetError(f"dataset {path} lacks {' and '.join(missing)} (has: {', '.join(sorted(arrays)) or 'nothing'})")
    if has_x_train != ("y_train" in arrays):
        raise DatasetError(f"dataset {path} has only one of x_train/y_train; give both or neither")
    ds = Dataset(x_val=_split_inputs(arrays, "val", path), y_val=_labels(arrays["y_val"], "y_val"),
                 path=str(path), sha256=file_sha256(path))
    if has_x_train:
        ds.x_train = _split_inputs(arrays, "train", path)
        ds.y_train = _labels(arrays["y_train"], "y_train")
    for x, y, split in ((ds.x_val, ds.y_val, "val"), (ds.x_train, ds.y_train, "train")):
        if x is None:
            continue
        for name, a in x.items():
            key = f"x_{split}" + (f"/{name}" if name else "")
            if len(a) != len(y):
                raise DatasetError(f"{key} has {len(a)} samples but y_{split} has {len(y)}")
            if len(a) == 0:
                raise DatasetError(f"{key} is empty")
    return ds


def _shown(shape: Sequence[int]) -> str:
    return "(N, " + ", ".join("?" if d is None or d < 0 else str(d) for d in shape) + ")"


def _fit_shape(x: np.ndarray, spec: TensorSpec, key: str, single: bool) -> np.ndarray:
    want = tuple(spec.shape[1:])

    def fits(shape: tuple[int, ...]) -> bool:
        return len(shape) == len(want) and all(w is None or w < 0 or w == s for w, s in zip(want, shape))

    if fits(x.shape[1:]):
        return x
    if want and want[-1] == 1 and fits(x.shape[1:] + (1,)):
        return x[..., None]
    what = "the model takes" if single else f"the model's input {spec.name!r} takes"
    raise DatasetError(f"{key} has shape {x.shape} but {what} {_shown(want)}")


def _fit_dtype(x: np.ndarray, spec: TensorSpec, key: str) -> np.ndarray:
    want, pre = np.dtype(spec.dtype), spec.preprocessing
    if want.kind == "f":
        if pre is not None and x.dtype == np.dtype(pre.source_dtype):
            return x                                   # frames, as a client sends them
        if pre is not None and x.dtype.kind in "iu":
            raise DatasetError(f"{key} is {x.dtype.name}, but input {spec.name!r} takes {pre.source_dtype} "
                               "frames (its preprocessing) or float values")
        return x.astype(np.float32)
    if x.dtype == want:
        return x
    if x.dtype.kind == "f" and spec.quantization is not None:
        return x                                       # real values: every variant quantizes them
    if x.dtype.kind in "iu" and spec.quantization is None:
        info = np.iinfo(want)
        if x.size and (int(x.min()) < info.min or int(x.max()) > info.max):
            raise DatasetError(f"{key} has values outside {want.name}'s range, the input {spec.name!r}'s dtype")
        return x.astype(want)
    raise DatasetError(f"{key} is {x.dtype.name}, but input {spec.name!r} takes {want.name}"
                       + (" or float values" if spec.quantization is not None else ""))


def _bind(x: dict[str, np.ndarray], inputs: Sequence[TensorSpec], split: str) -> dict[str, np.ndarray]:
    names = [t.name for t in inputs]
    plain = f"x_{split}"
    if set(x) == {""}:
        if len(inputs) != 1:
            raise DatasetError(f"the model has {len(inputs)} inputs ({', '.join(names)}): give "
                               f"{' and '.join(f'{plain}/{n}' for n in names)} instead of {plain}")
        x = {names[0]: x[""]}
    unknown = [k for k in x if k not in names]
    if unknown:
        raise DatasetError(f"dataset has {plain}/{unknown[0]}, but the model has no input {unknown[0]!r} "
                           f"(its inputs: {', '.join(names)})")
    missing = [n for n in names if n not in x]
    if missing:
        raise DatasetError(f"dataset lacks {plain}/{missing[0]} (the model's inputs: {', '.join(names)})")
    out = {}
    for spec in inputs:
        key = plain if len(inputs) == 1 else f"{plain}/{spec.name}"
        out[spec.name] = _fit_dtype(_fit_shape(x[spec.name], spec, key, len(inputs) == 1), spec, key)
    return out


def check_against_model(ds: Dataset, inputs: Sequence[TensorSpec], num_classes: int) -> Dataset:
    """Check ``ds`` against a model with ``inputs`` (model-level specs, preprocessing attached)
    producing ``num_classes`` scores, and adapt it (missing channel axis, dtypes, names);
    returns ``ds`` (modified in place). Idempotent."""
    inputs = tuple(inputs)
    ds.x_val = _bind(_as_dict(ds.x_val), inputs, "val")
    if ds.x_train is not None:
        ds.x_train = _bind(_as_dict(ds.x_train), inputs, "train")
    ds.inputs = inputs
    for y, key in ((ds.y_val, "y_val"), (ds.y_train, "y_train")):
        if y is None:
            continue
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise DatasetError(f"{key} has labels in [{lo}, {hi}] but the model has {num_classes} classes (0..{num_classes - 1})")
    return ds
