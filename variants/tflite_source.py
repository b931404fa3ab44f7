"""A ready ``.tflite`` file as a build source: served as it is, and what can be derived from it.

``TFLiteSource.open(path)`` checks that the file is a TFLite flatbuffer LiteRT can load and
reads its signature: inputs and outputs (named by its one signature, else by tensor name, in
index order), their dtypes, shapes and quantization parameters (so callers can send float
input to an integer model: the runtime quantizes with them). Its kind is read from the graph
(``structure.describe_tflite``'s compute dtype): ``float32``, ``float16``, ``int8_dynamic`` or
``int8_full``; the file itself is that variant, byte for byte.

From a float32 file, without the source framework's graph:

* ``int8_full`` (and ``pruned75_int8``): calibrated on representative inputs (the dataset's)
  with TensorFlow's TFLite calibrator, then quantized by its MLIR quantizer, int8 in and out;
* ``pruned50`` / ``pruned75`` / ``pruned90``: the float32 weights of the conv/depthwise/
  fully-connected kernels are magnitude-pruned one-shot (``prune.prune_variables``, global
  threshold) in the flatbuffer itself; there is nothing to fine-tune.

``cannot_build(kind, has_representative)`` gives the one-line reason for every other kind.
The same surface as ``convert.SourceModel`` (``inputs``, ``outputs``, ``prediction_index``,
``num_classes``, ``to_tflite``, ``prunable_variables``, ``get_weights``/``set_weights``), so
``build.build_entry`` treats both alike. TensorFlow is imported only to calibrate and to edit
the flatbuffer. Not thread-safe (pruning mutates the in-memory model).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from .convert import ConversionError, PredictionChoice, SourceError, default_prediction, first_line, signature_details
from .manifest import Quantization, TensorSpec

KIND_OF_COMPUTE = {"float32": "float32", "float16": "float16", "mixed": "int8_dynamic", "int8": "int8_full"}
QUANTIZATION_OF_KIND = {"float32": "none", "float16": "float16", "int8_dynamic": "dynamic_int8",
                        "int8_full": "full_int8"}
PRUNABLE_OPS = {"CONV_2D", "CONV_3D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED"}
NO_GRAPH = {
    "float16": "float16 weights are chosen by the TensorFlow converter, and a .tflite holds no TensorFlow graph",
    "int8_dynamic": "dynamic-range int8 is chosen by the TensorFlow converter, and a .tflite holds no TensorFlow graph",
    "float32_tf": "a SavedModel needs the TensorFlow graph, which a .tflite does not hold",
}


def _tensor_spec(name: str, d: dict) -> TensorSpec:
    scale, zp = d["quantization"]
    shape = [int(s) for s in d.get("shape_signature", d["shape"])]
    shape = [1, *(-1 if s < 0 else s for s in shape[1:])] if shape else [1]
    return TensorSpec(str(name), np.dtype(d["dtype"]).name, tuple(shape),
                      Quantization(float(scale), int(zp)) if scale else None)


class _Weight:
    """One float32 weight buffer of the flatbuffer, as ``prune.prune_variables`` uses variables."""

    def __init__(self, buffer: Any, shape: tuple[int, ...]) -> None:
        self._buffer = buffer
        self.shape = shape

    def numpy(self) -> np.ndarray:
        return np.frombuffer(np.asarray(self._buffer.data, dtype=np.uint8).tobytes(), np.float32).reshape(self.shape)

    def assign(self, value: np.ndarray) -> None:
        data = np.ascontiguousarray(value, dtype="<f4").reshape(-1).view(np.uint8)
        self._buffer.data = data.copy()


class TFLiteSource(PredictionChoice):
    """See the module docstring."""

    format = "tflite"
    keras_model = None
    can_fine_tune = False

    def __init__(self, path: Path, data: bytes, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...], kind: str) -> None:
        self.path = str(path)
        self._data = data
        self.inputs = inputs
        self.outputs = outputs
        self.kind = kind
        self.prediction_index = default_prediction(outputs)
        self._model: Any = None          # the flatbuffer's object tree, once pruning needs it
        self._weights: list[_Weight] | None = None
        self._pruned = False

    @classmethod
    def open(cls, path: Path) -> TFLiteSource:
        from ai_edge_litert.interpreter import Interpreter

        from .structure import describe_tflite

        path = Path(path)
        data = path.read_bytes()
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise SourceError(f"model {path} is not a TFLite model (no TFL3 flatbuffer identifier)")
        try:
            it = Interpreter(model_content=data, num_threads=1)
            it.allocate_tensors()
        except Exception as exc:  # LiteRT raises ValueError/RuntimeError with long texts
            raise SourceError(f"model {path}: LiteRT cannot load it ({first_line(exc)})") from exc
        ins, outs = signature_details(it)
        if not ins or not outs:
            raise SourceError(f"model {path}: the model has {len(ins)} inputs and {len(outs)} outputs")
        try:
            compute = describe_tflite(path)["compute_dtype"]
        except ValueError as exc:
            raise SourceError(str(exc)) from exc
        source = cls(path, data, tuple(_tensor_spec(k, d) for k, d in ins.items()),
                     tuple(_tensor_spec(k, d) for k, d in outs.items()), KIND_OF_COMPUTE.get(compute, "float32"))
        if source.prediction_index is None and not any(len(o.shape) == 2 and o.shape[1] >= 2 for o in source.outputs):
            source.choose_prediction(None)   # raises: no output can be the class scores
        return source

    def cannot_build(self, kind: Any, has_representative: bool) -> str | None:
        """Why ``kind`` (a ``build.KindSpec``) cannot be derived from this file; None: it can."""
        if kind.name == self.kind:
            return None
        if self.kind != "float32":
            return (f"the file's weights are already {self.kind}, and the float weights a "
                    f"{kind.name} variant needs are gone")
        if kind.name in NO_GRAPH:
            return NO_GRAPH[kind.name]
        if kind.quantization == "full_int8" and not has_representative:
            return "full-integer quantization is calibrated on representative inputs: give --data"
        if kind.sparsity is not None and not self.prunable_variables():
            return "the file has no float32 conv or fully-connected weights to prune"
        return None

    # --- weights (pruning) ----------------------------------------------------------------
    def _tree(self) -> Any:
        if self._model is None:
            from tensorflow.lite.tools import flatbuffer_utils

            self._model = flatbuffer_utils.read_model_from_bytearray(bytearray(self._data))
        return self._model

    def prunable_variables(self) -> list[_Weight]:
        if self._weights is not None:
            return self._weights
        from tensorflow.lite.python import schema_py_generated as schema

        model = self._tree()
        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        seen: set[int] = set()
        found = []
        for graph in model.subgraphs:
            for op in graph.operators:
                code = model.operatorCodes[op.opcodeIndex]
                if names.get(max(code.builtinCode, code.deprecatedBuiltinCode)) not in PRUNABLE_OPS:
                    continue
                if op.inputs is None or len(op.inputs) < 2 or op.inputs[1] < 0:
                    continue
                t = graph.tensors[op.inputs[1]]
                buf = model.buffers[t.buffer]
                if t.type != schema.TensorType.FLOAT32 or buf.data is None or t.buffer in seen:
                    continue
                shape = tuple(int(d) for d in t.shape)
                if len(shape) < 2 or len(buf.data) != 4 * int(np.prod(shape)):
                    continue
                seen.add(t.buffer)
                found.append(_Weight(buf, shape))
        self._weights = found
        return found

    def get_weights(self) -> list[np.ndarray]:
        return [w.numpy().copy() for w in self._weights] if self._weights is not None else []

    def set_weights(self, weights: list[np.ndarray]) -> None:
        if self._weights is not None:
            for w, value in zip(self._weights, weights):
                w.assign(value)
        self._pruned = False

    def weights_changed(self) -> None:
        """Nothing to forget: the bytes are made from the weights at each conversion."""

    def _current(self) -> bytes:
        """The float32 model with the current weights."""
        if self._weights is None:
            return self._data
        from tensorflow.lite.tools import flatbuffer_utils

        return bytes(flatbuffer_utils.convert_object_to_bytearray(self._tree()))

    # --- conversion -----------------------------------------------------------------------
    def to_tflite(self, quantization: str, representative: Any = None) -> bytes:
        """The file (its own quantization), its current float32 weights, or their full-integer
        quantization; anything else raises ``ConversionError``."""
        if quantization == QUANTIZATION_OF_KIND[self.kind] and self.kind != "float32":
            return self._data
        if self.kind != "float32":
            raise ConversionError(f"{self.path}: a {self.kind} file cannot be converted to {quantization}")
        if quantization == "none":
            return self._current()
        if quantization == "full_int8":
            return self._full_int8(self._current(), representative)
        raise ConversionError(f"{self.path}: {quantization} cannot be derived from a .tflite")

    def _full_int8(self, data: bytes, representative: Any) -> bytes:
        from .convert import representative_generator

        gen = representative_generator(self.inputs, representative)
        try:
            import tensorflow as tf
            from tensorflow.lite.python import convert as tflite_convert
            from tensorflow.lite.python.optimize import calibrator

            with contextlib.redirect_stdout(io.StringIO()):
                cal = calibrator.Calibrator(calibrator.add_intermediate_tensors(data))
                calibrated = cal.calibrate(gen if self._has_signature() else _as_lists(gen))
                return bytes(tflite_convert.mlir_quantize(calibrated, input_data_type=tf.int8,
                                                         output_data_type=tf.int8))
        except OSError:
            raise
        except Exception as exc:
            raise ConversionError(f"full-integer quantization of {self.path} failed: {first_line(exc)}") from exc

    def _has_signature(self) -> bool:
        from ai_edge_litert.interpreter import Interpreter

        return len(Interpreter(model_content=self._data).get_signature_list()) == 1

    def export_saved_model(self, directory: Path) -> None:
        raise ConversionError(f"{self.path}: {NO_GRAPH['float32_tf']}")


def _as_lists(gen: Any) -> Any:
    """A dict-per-sample generator as list-per-sample (inputs in index order, for files without
    a signature, whose input names are their tensor names in that order)."""
    def lists() -> Any:
        for sample in gen():
            yield list(sample.values())
    return lists
