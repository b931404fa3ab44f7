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
  remembered for unchanged files). A variant whose file does not match is refused: it has no arm,
  its reason names the file, and the load logs it as an error; the model's other variants serve.
* A variant no placement can run (its runtime is not among the placements', e.g. a ``float32_tf``
  variant where there is no TensorFlow placement) has no arm either: it is never selected. The load
  records why in ``ModelVersion.unservable`` and logs it once (a warning per variant per load,
  i.e. at start and at each reload); ``models`` shows it per variant (``servable``,
  ``unservable_reason``) and ``explain`` lists it (:meth:`ModelVersion.describe_unservable`).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Iterable, Mapping, Sequence
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
    unservable: Mapping[str, str] = field(default_factory=dict)   # variant -> why it is not served

    @functools.cached_property
    def version_dir(self) -> str:
        """``directory`` as the string jobs and executors name the version by, made once (a
        ``Path``'s ``str`` is Python code, and every job names its version)."""
        return str(self.directory)

    @functools.cached_property
    def key(self) -> str:
        """``name:version``, the selector's name for this version, made once (asked per request)."""
        return f"{self.name}:{self.version}"

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
                "servable": v.name not in self.unservable, "unservable_reason": self.unservable.get(v.name),
            } for v in self.variants.values()],
        }

    def describe_unservable(self) -> list[dict[str, str]]:
        """The variants not served (refused files, runtimes no placement has), each ``{variant,
        reason}`` (``explain``'s ``unservable``: variants it did not consider)."""
        return [{"variant": name, "reason": why} for name, why in self.unservable.items()]

    def no_arm_reason(self, variant: str | None, placement: str | None) -> str:
        """Why a request pinned to ``variant`` and/or ``placement`` has no arm to run."""
        if variant is not None and placement is not None:
            return f"placement {placement} cannot run variant {variant} (their runtimes differ)"
        if variant is not None and variant in self.unservable:
            return f"variant {variant} of {self.name}:{self.version} cannot be served: {self.unservable[variant]}"
        return f"no placement here can run {self.name}:{self.version}"


@dataclass(frozen=True)
class Registry:
    root: Path
    generation: int
    models: Mapping[str, Mapping[str, ModelVersion]]   # name -> version -> entry

    def get(self, name: str, version: str | None) -> ModelVersion | None:
        if version is None:
            return self._newest.get(name)
        versions = self.models.get(name)
        return versions.get(version) if versions else None

    @functools.cached_property
    def _newest(self) -> dict[str, ModelVersion]:
        """Each model's newest version (made once: a registry is never changed)."""
        return {name: vs[max(vs, key=int)] for name, vs in self.models.items() if vs}

    def directories(self) -> set[str]:
        return {str(mv.directory) for vs in self.models.values() for mv in vs.values()}

    def newest(self) -> list[ModelVersion]:
        return list(self._newest.values())


def unservable_reason(runtime: str, placements: Sequence[Placement],
                      tensorflow_installed: bool | None = None) -> str:
    """Why no placement among ``placements`` runs a variant of ``runtime``, for an operator.
    ``tensorflow_installed``: None finds out (``importlib.util.find_spec``, nothing imported)."""
    runtimes = sorted({p.runtime for p in placements})
    text = (f"no placement runs its runtime {runtime!r} "
            f"(the placements here, {', '.join(p.name for p in placements) or 'none'}, run "
            f"{' and '.join(runtimes) or 'nothing'})")
    if runtime == "tensorflow":
        if tensorflow_installed is None:
            tensorflow_installed = importlib.util.find_spec("tensorflow") is not None
        if not tensorflow_installed:
            text += "; TensorFlow is not installed (pip install 'adaptd[build]')"
        else:
            text += ("; TensorFlow is installed but no TensorFlow placement is configured: "
                     "[placements] tensorflow = \"auto\" adds gpu:0 only where there is a GPU, "
                     "\"on\" adds tf:cpu where there is none; see also [placements] include/exclude")
    return text


def load_registry(root: Path, placements: Iterable[Placement], generation: int) -> Registry:
    root = Path(root)
    if not root.is_dir():
        raise RegistryError(f"model repository {root} is not a directory")
    placements = list(placements)
    models: dict[str, dict[str, ModelVersion]] = {}
    skipped: dict[tuple[str, str, str], list[str]] = {}   # (model, variant, why) -> versions
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
            unservable: dict[str, str] = {}
            for v in manifest.variants:
                problem = check_variant(version_dir, v.path, v.sha256)
                if problem is not None:
                    unservable[v.name] = problem
                    log.error("%s:%s variant %s is refused: %s", manifest.model, version_dir.name, v.name, problem)
            arms = tuple(Arm(v, p) for v in manifest.variants if v.name not in unservable
                         for p in placements if p.runtime == v.runtime)
            for v in manifest.variants:
                if v.name not in unservable and not any(a.variant.name == v.name for a in arms):
                    why = unservable[v.name] = unservable_reason(v.runtime, placements)
                    skipped.setdefault((manifest.model, v.name, why), []).append(version_dir.name)
            models.setdefault(manifest.model, {})[version_dir.name] = ModelVersion(
                manifest.model, version_dir.name, version_dir.resolve(), manifest, variants, arms, unservable)
    for (model, variant, why), versions in skipped.items():
        log.warning("model %s variant %s (version%s %s) will not be served: %s", model, variant,
                    "s" if len(versions) > 1 else "", ", ".join(versions), why)
    return Registry(root.resolve(), generation, models)
