"""Source models and their conversion to LiteRT flatbuffers (TensorFlow imported lazily).

``open_source(path)`` loads a ``.keras`` file or a SavedModel directory as a ``SourceModel``;
``SourceModel.from_keras(model, fmt)`` wraps an in-memory Keras model (demo, zoo). A source
knows its input shape and class count, can convert its *current* weights to any quantization
(``to_tflite``), expose its prunable variables, and export the float32 SavedModel that the
TensorFlow runtime loads (``export_saved_model``). Every failure raises ``SourceError`` or
``ConversionError`` with one line. Not thread-safe (conversion mutates nothing, but pruning
callers mutate the weights this reads).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

QUANTIZATIONS = ("none", "float16", "dynamic_int8", "full_int8")


class SourceError(ValueError):
    """The source model is missing, unreadable or unsupported (one-line message)."""


class ConversionError(RuntimeError):
    """The TFLite converter failed for a variant (one-line message)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("WARNING", "W0000", "I0000")):
            return line[:300]
    return exc.__class__.__name__


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ logging and Python warnings off the console."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


class SourceModel:
    """A float32 classifier to derive variants from (see the module docstring)."""

    def __init__(self, fmt: str, path: str, keras_model: Any = None, saved: Any = None,
                 saved_dir: Path | None = None) -> None:
        self.format = fmt
        self.path = path
        self.keras_model = keras_model
        self._saved = saved
        self._saved_dir = saved_dir
        if keras_model is not None:
            if len(keras_model.inputs) != 1 or len(keras_model.outputs) != 1:
                raise SourceError(f"{path}: adaptd builds single-input, single-output classifiers "
                                  f"(this model has {len(keras_model.inputs)} inputs, {len(keras_model.outputs)} outputs)")
            self.input_shape = tuple(keras_model.inputs[0].shape[1:])
            out = tuple(keras_model.outputs[0].shape[1:])
            self.input_dtype = str(keras_model.inputs[0].dtype)
        else:
            fn = saved.signatures["serving_default"]
            _, kw = fn.structured_input_signature
            outs = fn.structured_outputs
            if len(kw) != 1 or len(outs) != 1:
                raise SourceError(f"{path}: adaptd builds single-input, single-output classifiers "
                                  f"(serving signature has {len(kw)} inputs, {len(outs)} outputs)")
            spec = next(iter(kw.values()))
            self.input_shape = tuple(spec.shape[1:])
            self.input_dtype = spec.dtype.name
            out = tuple(next(iter(outs.values())).shape[1:])
        if len(out) != 1 or out[0] is None or out[0] < 2:
            raise SourceError(f"{path}: expected a classifier output of shape (N, classes), got (N, {out})")
        if self.input_dtype not in ("float32",):
            raise SourceError(f"{path}: expected a float32 input, got {self.input_dtype}")
        self.num_classes = int(out[0])

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_keras(cls, model: Any, fmt: str, path: str = "") -> SourceModel:
        return cls(fmt, path, keras_model=model)

    @property
    def can_fine_tune(self) -> bool:
        return self.keras_model is not None

    # --- weights --------------------------------------------------------------------------
    def prunable_variables(self) -> list[Any]:
        if self.keras_model is not None:
            from .prune import prunable_variables
            return prunable_variables(self.keras_model)
        return [v for v in self._saved.variables if len(v.shape) >= 2 and v.trainable]

    def get_weights(self) -> list[np.ndarray]:
        if self.keras_model is not None:
            return self.keras_model.get_weights()
        return [v.numpy() for v in self._saved.variables]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        if self.keras_model is not None:
            self.keras_model.set_weights(weights)
        else:
            for v, w in zip(self._saved.variables, weights):
                v.assign(w)

    def predict(self, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
        if self.keras_model is not None:
            return np.asarray(self.keras_model.predict(x, batch_size=batch_size, verbose=0))
        import tensorflow as tf
        fn = self._saved.signatures["serving_default"]
        name = next(iter(fn.structured_input_signature[1]))
        outs = [next(iter(fn(**{name: tf.constant(x[i:i + batch_size])}).values())).numpy()
                for i in range(0, len(x), batch_size)]
        return np.concatenate(outs)

    # --- conversion -----------------------------------------------------------------------
    def _converter(self) -> Any:
        import tensorflow as tf
        if self.keras_model is not None:
            return tf.lite.TFLiteConverter.from_keras_model(self.keras_model)
        fn = self._saved.signatures["serving_default"]
        return tf.lite.TFLiteConverter.from_concrete_functions([fn], self._saved)

    def _param_bytes(self) -> int:
        if self.keras_model is not None:
            return 4 * int(self.keras_model.count_params())
        return sum(int(v.shape.num_elements() or 0) * 4 for v in getattr(self._saved, "variables", ()))

    def to_tflite(self, quantization: str, representative: np.ndarray | None = None) -> bytes:
        """Convert the current weights with ``quantization`` (one of QUANTIZATIONS)."""

        if quantization not in QUANTIZATIONS:
            raise ValueError(f"unknown quantization {quantization!r}")
        with contextlib.redirect_stdout(io.StringIO()):  # Keras 3 prints its temporary export
            return self._convert(quantization, representative)

    def _convert(self, quantization: str, representative: np.ndarray | None) -> bytes:
        import tensorflow as tf

        c = self._converter()
        if quantization == "float16":
            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.target_spec.supported_types = [tf.float16]
        elif quantization == "dynamic_int8":
            c.optimizations = [tf.lite.Optimize.DEFAULT]
        elif quantization == "full_int8":
            if representative is None or len(representative) == 0:
                raise ConversionError("full-integer quantization needs representative inputs")
            rep = np.asarray(representative, dtype=np.float32)

            def gen() -> Any:
                for i in range(len(rep)):
                    yield [rep[i:i + 1]]

            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.representative_dataset = gen
            c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            c.inference_input_type = tf.int8
            c.inference_output_type = tf.int8
        try:
            return bytes(c.convert())
        except Exception as exc:
            # The converter writes scratch files of about the model's size; when it cannot, its own
            # error says nothing of it. Name that cause when it is the cause.
            scratch = _scratch_write_error(self._param_bytes())
            if scratch is not None:
                raise scratch from exc
            raise ConversionError(f"TFLite conversion ({quantization}) failed: {_first_line(exc)}") from exc

    def export_saved_model(self, directory: Path) -> None:
        """Write the float32 model as a SavedModel with a ``serving_default`` signature."""
        if self.keras_model is not None:
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the endpoints
                    self.keras_model.export(str(directory), format="tf_saved_model")
            except Exception as exc:
                if isinstance(exc, OSError):
                    raise
                raise ConversionError(f"SavedModel export failed: {_first_line(exc)}") from exc
        else:
            shutil.copytree(self._saved_dir, directory)


def open_source(path: Path) -> SourceModel:
    """Load a ``.keras`` file or a SavedModel directory."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"model {path} not found")
    quiet_tensorflow()
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise SourceError(f"model {path} is a directory without saved_model.pb (not a SavedModel)")
        import tensorflow as tf
        try:
            saved = tf.saved_model.load(str(path))
        except Exception as exc:
            raise SourceError(f"model {path}: cannot load SavedModel ({_first_line(exc)})") from exc
        if "serving_default" not in getattr(saved, "signatures", {}):
            raise SourceError(f"model {path}: SavedModel has no serving_default signature")
        return SourceModel("saved_model", str(path), saved=saved, saved_dir=path)
    if path.suffix != ".keras":
        raise SourceError(f"model {path}: unsupported format (expected a .keras file or a SavedModel directory)")
    import keras
    try:
        model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        raise SourceError(f"model {path}: cannot load .keras file ({_first_line(exc)})") from exc
    return SourceModel("keras", str(path), keras_model=model)


def tensor_specs_from_tflite(path: Path) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) as manifest dicts, read from the interpreter of ``path``."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)

    def spec(d: dict) -> dict:
        scale, zp = d["quantization"]
        q = {"scale": float(scale), "zero_point": int(zp)} if scale else None
        return {"name": d["name"], "dtype": np.dtype(d["dtype"]).name,
                "shape": [int(s) for s in d["shape"]], "quantization": q}

    return [spec(d) for d in it.get_input_details()], [spec(d) for d in it.get_output_details()]


def tensor_specs_from_saved_model(directory: Path) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of the ``serving_default`` signature; an unknown batch is recorded as 1."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(directory)).signatures["serving_default"]
    _, kw = fn.structured_input_signature

    def spec(name: str, s: Any) -> dict:
        shape = [1 if d is None else int(d) for d in s.shape]
        return {"name": name, "dtype": s.dtype.name, "shape": shape, "quantization": None}

    return ([spec(k, v) for k, v in sorted(kw.items())],
            [spec(k, v) for k, v in sorted(fn.structured_outputs.items())])


def _scratch_write_error(nbytes: int) -> OSError | None:
    """The OSError of writing ``nbytes`` (at least 1 MiB) to the temporary directory, or None."""
    import tempfile

    try:
        with tempfile.TemporaryFile() as fh:
            fh.write(b"\0" * max(int(nbytes), 1 << 20))
            fh.flush()
    except OSError as exc:
        if exc.filename is None:
            exc.filename = tempfile.gettempdir()
        return exc
    return None
