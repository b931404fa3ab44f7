"""Goodput under overload: offered 10x what the daemon can serve, does it still serve that much?

    .venv/bin/python bench/bench_overload.py

By default it serves ``slow``, the test suite's model of about 10 ms per image on one core (built
once into ``var/bench-slow``, about a minute); ``--repository demo-repo --model digits`` serves
the demo's 0.1 ms model instead, where the load generator itself needs most of a core. Starts a
daemon (``DaemonProcess``: LiteRT placements, ``queue_limit`` ``--queue-limit``), pins every request
to one variant (``--variant``, float32) on one single-core placement, so the service time is one
arm's, and measures:

1. the peak: a closed loop with ``--outstanding`` requests in flight for ``--peak-s`` seconds
   (replies per second; the service time is its inverse);
2. overload: an open loop (Poisson arrivals from ``--procs`` processes, never waiting for a reply)
   offering ``--factor`` x the peak for ``--overload-s`` seconds: replies per second (all, and
   successful), the share answered BUSY, the round trip of BUSY replies (p50/p99) and of the
   admitted requests (p50/p99), lost and duplicated replies;
3. for comparison, a closed loop with ``--many`` requests in flight (each reply, BUSY included,
   sends the next at once): replies per second, all and successful.

By default (``--client-cores auto``) this script, its senders and the daemon's own threads run on
every core but the measured placement's: on a small machine a load generator offering 10x a
core's worth of requests would otherwise take that core from the execution it measures, and the
figure would be the generator's, not the daemon's. ``--client-cores none`` measures unpinned.

Targets (exit 1 when one is missed): successful replies per second under overload at least 90% of
the peak; admitted requests' p99 round trip within 2 x queue_limit x the service time; BUSY p99
under 1 ms, as a priority probe measures it (one more client at 50 requests per second under
SCHED_FIFO when it may: the senders' BUSY round trips include their own lag, up to several ms when
two of them and the daemon share a core; the probe's do not); none lost or duplicated. Exit 2 when this machine could not offer at least 90% of the
asked rate (the figure would not be an overload figure).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from adaptd.tools.launch import DaemonProcess
from robustness import models, overload, watch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repository", type=Path, default=None,
                    help="default: the slow model, built once into var/bench-slow")
    ap.add_argument("--model", default=None, help="default: the repository's first model")
    ap.add_argument("--isolation", choices=("thread", "process"), default="thread",
                    help="[placements] isolation of the daemon under test (default: thread, the daemon's default)")
    ap.add_argument("--variant", default="float32")
    ap.add_argument("--placement", default=None, help="default: the single-core LiteRT placement on the last core")
    ap.add_argument("--queue-limit", type=int, default=32)
    ap.add_argument("--outstanding", type=int, default=4, help="closed loop: requests in flight")
    ap.add_argument("--peak-s", type=float, default=5.0)
    ap.add_argument("--factor", type=float, default=10.0, help="offered load, x the peak")
    ap.add_argument("--overload-s", type=float, default=10.0)
    ap.add_argument("--procs", type=int, default=2, help="open-loop sender processes")
    ap.add_argument("--daemon-nice", type=int, default=None, metavar="N",
                    help="run the daemon's and its workers' threads at nice N (a unit's Nice=), above its clients")
    ap.add_argument("--rt-priority", type=int, default=0, metavar="N",
                    help="the daemon's [server] rt_priority (its main and ZeroMQ I/O threads under SCHED_RR N; "
                         "default 0: off, the daemon's default)")
    ap.add_argument("--probe-per-s", type=float, default=50.0,
                    help="a priority probe's requests per second during the overload (0: none): the daemon's "
                         "part of the BUSY round trip, without the senders' own lag")
    ap.add_argument("--many", type=int, default=1600, help="closed loop for comparison: requests in flight")
    ap.add_argument("--client-cores", default="auto",
                    help="cores for this script, its senders and the daemon's own threads ([server] cores): "
                         "'auto' (every core but the placement's, so the offered load does not take the "
                         "placement's core from the execution it measures), 'none' (unpinned), or e.g. '0'")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    last_core = max(os.sched_getaffinity(0))
    client_cores = _client_cores(args.client_cores, args.placement)
    if args.repository is None:
        args.repository = models.slow_repository(Path(__file__).resolve().parents[1] / "var" / "bench-slow")
    if not args.repository.is_dir():
        ap.error(f"no repository at {args.repository}")
    with tempfile.TemporaryDirectory(prefix="adaptd-overload-") as work:
        with DaemonProcess.start(args.repository, Path(work), config={
                "placements": {"tensorflow": "off", "queue_limit": args.queue_limit,
                               "isolation": args.isolation},
                "server": {"cores": sorted(client_cores), "rt_priority": args.rt_priority}}) as daemon:
            if args.daemon_nice is not None:
                daemon.renice(args.daemon_nice)
            if client_cores:   # after the daemon started: it finds its placements on the cores it may use
                os.sched_setaffinity(0, client_cores)   # the senders (spawned) inherit it
            scheduling = watch.control(daemon.endpoint, "health")["body"]["front_end_scheduling"]
            body = watch.control(daemon.endpoint, "models")["body"]
            entry = next((m for m in body["models"] if m["name"] == args.model), None) if args.model else body["models"][0]
            if entry is None:
                ap.error(f"no model {args.model!r}")
            places = watch.control(daemon.endpoint, "placements")["body"]["placements"]
            single = [p for p in places if p["runtime"] == "litert" and len(p["cores"]) == 1]
            on_last = [p for p in single if p["cores"] == [last_core]]
            place = next((p for p in places if p["name"] == args.placement), None) if args.placement else \
                (on_last or single or places)[-1]
            if place is None:
                ap.error(f"no placement {args.placement!r}")
            spec = next(v for v in entry["variants"] if v["name"] == args.variant)["inputs"][0]
            cfg = {"model": entry["name"], "variant": args.variant, "placement": place["name"],
                   "shape": [1, *spec["shape"][1:]]}
            queue_limit = int(place["queue_limit"])
            overload.closed_loop(daemon.endpoint, cfg, args.outstanding, 1.0, warmup_s=0.5, prefix="warm")
            peak = overload.closed_loop(daemon.endpoint, cfg, args.outstanding, args.peak_s, prefix="peak")
            service_ms = 1e3 / peak.results_per_s
            rate = args.factor * peak.results_per_s
            rec = overload.open_loop(daemon.endpoint, cfg, rate, args.overload_s, procs=args.procs,
                                     probe_per_s=args.probe_per_s)
            over = overload.summarise(rec)
            many = (overload.closed_loop(daemon.endpoint, cfg, args.many, args.peak_s, prefix="many")
                    if args.many else None)
            alive = daemon.proc.poll() is None
            if "INTERNAL" in over.other_codes:
                print(daemon.log()[-6000:], file=sys.stderr)
        exit_code = daemon.proc.returncode
    bound_ms = 2 * queue_limit * service_ms
    rows = [
        ("arm", f"{cfg['model']}:{entry['version']} {cfg['variant']} on {cfg['placement']}, queue_limit {queue_limit}"),
        ("peak (closed loop)", f"{peak.results_per_s:.0f} replies/s with {args.outstanding} outstanding; "
                               f"p50 {np.percentile(peak.latencies_ms, 50):.2f} ms; service time {service_ms:.3f} ms "
                               f"(compute {peak.compute_ms:.3f} ms)"),
        ("offered", f"{over.offered_per_s:.0f} requests/s ({over.offered_per_s / peak.results_per_s:.1f}x peak; "
                    f"asked {rate:.0f}; worst sender lag {rec.worst_send_lag_s * 1e3:.1f} ms)"),
        ("replies/s, all", f"{over.replies_per_s:.0f} (compute {rec.compute_ms:.3f} ms per success meanwhile)"),
        ("replies/s, successful", f"{over.results_per_s:.0f} ({over.results_per_s / peak.results_per_s:.0%} of peak;"
                                  " target >= 90%)"),
        ("BUSY share", f"{over.busy_share:.1%}"),
        ("BUSY round trip", f"p50 {over.busy_p50_ms:.3f} ms, p99 {over.busy_p99_ms:.3f} ms (the senders' own lag "
                            "included)"),
        ("BUSY, priority probe", f"p50 {over.probe_busy_p50_ms:.3f} ms, p99 {over.probe_busy_p99_ms:.3f} ms over "
                                 f"{over.probe_busy_n} ({rec.probe_priority}; target p99 < 1 ms)"),
        ("admitted round trip", f"p50 {over.admitted_p50_ms:.1f} ms, p99 {over.admitted_p99_ms:.1f} ms "
                                f"(bound 2 x {queue_limit} x {service_ms:.3f} = {bound_ms:.1f} ms)"),
        ("lost / duplicated", f"{over.lost} / {over.duplicated}"),
        *([(f"closed loop, {args.many} out", f"{many.replies_per_s:.0f} replies/s, {many.results_per_s:.0f} successful "
                                             f"({many.results_per_s / peak.results_per_s:.0%} of peak)")] if many else []),
        ("other replies", ", ".join(f"{k} {v}" for k, v in over.other_codes.items()) or "-"),
        ("daemon", f"{'running' if alive else 'DIED'} after the load; exit status {exit_code} after SIGTERM"),
        ("front end", scheduling),
        ("isolation, pinning", f"{args.isolation}; client and daemon threads on "
                               f"{','.join(map(str, sorted(client_cores))) if client_cores else 'any core'}"),
        ("load average", f"{os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)"),
    ]
    print("\n".join(f"{k:<24} {v}" for k, v in rows))
    misses = {
        "goodput below 90% of peak": over.results_per_s < 0.9 * peak.results_per_s,
        "admitted p99 over the bound": not over.admitted_p99_ms <= bound_ms,
        "BUSY p99 (priority probe) not under 1 ms": not over.probe_busy_p99_ms < 1.0,
        "lost or duplicated replies": over.lost + over.duplicated > 0,
        "daemon died or did not exit 0": not alive or exit_code != 0,
    }
    missed = [k for k, v in misses.items() if v]
    print("targets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    if args.json:
        args.json.write_text(json.dumps({"peak_per_s": peak.results_per_s, "service_ms": service_ms,
                                         "many_results_per_s": many.results_per_s if many else None,
                                         **over.__dict__, "bound_ms": bound_ms, "missed": missed,
                                         "load": os.getloadavg()}, indent=1))
    if over.offered_per_s < 0.9 * rate:
        print(f"this machine offered only {over.offered_per_s:.0f} of the {rate:.0f} requests/s asked: "
              "not an overload figure")
        return 2
    return 1 if missed else 0


def _client_cores(spec: str, placement: str | None) -> set[int]:
    """The cores ``--client-cores`` names (empty: unpinned). 'auto' leaves out the measured
    placement's core: the one ``--placement`` names (cpu:N), else the last core, where the
    default placement runs."""
    available = sorted(os.sched_getaffinity(0))
    if spec == "none":
        return set()
    if spec != "auto":
        return {int(c) for c in spec.split(",")}
    match = re.fullmatch(r"cpu:(\d+)", placement or "")
    busy = int(match.group(1)) if match else available[-1]
    return set(available) - {busy}


if __name__ == "__main__":
    sys.exit(main())
