"""``adaptd variants zoo NAME``: latency-only variants of standard ``keras.applications`` CNNs.

These are the workloads of the study adaptd grows out of and the ones the benchmarks use.
Models are built with ``weights=None`` (random initialisation: nothing is downloaded),
``include_top=True`` and 1000 classes, at their native input size unless ``--input-size``
is given. Accuracy is unknown: every variant's ``metrics`` is null and
``task.accuracy_known`` is false. Full-integer kinds are calibrated on random inputs drawn
from the range the network's first layer expects (0..255 for models that include their own
preprocessing, -1..1 otherwise); pruned kinds are one-shot (there is nothing to fine-tune on).
Every zoo model declares the preprocessing of its input, so a client can send uint8 camera
frames: "in the model" for the networks that rescale their own input, ``frame * 2/255 - 1``
for the others. Latency and memory are measured as for any build (``measure=False`` records
zeros, for quick checks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_REPOSITORY = Path("zoo-repo")


@dataclass(frozen=True)
class Arch:
    name: str
    constructor: str          # attribute of keras.applications
    native_size: int
    min_size: int
    input_range: tuple[float, float]


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("MobileNetV2", "MobileNetV2", 224, 32, (-1.0, 1.0)),
    Arch("MobileNetV3Small", "MobileNetV3Small", 224, 32, (0.0, 255.0)),
    Arch("MobileNetV3Large", "MobileNetV3Large", 224, 32, (0.0, 255.0)),
    Arch("ResNet50", "ResNet50", 224, 32, (-1.0, 1.0)),
    Arch("InceptionV3", "InceptionV3", 299, 75, (-1.0, 1.0)),
    Arch("VGG16", "VGG16", 224, 32, (-1.0, 1.0)),
    Arch("EfficientNetB0", "EfficientNetB0", 224, 32, (0.0, 255.0)),
    Arch("DenseNet121", "DenseNet121", 224, 32, (-1.0, 1.0)),
)}


def make_model(arch: Arch, size: int, classes: int = 1000) -> Any:
    """A randomly initialised ``keras.applications`` model (never downloads weights)."""
    import keras

    ctor: Callable[..., Any] = getattr(keras.applications, arch.constructor)
    keras.utils.set_random_seed(0)
    return ctor(weights=None, include_top=True, classes=classes, input_shape=(size, size, 3))


def preprocessing(arch: Arch) -> Any:
    """How a uint8 frame becomes the input ``arch`` expects."""
    from .manifest import Preprocessing

    lo, hi = arch.input_range
    if (lo, hi) == (0.0, 255.0):
        return Preprocessing.included()
    return Preprocessing((hi - lo) / 255.0, lo)


def build_zoo(name: str, repo: Path, input_size: int | None = None, kinds: tuple[str, ...] | None = None,
              progress: bool = True, latency_runs: int = 50, latency_max_s: float = 1.0,
              representative_n: int = 8, classes: int = 1000, measure: bool = True) -> tuple[Path, Any]:
    """Build ``name``'s variants into ``repo``; return (version_dir, manifest)."""
    from .build import ALL_KINDS, BuildOptions, build_entry
    from .convert import SourceModel, quiet_tensorflow

    arch = ARCHS[name]
    size = input_size or arch.native_size
    if size < arch.min_size:
        raise ValueError(f"{name} needs an input of at least {arch.min_size}x{arch.min_size}, got {size}")
    quiet_tensorflow()
    model = make_model(arch, size, classes)
    lo, hi = arch.input_range
    rep = np.random.default_rng(0).uniform(lo, hi, size=(representative_n, size, size, 3)).astype(np.float32)
    source = SourceModel.from_keras(model, "zoo", path=f"keras.applications.{arch.constructor}")
    model_name = name if size == arch.native_size else f"{name}-{size}"
    opts = BuildOptions(kinds=kinds or ALL_KINDS, epochs=0, progress=progress, measure=measure,
                        latency_runs=latency_runs, latency_max_s=latency_max_s,
                        preprocessing={"": preprocessing(arch)})
    return build_entry(repo, model_name, source, None, options=opts, representative=rep)
