"""Structural description of a ``.tflite`` graph, for the selector's cost predictor.

``describe_tflite(path)`` reads the graph through LiteRT's interpreter (built without the
default delegates, so the op list is the model's own, not XNNPACK's partitions) and returns::

    {"flops": int, "params": int, "nonzero_params": int, "weight_bytes": int,
     "activation_bytes": int, "ops": {op_name: count}, "op_flops": {op_name: flops},
     "compute_dtype": "float32" | "float16" | "int8" | "mixed",
     "delegate_partitions": int | None, "layers": [layer, ...]}

at the recorded input shape (batch 1). Conventions:

* flops: 2 x multiply-accumulates for CONV_2D, CONV_3D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV,
  FULLY_CONNECTED and BATCH_MATMUL; the output element count for every other op, except the
  pure shape ops (RESHAPE, SHAPE, SQUEEZE, EXPAND_DIMS), which count 0.
* params: elements of the constant tensors that are weights or biases of those MAC ops
  (a float16 or int8 weight behind a DEQUANTIZE counts once, in its stored type);
  nonzero_params and weight_bytes are over the same tensors.
* activation_bytes: bytes of all non-constant tensors (an upper bound on the arena; LiteRT
  reuses buffers).
* layers: one record per distinct kernel of the graph, in first-execution order (the unit of a
  kernel-level cost model in the spirit of nn-Meter)::

      {"op": "CONV_2D", "dtype": "float32" | "float16" | "mixed" | "int8" | ...,
       "in_shapes": [[1, 56, 56, 32]], "out_shape": [1, 28, 28, 64], "kernel": [3, 3],
       "stride": [2, 2], "flops": int, "weight_bytes": int, "act_bytes": int, "count": int,
       "delegated": bool | None}

  dtype is the op's compute dtype (as compute_dtype for MAC ops; otherwise the dtype of its
  first activation input); in_shapes are the shapes of the non-constant inputs (the first two,
  with ``n_inputs`` when there are more); kernel is the filter's spatial size (conv ops only,
  key absent otherwise); stride is inferred from input and output spatial sizes for conv and
  pooling ops (TFLite's op details do not carry options; absent otherwise); flops as above; weight_bytes
  the stored bytes of its constant inputs; act_bytes the bytes of its non-constant inputs and
  outputs (the traffic of a kernel that reads and writes each once); delegated whether LiteRT's
  default CPU delegate (XNNPACK) takes the op (found by building the interpreter with node
  fusion disabled, so each delegated op is its own delegate node), None where no default
  delegate applies. Identical kernels (same op, dtype, shapes, delegation) are merged with a
  ``count`` (repeated blocks of ResNet and NASNet collapse; see docs/manifest.md for sizes).
  DEQUANTIZE ops of constants (folded at load) and the pure shape ops are not listed.
* delegate_partitions: the number of delegate nodes LiteRT's default delegate makes of the
  graph (each boundary with a builtin kernel costs a switch); None without a default delegate.
* compute_dtype: per MAC op, "int8" when its activation input is 8-bit, "mixed" when the
  activation is float but the weight 8-bit (dynamic range), "float16" when the stored weight
  is float16, else "float32"; the model's value is the common one, or "mixed".

``prunable_sparsity(path)`` counts zeros in the constant weight tensors (not biases) of the
MAC ops, following DEQUANTIZE to the stored tensor: this is the sparsity a variant achieved,
measured from the file. Both functions are pure, import no TensorFlow, and raise
``ValueError`` for a file LiteRT cannot read.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

MAC_OPS = {"CONV_2D", "CONV_3D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL"}
FREE_OPS = {"RESHAPE", "SHAPE", "SQUEEZE", "EXPAND_DIMS"}
_8BIT = ("int8", "uint8")


class _Graph:
    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        try:
            it = Interpreter(
                model_path=str(path),
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                num_threads=1,
            )
            it.allocate_tensors()
        except Exception as exc:  # LiteRT raises ValueError/RuntimeError with long text
            raise ValueError(f"{path}: not a readable .tflite model ({str(exc).splitlines()[0]})") from exc
        self.it = it
        self.ops = it._get_ops_details()
        self.tensors = {t["index"]: t for t in it.get_tensor_details()}
        produced = {int(o) for op in self.ops for o in op["outputs"]}
        graph_inputs = {d["index"] for d in it.get_input_details()}
        self.producer = {int(o): op for op in self.ops for o in op["outputs"]}
        self.constants = {i for i in self.tensors if i not in produced and i not in graph_inputs}

    def dtype(self, i: int) -> str:
        return np.dtype(self.tensors[i]["dtype"]).name

    def elements(self, i: int) -> int:
        return int(np.prod(self.tensors[i]["shape"])) if len(self.tensors[i]["shape"]) else 1

    def nbytes(self, i: int) -> int:
        return self.elements(i) * np.dtype(self.tensors[i]["dtype"]).itemsize

    def stored(self, i: int) -> int | None:
        """The constant tensor behind ``i`` (through DEQUANTIZE), or None if not constant."""
        seen = 0
        while i not in self.constants:
            op = self.producer.get(i)
            if op is None or op["op_name"] != "DEQUANTIZE" or seen > 4:
                return None
            i = int(op["inputs"][0])
            seen += 1
        return i

    def value(self, i: int) -> np.ndarray:
        return self.it.get_tensor(i)

    def weight_inputs(self, op: dict) -> tuple[list[int], list[int]]:
        """(weight tensor ids, bias tensor ids) of a MAC op, as stored constants."""
        ins = [int(i) for i in op["inputs"] if int(i) >= 0]
        name = op["op_name"]
        if name == "TRANSPOSE_CONV":
            w, b = ins[1:2], ins[3:4]
        elif name == "BATCH_MATMUL":
            w, b = ins[:2], []
        else:
            w, b = ins[1:2], ins[2:3]
        ws = [s for s in (self.stored(i) for i in w) if s is not None]
        bs = [s for s in (self.stored(i) for i in b) if s is not None]
        return ws, bs


def _mac_count(g: _Graph, op: dict) -> int:
    name = op["op_name"]
    ins = [int(i) for i in op["inputs"] if int(i) >= 0]
    out = int(op["outputs"][0])
    out_elems = g.elements(out)
    if name == "CONV_2D":  # filter [cout, kh, kw, cin]
        _, kh, kw, cin = g.tensors[ins[1]]["shape"]
        return out_elems * int(kh) * int(kw) * int(cin)
    if name == "CONV_3D":  # filter [kd, kh, kw, cin, cout]
        kd, kh, kw, cin, _ = g.tensors[ins[1]]["shape"]
        return out_elems * int(kd) * int(kh) * int(kw) * int(cin)
    if name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, cout]
        _, kh, kw, _ = g.tensors[ins[1]]["shape"]
        return out_elems * int(kh) * int(kw)
    if name == "TRANSPOSE_CONV":  # inputs: output_shape, filter [cout, kh, kw, cin], input
        cout, kh, kw, _ = g.tensors[ins[1]]["shape"]
        return g.elements(ins[2]) * int(kh) * int(kw) * int(cout)
    if name == "FULLY_CONNECTED":  # weights [out, in]
        return out_elems * int(g.tensors[ins[1]]["shape"][-1])
    if name == "BATCH_MATMUL":
        return out_elems * int(g.tensors[ins[0]]["shape"][-1])
    return 0


def _op_compute_dtype(g: _Graph, op: dict) -> str:
    ins = [int(i) for i in op["inputs"] if int(i) >= 0]
    act = ins[2] if op["op_name"] == "TRANSPOSE_CONV" else ins[0]
    if g.dtype(act) in _8BIT:
        return "int8"
    ws, _ = g.weight_inputs(op)
    wdt = {g.dtype(w) for w in ws}
    if wdt & set(_8BIT):
        return "mixed"
    if "float16" in wdt:
        return "float16"
    return "float32"


_SPATIAL_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "L2_POOL_2D"}
_SHAPE_OPS = FREE_OPS | {"PACK", "STRIDED_SLICE"}
_MAX_IN_SHAPES = 2  # a concatenation of many inputs lists the first two and n_inputs


def _layer(g: _Graph, op: dict, flops: int) -> dict[str, Any] | None:
    """The kernel record of one op (see the module docstring), or None for ops that cost
    nothing per inference."""
    name = op["op_name"]
    ins = [int(i) for i in op["inputs"] if int(i) >= 0]
    outs = [int(o) for o in op["outputs"] if int(o) >= 0]
    if name in _SHAPE_OPS or (name == "DEQUANTIZE" and ins and g.stored(ins[0]) is not None):
        return None
    acts = [i for i in ins if g.stored(i) is None]
    consts = [g.stored(i) for i in ins if g.stored(i) is not None]
    if name == "TRANSPOSE_CONV":  # the output_shape input is a constant, not a weight
        acts = ins[2:3]
    dtype = _op_compute_dtype(g, op) if name in MAC_OPS else g.dtype(acts[0] if acts else outs[0])
    out_shape = [int(d) for d in g.tensors[outs[0]]["shape"]] if outs else []
    in_shapes = [[int(d) for d in g.tensors[i]["shape"]] for i in acts[:_MAX_IN_SHAPES]]
    kernel = stride = None
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"):
        kernel = [int(d) for d in g.tensors[ins[1]]["shape"][1:3]]
    if name in _SPATIAL_OPS and in_shapes and len(in_shapes[0]) == 4 and len(out_shape) == 4:
        stride = [max(1, round(in_shapes[0][a] / max(1, out_shape[a]))) for a in (1, 2)]
    rec = {"op": name, "dtype": dtype, "in_shapes": in_shapes, "out_shape": out_shape, "kernel": kernel,
           "stride": stride, "flops": int(flops), "weight_bytes": int(sum(g.nbytes(i) for i in set(consts))),
           "act_bytes": int(sum(g.nbytes(i) for i in acts + outs)), "count": 1}
    if len(acts) > _MAX_IN_SHAPES:
        rec["n_inputs"] = len(acts)
    return {k: v for k, v in rec.items() if v is not None}


def _delegation(path: Path) -> tuple[set[tuple[int, ...]] | None, int | None]:
    """(output tensor tuples of the ops LiteRT's default CPU delegate (XNNPACK) takes, number of
    delegate partitions), or (None, None) where the default delegate cannot be applied."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        single = Interpreter(model_path=str(path), num_threads=1, experimental_disable_delegate_node_fusion=True)
        fused = Interpreter(model_path=str(path), num_threads=1)
        single.allocate_tensors()  # the default delegate is applied here
        fused.allocate_tensors()
        taken = {tuple(int(x) for x in op["outputs"]) for op in single._get_ops_details() if op["op_name"] == "DELEGATE"}
        partitions = sum(op["op_name"] == "DELEGATE" for op in fused._get_ops_details())
    except (ValueError, RuntimeError):  # no default delegate in this build: builtin kernels only
        return None, None
    return taken, int(partitions)


