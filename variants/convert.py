"""Source models and their conversion to LiteRT flatbuffers (TensorFlow imported lazily).

``open_source(path)`` loads a ``.keras`` file, a SavedModel directory or a ``.tflite`` file (the
last as a ``tflite_source.TFLiteSource``); ``SourceModel.from_keras(model, fmt)`` wraps an
in-memory Keras model (demo, zoo). A source knows its signature: ``inputs`` and ``outputs``
(manifest ``TensorSpec``s, batch 1, in the model's order, named as the model names them: Keras
input names and output layer names, or the SavedModel signature's keys), which output is the
prediction (``prediction_index``, ``num_classes``). It converts its *current* weights to any
quantization (``to_tflite``; representative inputs are one float array per input, in the
model's order), exposes its prunable variables, and exports the float32 SavedModel that the
TensorFlow runtime loads (``export_saved_model``). A Keras model is exported through a
``serving_default`` endpoint whose inputs and outputs carry the model's names, so every
converted file's signature maps back onto the model's tensors
(``tensor_specs_from_tflite``); that export is reused by the next conversions until the
weights change (``set_weights``, or ``weights_changed()`` from a caller that changed them in
place, as pruning does). Every failure raises ``SourceError`` or ``ConversionError`` with one
line. Not thread-safe (pruning callers mutate the weights this reads).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .manifest import TensorSpec

QUANTIZATIONS = ("none", "float16", "dynamic_int8", "full_int8")


class SourceError(ValueError):
    """The source model is missing, unreadable or unsupported (one-line message)."""


class ConversionError(RuntimeError):
    """The TFLite converter failed for a variant (one-line message)."""


def first_line(exc: BaseException) -> str:
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


def _spec(name: str, dtype: str, shape: Sequence[Any]) -> TensorSpec:
    dims = tuple(-1 if d is None else int(d) for d in shape[1:])
    return TensorSpec(str(name), str(dtype), (1, *dims))


def keras_feed(model: Any, arrays: Sequence[Any]) -> Any:
    """``arrays`` (one per input, in ``model.inputs`` order) in the structure the model was built
    with (a dict, a list or one tensor), so that Keras takes them without a structure warning."""
    struct = getattr(model, "_inputs_struct", None)
    if struct is not None:
        import keras

        return keras.tree.pack_sequence_as(struct, list(arrays))
    return arrays[0] if len(arrays) == 1 else list(arrays)


def is_class_scores(spec: TensorSpec) -> bool:
    """An output of shape (N, classes) with at least two classes."""
    return len(spec.shape) == 2 and spec.shape[1] >= 2


def default_prediction(outputs: Sequence[TensorSpec]) -> int | None:
    """The one output that can be class scores, or None when there are none or several."""
    found = [i for i, o in enumerate(outputs) if is_class_scores(o)]
    return found[0] if len(found) == 1 else None


class PredictionChoice:
    """Which output is the prediction (mixin of the source kinds)."""

    path: str
    outputs: tuple[TensorSpec, ...]
    prediction_index: int | None

    def choose_prediction(self, name: str | None) -> None:
        """Make output ``name`` the prediction (None: the only class-score output)."""
        names = [o.name for o in self.outputs]
        if name is not None:
            if name not in names:
                raise SourceError(f"{self.path}: no output {name!r} to predict with (outputs: {', '.join(names)})")
            i = names.index(name)
            if not is_class_scores(self.outputs[i]):
                raise SourceError(f"{self.path}: output {name!r} has shape {list(self.outputs[i].shape)}, "
                                  "not (N, classes)")
            self.prediction_index = i
            return
        if self.prediction_index is None:
            scores = [o.name for o in self.outputs if is_class_scores(o)]
            if not scores:
                shapes = ", ".join(f"{o.name} {list(o.shape)}" for o in self.outputs)
                raise SourceError(f"{self.path}: expected a classifier output of shape (N, classes), got {shapes}")
            raise SourceError(f"{self.path}: {len(scores)} outputs could be the class scores ({', '.join(scores)}); "
                              "name the prediction with --prediction-output")

    @property
    def num_classes(self) -> int:
        self.choose_prediction(None)
        return int(self.outputs[self.prediction_index].shape[1])


class SourceModel(PredictionChoice):
    """A float32 classifier to derive variants from (see the module docstring)."""

    def __init__(self, fmt: str, path: str, keras_model: Any = None, saved: Any = None,
                 saved_dir: Path | None = None) -> None:
        self.format = fmt
        self.path = path
        self.keras_model = keras_model
        self._saved = saved
        self._saved_dir = saved_dir
        self._export: tempfile.TemporaryDirectory | None = None   # of the current weights
        if keras_model is not None:
            ins = [_spec(t.name, t.dtype, t.shape) for t in keras_model.inputs]
            names = list(getattr(keras_model, "output_names", None) or [])
            if len(names) != len(keras_model.outputs) or len(set(names)) != len(names):
                names = [f"output_{i}" for i in range(len(keras_model.outputs))]
            outs = [_spec(n, t.dtype, t.shape) for n, t in zip(names, keras_model.outputs)]
        else:
            fn = saved.signatures["serving_default"]
            _, kw = fn.structured_input_signature
            ins = [_spec(k, s.dtype.name, s.shape) for k, s in kw.items()]
            outs = [_spec(k, s.dtype.name, s.shape) for k, s in fn.structured_outputs.items()]
        if not ins or not outs:
            raise SourceError(f"{path}: the model has {len(ins)} inputs and {len(outs)} outputs")
        bad = [f"{t.name} ({t.dtype})" for t in ins if t.dtype != "float32"]
        if bad:
            raise SourceError(f"{path}: expected float32 inputs, got {', '.join(bad)}")
        self.inputs: tuple[TensorSpec, ...] = tuple(ins)
        self.outputs: tuple[TensorSpec, ...] = tuple(outs)
        self.prediction_index = default_prediction(self.outputs)
        if self.prediction_index is None and not any(is_class_scores(o) for o in self.outputs):
            self.choose_prediction(None)   # raises: no output can be the class scores

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_keras(cls, model: Any, fmt: str, path: str = "") -> SourceModel:
        return cls(fmt, path, keras_model=model)

    @property
    def can_fine_tune(self) -> bool:
        return self.keras_model is not None

    def cannot_build(self, kind: Any, has_representative: bool) -> str | None:
        """Why ``kind`` (a ``build.KindSpec``) cannot be built from this source; None: it can
        (every kind can; full-integer ones need representative inputs, which the build checks)."""
        return None

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
        self.weights_changed()

    def weights_changed(self) -> None:
        """Forget the export of the previous weights."""
        if self._export is not None:
            self._export.cleanup()
            self._export = None

    # --- conversion -----------------------------------------------------------------------
    def _keras_export(self, directory: Path) -> None:
        """A SavedModel whose ``serving_default`` takes and returns the model's named tensors."""
        import keras
        import tensorflow as tf

        model = self.keras_model
        out_names = [t.name for t in self.outputs]
        specs = [tf.TensorSpec((None, *[None if d < 0 else d for d in t.shape[1:]]), tf.float32, name=t.name)
                 for t in self.inputs]

        def serve(*xs: Any) -> dict[str, Any]:
            out = model(keras_feed(model, xs), training=False)
            return dict(zip(out_names, keras.tree.flatten(out)))

        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve, specs)
        archive.write_out(str(directory), verbose=False)

    def _param_bytes(self) -> int:
        if self.keras_model is not None:
            return 4 * int(self.keras_model.count_params())
        return sum(int(v.shape.num_elements() or 0) * 4 for v in getattr(self._saved, "variables", ()))

    def _exported(self) -> Path:
        """A SavedModel of the current Keras weights (exported once per weights)."""
        if self._export is None:
            export = tempfile.TemporaryDirectory(prefix="adaptd-export-")
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # Keras prints its exports
                    self._keras_export(Path(export.name) / "model")
            except Exception as exc:
                export.cleanup()
                if isinstance(exc, OSError):
                    raise
                scratch = _scratch_write_error(self._param_bytes())
                if scratch is not None:
                    raise scratch from exc
                raise ConversionError(f"Keras export for conversion failed: {first_line(exc)}") from exc
            self._export = export
        return Path(self._export.name) / "model"

    def to_tflite(self, quantization: str, representative: Sequence[np.ndarray] | np.ndarray | None = None) -> bytes:
        """Convert the current weights with ``quantization`` (one of QUANTIZATIONS)."""
        import tensorflow as tf

        if quantization not in QUANTIZATIONS:
            raise ValueError(f"unknown quantization {quantization!r}")
        if self.keras_model is None:
            fn = self._saved.signatures["serving_default"]
            converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], self._saved)
        else:
            converter = tf.lite.TFLiteConverter.from_saved_model(str(self._exported()))
        with contextlib.redirect_stdout(io.StringIO()):
            return self._convert(converter, quantization, representative)

    def _convert(self, c: Any, quantization: str, representative: Any) -> bytes:
        import tensorflow as tf

        if quantization == "float16":
            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.target_spec.supported_types = [tf.float16]
        elif quantization == "dynamic_int8":
            c.optimizations = [tf.lite.Optimize.DEFAULT]
        elif quantization == "full_int8":
            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.representative_dataset = representative_generator(self.inputs, representative)
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
            raise ConversionError(f"TFLite conversion ({quantization}) failed: {first_line(exc)}") from exc

    def export_saved_model(self, directory: Path) -> None:
        """Write the float32 model as a SavedModel with a ``serving_default`` signature."""
        shutil.copytree(self._exported() if self.keras_model is not None else self._saved_dir, directory)


