"""Which power source serves which rail role on this machine.

Roles: ``cpu`` (charged to every execution, shared by CPU time) and ``gpu`` (charged to GPU
placements). ``auto`` picks, per role, the first source that has a rail for it:

    cpu: ina3221 (iio, JetPack 4) > hwmon (JetPack 5+) > rapl
    gpu: ina3221 > hwmon > nvml
    otherwise: the estimated source (the power profile), labelled ``estimated``.

A Jetson rail that feeds both (``VDD_CPU_GPU_CV``), or the board input when it is the only rail,
serves both roles as one *combined* rail. A forced ``source`` uses only that sensor (and the
estimate for roles it lacks); if it is absent, ``detect`` raises ``PowerSourceUnavailable``
(a ``ValueError``) saying what was looked for and why it was not usable.

Contract: ``detect`` only globs and reads small sysfs files (and initialises NVML once if
nvidia-ml-py is installed); it starts nothing and is safe to call from any thread.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import hwmon, ina3221, nvml, rapl
from .config import PowerConfig
from .estimated import PowerProfile
from .source import PowerSource, Rail

_DISCOVER = {"ina3221": ina3221.discover, "hwmon": hwmon.discover, "rapl": rapl.discover, "nvml": nvml.discover}
_CPU_ORDER = ("ina3221", "hwmon", "rapl")
_GPU_ORDER = ("ina3221", "hwmon", "nvml")


class PowerSourceUnavailable(ValueError):
    """A forced ``power.source`` is not present or not readable on this machine."""


@dataclass
class Detection:
    sources: list[PowerSource]      # the sensors to sample, in rail order
    rails: tuple[Rail, ...]         # all sampled rails (index = column in the sample ring)
    cpu_rails: tuple[int, ...]      # indices of rails serving the cpu role (empty: estimated)
    gpu_rails: tuple[int, ...]      # indices of rails serving the gpu role (empty: estimated)
    combined: bool                  # cpu and gpu roles are served by the same rail(s)
    profile: PowerProfile
    notes: dict[str, str] = field(default_factory=dict)  # sensor -> why (not) used / caveats


def _cpu_capable(src: PowerSource) -> list[int]:
    rails = src.rails
    idx = [i for i, r in enumerate(rails) if r.role in ("cpu", "cpu+gpu")]
    if not idx and src.sensor in ("ina3221", "hwmon", "rapl"):
        idx = [i for i, r in enumerate(rails) if r.role == "board"]
    return idx


def _gpu_capable(src: PowerSource) -> list[int]:
    rails = src.rails
    idx = [i for i, r in enumerate(rails) if r.role in ("gpu", "cpu+gpu")]
    if not idx and src.sensor in ("ina3221", "hwmon"):
        idx = [i for i, r in enumerate(rails) if r.role == "board"]
    return idx


def detect(config: PowerConfig) -> Detection:
    profile = PowerProfile.load(config.profile, config.sysfs_root)
    notes: dict[str, str] = {}
    found: dict[str, PowerSource] = {}
    wanted = _DISCOVER if config.source == "auto" else (
        {} if config.source == "estimated" else {config.source: _DISCOVER[config.source]})
    for name, fn in wanted.items():
        src, why = fn(config.sysfs_root)
        if src is not None:
            found[name] = src
        if why:
            notes[name] = why
    if config.source not in ("auto", "estimated") and config.source not in found:
        raise PowerSourceUnavailable(
            f"power.source = {config.source!r} but it is not available under "
            f"sysfs_root {config.sysfs_root!r}: {notes.get(config.source, 'not found')}"
        )

    cpu_src = next((n for n in _CPU_ORDER if n in found and _cpu_capable(found[n])), None)
    gpu_src = next((n for n in _GPU_ORDER if n in found and _gpu_capable(found[n])), None)
    chosen = [n for n in dict.fromkeys([cpu_src, gpu_src]) if n is not None]
    sources = [found[n] for n in chosen]
    offsets, off = {}, 0
    for n in chosen:
        offsets[n] = off
        off += len(found[n].rails)
    rails = tuple(r for s in sources for r in s.rails)
    cpu = tuple(offsets[cpu_src] + i for i in _cpu_capable(found[cpu_src])) if cpu_src else ()
    gpu = tuple(offsets[gpu_src] + i for i in _gpu_capable(found[gpu_src])) if gpu_src else ()
    combined = bool(cpu) and set(cpu) == set(gpu)
    for n in found:
        if n not in chosen:
            notes[n] = (notes.get(n, "") + "; " if notes.get(n) else "") + "present but a better source serves its roles"
    return Detection(sources, rails, cpu, gpu, combined, profile, notes)