def describe_tflite(path: Path) -> dict[str, Any]:
    """The structural description of the model at ``path`` (see the module docstring)."""
    g = _Graph(Path(path))
    taken, partitions = _delegation(Path(path))
    ops: Counter[str] = Counter()
    op_flops: Counter[str] = Counter()
    param_ids: set[int] = set()
    dtypes: set[str] = set()
    layers: dict[tuple, dict[str, Any]] = {}
    for op in g.ops:
        name = op["op_name"]
        ops[name] += 1
        if name in MAC_OPS:
            fl = 2 * _mac_count(g, op)
            ws, bs = g.weight_inputs(op)
            param_ids.update(ws + bs)
            dtypes.add(_op_compute_dtype(g, op))
        elif name in FREE_OPS:
            fl = 0
        else:
            fl = sum(g.elements(int(o)) for o in op["outputs"])
        op_flops[name] += fl
        rec = _layer(g, op, fl)
        if rec is not None:
            rec["delegated"] = None if taken is None else tuple(int(x) for x in op["outputs"]) in taken
            key = (rec["op"], rec["dtype"], rec["delegated"], repr(rec["in_shapes"]), repr(rec["out_shape"]),
                   repr(rec.get("kernel")), repr(rec.get("stride")), rec["flops"], rec["weight_bytes"], rec["act_bytes"])
            if key in layers:
                layers[key]["count"] += 1
            else:
                layers[key] = rec
    params = sum(g.elements(i) for i in param_ids)
    nonzero = sum(int(np.count_nonzero(g.value(i))) for i in param_ids)
    weight_bytes = sum(g.nbytes(i) for i in param_ids)
    activation_bytes = sum(g.nbytes(i) for i in g.tensors if i not in g.constants)
    compute_dtype = dtypes.pop() if len(dtypes) == 1 else ("mixed" if dtypes else "float32")
    return {
        "flops": int(sum(op_flops.values())),
        "params": int(params),
        "nonzero_params": int(nonzero),
        "weight_bytes": int(weight_bytes),
        "activation_bytes": int(activation_bytes),
        "ops": dict(sorted(ops.items())),
        "op_flops": {k: int(v) for k, v in sorted(op_flops.items())},
        "compute_dtype": compute_dtype,
        "delegate_partitions": partitions,
        "layers": list(layers.values()),
    }


def prunable_sparsity(path: Path) -> tuple[float, int, int]:
    """``(sparsity, zeros, total)`` over the MAC ops' constant weight tensors in the file."""
    g = _Graph(Path(path))
    ids: set[int] = set()
    for op in g.ops:
        if op["op_name"] in MAC_OPS:
            ws, _ = g.weight_inputs(op)
            ids.update(ws)
    total = sum(g.elements(i) for i in ids)
    zeros = total - sum(int(np.count_nonzero(g.value(i))) for i in ids)
    return (zeros / total if total else 0.0), int(zeros), int(total)
