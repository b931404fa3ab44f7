"""Daemon start-up time and memory with the demo model's LiteRT variants loaded.

Targets (issue 4): ready to serve in under 2 s and under 150 MB RSS for the daemon process,
with LiteRT variants only (no TensorFlow placement). Measured per round:

* ``ready_s``: from spawning ``adaptd serve`` to systemd's ``READY=1`` on a real notify socket
  (the daemon sends it once its sockets are bound, its workers are up and, with
  ``load = "eager"``, every variant load has been sent to them);
* ``first_reply_s``: from spawning to the first answered inference request;
* ``rss_mb``: the daemon process's RSS after every variant on every placement has run once
  (eager load) — the worker processes' RSS is reported beside it, as is whether any process of
  the daemon mapped TensorFlow. With ``isolation = "thread"`` (the default) the interpreters
  live in the daemon's process, and a worker process is live fidelity's shadow worker, where
  one is started (not for the demo, whose reference runs inline); with ``--isolation process``
  each placement has a worker process besides.

Usage: ``.venv/bin/python bench/bench_startup.py [--rounds 5] [--repository demo-repo] [--isolation process]``
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]


def one_round(repo: Path, isolation: str = "thread") -> dict:
    from adaptd.wire import protocol as proto
    from adaptd.tools.launch import DaemonProcess, to_toml

    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        tmp = Path(tmp)
        notify_path = tmp / "notify"
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(str(notify_path))
        runtime = Path(f"/tmp/adaptd-b-{uuid.uuid4().hex[:8]}")
        endpoint = f"ipc://{runtime}/adaptd.sock"
        config = {"repository": str(repo.resolve()), "state_dir": str(tmp), "runtime_dir": str(runtime),
                  "server": {"endpoints": [endpoint], "pub_endpoints": [f"ipc://{runtime}/sel.sock"]},
                  "power": {"source": "estimated", "idle_window_s": 0.05},
                  "placements": {"load": "eager", "isolation": isolation}}
        (tmp / "adaptd.toml").write_text(to_toml(config))
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "adaptd", "serve", "--config", str(tmp / "adaptd.toml")],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        daemon = DaemonProcess(proc, tmp / "adaptd.toml", endpoint, None, "", tmp / "selections.sqlite3",
                               tmp / "log")
        try:
            ns.settimeout(60)
            while True:
                msg = ns.recv(4096).decode()
                if "READY=1" in msg:
                    ready_s = time.perf_counter() - t0
                    break
            x = np.zeros((1, 16, 16, 1), np.float32)
            reply, _ = daemon.request(proto.request_header("first", "digits", [x]), [x])
            first_reply_s = time.perf_counter() - t0
            assert reply["type"] == "result", reply
            # Every arm once, so every variant is loaded on every placement.
            models, _ = daemon.request({"type": "models", "id": "m"})
            variants = models["body"]["models"][0]["variants"]
            placements = [p["name"] for p in models["body"]["placements"]]
            for v in variants:
                for p in placements:
                    if (v["runtime"] == "litert") == (not p.startswith(("gpu", "tf"))):
                        h = proto.request_header(uuid.uuid4().hex, "digits", [x], pin_variant=v["name"],
                                                 pin_placement=p)
                        daemon.request(h, [x])
            health, _ = daemon.request({"type": "health", "id": "h"})
            me = psutil.Process(proc.pid)
            maps = "".join(open(f"/proc/{pp.pid}/maps").read() for pp in [me, *me.children()])
            return {"ready_s": ready_s, "first_reply_s": first_reply_s,
                    "rss_mb": health["body"]["rss_bytes"] / 2**20,
                    "workers_rss_mb": health["body"]["workers_rss_bytes"] / 2**20,
                    "placements": len(placements), "worker_processes": len(me.children()),
                    "tensorflow_mapped": "tensorflow" in maps}
        finally:
            daemon.stop()
            ns.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=ROOT / "demo-repo")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--isolation", choices=("thread", "process"), default="thread",
                    help="[placements] isolation (default: thread, the daemon's default)")
    args = ap.parse_args()
    if not (args.repository / "digits").exists():
        subprocess.run([sys.executable, "-m", "adaptd", "demo", "build", "--repository", str(args.repository),
                        "--no-progress"], check=True)
    rounds = [one_round(args.repository, args.isolation) for _ in range(args.rounds)]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.rounds} rounds; isolation {args.isolation}: "
          f"{rounds[0]['placements']} placements, {rounds[0]['worker_processes']} worker processes; "
          f"TensorFlow mapped: {any(r['tensorflow_mapped'] for r in rounds)}")
    for key, unit in (("ready_s", "s"), ("first_reply_s", "s"), ("rss_mb", "MB"), ("workers_rss_mb", "MB")):
        vals = np.array([r[key] for r in rounds])
        print(f"{key:15s} median {np.median(vals):7.2f} {unit}  [min {vals.min():.2f}, max {vals.max():.2f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
