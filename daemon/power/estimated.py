"""The estimated power source: a per-device power model applied to measured CPU and wall time.

Used for every rail role (CPU, GPU) that no sensor covers. Model, in dynamic power only (idle is
deducted everywhere, so the estimate has none):

    energy_mj = cpu_time_s x busy_core_mw(placement.cores)          (all placements)
              + wall_s x gpu.busy_mw                                 (GPU placements)

``busy_core_mw(cores)`` is the mean per-core busy power of the clusters the placement's cores
belong to (``cpu.default_busy_core_mw`` for cores in no cluster, or when the placement names no
cores). ``cpu_time_s`` is the worker's CPU time, so a placement using 2 cores fully for 10 ms
costs 20 ms x busy_core_mw.

Contract
--------
- ``PowerProfile.load(name_or_path, sysfs_root)`` reads a TOML profile (``auto`` picks ``tx2`` on a
  TX2 device tree, else ``generic``) and raises ``ValueError`` naming the file and the bad key.
- ``PowerProfile`` is immutable and thread-safe; ``cpu_energy_mj``/``gpu_energy_mj`` are pure.
- Every figure derived from a profile must be labelled ``estimated:<profile name>`` by the caller.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from importlib import resources

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .source import read_text, sys_path

BUILTIN = ("tx2", "generic")


@dataclass(frozen=True)
class CpuCluster:
    name: str
    cores: tuple[int, ...]
    busy_core_mw: float


@dataclass(frozen=True)
class PowerProfile:
    name: str
    description: str
    clusters: tuple[CpuCluster, ...]
    default_busy_core_mw: float
    gpu_busy_mw: float
    board_idle_mw: float
    approximate: bool
    path: str

    @functools.cached_property
    def source_label(self) -> str:
        """The energy source an estimate from this profile is labelled with (made once: the
        request path labels every estimate)."""
        return f"estimated:{self.name}"

    def busy_core_mw(self, cores: tuple[int, ...] | list[int]) -> float:
        if not cores:
            return self.default_busy_core_mw
        per_core = self._per_core_mw()
        return sum(per_core.get(c, self.default_busy_core_mw) for c in cores) / len(cores)

    def _per_core_mw(self) -> dict[int, float]:
        """core -> busy mW, built once (the daemon asks on every request)."""
        table = self.__dict__.get("_per_core_cache")
        if table is None:
            table = {c: cl.busy_core_mw for cl in self.clusters for c in cl.cores}
            object.__setattr__(self, "_per_core_cache", table)   # frozen: a cache, not state
        return table

    def cpu_energy_mj(self, cores, cpu_time_s: float) -> float:
        return max(cpu_time_s, 0.0) * self.busy_core_mw(tuple(cores))

    def gpu_energy_mj(self, wall_s: float) -> float:
        return max(wall_s, 0.0) * self.gpu_busy_mw

    @classmethod
    def load(cls, profile: str = "auto", sysfs_root: str = "/") -> "PowerProfile":
        if profile == "auto":
            profile = detect_profile(sysfs_root)
        if profile in BUILTIN:
            ref = resources.files(__package__).joinpath("profiles", f"{profile}.toml")
            text, path = ref.read_text(encoding="utf-8"), str(ref)
        else:
            if not os.path.isfile(profile):
                raise ValueError(
                    f"power.profile {profile!r} is neither one of {', '.join(('auto',) + BUILTIN)} nor a file"
                )
            with open(profile, encoding="utf-8") as f:
                text, path = f.read(), profile
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text: str, path: str = "<string>") -> "PowerProfile":
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"power profile {path}: {e}") from None

        def num(table: dict, key: str, where: str, default: float | None = None) -> float:
            v = table.get(key, default)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"power profile {path}: {where}.{key} must be a number >= 0 (mW); got {v!r}")
            return float(v)

        meta = d.get("profile", {})
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"power profile {path}: [profile] name is required")
        cpu = d.get("cpu", {})
        clusters = []
        for i, c in enumerate(cpu.get("cluster", [])):
            cores = c.get("cores", [])
            if not isinstance(cores, list) or not all(isinstance(x, int) and x >= 0 for x in cores):
                raise ValueError(f"power profile {path}: cpu.cluster[{i}].cores must be a list of core ids")
            clusters.append(CpuCluster(str(c.get("name", f"cluster{i}")), tuple(cores),
                                       num(c, "busy_core_mw", f"cpu.cluster[{i}]")))
        return cls(
            name=name,
            description=str(meta.get("description", "")),
            clusters=tuple(clusters),
            default_busy_core_mw=num(cpu, "default_busy_core_mw", "cpu"),
            gpu_busy_mw=num(d.get("gpu", {}), "busy_mw", "gpu", 0.0),
            board_idle_mw=num(d.get("idle", {}), "board_mw", "idle", 0.0),
            approximate=bool(d.get("approximate", True)),
            path=path,
        )


def detect_profile(sysfs_root: str = "/") -> str:
    """``tx2`` when the device tree names a Jetson TX2 (model or compatible), else ``generic``."""
    for rel in ("proc/device-tree/model", "sys/firmware/devicetree/base/model",
                "proc/device-tree/compatible", "sys/firmware/devicetree/base/compatible"):
        text = read_text(sys_path(sysfs_root, rel))
        if text and ("TX2" in text.upper() or "P3310" in text.upper() or "QUILL" in text.upper()):
            return "tx2"
    return "generic"
