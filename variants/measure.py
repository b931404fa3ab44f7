"""Per-variant measurements on this machine, each in a fresh Python process.

Memory after load is meaningless inside the build process (TensorFlow, earlier interpreters
and the allocator's free lists all live there), so ``measure_variant`` starts
``python -m adaptd.variants.measure`` for one variant: it imports numpy and LiteRT (plus
TensorFlow for a tensorflow-runtime variant), reads its resident set size (RSS), loads the
variant with 1 thread, runs it once, reads RSS again -> ``memory_bytes`` (the delta, >= 0).
Then it times single-threaded batch-1 ``LoadedVariant.run`` calls on one sample per input as
a client sends it (float32, or uint8 frames for an input that declares preprocessing), so the
quantization or frame conversion of each variant is included, as the daemon pays it: 3 warm-up runs
excluded, then up to ``runs`` runs or ``max_s`` seconds, whichever ends first (at least 5).
Latency is wall clock (``time.perf_counter``) in milliseconds: median and p90.
Failures raise ``MeasureError`` with the child's last error line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


class MeasureError(RuntimeError):
    """The measuring child process failed (one-line message)."""


def measure_variant(version_dir: Path, record_dict: dict[str, Any], sample: Any,
                    runs: int = 50, max_s: float = 1.0, timeout_s: float = 300.0) -> dict[str, Any]:
    """``{"memory_bytes": int, "latency_ms_1thread": {"median", "p90", "n"}}`` for one variant;
    ``sample`` is one array per input (or one array for a single input), dtypes kept."""
    arrays = [sample] if isinstance(sample, np.ndarray) else list(sample)
    with tempfile.TemporaryDirectory(prefix="adaptd-measure-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"version_dir": str(version_dir), "record": record_dict,
                                    "runs": runs, "max_s": max_s}))
        np.savez(Path(tmp) / "sample.npz", *[np.asarray(a) for a in arrays])
        env = {**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "adaptd.variants.measure", str(tmp)],
                              capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise MeasureError(f"measuring {record_dict.get('name')} failed: {lines[-1] if lines else proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(tmp: Path) -> dict[str, Any]:
    import gc
    import time

    import psutil

    spec = json.loads((tmp / "spec.json").read_text())
    with np.load(tmp / "sample.npz", allow_pickle=False) as z:
        sample = [z[f"arr_{i}"] for i in range(len(z.files))]
    from .manifest import VariantRecord
    from .runtime import load_variant

    record = VariantRecord.from_dict(spec["record"])
    if record.runtime == "tensorflow":
        import tensorflow  # noqa: F401  (its import is not the variant's memory)
    else:
        import ai_edge_litert.interpreter  # noqa: F401
    proc = psutil.Process()
    gc.collect()
    before = proc.memory_info().rss
    v = load_variant(Path(spec["version_dir"]), record, num_threads=1)
    v.run(sample)
    after = proc.memory_info().rss
    for _ in range(3):
        v.run(sample)
    times = []
    deadline = time.perf_counter() + float(spec["max_s"])
    while len(times) < int(spec["runs"]) and (len(times) < 5 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        v.run(sample)
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"memory_bytes": max(0, int(after - before)),
            "latency_ms_1thread": {"median": float(np.median(times)),
                                   "p90": float(np.percentile(times, 90)), "n": len(times)}}


if __name__ == "__main__":
    print(json.dumps(_child(Path(sys.argv[1]))))
