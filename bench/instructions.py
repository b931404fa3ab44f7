"""How many instructions the daemon executes per request, counted by valgrind: a figure that the
host's noisy spells do not move.

On this shared 2-vCPU host a change of a few µs per request is inside the spread of any timing,
run to run, so small changes to the request path cannot be judged by time. An instruction count
can: callgrind counts what the daemon's process executes (every thread: the main loop, a
placement's thread, ZeroMQ's I/O thread, the store's writer), within about 1% from run to run
over 2,000 requests (the loop's rounds and the store's batches follow the requests' timing),
whatever else the host does. It is not time (a cache miss costs no instruction), so it complements
``bench_paired.py``, it does not replace it.

A daemon is started on the demo repository under ``valgrind --tool=callgrind
--instr-atstart=no``; one thin client (this process) sends the tiny model's requests, variant and
placement pinned, input inline, over ipc or the local stream: ``--warmup`` requests, then
counting is switched on (``callgrind_control -i on``) for ``--requests`` requests, then off, and
the counts are dumped. Printed per request: the instructions, those inside the interpreter's
``invoke`` (LiteRT's ``InterpreterWrapper::Invoke``) and those outside it (the issue's CPU bar
counts those), and the instructions by where they ran (CPython's interpreter and objects,
LiteRT, ZeroMQ, msgpack, SQLite, numpy, the C library), and the functions that executed most.
``--new-headers`` sends each request under a client name of its own, so that the daemon decodes,
validates and admits each header in full, as it does a client's first request; ``--own-bounds``
gives each a latency bound of its own, as a client with a deadline per frame does. ``--baseline
REV`` counts a daemon of that revision's code too (a git worktree, as ``bench_paired.py
--baseline`` makes), and prints the differences. Under valgrind the daemon
runs about 50 times slower; a run of 300 requests takes about a minute.

Its requests then come 50 times less often, while some of the daemon's rules count wall time:
the inline rule's bounds (the tiny model's run, predicted past them under valgrind, was handed
to the placement's thread where the live daemon runs it inline), the policy's batches (what was
held for at most 20 ms: one or two executions, eight live) and the store's (a few rows per
transaction, hundreds live). Counted as they are, a request cost 629k instructions outside the
invoke over ipc, against 456k paced (AMD-3, 3b98515; stretched one at a time, the inline bounds
took 127k, the policy's batches 78k, the store's 11k). So the daemon runs with those rules
stretched ``--pace`` times (50 by default: ``bench/valgrind_pace`` says how, and the inline
bounds stop at the configuration's maximum, 1,000 ms); ``--pace 0`` counts with the clocks as
they are. Over 2,000 requests two runs of the same code agree within about 1%; over 600, up to
2.5% (the store commits 256 rows at a time, and a run of 600 holds two or three commits).

valgrind 3.19 does not know ``pidfd_open(2)``: the daemon runs there as on a kernel without it
(docs/decisions.md, "Processes watched without pidfds"), so a baseline must be 26a4acd or later.

Usage::

    .venv/bin/python bench/instructions.py [--transport ipc|stream] [--requests 300] [--new-headers | --own-bounds]
                                           [--baseline REV] [--top 25] [--keep DIR] [--pace 50]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dealers import connect, pinned_requests

ROOT = Path(__file__).resolve().parents[1]
PACE = 50.0   # how many times slower the daemon runs under callgrind (its wall-time rules are stretched so)
INLINE_MAX_MS = 1000.0   # the configuration's largest inline bound
INVOKE = "InterpreterWrapper::Invoke(int)"
# Where an instruction ran, by the object or source file callgrind names (first match).
PLACES = (("LiteRT (the run, and its Python binding)", "litert"), ("ZeroMQ", "zmq"), ("msgpack", "msgpack"),
          ("SQLite (the store's writer)", "sqlite"), ("numpy", "numpy"), ("CPython (the daemon's Python)", "python"),
          ("the C library", "libc"))
LINE = re.compile(r"^\s*([\d,]+) \([ \d.]+%\)\s+(?:\*\s+)?(.*)$")


def count(pythonpath: str | None, transport: str, n: int, warmup: int, tmp: Path, label: str,
          new_headers: bool = False, own_bounds: bool = False, pace: float = PACE) -> Path:
    """The callgrind dump of ``n`` requests to one daemon (see the module's docstring)."""
    from adaptd.daemon.config import PlacementsConfig
    from adaptd.daemon.store_config import StoreConfig
    from adaptd.tools.launch import DaemonProcess

    out = tmp / f"{label}.callgrind"
    mark = tmp / f"{label}.paced"
    wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}")
    x = np.random.default_rng(0).random((1, 16, 16, 1), dtype=np.float32)
    config: dict = {"placements": {"include": ["cpu:1"], "load": "eager"}}
    paths = [pythonpath] if pythonpath else []
    env = {}
    if pace:   # the daemon's wall-time rules at valgrind's pace (bench/valgrind_pace says which)
        config["placements"] |= {key: min(getattr(PlacementsConfig, key) * pace, INLINE_MAX_MS)
                                 for key in ("inline_max_ms", "inline_sole_caller_max_ms")}
        config["store"] = {key: getattr(StoreConfig, key) * pace for key in ("flush_interval_s", "retention_interval_s")}
        paths.insert(0, str(ROOT / "bench" / "valgrind_pace"))
        env["ADAPTD_VALGRIND_PACE"] = str(pace)
        env["ADAPTD_VALGRIND_PACE_MARK"] = str(mark)
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    with DaemonProcess.start(ROOT / "demo-repo", tmp / label, config=config, env=env, wrapper=wrapper,
                             ready_timeout_s=900) as daemon:
        if pace and not mark.exists():
            raise SystemExit(f"the daemon's clocks were not stretched (bench/valgrind_pace failed): see {daemon.log_path}")
        conn = connect(daemon.local_endpoint if transport == "stream" else daemon.endpoint)
        requests = pinned_requests(conn, "digits", x, "float32", "cpu:1", new_headers, own_bounds)

        pid = str(daemon.proc.pid)
        requests(warmup)   # the selector's estimates settle (a repeated header is kept)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        requests(n)
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        dumps: list[Path] = []
        deadline = time.monotonic() + 120
        while not dumps:
            if time.monotonic() > deadline:
                raise SystemExit(f"callgrind wrote no dump for {label}")
            time.sleep(0.5)   # (callgrind writes the file from the daemon's process)
            dumps = sorted(tmp.glob(f"{label}.callgrind.*"))
        conn.close()
    return dumps[0]


