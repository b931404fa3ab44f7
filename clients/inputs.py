"""Reading request inputs from files for the CLI and the load generator.

Contract
--------
* :func:`load_array` reads ``.npy``, ``.npz`` (the array named ``key``, else the first) or an
  image (PNG, JPEG, ... through Pillow, which matplotlib brings; imported only for images).
  Images come back as ``uint8`` arrays ``[H, W, C]``; use :func:`fit_to_spec` to turn them
  into a model input.
* :func:`fit_to_spec` adapts an array to a model input spec (``{"dtype", "shape"}`` as in
  the ``models`` reply): it adds a missing batch dimension (any batch size is kept: the daemon
  runs a batch in one request), resizes images to the spec's
  height and width, converts channels (RGB <-> greyscale), and scales ``uint8`` images to
  float32 in [0, 1] for float inputs, except for an input whose spec declares ``preprocessing``
  from uint8 frames: those images are sent as uint8 (a quarter of the bytes) and the daemon
  applies the model's own scale and offset. Anything it cannot reconcile raises ``ValueError``
  with both shapes: the daemon would answer ``BAD_INPUT`` anyway.
* Pure functions, no state; file errors surface as ``OSError``/``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def load_array(path: Path, key: str | None = None, index: int | None = None) -> np.ndarray:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if not names:
                raise ValueError(f"{path}: the .npz holds no arrays")
            if key is not None and key not in names:
                raise ValueError(f"{path}: no array {key!r}; it holds {', '.join(names)}")
            arr = z[key if key is not None else names[0]]
    elif suffix in IMAGE_SUFFIXES:
        try:
            from PIL import Image
        except ImportError:
            raise RuntimeError("reading images needs Pillow: pip install pillow (or 'adaptd[report]')") from None
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if im.mode in ("L", "1", "I", "F") else "RGB"))
        if arr.ndim == 2:
            arr = arr[..., None]
    else:
        raise ValueError(f"{path}: unsupported input file; use .npy, .npz or an image")
    if index is not None:
        if arr.ndim == 0 or not -arr.shape[0] <= index < arr.shape[0]:
            raise ValueError(f"{path}: --index {index} is outside the batch of {arr.shape[0] if arr.ndim else 0}")
        arr = arr[index:index + 1]
    return arr


def _resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize [H, W, C] uint8/float to (height, width) with Pillow (bilinear)."""
    if img.shape[0] == height and img.shape[1] == width:
        return img
    from PIL import Image

    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c]).astype(np.float32), mode="F")
                        .resize((width, height), Image.BILINEAR)) for c in range(img.shape[-1])]
    out = np.stack(chans, axis=-1)
    return out.astype(img.dtype) if img.dtype == np.uint8 else out


def fit_to_spec(arr: np.ndarray, spec: Mapping[str, Any] | None) -> np.ndarray:
    """``arr`` shaped and typed for one model input (see the module docstring)."""
    if spec is None:
        return arr.astype(np.float32) if arr.dtype == np.float64 else arr
    shape: Sequence[int] = [int(d) if d is not None and int(d) > 0 else -1 for d in spec.get("shape", [])]
    dtype = np.dtype(spec.get("dtype", "float32"))
    is_image = arr.dtype == np.uint8 and len(shape) == 4
    frames = arr.dtype == np.uint8 and (spec.get("preprocessing") or {}).get("from") == "uint8"
    if arr.ndim == len(shape) - 1:
        arr = arr[None, ...]
    if is_image and arr.ndim == 4:
        _, h, w, c = shape
        if c > 0 and arr.shape[-1] != c:
            if c == 1:
                arr = arr.mean(axis=-1, keepdims=True).round().astype(np.uint8)
            elif arr.shape[-1] == 1:
                arr = np.repeat(arr, c, axis=-1)
        if h > 0 and w > 0:
            arr = np.stack([_resize(a, h, w) for a in arr])
        if dtype.kind == "f" and not frames:
            arr = arr.astype(np.float32) / 255.0
    if dtype.kind == "f" and arr.dtype != np.float32 and arr.dtype.kind in "fiub" and not frames:
        arr = arr.astype(np.float32)
    if arr.ndim != len(shape) or arr.shape[0] < 1 or any(d > 0 and d != a for d, a in zip(shape[1:], arr.shape[1:])):
        raise ValueError(f"input of shape {list(arr.shape)} does not fit the model's {list(spec['shape'])}")
    return np.ascontiguousarray(arr)
