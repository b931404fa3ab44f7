"""Inputs whose outputs are known in advance, so a reply can be checked against its own request.

Contract
--------
* :func:`build` loads every LiteRT variant of a model version from the repository (the same
  files the daemon's workers load, through :func:`adaptd.variants.runtime.load_variant`, one
  thread), draws candidate inputs from a seed, runs each through each variant, and keeps
  ``count`` of them whose outputs are pairwise distinct under every variant by more than
  :data:`MARGIN` (L-infinity) while matching tolerance is :data:`ATOL` + :data:`RTOL` x |expected|:
  a reply carrying another request's outputs can never pass as its own. Raises ValueError when
  the candidates do not give ``count`` distinct inputs.
* :class:`Expected` holds the inputs (float32, batch 1 each) and per variant the outputs;
  :meth:`Expected.save` / :meth:`Expected.load` use a plain ``.npz`` (no pickle), so client
  processes load it rather than rebuild it.
* :meth:`Expected.check` says whether a reply's outputs are input ``index``'s under ``variant``:
  ``"ok"``, ``"other"`` (they are another input's: a misrouted reply), ``"wrong"`` or
  ``"unknown-variant"``.
* LiteRT runs the same kernels with one thread or several and gives identical outputs here
  (checked on the demo and the test models); the tolerance only absorbs a runtime that would not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ATOL = 1e-6
RTOL = 1e-5
MARGIN = 1e-4


@dataclass
class Expected:
    model: str
    version: str
    inputs: np.ndarray                       # [count, *input shape without batch], float32
    outputs: dict[str, list[np.ndarray]]     # variant -> per output: [count, *output shape without batch]

    def save(self, path: Path) -> None:
        arrays = {"inputs": self.inputs}
        for variant, outs in self.outputs.items():
            for j, out in enumerate(outs):
                arrays[f"out:{variant}:{j}"] = out
        np.savez(path, model=np.array(self.model), version=np.array(self.version), **arrays)

    @classmethod
    def load(cls, path: Path) -> Expected:
        with np.load(path, allow_pickle=False) as z:
            outputs: dict[str, list[np.ndarray]] = {}
            for key in sorted(k for k in z.files if k.startswith("out:")):
                _, variant, j = key.split(":")
                outputs.setdefault(variant, []).append(z[key])
            return cls(str(z["model"]), str(z["version"]), z["inputs"], outputs)

    def input(self, index: int) -> np.ndarray:
        return self.inputs[index:index + 1]

    def check(self, variant: str, index: int, outputs: list[np.ndarray]) -> str:
        want = self.outputs.get(variant)
        if want is None:
            return "unknown-variant"
        if len(outputs) != len(want):
            return "wrong"
        if all(_close(o, w[index]) for o, w in zip(outputs, want)):
            return "ok"
        for other in range(len(self.inputs)):
            if other != index and all(_close(o, w[other]) for o, w in zip(outputs, want)):
                return "other"
        return "wrong"


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    got = np.asarray(got, dtype=np.float32).reshape(-1)
    want = want.reshape(-1)
    return got.shape == want.shape and bool(np.all(np.abs(got - want) <= ATOL + RTOL * np.abs(want)))


def build(repository: Path, model: str, version: str, count: int, *, seed: int = 0,
          candidates: int | None = None) -> Expected:
    from adaptd.variants.manifest import load_manifest
    from adaptd.variants.runtime import load_variant

    directory = Path(repository) / model / version
    manifest = load_manifest(directory / "manifest.json")
    variants = {v.name: load_variant(directory, v, num_threads=1) for v in manifest.variants
                if v.runtime == "litert"}
    if not variants:
        raise ValueError(f"{model}:{version} has no LiteRT variant")
    shape = tuple(next(iter(manifest.variants)).inputs[0].shape[1:])
    rng = np.random.default_rng(seed)
    n = candidates or 4 * count
    scale = rng.uniform(0.0, 4.0, (n,) + (1,) * len(shape)).astype(np.float32)
    x = rng.random((n, *shape), dtype=np.float32) * scale
    outs = {name: [np.concatenate(o) for o in zip(*(v.run([x[i:i + 1]]) for i in range(n)))]
            for name, v in variants.items()}
    for v in variants.values():
        v.close()
    keep: list[int] = []
    for i in range(n):
        if all(not keep or np.abs(o[i].reshape(1, -1) - o[keep].reshape(len(keep), -1)).max(axis=1).min() > MARGIN
               for per in outs.values() for o in per):
            keep.append(i)
            if len(keep) == count:
                break
    if len(keep) < count:
        raise ValueError(f"only {len(keep)} of {n} candidate inputs give distinct outputs; {count} wanted")
    return Expected(model, version, x[keep], {name: [o[keep] for o in per] for name, per in outs.items()})
