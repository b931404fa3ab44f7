"""Structural cost predictor: an arm's latency and energy from its variant's graph, before it
has ever run (the cold-start prior of the online cost model).

Contract
--------
* scikit-learn shape: hyper-parameters in ``__init__``; ``fit(records)`` learns per-placement
  coefficients and returns self; ``predict``/``predict_record`` are pure; learned state ends in
  ``_``; ``to_dict``/``from_dict`` round-trip the fitted state through plain JSON types.
* Pure: numpy only; :mod:`.fit` evaluates and fits it on a device's calibration records and reads
  a stored calibration back; ``adaptd calibrate`` (:mod:`adaptd.variants.calibrate`) profiles.
* Thread safety: a fitted predictor is read-only and may be shared.
* Units: latency ms, energy mJ, power W (= mJ/ms), FLOPs as counted by the manifest (a
  multiply-add = 2), bytes.

Model (in the spirit of FastDeepIoT and nn-Meter)
-------------------------------------------------
Per placement, latency is a non-negative combination of interpretable terms:

    latency_ms = sum_{g, c} a[g, c] * MFLOP[g, c]  +  b * n_ops  +  c0
                 [ + m_w * weight_MB + m_a * activation_MB   when memory_terms=True ]

where g is the op group (``conv`` = conv/transposed conv, ``dw`` = depthwise conv, ``fc`` =
fully connected / matmul, ``other`` = everything else) and c the compute class from the variant's
quantization (``f32``: none or float16 — LiteRT runs float16-stored weights in float32; ``hybrid``:
dynamic-range int8; ``int8``: full integer). Each a[g, c] is ms per MFLOP of that op kind at that
precision on that placement, b the per-op dispatch overhead (ops that cost nothing per inference, ``FREE_OPS``, are not
counted), m_* the memory-traffic terms: off by default, because on the development zoo they
raised the held-out error (few models, and XNNPACK's packed weights make weight bytes a poor
proxy for traffic); the calibration pass reports the held-out figure either way. The
fit minimises *relative* error (rows weighted by 1/latency) by non-negative least squares
(Lawson-Hanson), so coefficients stay physical and the model extrapolates sanely to unseen
graphs. Sparsity is not a feature: LiteRT stores pruned weights densely, so they run at dense
speed (XNNPACK has no sparse kernels for these graphs); a sparse runtime would add a term here.

Kernel-level model (nn-Meter style), used where the variant's ``structure`` has ``layers``
-----------------------------------------------------------------------------------------
Each kernel (a ``structure["layers"]`` record, TFLite op with fused activation, times its
``count``) costs, per placement, a non-negative combination of its own features; the variant's
latency is the sum over kernels:

    delegated to XNNPACK (``delegated`` true or unknown):
        conv / fully connected   a_mac[c] * MFLOP
        depthwise conv           a_dw[c] * MFLOP
        any other op             m_other[c] * activation MB (bytes read + written)
        every kernel             b * 1  +  w * weight MB (float16 weights count as float32:
                                 XNNPACK unpacks them at load)
    left to LiteRT's builtin kernels (``delegated`` false: hybrid depthwise conv, int8
    hard-swish / average pool / ReLU / concatenation, dynamic reshapes):
        MAC ops                  u_mac * MFLOP
        other ops                u_other[c] * activation MB
        every kernel             u_n * 1
    plus p * delegate_partitions (each switch between XNNPACK and builtin kernels) + c0,

with c the kernel's compute class (its ``dtype``: int8 -> ``int8``, float activations with 8-bit
weights -> ``hybrid``, else ``f32``). The same fit (relative error, NNLS, ridge) as the totals
model; both are fitted per placement, and a variant without ``layers`` (an older manifest) is
predicted by the totals model. On the development zoo the kernel-level model cut the held-out
error of the totals model by a third (median 9.5% against 14.6%; BENCHMARKS.md, "How well does
the cost model predict a model it has never run?"); which LiteRT kernels run each op, not only
FLOPs, is what decides latency there.

Energy: where calibration records carry a measured energy, a per-placement mean power (W) is
fitted (median of energy/latency) and energy = power x predicted latency, flagged estimated;
without any, energy is None.

Unknown placements: the calibrated placement of the same kind with the nearest thread count,
latency scaled by ``(t_cal / t) ** thread_exponent``; none of that kind: no prediction (None).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

SCHEMA = "adaptd.predictor/1"
GROUPS = ("conv", "dw", "fc", "other")
CLASSES = ("f32", "hybrid", "int8")
FEATURE_NAMES = tuple(f"mflop_{g}_{c}" for c in CLASSES for g in GROUPS) + (
    "n_ops", "weight_mb", "activation_mb", "const")
LAYER_FEATURE_NAMES = (tuple(f"mflop_mac_{c}" for c in CLASSES) + tuple(f"mflop_dw_{c}" for c in CLASSES)
                       + tuple(f"act_mb_other_{c}" for c in CLASSES)
                       + ("n_kernels", "weight_mb", "builtin_mflop_mac")
                       + tuple(f"builtin_act_mb_other_{c}" for c in CLASSES)
                       + ("builtin_n_kernels", "delegate_partitions", "const"))


def variant_records(manifest: Any) -> tuple[str, str | None, list[dict]]:
    """(model, version, variant records) of one ``adaptd.manifest/1`` dict (or an object with
    ``to_dict()`` giving one): ``variants`` may be a list of records or a map name -> record."""
    if not isinstance(manifest, Mapping) and hasattr(manifest, "to_dict"):
        manifest = manifest.to_dict()
    model = manifest.get("model") or manifest.get("name")
    if not model:
        raise ValueError("manifest has no model name ('model' or 'name')")
    version = manifest.get("version")
    variants = manifest.get("variants") or []
    if isinstance(variants, Mapping):
        recs = [dict(v, name=v.get("name", k)) for k, v in variants.items()]
    else:
        recs = [dict(v) for v in variants]
    return str(model), None if version is None else str(version), recs


def op_group(op_name: str) -> str:
    """Map an op name (TFLite builtin like ``DEPTHWISE_CONV_2D`` or a Keras layer class like
    ``DepthwiseConv2D``) to its group."""
    n = re.sub(r"[^A-Z0-9]", "", op_name.upper())
    if "DEPTHWISE" in n:
        return "dw"
    if "CONV" in n:
        return "conv"
    if "FULLYCONNECTED" in n or "DENSE" in n or "MATMUL" in n or n == "EINSUM":
        return "fc"
    return "other"


def compute_class(quantization: str | None, compute_dtype: str | None = None) -> str:
    q = (quantization or "").lower()
    if q in ("none", "float16", "float32", "fp16", "fp32"):
        return "f32"
    if q in ("dynamic_int8", "dynamic", "int8_dynamic"):
        return "hybrid"
    if q in ("full_int8", "int8", "int8_full"):
        return "int8"
    d = (compute_dtype or "float32").lower()
    return {"int8": "int8", "mixed": "hybrid"}.get(d, "f32")


# Ops that cost nothing per inference: shape bookkeeping, and DEQUANTIZE of constant weights
# (float16-stored variants), which LiteRT folds once at load time.
FREE_OPS = frozenset({"DEQUANTIZE", "RESHAPE", "SHAPE", "SQUEEZE", "EXPAND_DIMS", "PACK", "STRIDED_SLICE"})


def feature_names(memory_terms: bool = False) -> tuple[str, ...]:
    return FEATURE_NAMES if memory_terms else tuple(n for n in FEATURE_NAMES if not n.endswith("_mb"))


def features(structure: Mapping[str, Any], quantization: str | None, memory_terms: bool = False) -> np.ndarray:
    """The feature vector (``feature_names(memory_terms)`` order) of one variant's ``structure``."""
    x = np.zeros(len(FEATURE_NAMES))
    cls = compute_class(quantization, structure.get("compute_dtype"))
    ci = CLASSES.index(cls)
    op_flops = structure.get("op_flops") or {}
    if op_flops:
        for name, fl in op_flops.items():
            if name.upper() in FREE_OPS:
                continue
            x[ci * len(GROUPS) + GROUPS.index(op_group(name))] += float(fl) / 1e6
    else:  # no per-op split: count everything as conv
        x[ci * len(GROUPS)] += float(structure.get("flops") or 0) / 1e6
    base = len(CLASSES) * len(GROUPS)
    x[base + 0] = float(sum(c for n, c in (structure.get("ops") or {}).items() if n.upper() not in FREE_OPS))
    x[base + 1] = float(structure.get("weight_bytes") or 0) / 1e6
    x[base + 2] = float(structure.get("activation_bytes") or 0) / 1e6
    x[base + 3] = 1.0
    if not memory_terms:
        x = np.delete(x, [base + 1, base + 2])
    return x


