"""How many Python calls the daemon's main thread makes per request, counted live.

On a request path that runs on cold caches (a lone caller's daemon wakes for each request, after
a run that filled its core's caches), a Python call costs its code's and its data's cache lines
whatever it does, so calls that do no work (a generator's resumptions, a property, a library's
Python wrapper around a C call, an enum's arithmetic) are worth finding. A daemon is started on
the demo repository with ``bench/call_census`` first on its ``PYTHONPATH`` (its
``sitecustomize`` counts every Python function entered and every C function called on the main
thread between two ``SIGUSR1``); one thin client sends the tiny model's requests, variant and
placement pinned, input inline, over ipc or the local stream: a warm-up, then ``--requests``
counted. Printed: Python and C calls per request, the loop's rounds per request (its polls; the
calls of a request depend on them, and they vary from run to run), and the functions called
most. ``--client library`` sends with :class:`adaptd.clients.client.Client` instead and counts
its calls too (this process's, the same way). ``--baseline REV`` counts a daemon of that
revision's code too (a temporary git worktree, as ``bench_paired.py --baseline`` does), one after
the other; the client is this checkout's either way.

Usage::

    .venv/bin/python bench/call_census.py [--transport ipc] [--client thin] [--requests 1000] [--top 40]
                                          [--baseline REV]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dealers import connect, pinned_requests

ROOT = Path(__file__).resolve().parents[1]
POLL = "zmq.sugar.poll:poll"


def census(pythonpath: str | None, transport: str, n: int, tmp: Path, label: str,
           library: bool) -> tuple[dict[tuple[str, str], int], int | None]:
    """Counts of (kind, where) over ``n`` requests of one daemon (see the module's docstring), and
    the client library's Python calls over them (None for the thin client)."""
    from adaptd.tools.launch import DaemonProcess

    out = tmp / f"{label}.census"
    paths = [str(ROOT / "bench" / "call_census")] + ([pythonpath] if pythonpath else [])
    x = np.random.default_rng(0).random((1, 16, 16, 1), dtype=np.float32)
    with DaemonProcess.start(ROOT / "demo-repo", tmp / label, config={"placements": {"include": ["cpu:1"],
                                                                                  "load": "eager"}},
                             env={"PYTHONPATH": os.pathsep.join(paths), "ADAPTD_CALL_CENSUS": str(out)}) as daemon:
        endpoint = daemon.local_endpoint if transport == "stream" else daemon.endpoint
        if library:
            from adaptd.clients.client import Client

            client = Client(endpoint)

            def requests(count: int) -> None:   # (Client.infer raises on an error reply)
                for _ in range(count):
                    client.infer("digits", x, variant="float32", placement="cpu:1")
        else:
            requests = pinned_requests(connect(endpoint), "digits", x, "float32", "cpu:1")

        requests(2000)   # warm-up: the selector's estimates settle, a repeated header is kept
        daemon.signal(signal.SIGUSR1)
        time.sleep(0.2)   # (the handler runs when the daemon's loop next wakes: the first request)
        client_calls = [0]

        def count_calls(frame, event, arg) -> None:
            if event == "call":
                client_calls[0] += 1
        if library:
            sys.setprofile(count_calls)
        try:
            requests(n)
        finally:
            sys.setprofile(None)
        daemon.signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not out.exists():   # written by the daemon's handler, at its loop's next wake-up
            if time.monotonic() > deadline:
                raise SystemExit("the daemon wrote no census (was bench/call_census on its PYTHONPATH?)")
            requests(1)
        time.sleep(0.2)
    counts: dict[tuple[str, str], int] = {}
    for line in out.read_text().splitlines():
        count, kind, where = line.split("\t")
        counts[kind, where] = int(count)
    return counts, client_calls[0] if library else None


def report(label: str, counts: dict[tuple[str, str], int], client_calls: int | None, n: int, top: int) -> None:
    py = {where: c for (kind, where), c in counts.items() if kind == "py"}
    c_calls = sum(c for (kind, _), c in counts.items() if kind == "c")
    print(f"{label}: {sum(py.values()) / n:.1f} Python calls per request ({c_calls / n:.1f} C calls), the loop's "
          f"rounds per request {py.get(POLL, 0) / n:.2f}"
          + (f"; the client library's own: {client_calls / n:.1f} Python calls per request"
             if client_calls is not None else ""))
    for where, c in sorted(py.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {c / n:6.2f}  {where}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transport", choices=("ipc", "stream"), default="ipc")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--client", choices=("thin", "library"), default="thin",
                    help="raw frames, or adaptd.clients.client.Client (its calls counted too)")
    ap.add_argument("--baseline", metavar="REV", help="also count a daemon of this git revision's code")
    args = ap.parse_args()
    from bench_paired import baseline_source, short_rev

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        runs = [(f"this checkout ({short_rev('HEAD')})", None)]
        if args.baseline:
            runs.append((f"{args.baseline} ({short_rev(args.baseline)})",
                         str(stack.enter_context(baseline_source(args.baseline, Path(tmp))))))
        print(f"the tiny model, input inline, {args.transport}, {args.client} client, {args.requests} requests counted")
        for i, (label, pythonpath) in enumerate(runs):
            counts, client_calls = census(pythonpath, args.transport, args.requests, Path(tmp), f"run{i}",
                                          args.client == "library")
            report(label, counts, client_calls, args.requests, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
