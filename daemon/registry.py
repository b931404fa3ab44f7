"""The loaded model repository: which models, versions and variants the daemon serves.

Contract
--------
* :func:`load_registry` scans ``REPO/<model>/<version>/manifest.json`` (versions are decimal
  directory names; names starting with ``.`` are in-progress builds and are skipped) and returns
  an immutable :class:`Registry`. It reads manifests only: no interpreter, no TensorFlow.
* A reload builds a new Registry and the daemon swaps it in one assignment; requests that
  already hold the old one finish on it (their jobs name the old version directory).
* A manifest that fails validation makes the whole load fail with :class:`RegistryError` naming
  the file, so a reload never half-applies.
* Every variant's file is checked against its manifest's sha256 (:mod:`adaptd.variants.digest`,
  remembered for unchanged files). A variant whose file does not match is *refused*: it gets no
  arm, :attr:`ModelVersion.refused` says why (naming the file), the loader logs it, and the
  model's other variants serve.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptd.daemon.placements import Placement
from adaptd.variants.digest import check_variant
from adaptd.variants.manifest import MANIFEST_FILE, Manifest, ManifestError, VariantRecord, load_manifest

log = logging.getLogger("adaptd.registry")


class RegistryError(Exception):
    pass


@dataclass(frozen=True)
class Arm:
    """A variant on a placement."""

    variant: VariantRecord
    placement: Placement

    @property
    def key(self) -> tuple[str, str]:
        return (self.variant.name, self.placement.name)

    @property
    def accuracy(self) -> float | None:
        return self.variant.metrics.accuracy if self.variant.metrics else None


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    directory: Path
    manifest: Manifest
    variants: Mapping[str, VariantRecord]
    arms: tuple[Arm, ...]
    refused: Mapping[str, str] = field(default_factory=dict)   # variant -> why it is not served

    def arm(self, variant: str, placement: str) -> Arm | None:
        for a in self.arms:
            if a.variant.name == variant and a.placement.name == placement:
                return a
        return None

    def describe(self, versions: Iterable[str]) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "versions": sorted(versions, key=int),
            "variants": [{
                "name": v.name, "kind": v.kind, "runtime": v.runtime, "quantization": v.quantization,
                "sparsity": v.sparsity, "size_bytes": v.size_bytes, "memory_bytes": v.memory_bytes,
                "accuracy": v.metrics.accuracy if v.metrics else None,
                "f1_macro": v.metrics.f1_macro if v.metrics else None,
                "inputs": [t.to_dict() for t in v.inputs], "outputs": [t.to_dict() for t in v.outputs],
                "servable": v.name not in self.refused, "refused": self.refused.get(v.name),
            } for v in self.variants.values()],
        }


@dataclass(frozen=True)
class Registry:
    root: Path
    generation: int
    models: Mapping[str, Mapping[str, ModelVersion]]   # name -> version -> entry

    def get(self, name: str, version: str | None) -> ModelVersion | None:
        versions = self.models.get(name)
        if not versions:
            return None
        if version is None:
            return versions[max(versions, key=int)]
        return versions.get(version)

    def directories(self) -> set[str]:
        return {str(mv.directory) for vs in self.models.values() for mv in vs.values()}

    def newest(self) -> list[ModelVersion]:
        return [vs[max(vs, key=int)] for vs in self.models.values()]


def load_registry(root: Path, placements: Iterable[Placement], generation: int) -> Registry:
    root = Path(root)
    if not root.is_dir():
        raise RegistryError(f"model repository {root} is not a directory")
    placements = list(placements)
    models: dict[str, dict[str, ModelVersion]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
            path = version_dir / MANIFEST_FILE
            if not path.exists():
                continue
            try:
                manifest = load_manifest(version_dir)
            except (ManifestError, OSError, ValueError) as exc:
                raise RegistryError(f"{path}: {exc}") from None
            variants = {v.name: v for v in manifest.variants}
            refused = {}
            for v in manifest.variants:
                problem = check_variant(version_dir, v.path, v.sha256)
                if problem is not None:
                    refused[v.name] = problem
                    log.error("%s:%s: variant %s refused: %s", manifest.model, version_dir.name, v.name, problem)
            arms = tuple(Arm(v, p) for v in manifest.variants if v.name not in refused
                         for p in placements if p.runtime == v.runtime)
            models.setdefault(manifest.model, {})[version_dir.name] = ModelVersion(
                manifest.model, version_dir.name, version_dir.resolve(), manifest, variants, arms, refused)
    return Registry(root.resolve(), generation, models)
