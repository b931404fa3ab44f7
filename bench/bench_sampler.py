"""Energy sampler overhead: its CPU share, and its effect on inference latency.

Run: ``.venv/bin/python bench/bench_sampler.py [--rounds 5] [--invokes 1000] [--seconds 3]``

1. Sampler CPU share (fraction of one core: the sampler process's CPU time / wall time) at
   1000 Hz and 100 Hz against a fake TX2 INA3221 iio tree (2 rails sampled: VDD_SYS_CPU,
   VDD_SYS_GPU; on a real TX2 each read is an I2C transaction, so this is a lower bound there),
   and against this machine's RAPL counters if they are readable.
2. Latency of a real LiteRT interpreter invoke loop (MobileNetV2 alpha=1.0, 128x128, float32,
   built with TensorFlow in a subprocess and cached) with no sampler, with the sampler at 100 Hz
   and 1000 Hz (a child of this process, so in the same process group), and at 1000 Hz with
   ``EnergyMeter.attribute`` called after every invoke, as the daemon will. Conditions are
   interleaved round by round (ABCD ABCD ...) so drift hits them alike; each round's
   percentiles are divided by the same round's no-sampler baseline.

Prints medians over rounds with their min-max spread, as a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np

from adaptd.daemon.power import EnergyMeter, PowerConfig
from adaptd.daemon.power.detect import detect
from adaptd.daemon.power.testing import FakeSysfs

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "adaptd-bench")
MODEL = os.path.join(CACHE, "mobilenetv2_100_128.tflite")
BUILD = """
import sys, tensorflow as tf
m = tf.keras.applications.MobileNetV2(input_shape=(128, 128, 3), alpha=1.0, weights=None, classes=10)
open(sys.argv[1], "wb").write(tf.lite.TFLiteConverter.from_keras_model(m).convert())
"""


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if ln.startswith("Model name")), "?")
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.machine()}, Python {platform.python_version()}"


def build_model() -> str:
    if not os.path.exists(MODEL):
        os.makedirs(CACHE, exist_ok=True)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        done = subprocess.run([sys.executable, "-c", BUILD, MODEL], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"building the benchmark model failed:\n{done.stderr[-3000:]}")
    return MODEL


def fake_tree() -> str:
    root = tempfile.mkdtemp(prefix="adaptd-bench-sysfs-")
    FakeSysfs(root).add_tx2_iio()
    return root


def meter(root: str, hz: float, source: str = "auto") -> EnergyMeter:
    m = EnergyMeter.from_config(PowerConfig(source=source, sysfs_root=root, sample_hz=hz,
                                            idle_window_s=0.2, idle_remeasure_s=0))
    m.start()
    return m


def spread(xs) -> str:
    xs = np.asarray(xs, dtype=float)
    return f"{np.median(xs):.4g} ({xs.min():.4g}-{xs.max():.4g})"


def bench_cpu_share(root: str, rounds: int, seconds: float, targets) -> list[tuple[str, str, str]]:
    rows = []
    for label, src_root, source in targets:
        for hz in (1000.0, 100.0):
            shares, rates = [], []
            for _ in range(rounds):
                m = meter(src_root, hz, source)
                c0, w0 = _child_cpu(m)
                time.sleep(seconds)  # the measured quantity is the sampler's cost over this span
                c1, w1 = _child_cpu(m)
                shares.append((c1 - c0) / (w1 - w0))
                rates.append(m.describe()["sample_hz"])
                m.close()
            rows.append((f"{label} @ {hz:g} Hz", spread(np.array(shares) * 100), spread(rates)))
    return rows


def _child_cpu(m: EnergyMeter) -> tuple[int, int]:
    """The sampler's own (CPU ns, wall ns), published together in its ring header about every
    0.1 s from CLOCK_PROCESS_CPUTIME_ID (exact, unlike the tick-sampled /proc times)."""
    from adaptd.daemon.power import ring

    h = m._sampler.ring.header
    for _ in range(100):
        cpu, wall = int(h[ring.H_CPU_NS]), int(h[ring.H_WALL_NS])
        if int(h[ring.H_WALL_NS]) == wall:
            return cpu, wall
    return cpu, wall


def bench_latency(root: str, threads: int, rounds: int, invokes: int):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=build_model(), num_threads=threads)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    it.set_tensor(inp["index"], np.random.default_rng(0).random(inp["shape"], dtype=np.float32))
    for _ in range(200):
        it.invoke()
    placement = SimpleNamespace(name="cpu", kind="cpu", cores=tuple(range(threads)), threads=threads)
    conds = [("no sampler", None, False), ("sampler 100 Hz", 100.0, False),
             ("sampler 1000 Hz", 1000.0, False), ("1000 Hz + attribute()", 1000.0, True)]
    res = {c[0]: {"p50": [], "p99": [], "r50": [], "r99": [], "attr": []} for c in conds}
    for _ in range(rounds):
        base = None
        for name, hz, attribute in conds:
            m = meter(root, hz) if hz else None
            lat = np.empty(invokes)
            attr = []
            for i in range(invokes):
                c0 = time.process_time()
                t0 = time.monotonic_ns()
                it.invoke()
                t1 = time.monotonic_ns()
                lat[i] = (t1 - t0) / 1e6
                if attribute:
                    a0 = time.perf_counter_ns()
                    m.attribute(placement, t0, t1, time.process_time() - c0)
                    attr.append((time.perf_counter_ns() - a0) / 1e6)
            if m:
                m.close()
            p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
            if base is None:
                base = (p50, p99)
            r = res[name]
            r["p50"].append(p50)
            r["p99"].append(p99)
            r["r50"].append(p50 / base[0])
            r["r99"].append(p99 / base[1])
            if attr:
                r["attr"].append((np.percentile(attr, 50), np.percentile(attr, 99)))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--invokes", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    root = fake_tree()
    print(f"machine: {machine()}; load average at start: {os.getloadavg()}\n")
    targets = [("fake TX2 iio tree, 2 rails", root, "ina3221")]
    try:
        detect(PowerConfig(source="rapl"))
        targets.append(("this machine's RAPL", "/", "rapl"))
    except ValueError as e:
        print(f"RAPL not benchmarked: {e}\n")
    print(f"Sampler CPU share ({a.rounds} runs of {a.seconds:g} s each; median (min-max))\n")
    print("| source and rate | CPU, % of one core | achieved rate, Hz |\n|---|---|---|")
    for row in bench_cpu_share(root, a.rounds, a.seconds, targets):
        print("| " + " | ".join(row) + " |")
    for threads in (1, os.cpu_count() or 1):
        res = bench_latency(root, threads, a.rounds, a.invokes)
        print(f"\nLiteRT MobileNetV2-1.0 128x128 float32, {threads} thread(s), {a.invokes} invokes x "
              f"{a.rounds} rounds; median over rounds (min-max)\n")
        print("| condition | p50 ms | p99 ms | p50 / baseline | p99 / baseline | attribute() p50 / p99 ms |")
        print("|---|---|---|---|---|---|")
        for name, r in res.items():
            attr = "-"
            if r["attr"]:
                arr = np.array(r["attr"])
                attr = f"{np.median(arr[:, 0]):.3f} / {np.median(arr[:, 1]):.3f}"
            print(f"| {name} | {spread(r['p50'])} | {spread(r['p99'])} | {spread(r['r50'])} | "
                  f"{spread(r['r99'])} | {attr} |")
        print(f"\nload average after: {os.getloadavg()}")
        if threads == (os.cpu_count() or 1):
            break


if __name__ == "__main__":
    main()
