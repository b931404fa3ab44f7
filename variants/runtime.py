"""Loading a built variant and running it: the one interface the daemon's workers use.

Contract
--------
* Import cost: numpy and (on first LiteRT load) ``ai_edge_litert`` only. TensorFlow is
  imported only inside ``load_variant`` for a variant whose runtime is ``"tensorflow"``.
* Lifecycle: ``load_variant`` does all expensive work (read the file, allocate tensors, first
  allocation for the recorded batch-1 shape). ``LoadedVariant.run`` is then cheap and may be
  called any number of times; ``close`` drops the interpreters. No reload after close.
* Thread safety: a ``LoadedVariant`` is NOT thread-safe; one caller at a time (a worker owns
  it). Different ``LoadedVariant`` objects are independent.
* ``run(inputs)`` takes one array per recorded input, in the recorded (the model's) order. Float
  arrays (any float dtype) are always accepted: for an integer-input variant they are quantized
  with the recorded scale/zero_point (``q = clip(round(x / scale) + zero_point)``); arrays already
  in the variant's own input dtype are passed unchanged; where the model declares preprocessing
  for an input, uint8 frames are accepted too and become what this variant takes (float:
  ``frame * scale + offset``; integer: that and the quantization in one step), see
  ``adaptd.variants.preprocess``. The leading (batch) dimension may differ
  from the recorded 1: the interpreter is resized and re-allocated for that shape, and up to
  ``max_shapes`` shapes are kept ready (one interpreter per shape, least recently used
  evicted). Outputs are always float32 (integer outputs dequantized), one per recorded
  output, in the recorded order, owned by the caller.
* Failures: ``load_variant`` raises ``VariantLoadError`` (file missing, unreadable, or not the
  recorded signature); ``run`` raises ``ValueError`` for a wrong number, shape or dtype of
  inputs. A failed ``run`` leaves the object usable.
* Units: ``num_threads`` is CPU threads for the interpreter (None: runtime default).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .digest import check_variant
from .manifest import TensorSpec, VariantRecord
from .preprocess import InputPreparer, dequantize, quantize  # noqa: F401  (quantize re-exported)


class VariantLoadError(Exception):
    """A variant that cannot be loaded as recorded (one-line message)."""


class LoadedVariant:
    """A variant ready to run; see the module contract."""

    def __init__(self, record: VariantRecord) -> None:
        self.record = record
        self.input_specs: tuple[TensorSpec, ...] = record.inputs
        self.output_specs: tuple[TensorSpec, ...] = record.outputs
        self._preparers = [InputPreparer(s, i) for i, s in enumerate(record.inputs)]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _check_count(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(self.input_specs):
            raise ValueError(f"{self.record.name}: expected {len(self.input_specs)} input(s), got {len(inputs)}")
        return [prepare(x) for prepare, x in zip(self._preparers, inputs)]


class _LiteRTVariant(LoadedVariant):
    def __init__(self, path: Path, record: VariantRecord, num_threads: int | None, max_shapes: int) -> None:
        super().__init__(record)
        from ai_edge_litert.interpreter import Interpreter

        self._Interpreter = Interpreter
        self._path = str(path)
        self._num_threads = num_threads
        self._max_shapes = max(1, max_shapes)
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        it = self._new()
        self._in_idx = self._match(it.get_input_details(), record.inputs, "input")
        self._out_idx = self._match(it.get_output_details(), record.outputs, "output")
        self._outputs = [(i, s.quantization) for i, s in zip(self._out_idx, record.outputs)]
        self._cache[self._key([tuple(s.shape) for s in record.inputs])] = it

    def _new(self) -> Any:
        try:
            it = self._Interpreter(model_path=self._path, num_threads=self._num_threads)
            it.allocate_tensors()
        except Exception as exc:
            raise VariantLoadError(f"{self._path}: cannot load ({str(exc).splitlines()[0] if str(exc) else exc})") from exc
        return it

    @staticmethod
    def _key(shapes: Sequence[tuple]) -> tuple:
        return tuple(tuple(int(d) for d in s) for s in shapes)

    def _match(self, details: list[dict], specs: Sequence[TensorSpec], what: str) -> list[int]:
        by_name = {d["name"]: d for d in details}
        idx = []
        for s in specs:
            d = by_name.get(s.name)
            if d is None:
                raise VariantLoadError(f"{self._path}: recorded {what} {s.name!r} not in the model "
                                       f"(has {', '.join(by_name)})")
            if np.dtype(d["dtype"]).name != s.dtype:
                raise VariantLoadError(f"{self._path}: {what} {s.name!r} is {np.dtype(d['dtype']).name}, "
                                       f"recorded {s.dtype}")
            idx.append(int(d["index"]))
        return idx

    def _interpreter(self, arrays: list[np.ndarray]) -> Any:
        key = (arrays[0].shape,) if len(arrays) == 1 else tuple(a.shape for a in arrays)   # (numpy shapes
        it = self._cache.get(key)                                                          # are tuples of ints)
        if it is not None:
            if len(self._cache) > 1:
                self._cache.move_to_end(key)
            return it
        it = self._new()
        for i, a in zip(self._in_idx, arrays):
            it.resize_tensor_input(i, list(a.shape), strict=False)
        it.allocate_tensors()
        self._cache[key] = it
        while len(self._cache) > self._max_shapes:
            self._cache.popitem(last=False)
        return it

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        arrays = self._check_count(inputs)
        it = self._interpreter(arrays)
        for i, a in zip(self._in_idx, arrays):
            it.set_tensor(i, a)
        it.invoke()
        return [dequantize(it.get_tensor(i), q) for i, q in self._outputs]

    def close(self) -> None:
        self._cache.clear()


class _TensorFlowVariant(LoadedVariant):
    def __init__(self, path: Path, record: VariantRecord, num_threads: int | None, device: str | None) -> None:
        super().__init__(record)
        import tensorflow as tf

        if num_threads:
            try:  # only possible before TensorFlow's runtime has started
                tf.config.threading.set_intra_op_parallelism_threads(num_threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass
        self._tf = tf
        self._device = device
        try:
            with tf.device(device) if device else _null():
                self._loaded = tf.saved_model.load(str(path))
            self._fn = self._loaded.signatures["serving_default"]
        except Exception as exc:
            raise VariantLoadError(f"{path}: cannot load SavedModel ({str(exc).splitlines()[0]})") from exc
        _, kw = self._fn.structured_input_signature
        missing = [s.name for s in record.inputs if s.name not in kw]
        if missing:
            raise VariantLoadError(f"{path}: recorded inputs {missing} not in the serving signature ({list(kw)})")
        outs = self._fn.structured_outputs
        missing = [s.name for s in record.outputs if s.name not in outs]
        if missing:
            raise VariantLoadError(f"{path}: recorded outputs {missing} not in the serving signature ({list(outs)})")

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        arrays = self._check_count(inputs)
        feed = {s.name: self._tf.constant(a) for s, a in zip(self.input_specs, arrays)}
        with self._tf.device(self._device) if self._device else _null():
            out = self._fn(**feed)
        return [np.asarray(out[s.name].numpy(), dtype=np.float32) for s in self.output_specs]

    def close(self) -> None:
        self._fn = None
        self._loaded = None


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def load_variant(version_dir: Path, record: VariantRecord, num_threads: int | None = None,
                 device: str | None = None, max_shapes: int = 2, verify: bool = False) -> LoadedVariant:
    """Load ``record`` from ``version_dir``. ``device`` ("/GPU:0", "/CPU:0") is for the
    tensorflow runtime only; LiteRT variants always run on the CPU. ``verify``: refuse a file
    whose content does not match the record's sha256 (:mod:`.digest`), as the daemon does."""
    path = Path(version_dir) / record.path
    if not path.exists():
        raise VariantLoadError(f"{path}: variant file missing")
    if verify:
        problem = check_variant(Path(version_dir), record.path, record.sha256)
        if problem is not None:
            raise VariantLoadError(problem)
    if record.runtime == "litert":
        return _LiteRTVariant(path, record, num_threads, max_shapes)
    if record.runtime == "tensorflow":
        return _TensorFlowVariant(path, record, num_threads, device)
    raise VariantLoadError(f"{record.name}: unknown runtime {record.runtime!r}")