def annotate(dump: Path, inclusive: bool) -> list[tuple[int, str]]:
    """(instructions, function) for every function of ``dump``, self or inclusive."""
    text = subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100",
                           str(dump)], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in text.split("PROGRAM TOTALS", 1)[1].splitlines():
        match = LINE.match(line)
        if match:
            rows.append((int(match.group(1).replace(",", "")), match.group(2)))
    return rows


def summary(dump: Path, n: int) -> dict[str, float]:
    """Per request: the total, the interpreter's invoke, what is outside it, and by place."""
    own = annotate(dump, inclusive=False)
    total = sum(c for c, _ in own)
    invoke = max((c for c, where in annotate(dump, inclusive=True) if INVOKE in where), default=0)
    out = {"instructions": total / n, "inside invoke": invoke / n, "outside invoke": (total - invoke) / n}
    places = {name: 0 for name, _ in PLACES} | {"elsewhere": 0}
    for c, where in own:
        lower = where.lower()
        places[next((name for name, key in PLACES if key in lower), "elsewhere")] += c
    out |= {f"  {name}": c / n for name, c in places.items()}
    out["_top"] = own   # (kept for the listing)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transport", choices=("ipc", "stream"), default="ipc")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=300)
    headers = ap.add_mutually_exclusive_group()
    headers.add_argument("--new-headers", action="store_true",
                         help="each request a header the daemon has not seen (a client name of its own)")
    headers.add_argument("--own-bounds", action="store_true",
                         help="each request with a latency bound of its own (a deadline per frame)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--baseline", metavar="REV", help="also count a daemon of this git revision's code")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="copy the dumps there (for callgrind_annotate)")
    ap.add_argument("--pace", type=float, default=PACE,
                    help="stretch the daemon's wall-time rules (the inline bounds, the policy's and the store's "
                         "batches) by this factor (0: leave them as they are)")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if shutil.which(tool) is None:
            ap.error(f"{tool} is not installed (Debian: apt install valgrind)")
    from bench_paired import baseline_source, short_rev

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        runs = [(f"this checkout ({short_rev('HEAD')})", None)]
        if args.baseline:
            runs.append((f"{args.baseline} ({short_rev(args.baseline)})",
                         str(stack.enter_context(baseline_source(args.baseline, Path(tmp))))))
        dumps = [count(path, args.transport, args.requests, args.warmup, Path(tmp), f"run{i}", args.new_headers,
                       args.own_bounds, args.pace)
                 for i, (_, path) in enumerate(runs)]
        results = [summary(dump, args.requests) for dump in dumps]
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for dump in dumps:
                shutil.copy(dump, args.keep / dump.name)
    print(f"the tiny model, input inline, {args.transport}, a thin client, {args.requests} requests counted "
          f"after {args.warmup}" + (", each a header not seen before" if args.new_headers else "")
          + (", each with a latency bound of its own" if args.own_bounds else "")
          + (f", the daemon's wall-time rules stretched {args.pace:g}x" if args.pace else ", clocks as they are")
          + "; instructions per request")
    width = max(len(k) for k in results[0] if not k.startswith("_")) + 2
    print(f"{'':<{width}}" + "".join(f"{label.split(' (')[0][:18]:>20}" for label, _ in runs)
          + (f"{'difference':>14}" if len(runs) > 1 else ""))
    for key in (k for k in results[0] if not k.startswith("_")):
        values = [r[key] for r in results]
        print(f"{key:<{width}}" + "".join(f"{v:20,.0f}" for v in values)
              + (f"{values[0] - values[1]:+14,.0f}" if len(values) > 1 else ""))
    print(f"\nthe functions that executed most (self), per request, {runs[0][0]}:")
    for c, where in sorted(results[0]["_top"], reverse=True)[:args.top]:
        print(f"  {c / args.requests:10,.0f}  {where[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