def layer_class(layer: Mapping[str, Any], quantization: str | None = None) -> str:
    """Compute class of one kernel record: ``int8`` for 8-bit activations; ``hybrid`` for a MAC op
    with 8-bit weights on float activations, and for every MAC op of a dynamic-range variant (its
    few float-weight MAC ops, too small for the converter to quantize, are counted with the
    hybrid ones: fitted better on the development zoo); else ``f32``."""
    d = str(layer.get("dtype") or "").lower()
    if d in ("int8", "uint8", "int16"):
        return "int8"
    if d == "mixed":
        return "hybrid"
    if op_group(str(layer.get("op", ""))) != "other" and compute_class(quantization) == "hybrid":
        return "hybrid"
    if not d:
        return compute_class(quantization) if op_group(str(layer.get("op", ""))) != "other" else "f32"
    return "f32"


def layer_features(structure: Mapping[str, Any], quantization: str | None = None) -> np.ndarray | None:
    """The kernel-level feature vector (``LAYER_FEATURE_NAMES`` order) of a ``structure`` with
    ``layers``; None without them."""
    layers = structure.get("layers")
    if not layers:
        return None
    ix = {n: i for i, n in enumerate(LAYER_FEATURE_NAMES)}
    x = np.zeros(len(LAYER_FEATURE_NAMES))
    for layer in layers:
        op = str(layer.get("op", "")).upper()
        if op in FREE_OPS and op != "DEQUANTIZE":  # describe_tflite lists DEQUANTIZE of activations only
            continue
        n = float(layer.get("count", 1) or 1)
        g = op_group(op)
        c = layer_class(layer, quantization)
        mflop = n * float(layer.get("flops") or 0) / 1e6
        act_mb = n * float(layer.get("act_bytes") or 0) / 1e6
        if layer.get("delegated") is False:
            if g == "other":
                x[ix[f"builtin_act_mb_other_{c}"]] += act_mb
            else:
                x[ix["builtin_mflop_mac"]] += mflop
            x[ix["builtin_n_kernels"]] += n
            continue
        if g == "dw":
            x[ix[f"mflop_dw_{c}"]] += mflop
        elif g == "other":
            x[ix[f"act_mb_other_{c}"]] += act_mb
        else:
            x[ix[f"mflop_mac_{c}"]] += mflop
        wmul = 2.0 if str(layer.get("dtype", "")).lower() == "float16" else 1.0
        x[ix["weight_mb"]] += n * wmul * float(layer.get("weight_bytes") or 0) / 1e6
        x[ix["n_kernels"]] += n
    x[ix["delegate_partitions"]] = float(structure.get("delegate_partitions") or 0)
    x[ix["const"]] = 1.0
    return x


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Non-negative least squares, min ||a x - b|| s.t. x >= 0 (Lawson & Hanson, 1974)."""
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = a.T @ (b - a @ x)
    tol = 10 * np.finfo(float).eps * np.linalg.norm(a, 1) * max(m, n)
    it = 0
    max_iter = max_iter or 3 * n
    while (~passive).any() and (w[~passive] > tol).any() and it < max_iter:
        it += 1
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            s = np.zeros(n)
            s[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (s[passive] > tol).all():
                break
            neg = passive & (s <= tol)
            alpha = np.min(x[neg] / (x[neg] - s[neg]))
            x = x + alpha * (s - x)
            passive &= x > tol
            x[~passive] = 0.0
            if not passive.any():
                break
        x = s if passive.any() else x
        w = a.T @ (b - a @ x)
    return np.clip(x, 0.0, None)


def _pl(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


class StructuralPredictor:
    """Per-placement non-negative linear latency model over graph features, plus a power model."""

    def __init__(self, *, ridge: float = 1e-6, thread_exponent: float = 0.75, min_rel_sd: float = 0.05,
                 memory_terms: bool = False, kernel_model: bool = True) -> None:
        self.ridge = ridge
        self.kernel_model = kernel_model
        self.memory_terms = memory_terms
        self.thread_exponent = thread_exponent
        self.min_rel_sd = min_rel_sd

    # ------------------------------------------------------------------ fitting
    def fit(self, records: Iterable[Mapping[str, Any]]) -> StructuralPredictor:
        """Learn from calibration records: dicts with ``structure`` (manifest dict),
        ``quantization``, ``placement`` (name), ``placement_kind``, ``threads``, ``latency_ms``
        and optionally ``energy_mj``. Returns self."""
        by_pl: dict[str, list[Mapping[str, Any]]] = {}
        for r in records:
            by_pl.setdefault(str(r["placement"]), []).append(r)
        if not by_pl:
            raise ValueError("no calibration records")
        self.placements_: dict[str, dict] = {}
        for name, recs in sorted(by_pl.items()):
            y = np.array([float(r["latency_ms"]) for r in recs])
            if (y <= 0).any() or not np.isfinite(y).all():
                raise ValueError(f"latencies must be finite and > 0 (placement {name})")
            x = np.stack([features(r["structure"], r.get("quantization"), self.memory_terms) for r in recs])
            coef, rel = self._fit_relative(x, y)
            powers = [float(r["energy_mj"]) / float(r["latency_ms"]) for r in recs
                      if r.get("energy_mj") is not None and math.isfinite(float(r["energy_mj"]))]
            entry = {
                "kind": str(recs[0].get("placement_kind", "cpu")),
                "threads": int(recs[0].get("threads", 1)),
                "coef": [float(c) for c in coef],
                "rel_sd": float(max(np.sqrt(np.mean(rel ** 2)), self.min_rel_sd)),
                "train_mape": float(np.median(rel)),
                "power_w": float(np.median(powers)) if powers else None,
                "n": len(y),
            }
            # the kernel-level model, from the records whose structure lists its kernels
            lx = [layer_features(r["structure"], r.get("quantization")) if self.kernel_model else None
                  for r in recs]
            keep = [i for i, v in enumerate(lx) if v is not None]
            if keep:
                lcoef, lrel = self._fit_relative(np.stack([lx[i] for i in keep]), y[keep])
                entry.update({"layer_coef": [float(c) for c in lcoef],
                              "layer_rel_sd": float(max(np.sqrt(np.mean(lrel ** 2)), self.min_rel_sd)),
                              "layer_train_mape": float(np.median(lrel)), "layer_n": len(keep)})
            self.placements_[name] = entry
        return self

    def _fit_relative(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Non-negative coefficients minimising the relative error of ``x @ coef`` against ``y``
        (rows weighted by 1/y, columns scaled to unit norm, a touch of ridge); (coef, |rel err|)."""
        xw = x / y[:, None]
        scale = np.linalg.norm(xw, axis=0)
        scale[scale == 0] = 1.0
        xs = xw / scale
        if self.ridge > 0:  # keeps the problem well posed with few records
            k = xs.shape[1]
            xs = np.vstack([xs, math.sqrt(self.ridge) * np.eye(k)])
            target = np.concatenate([np.ones(len(y)), np.zeros(k)])
        else:
            target = np.ones(len(y))
        coef = nnls(xs, target) / scale
        return coef, np.abs(x @ coef - y) / y

    # ------------------------------------------------------------------ predicting
    def _resolve(self, placement: Any) -> tuple[dict, float] | None:
        name = str(_pl(placement, "name", placement) if not isinstance(placement, str) else placement)
        if name in self.placements_:
            return self.placements_[name], 1.0
        if isinstance(placement, str):
            return None
        kind = _pl(placement, "kind", "cpu")
        threads = int(_pl(placement, "threads", 1) or 1)
        same = [(abs(p["threads"] - threads), n) for n, p in self.placements_.items() if p["kind"] == kind]
        if not same:
            return None
        _, best = min(same)
        p = self.placements_[best]
        return p, (p["threads"] / threads) ** self.thread_exponent

    def predict(self, structure: Mapping[str, Any], quantization: str | None, placement: Any) -> dict | None:
        """{latency_ms, latency_sd_ms, energy_mj (or None), energy_estimated} for a variant's
        ``structure`` on ``placement`` (a calibrated placement name, or an object/dict with name,
        kind, threads); None when no calibrated placement resembles it."""
        res = self._resolve(placement)
        if res is None:
            return None
        p, factor = res
        lx = layer_features(structure, quantization) if p.get("layer_coef") is not None else None
        if lx is not None:
            lat, rel_sd = float(lx @ np.asarray(p["layer_coef"])), p["layer_rel_sd"]
        else:  # no kernel records (older manifest) or no kernel-level fit: the totals model
            lat, rel_sd = float(features(structure, quantization, self.memory_terms) @ np.asarray(p["coef"])), p["rel_sd"]
        lat = max(lat * factor, 1e-3)
        sd = lat * rel_sd * (1.0 if factor == 1.0 else 2.0)
        energy = None if p["power_w"] is None else p["power_w"] * lat
        return {"latency_ms": lat, "latency_sd_ms": sd, "energy_mj": energy, "energy_estimated": True}

    def predict_record(self, record: Mapping[str, Any], placement: Any) -> dict | None:
        """``predict`` from a manifest variant record (None if it has no ``structure``)."""
        structure = record.get("structure")
        if not structure:
            return None
        return self.predict(structure, record.get("quantization"), placement)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "params": {"ridge": self.ridge, "thread_exponent": self.thread_exponent,
                       "min_rel_sd": self.min_rel_sd, "memory_terms": self.memory_terms,
                       "kernel_model": self.kernel_model},
            "feature_names": list(feature_names(self.memory_terms)),
            "layer_feature_names": list(LAYER_FEATURE_NAMES),
            "placements": {k: dict(v) for k, v in self.placements_.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StructuralPredictor:
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} dict (schema {d.get('schema')!r})")
        self = cls(**d.get("params", {}))
        if list(d.get("feature_names", [])) != list(feature_names(self.memory_terms)):
            raise ValueError("predictor was fitted with a different feature set; recalibrate")
        placements = {k: dict(v) for k, v in d["placements"].items()}
        if list(d.get("layer_feature_names", [])) != list(LAYER_FEATURE_NAMES):
            for v in placements.values():  # an older or different kernel model: the totals model only
                v.pop("layer_coef", None)
        self.placements_ = placements
        return self