def representative_generator(inputs: Sequence[TensorSpec], representative: Any) -> Any:
    """The converter's representative dataset: one sample at a time, keyed by input name."""
    if representative is None or len(representative) == 0:
        raise ConversionError("full-integer quantization needs representative inputs")
    arrays = [representative] if isinstance(representative, np.ndarray) else list(representative)
    if len(arrays) != len(inputs):
        raise ConversionError(f"representative inputs: {len(arrays)} arrays for {len(inputs)} inputs")
    arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    names = [t.name for t in inputs]

    def gen() -> Any:
        for i in range(len(arrays[0])):
            yield {n: a[i:i + 1] for n, a in zip(names, arrays)}

    return gen


def open_source(path: Path) -> Any:
    """Load a ``.keras`` file, a SavedModel directory or a ``.tflite`` file."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"model {path} not found")
    if path.is_file() and path.suffix == ".tflite":
        from .tflite_source import TFLiteSource
        return TFLiteSource.open(path)
    quiet_tensorflow()
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise SourceError(f"model {path} is a directory without saved_model.pb (not a SavedModel)")
        import tensorflow as tf
        try:
            saved = tf.saved_model.load(str(path))
        except Exception as exc:
            raise SourceError(f"model {path}: cannot load SavedModel ({first_line(exc)})") from exc
        if "serving_default" not in getattr(saved, "signatures", {}):
            raise SourceError(f"model {path}: SavedModel has no serving_default signature")
        return SourceModel("saved_model", str(path), saved=saved, saved_dir=path)
    if path.suffix != ".keras":
        raise SourceError(f"model {path}: unsupported format (expected a .keras file, a SavedModel directory "
                          "or a .tflite file)")
    import keras
    try:
        model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        raise SourceError(f"model {path}: cannot load .keras file ({first_line(exc)})") from exc
    return SourceModel("keras", str(path), keras_model=model)


def _match(found: dict[str, dict], want: Sequence[TensorSpec], what: str, path: Path) -> list[dict]:
    """``found`` (signature name -> details) in the order of ``want``; a single tensor matches
    whatever its name."""
    if len(found) != len(want):
        raise ConversionError(f"{path}: {len(found)} {what}s, but the model has {len(want)}")
    if len(want) == 1:
        return list(found.values())
    missing = [t.name for t in want if t.name not in found]
    if missing:
        raise ConversionError(f"{path}: the converted model's {what}s ({', '.join(found)}) do not carry "
                              f"the model's names ({', '.join(t.name for t in want)})")
    return [found[t.name] for t in want]


def tensor_specs_from_tflite(path: Path, inputs: Sequence[TensorSpec] | None = None,
                             outputs: Sequence[TensorSpec] | None = None) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) as manifest dicts, read from the interpreter of ``path``, in the order of
    the model's ``inputs``/``outputs`` (matched through the file's signature); without them, in
    the file's signature order (or its tensor order when it has no single signature)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    ins, outs = signature_details(it)

    def spec(d: dict) -> dict:
        scale, zp = d["quantization"]
        q = {"scale": float(scale), "zero_point": int(zp)} if scale else None
        return {"name": d["name"], "dtype": np.dtype(d["dtype"]).name,
                "shape": [int(s) for s in d["shape"]], "quantization": q}

    if inputs is not None:
        ins = dict(zip([t.name for t in inputs], _match(ins, inputs, "input", path)))
    if outputs is not None:
        outs = dict(zip([t.name for t in outputs], _match(outs, outputs, "output", path)))
    return [spec(d) for d in ins.values()], [spec(d) for d in outs.values()]


def signature_details(it: Any) -> tuple[dict[str, dict], dict[str, dict]]:
    """({name: tensor details}, {name: tensor details}) of an interpreter's inputs and outputs:
    the names of its one signature (in index order), else the tensor names."""
    sigs = it.get_signature_list()
    if len(sigs) == 1:
        runner = it.get_signature_runner(next(iter(sigs)))

        def ordered(group: dict[str, dict]) -> dict[str, dict]:
            return dict(sorted(group.items(), key=lambda kv: kv[1]["index"]))

        return ordered(runner.get_input_details()), ordered(runner.get_output_details())
    return ({d["name"]: d for d in it.get_input_details()}, {d["name"]: d for d in it.get_output_details()})


def tensor_specs_from_saved_model(directory: Path, inputs: Sequence[TensorSpec] | None = None,
                                  outputs: Sequence[TensorSpec] | None = None) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of the ``serving_default`` signature, in the model's order when given
    (else sorted by name); an unknown dimension is recorded as 1."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(directory)).signatures["serving_default"]
    _, kw = fn.structured_input_signature

    def spec(name: str, s: Any) -> dict:
        shape = [1 if d is None else int(d) for d in s.shape]
        return {"name": name, "dtype": s.dtype.name, "shape": shape, "quantization": None}

    found_in = {k: spec(k, v) for k, v in sorted(kw.items())}
    found_out = {k: spec(k, v) for k, v in sorted(fn.structured_outputs.items())}
    ins = _match(found_in, inputs, "input", directory) if inputs is not None else list(found_in.values())
    outs = _match(found_out, outputs, "output", directory) if outputs is not None else list(found_out.values())
    return ins, outs


def _scratch_write_error(nbytes: int) -> OSError | None:
    """The OSError of writing ``nbytes`` (at least 1 MiB) to the temporary directory, or None."""
    try:
        with tempfile.TemporaryFile() as fh:
            fh.write(b"\0" * max(int(nbytes), 1 << 20))
            fh.flush()
    except OSError as exc:
        if exc.filename is None:
            exc.filename = tempfile.gettempdir()
        return exc
    return None
