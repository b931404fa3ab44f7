"""Wake-up delay of a worker-like process on a busy core, with and without ``[server] sched_slice_us``.

Run: ``.venv/bin/python bench/bench_wakeup.py [--rounds 2] [--requests 800] [--slice-us 100]``

A parent process on core 0 sends a time stamp over a Unix socketpair every ``--period-ms``
(8 ms, about the selection benchmark's cadence) to a child pinned to ``--core`` (1), which
busy-works ``--work-us`` (300 us, a small model's execution) and answers. ``--load-procs`` (2)
busy processes share the child's core at the same nice value. Measured per request: the
*wake-up delay* (the time stamp sent until the child has it) and the round trip. The child
either keeps the kernel's slice or asks for ``--slice-us`` (:mod:`adaptd.daemon.sched`, as the
daemon's workers do); conditions alternate round by round (ABAB...). Needs Linux 6.12 or later
for the slice to take (the script says when it does not).

Prints, per condition, medians over rounds with their min-max spread, as a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import time

import numpy as np

from adaptd.daemon.sched import current_slice_us, request_slice


def _busy(core: int) -> None:
    os.sched_setaffinity(0, {core})
    while True:
        pass


def _child(sock: socket.socket, core: int, slice_us: int | None, work_ns: int) -> None:
    os.sched_setaffinity(0, {core})
    if slice_us and not request_slice(slice_us):
        sock.send(b"\0" * 16)   # says: the slice did not take
        return
    sock.send(b"\1" * 16)
    while True:
        msg = sock.recv(8)
        if not msg:
            return
        got = time.monotonic_ns()
        sent = int.from_bytes(msg, "little")
        end = got + work_ns
        while time.monotonic_ns() < end:
            pass
        sock.send((got - sent).to_bytes(8, "little") + b"\0" * 8)


def one_round(args, slice_us: int | None) -> dict[str, float]:
    loads = []
    for _ in range(args.load_procs):
        pid = os.fork()
        if pid == 0:
            _busy(args.core)
        loads.append(pid)
    ours, theirs = socket.socketpair()
    child = os.fork()
    if child == 0:
        ours.close()
        _child(theirs, args.core, slice_us, args.work_us * 1000)
        os._exit(0)
    theirs.close()
    try:
        if ours.recv(16) != b"\1" * 16:
            raise SystemExit(f"this kernel ({platform.release()}) keeps no per-thread slice: needs Linux 6.12+")
        waits, rtts = [], []
        next_at = time.monotonic() + 0.2
        for _ in range(args.requests):
            next_at += args.period_ms / 1e3
            time.sleep(max(0.0, next_at - time.monotonic()))
            t0 = time.monotonic_ns()
            ours.send(t0.to_bytes(8, "little"))
            reply = ours.recv(16)
            rtts.append((time.monotonic_ns() - t0) / 1e3)
            waits.append(int.from_bytes(reply[:8], "little") / 1e3)
    finally:
        ours.close()
        os.waitpid(child, 0)
        for pid in loads:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    w, r = np.array(waits), np.array(rtts)
    return {"wake_p50_us": float(np.percentile(w, 50)), "wake_p99_us": float(np.percentile(w, 99)),
            "wake_over_1ms_pct": float(np.mean(w > 1000) * 100), "rtt_p50_us": float(np.percentile(r, 50)),
            "rtt_p99_us": float(np.percentile(r, 99)), "rtt_over_1ms_pct": float(np.mean(r > 1000) * 100)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests", type=int, default=800)
    ap.add_argument("--period-ms", type=float, default=8.0)
    ap.add_argument("--work-us", type=int, default=300)
    ap.add_argument("--core", type=int, default=1)
    ap.add_argument("--load-procs", type=int, default=2)
    ap.add_argument("--slice-us", type=int, default=100)
    args = ap.parse_args()
    os.sched_setaffinity(0, {c for c in os.sched_getaffinity(0) if c != args.core} or {0})
    conditions = {"kernel's slice": None, f"{args.slice_us} us slice": args.slice_us}
    results: dict[str, list[dict]] = {k: [] for k in conditions}
    for rnd in range(args.rounds):
        for name, slice_us in conditions.items():
            results[name].append(one_round(args, slice_us))
            print(f"round {rnd + 1}, {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    print(f"\nwake-up on a core with {args.load_procs} busy processes: {platform.processor() or platform.machine()}, "
          f"kernel {platform.release()} (its slice {current_slice_us()} us), {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds x {args.requests} requests, {args.work_us} us of work each, "
          f"one every {args.period_ms:g} ms; medians (min..max) over rounds\n")
    keys = list(next(iter(results.values()))[0])
    print("| condition | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, rounds in results.items():
        cells = []
        for k in keys:
            v = [r[k] for r in rounds]
            cells.append(f"{np.median(v):.1f} ({min(v):.1f}..{max(v):.1f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
