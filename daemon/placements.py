"""Placements: where a variant can run (a CPU core set with a thread count, or a GPU).

Contract
--------
* :func:`discover` reads the CPU topology from sysfs and ``/proc/cpuinfo`` (under ``root``, so
  tests can hand it a copy of a real board's tree) and never imports TensorFlow: a GPU is
  detected from its device nodes, and the TensorFlow runtime is then loaded by that placement's
  worker process, not by the daemon.
* Names are stable across restarts on the same board: a cluster of known cores is named after
  its core type (``cpu:a57x4``, ``cpu:denver2x2``), any other core set after its CPU numbers
  (``cpu:0-1``, ``cpu:3``); ``gpu:N`` is the N-th GPU; ``tf:cpu`` runs the TensorFlow runtime on
  the CPU (used where no GPU exists, so the TensorFlow path can be tested).
* :class:`Placement` is immutable and safe to share.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from adaptd.daemon.config import PlacementsConfig

# ARM MIDR (implementer, part) -> core type, as /proc/cpuinfo reports them on Jetson boards.
CORE_TYPES = {
    ("0x41", "0xd07"): "a57",
    ("0x41", "0xd03"): "a53",
    ("0x41", "0xd08"): "a72",
    ("0x41", "0xd09"): "a73",
    ("0x41", "0xd0a"): "a75",
    ("0x41", "0xd42"): "a78ae",
    ("0x4e", "0x003"): "denver2",
    ("0x4e", "0x004"): "carmel",
}


@dataclass(frozen=True)
class Placement:
    name: str
    kind: str                 # "cpu" | "gpu"
    runtime: str              # "litert" | "tensorflow"
    cores: tuple[int, ...]    # CPU cores the worker is pinned to
    threads: int              # interpreter threads
    device: str | None        # TensorFlow device ("/GPU:0", "/CPU:0"); None for LiteRT
    description: str

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "runtime": self.runtime,
                "cores": list(self.cores), "threads": self.threads, "device": self.device,
                "description": self.description}


def cpu_list(text: str) -> tuple[int, ...]:
    """Parse a kernel CPU list such as ``0-3,5``."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return tuple(sorted(cpus))


def range_name(cores: Sequence[int]) -> str:
    """``(0, 1, 2, 5)`` -> ``0-2,5``."""
    parts: list[str] = []
    cores = sorted(cores)
    start = prev = cores[0]
    for c in [*cores[1:], None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if c is not None:
            start = prev = c
    return ",".join(parts)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _core_types(root: Path) -> dict[int, str]:
    text = _read(root / "proc/cpuinfo") or ""
    types: dict[int, str] = {}
    for block in text.split("\n\n"):
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in block.splitlines()) if k
        )
        if "processor" not in fields or not fields["processor"].isdigit():
            continue
        key = (fields.get("CPU implementer", "").lower(), fields.get("CPU part", "").lower())
        if key in CORE_TYPES:
            types[int(fields["processor"])] = CORE_TYPES[key]
    return types


def clusters(root: Path = Path("/"), online: Iterable[int] | None = None) -> list[tuple[int, ...]]:
    """CPU clusters as the kernel reports them: cpufreq policies, else topology clusters,
    else packages; restricted to the CPUs this process may run on."""
    allowed = set(online if online is not None else os.sched_getaffinity(0))
    cpu_dir = root / "sys/devices/system/cpu"
    groups: set[tuple[int, ...]] = set()
    for policy in sorted(cpu_dir.glob("cpufreq/policy*")):
        text = _read(policy / "related_cpus") or _read(policy / "affected_cpus")
        if text:
            group = tuple(c for c in cpu_list(text.replace(" ", ",")) if c in allowed)
            if group:
                groups.add(group)
    if not groups:
        for key in ("cluster_cpus_list", "package_cpus_list", "core_siblings_list"):
            for cpu in sorted(allowed):
                text = _read(cpu_dir / f"cpu{cpu}/topology/{key}")
                if text:
                    group = tuple(c for c in cpu_list(text) if c in allowed)
                    if group:
                        groups.add(group)
            if groups:
                break
    covered = {c for g in groups for c in g}
    if not groups or covered != allowed:
        groups = {g for g in groups if set(g) <= allowed}
        rest = tuple(sorted(allowed - {c for g in groups for c in g}))
        if rest:
            groups.add(rest)
    return sorted(groups)


def _gpu_present(root: Path) -> bool:
    if (root / "dev/nvidia0").exists():
        return True
    # Jetson integrated GPUs (TX2: gp10b) show up as a platform device, not /dev/nvidia0.
    return (root / "dev/nvhost-gpu").exists() or any((root / "sys/devices").glob("*gpu.0*"))


def discover(config: PlacementsConfig, root: Path = Path("/"),
             online: Iterable[int] | None = None) -> list[Placement]:
    """The placements this board offers, filtered by the config's include/exclude lists."""
    allowed = sorted(set(online if online is not None else os.sched_getaffinity(0)))
    types = _core_types(root)
    found: dict[str, Placement] = {}

    def add_cpu(cores: tuple[int, ...], threads: int, what: str) -> None:
        kinds = {types.get(c) for c in cores}
        if len(kinds) == 1 and None not in kinds and len(cores) > 1:
            name = f"cpu:{kinds.pop()}x{len(cores)}"
        else:
            name = f"cpu:{range_name(cores)}"
        if name not in found:
            found[name] = Placement(name, "cpu", "litert", cores, threads, None,
                                    f"{what}: CPU {range_name(cores)}, {threads} thread(s), LiteRT")

    groups = clusters(root, allowed)
    for group in groups:
        label = "cluster of " + (f"{len(group)} {types[group[0]]} cores" if group[0] in types else f"{len(group)} cores")
        add_cpu(group, len(group), label)
    if len(groups) > 1:
        add_cpu(tuple(allowed), len(allowed), "all cores")
    elif len(allowed) > 1:
        # One cluster only: single cores are the other core sets worth choosing between.
        for cpu in allowed:
            add_cpu((cpu,), 1, "one core")

    tf_available = importlib.util.find_spec("tensorflow") is not None
    want_tf = config.tensorflow == "on" or (config.tensorflow == "auto" and tf_available and _gpu_present(root))
    if want_tf:
        if _gpu_present(root):
            found["gpu:0"] = Placement("gpu:0", "gpu", "tensorflow", tuple(allowed), len(allowed), "/GPU:0",
                                       "GPU 0 through the TensorFlow runtime")
        else:
            found["tf:cpu"] = Placement("tf:cpu", "cpu", "tensorflow", tuple(allowed), len(allowed), "/CPU:0",
                                        f"TensorFlow runtime on CPU {range_name(allowed)} (no GPU on this machine)")

    for custom in config.custom:
        found[custom.name] = Placement(custom.name, "cpu", "litert", custom.cores, custom.threads, None,
                                       custom.description or f"CPU {range_name(custom.cores)}, {custom.threads} thread(s)")

    names = list(found)
    unknown = [n for n in (*config.include, *config.exclude) if n not in found]
    if unknown:
        raise ValueError(f"placements {', '.join(unknown)} named in the config do not exist here; "
                         f"discovered: {', '.join(names)}")
    selected = [found[n] for n in names
                if (not config.include or n in config.include) and n not in config.exclude]
    if not selected:
        raise ValueError("no placement left after placements.include/exclude")
    return selected


_NAME = re.compile(r"^[a-z]+:[A-Za-z0-9,\-]+$")


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))
