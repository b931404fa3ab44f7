"""Placement discovery from sysfs and /proc/cpuinfo trees: a Jetson TX2 (two clusters, a GPU), a
plain two-core machine, restricted affinity, and the config's include/exclude/custom/tensorflow."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from adaptd.daemon.config import CustomPlacement, PlacementsConfig
from adaptd.daemon.placements import clusters, cpu_list, discover, range_name, valid_name

A57 = ("0x41", "0xd07")
DENVER = ("0x4e", "0x003")


def board(root: Path, cores: dict[int, tuple[str, str] | None], policies: list[list[int]],
          gpu: str | None = None) -> Path:
    """A fake root: cpufreq policies, topology fallbacks and /proc/cpuinfo."""
    cpu_dir = root / "sys/devices/system/cpu"
    for i, group in enumerate(policies):
        p = cpu_dir / f"cpufreq/policy{group[0]}"
        p.mkdir(parents=True, exist_ok=True)
        (p / "related_cpus").write_text(" ".join(map(str, group)) + "\n")
    blocks = []
    for cpu, kind in cores.items():
        lines = [f"processor\t: {cpu}", "BogoMIPS\t: 62.50"]
        if kind:
            lines += [f"CPU implementer\t: {kind[0]}", "CPU architecture: 8", f"CPU part\t: {kind[1]}"]
        blocks.append("\n".join(lines))
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/cpuinfo").write_text("\n\n".join(blocks) + "\n")
    if gpu == "jetson":
        (root / "dev").mkdir(exist_ok=True)
        (root / "dev/nvhost-gpu").write_text("")
    elif gpu == "nvidia":
        (root / "dev").mkdir(exist_ok=True)
        (root / "dev/nvidia0").write_text("")
    return root


@pytest.fixture
def tx2(tmp_path) -> Path:
    # TX2: cores 0, 3, 4, 5 are Cortex-A57, 1 and 2 Denver 2; one cpufreq policy per cluster.
    return board(tmp_path, {0: A57, 1: DENVER, 2: DENVER, 3: A57, 4: A57, 5: A57},
                 [[0, 3, 4, 5], [1, 2]], gpu="jetson")


def names(placements) -> list[str]:
    return [p.name for p in placements]


def test_cpu_lists_and_range_names_round_trip():
    assert cpu_list("0-3,5") == (0, 1, 2, 3, 5)
    assert cpu_list("7\n") == (7,)
    assert cpu_list("") == ()
    assert range_name((0, 1, 2, 5)) == "0-2,5"
    assert range_name((3,)) == "3"
    assert range_name((4, 0, 1)) == "0-1,4"
    for text in ("0-5", "0,2,4", "1-2,4-5"):
        assert range_name(cpu_list(text)) == text


def test_tx2_clusters_are_named_after_their_core_types(tx2):
    assert clusters(tx2, online=range(6)) == [(0, 3, 4, 5), (1, 2)]
    found = discover(PlacementsConfig(tensorflow="off"), root=tx2, online=range(6))
    by_name = {p.name: p for p in found}
    assert set(by_name) == {"cpu:a57x4", "cpu:denver2x2", "cpu:0-5"}
    a57 = by_name["cpu:a57x4"]
    assert a57.cores == (0, 3, 4, 5) and a57.threads == 4 and a57.runtime == "litert" and a57.kind == "cpu"
    assert by_name["cpu:denver2x2"].cores == (1, 2)
    assert by_name["cpu:0-5"].cores == tuple(range(6)) and by_name["cpu:0-5"].threads == 6
    assert all(valid_name(n) for n in by_name)
    assert all(p.device is None for p in found)


def test_a_gpu_gets_the_tensorflow_runtime_and_tf_cpu_only_where_there_is_none(tx2, tmp_path):
    if importlib.util.find_spec("tensorflow") is None:     # found, not imported: that takes seconds
        pytest.skip("TensorFlow is not installed")
    found = {p.name: p for p in discover(PlacementsConfig(tensorflow="auto"), root=tx2, online=range(6))}
    gpu = found["gpu:0"]
    assert gpu.kind == "gpu" and gpu.runtime == "tensorflow" and gpu.device == "/GPU:0"
    assert "tf:cpu" not in found
    assert "gpu:0" not in names(discover(PlacementsConfig(tensorflow="off"), root=tx2, online=range(6)))
    # A desktop NVIDIA GPU is found through /dev/nvidia0.
    desk = board(tmp_path / "desk", {0: None, 1: None}, [[0, 1]], gpu="nvidia")
    assert "gpu:0" in names(discover(PlacementsConfig(), root=desk, online=[0, 1]))
    # No GPU: "auto" adds nothing, "on" adds TensorFlow on the CPU so that path can run.
    plain = board(tmp_path / "plain", {0: None, 1: None}, [[0, 1]])
    assert all(p.runtime == "litert" for p in discover(PlacementsConfig(), root=plain, online=[0, 1]))
    tf = next(p for p in discover(PlacementsConfig(tensorflow="on"), root=plain, online=[0, 1])
              if p.runtime == "tensorflow")
    assert tf.name == "tf:cpu" and tf.kind == "cpu" and tf.device == "/CPU:0" and tf.cores == (0, 1)


def test_one_cluster_offers_the_cluster_and_each_core(tmp_path):
    root = board(tmp_path, {0: None, 1: None}, [[0, 1]])
    found = discover(PlacementsConfig(tensorflow="off"), root=root, online=[0, 1])
    assert names(found) == ["cpu:0-1", "cpu:0", "cpu:1"]
    assert [p.threads for p in found] == [2, 1, 1]


def test_without_cpufreq_the_topology_decides(tmp_path):
    root = tmp_path
    for cpu in range(4):
        topo = root / f"sys/devices/system/cpu/cpu{cpu}/topology"
        topo.mkdir(parents=True)
        (topo / "cluster_cpus_list").write_text("0-1\n" if cpu < 2 else "2-3\n")
    (root / "proc").mkdir()
    (root / "proc/cpuinfo").write_text("")
    assert clusters(root, online=range(4)) == [(0, 1), (2, 3)]
    assert names(discover(PlacementsConfig(tensorflow="off"), root=root, online=range(4))) == \
        ["cpu:0-1", "cpu:2-3", "cpu:0-3"]


def test_affinity_restricts_what_is_offered(tx2):
    # The daemon may only run on some cores (a cpuset, taskset): clusters shrink to those.
    found = discover(PlacementsConfig(tensorflow="off"), root=tx2, online=[0, 1, 3])
    for p in found:
        assert set(p.cores) <= {0, 1, 3}, p
    assert "cpu:0-1,3" in names(found)


def test_include_exclude_and_custom_placements(tx2):
    cfg = PlacementsConfig(tensorflow="off", exclude=("cpu:0-5",))
    assert names(discover(cfg, root=tx2, online=range(6))) == ["cpu:a57x4", "cpu:denver2x2"]
    cfg = PlacementsConfig(tensorflow="off", include=("cpu:denver2x2",))
    assert names(discover(cfg, root=tx2, online=range(6))) == ["cpu:denver2x2"]
    custom = CustomPlacement("cpu:a57pair", (0, 3), 2, "two A57 cores")
    cfg = PlacementsConfig(tensorflow="off", custom=(custom,), include=("cpu:a57pair", "cpu:a57x4"))
    found = {p.name: p for p in discover(cfg, root=tx2, online=range(6))}
    assert set(found) == {"cpu:a57pair", "cpu:a57x4"}
    assert found["cpu:a57pair"].cores == (0, 3) and found["cpu:a57pair"].description == "two A57 cores"


def test_naming_a_placement_that_does_not_exist_is_an_error(tx2):
    with pytest.raises(ValueError, match="cpu:7"):
        discover(PlacementsConfig(tensorflow="off", include=("cpu:7",)), root=tx2, online=range(6))
    with pytest.raises(ValueError, match="gpu:0"):
        discover(PlacementsConfig(tensorflow="off", exclude=("gpu:0",)), root=tx2, online=range(6))
    everything = ("cpu:a57x4", "cpu:denver2x2", "cpu:0-5")
    with pytest.raises(ValueError, match="no placement left"):
        discover(PlacementsConfig(tensorflow="off", exclude=everything), root=tx2, online=range(6))


def test_this_machine_has_placements_for_every_allowed_core():
    found = discover(PlacementsConfig(tensorflow="off"))
    allowed = os.sched_getaffinity(0)
    assert found and all(set(p.cores) <= allowed for p in found)
    assert {c for p in found for c in p.cores} == allowed
    assert all(valid_name(p.name) for p in found)
    assert len(set(names(found))) == len(found)


def test_discovery_does_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys; from adaptd.daemon.config import PlacementsConfig; "
            "from adaptd.daemon.placements import discover; discover(PlacementsConfig(tensorflow='on')); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
