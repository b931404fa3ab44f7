"""One fixed latency bound, asked at the daemon's confidence and at 0.99, under an on/off load.

Run: ``.venv/bin/python bench/bench_fixed_bound.py [--model digits] [--bound-ms 2.0]
[--requests 4000] [--repository bench-zoo/repo] [--no-stale-probe]`` (the repository of bench/bench_selection.py;
build it with that benchmark first).

An application with one deadline sends every request with the same ``max_latency_ms`` (here
with ``objective = "energy"``), half of them asking ``latency_confidence = 0.99``, interleaved at
random (``adaptd load --scenario single-stream`` with a two-entry mix). Meanwhile two busy
processes load core 1 for 3 s in every 6 (bench/selection_load.py). This is the stream the
selection benchmark's mixed bounds do not exercise: when every request carries the same tight
bound, nothing but the requests themselves (and the probes) measures the arms. Prints, per mix
entry, the requests, the share that met the bound (rejections count as misses) and the share
rejected, and the arms that served them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits")
    ap.add_argument("--bound-ms", type=float, default=2.0)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--repository", type=Path, default=ROOT / "bench-zoo" / "repo")
    ap.add_argument("--no-stale-probe", action="store_true", help="[selector] probe_stale_prior = false")
    args = ap.parse_args()

    from adaptd.tools.launch import DaemonProcess

    with tempfile.TemporaryDirectory() as tmp:
        mix = Path(tmp) / "mix.toml"
        mix.write_text(f'[[mix]]\nname = "default confidence"\nmax_latency_ms = {args.bound_ms}\nobjective = "energy"\n'
                       f'[[mix]]\nname = "at 0.99"\nmax_latency_ms = {args.bound_ms}\nlatency_confidence = 0.99\n'
                       'objective = "energy"\n')
        with DaemonProcess.start(args.repository, Path(tmp) / "d", config={"placements": {"load": "eager"},
                                  "selector": {"probe_stale_prior": not args.no_stale_probe}}) as d:
            t0 = time.monotonic() + 2.0
            load = subprocess.Popen([sys.executable, str(ROOT / "bench" / "selection_load.py"), "--core", "1",
                                     "--t0", str(t0), "--on", "3", "--off", "3", "--until", str(t0 + 3600),
                                     "--procs", "2"])
            try:
                out = subprocess.run([sys.executable, "-m", "adaptd", "load", args.model, "--scenario", "single-stream",
                                      "--requests", str(args.requests), "--mix", str(mix), "--json",
                                      "--endpoint", d.endpoint], capture_output=True, text=True, check=True).stdout
            finally:
                load.kill()
    report = json.loads(out)
    print(f"{args.model}, max_latency_ms = {args.bound_ms}, {args.requests} requests, load on core 1 3 s in 6, "
          f"probe_stale_prior = {not args.no_stale_probe}")
    print("| mix entry | requests | met (of all) | rejected |")
    print("|---|---|---|---|")
    for name, m in report["by_mix"].items():
        print(f"| {name} | {m['requests']} | {m['attainment']:.1%} | {m['rejected_share']:.1%} |")
    print("arms:", report.get("by_arm"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
