"""The arms a policy chooses among: every (variant, placement) pair of a model whose runtimes match,
with what is known of it before it has run.

Contract
--------
* :class:`ArmSpec` is one arm's static description and prior cost (None: unknown).
* :func:`arms_from_manifests` pairs each variant of ``adaptd.manifest/1`` dicts (or objects with
  ``to_dict()``) with every placement of its runtime (placement objects or dicts with ``name``,
  ``kind``, ``cores``, ``threads``, ``runtime``), in manifest order then placement order. Latency
  and energy priors come from the structural predictor's ``predict_record`` when it knows the
  arm, else from the manifest's ``latency_ms_1thread`` median scaled by ``threads ** -0.75``
  (spread ``prior_rel_sd``, doubled off one thread), else unknown.
* :class:`ArmTable` indexes arms for a policy: ids in sorted ``(model, variant, placement)``
  order, each model's ids contiguous; it resolves a request's pins to candidates.
* Pure; units ms, mJ, bytes, accuracy as a share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .predictor import variant_records
from .request import Request, UnknownModelError, UnknownPlacementError, UnknownVariantError


@dataclass(frozen=True)
class ArmSpec:
    """One arm's static description and prior cost (None: unknown)."""

    model: str
    variant: str
    placement: str
    accuracy: float | None = None
    prior_latency_ms: float | None = None
    prior_latency_sd_ms: float | None = None
    prior_energy_mj: float | None = None
    version: str | None = None
    size_bytes: int | None = None              # the variant's file
    manifest_latency_ms: float | None = None   # the manifest's single-thread median


def attr(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def arms_from_manifests(manifests: Iterable[Any], placements: Iterable[Any], predictor: Any = None,
                        prior_rel_sd: float = 0.25) -> list[ArmSpec]:
    """Arms of every manifest x placement pair whose runtimes match (see the module's contract)."""
    placements = list(placements)
    specs = []
    for manifest in manifests:
        model, version, records = variant_records(manifest)
        for rec in records:
            runtime = rec.get("runtime", "litert")
            metrics = rec.get("metrics") or {}
            acc = metrics.get("accuracy") if isinstance(metrics, Mapping) else None
            l1 = (rec.get("latency_ms_1thread") or {}).get("median")
            for pl in placements:
                if attr(pl, "runtime", "litert") != runtime:
                    continue
                lat = sd = en = None
                pred = predictor.predict_record(rec, pl) if predictor is not None else None
                if pred is not None:
                    lat, sd, en = pred["latency_ms"], pred["latency_sd_ms"], pred["energy_mj"]
                elif l1:
                    threads = max(int(attr(pl, "threads", 1) or 1), 1)
                    lat = float(l1) * threads ** -0.75
                    sd = prior_rel_sd * lat * (1.0 if threads == 1 else 2.0)
                specs.append(ArmSpec(model=model, variant=str(rec["name"]), placement=str(attr(pl, "name")),
                                     accuracy=None if acc is None else float(acc), prior_latency_ms=lat,
                                     prior_latency_sd_ms=sd, prior_energy_mj=en, version=version,
                                     size_bytes=rec.get("size_bytes"),
                                     manifest_latency_ms=None if l1 is None else float(l1)))
    return specs


class ArmTable:
    """Arms by id, by model (a contiguous id range) and by pin."""

    def __init__(self, arms: Iterable[ArmSpec], placements: Sequence[str] | None = None) -> None:
        specs = sorted(arms, key=lambda s: (s.model, s.variant, s.placement))
        if not specs:
            raise ValueError("a policy needs at least one arm")
        keys = [(s.model, s.variant, s.placement) for s in specs]
        self.index = {k: i for i, k in enumerate(keys)}
        if len(self.index) != len(keys):
            raise ValueError("duplicate arm (model, variant, placement)")
        self.arms: tuple[ArmSpec, ...] = tuple(specs)
        self.placements: tuple[str, ...] = tuple(sorted({s.placement for s in specs} | set(placements or ())))
        self.ranges: dict[str, tuple[int, int]] = {}
        for i, s in enumerate(specs):
            lo, _ = self.ranges.get(s.model, (i, i))
            self.ranges[s.model] = (lo, i + 1)
        # (model, pin) -> model-relative indices of its arms
        self.by_variant: dict[tuple[str, str], list[int]] = {}
        self.by_placement: dict[tuple[str, str], list[int]] = {}
        for model, (lo, hi) in self.ranges.items():
            for i in range(lo, hi):
                self.by_variant.setdefault((model, specs[i].variant), []).append(i - lo)
                self.by_placement.setdefault((model, specs[i].placement), []).append(i - lo)

    def arm_id(self, model: str, variant: str, placement: str) -> int:
        try:
            return self.index[(model, variant, placement)]
        except KeyError:
            raise KeyError(f"no arm {variant} on {placement} for model {model}") from None

    def model_range(self, model: str) -> tuple[int, int]:
        try:
            return self.ranges[model]
        except KeyError:
            raise UnknownModelError(f"unknown model {model!r}") from None

    def candidates(self, r: Request, lo: int, hi: int, candidates: Sequence[int] | None) -> list[int] | None:
        """Sorted model-relative indices of the candidates, or None for all the model's arms:
        ``candidates`` (arm ids) as given, else the arms the request's pins leave."""
        if candidates is not None:
            if type(candidates) is tuple and len(candidates) == 1:   # (a request pinned to one arm)
                idx = [candidates[0] - lo]
            else:
                idx = sorted({a - lo for a in candidates})
            if not idx or idx[0] < 0 or idx[-1] >= hi - lo:
                raise ValueError(f"candidates must be arm ids of model {r.model!r}, at least one")
            return idx
        if r.variant is None and r.placement is None:
            return None
        if r.variant is not None and r.placement is not None:
            a = self.index.get((r.model, r.variant, r.placement))
            if a is not None:
                return [a - lo]
        idx = None
        if r.variant is not None:
            idx = self.by_variant.get((r.model, r.variant))
            if idx is None:
                raise UnknownVariantError(f"model {r.model!r} has no variant {r.variant!r}")
        if r.placement is not None:
            on = self.by_placement.get((r.model, r.placement))
            if on is None:
                raise UnknownPlacementError(f"no placement {r.placement!r} can run model {r.model!r}")
            idx = on if idx is None else sorted(set(idx) & set(on))
            if not idx:
                raise UnknownPlacementError(f"placement {r.placement!r} cannot run variant {r.variant!r}")
        return idx
