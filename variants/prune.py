"""Magnitude pruning on Keras 3, without tensorflow-model-optimization.

``prune_keras(model, sparsity, ...)`` zeroes the smallest-magnitude weights of the
Conv/Dense/DepthwiseConv/SeparableConv kernels until ``sparsity`` of all their weights are zero
(one global threshold by default, with a floor so no kernel is wiped out; ``scope="layer"``
prunes each kernel to ``sparsity`` on its own; biases and normalisation parameters are
kept), fixes that mask, and, when training data is
given, fine-tunes the model with the mask re-applied after every batch, so the weights left at
the end honour the mask exactly. It changes ``model`` in place; callers that need the original
weights save ``model.get_weights()`` first and restore them after. ``prune_variables`` does the
one-shot part on plain ``tf.Variable``s (SavedModel sources). Import TensorFlow/Keras lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_KEEP = 0.02  # global pruning never leaves a kernel with fewer than 2% of its weights


def magnitude_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Boolean mask keeping all but the ``round(sparsity * w.size)`` smallest-|w| entries."""
    k = int(round(sparsity * w.size))
    mask = np.ones(w.size, dtype=bool)
    if k > 0:
        idx = np.argpartition(np.abs(w).reshape(-1), k - 1)[:k]
        mask[idx] = False
    return mask.reshape(w.shape)


def prunable_variables(model: Any) -> list[Any]:
    """The kernels of the model's Conv*, Dense, DepthwiseConv* and SeparableConv* layers."""
    import keras

    kinds = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
             keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
             keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose,
             keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
    found, seen = [], set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, kinds):
            continue
        for attr in ("kernel", "depthwise_kernel", "pointwise_kernel"):
            v = getattr(layer, attr, None)
            if v is not None and id(v) not in seen and len(v.shape) >= 2:
                seen.add(id(v))
                found.append(v)
    return found


def prune_variables(variables: Sequence[Any], sparsity: float, scope: str = "global") -> list[np.ndarray]:
    """One-shot: assign each variable its magnitude-masked value; return the masks.

    ``scope="layer"``: each kernel loses ``sparsity`` of its own weights. ``scope="global"``:
    one magnitude threshold over all kernels together (the same overall sparsity, taken
    mostly from the large layers), but no kernel keeps fewer than ``MIN_KEEP`` of its weights,
    so a small layer is never wiped out; the layer-wise masks fill any shortfall.
    """
    weights = [np.asarray(v.numpy()) for v in variables]
    if scope == "layer":
        masks = [magnitude_mask(w, sparsity) for w in weights]
    elif scope == "global":
        flat = np.concatenate([np.abs(w).reshape(-1) for w in weights])
        k = int(round(sparsity * flat.size))
        masks = []
        if k == 0:
            masks = [np.ones(w.shape, dtype=bool) for w in weights]
        else:
            order = np.argsort(flat, kind="stable")
            drop = np.zeros(flat.size, dtype=bool)
            drop[order[:k]] = True
            offset = 0
            for w in weights:
                m = ~drop[offset:offset + w.size].reshape(w.shape)
                offset += w.size
                floor = magnitude_mask(w, 1.0 - MIN_KEEP)
                if m.sum() < floor.sum():
                    m = floor
                masks.append(m)
            # layers held at the floor leave a shortfall: take it from the largest kernels
            short = k - sum(int((~m).sum()) for m in masks)
            for i in sorted(range(len(weights)), key=lambda i: -weights[i].size):
                if short <= 0:
                    break
                m, w = masks[i], weights[i]
                target = min(int((~m).sum()) + short, int(round((1.0 - MIN_KEEP) * w.size)))
                extra = target - int((~m).sum())
                if extra > 0:
                    masks[i] = magnitude_mask(w, target / w.size)
                    short -= extra
    else:
        raise ValueError(f"unknown pruning scope {scope!r}")
    for v, w, m in zip(variables, weights, masks):
        v.assign((w * m).astype(w.dtype))
    return masks


def _outputs_are_probabilities(model: Any, x: Any) -> bool:
    p = np.asarray(model.predict(x, verbose=0))
    return bool(np.all(p >= -1e-6) and np.allclose(p.sum(axis=-1), 1.0, atol=1e-3))


def _head(model: Any, prediction_index: int) -> Any:
    """The model itself, or (several outputs) a model of its prediction output sharing its layers:
    fine-tuning it trains the shared weights."""
    if len(model.outputs) == 1:
        return model
    import keras

    return keras.Model(model.inputs, model.outputs[prediction_index])


def _feed(model: Any, x: Any, rows: slice | None = None) -> Any:
    """``x`` (one array, or one per input in the model's order) as the model takes it."""
    from .convert import keras_feed

    arrays = [x] if isinstance(x, np.ndarray) else list(x)
    if rows is not None:
        arrays = [a[rows] for a in arrays]
    return keras_feed(model, arrays)


def prune_keras(model: Any, sparsity: float, x_train: Any = None,
                y_train: np.ndarray | None = None, epochs: int = 2, batch_size: int = 64,
                learning_rate: float = 1e-3, scope: str = "global", prediction_index: int = 0) -> bool:
    """Prune ``model`` in place to ``sparsity``; return True if it was fine-tuned. ``x_train`` is
    one array or one per input (the model's order); the loss is on output ``prediction_index``."""
    import keras

    variables = prunable_variables(model)
    if not variables:
        raise ValueError("the model has no Conv/Dense kernels to prune")
    masks = [m.astype(np.float32) for m in prune_variables(variables, sparsity, scope)]
    if x_train is None or y_train is None or epochs <= 0:
        return False

    class ReapplyMask(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            for v, m in zip(variables, masks):
                v.assign(v * m)

    head = _head(model, prediction_index)
    from_logits = not _outputs_are_probabilities(head, _feed(head, x_train, slice(0, 64)))
    head.compile(optimizer=keras.optimizers.Adam(learning_rate),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
    head.fit(_feed(head, x_train), y_train, epochs=epochs, batch_size=batch_size, shuffle=True,
             verbose=0, callbacks=[ReapplyMask()])
    for v, m in zip(variables, masks):  # exact, whatever the last step did
        v.assign(v * m)
    return True
