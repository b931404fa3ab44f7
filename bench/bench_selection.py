"""Selection benchmark (issue 6): adaptd's adaptive policy against fixed choices and an oracle,
on a stream of requests with mixed constraints while a background load switches on and off.

Usage: .venv/bin/python bench/bench_selection.py [--quick] [--reps N] [--stream-s S] [--json OUT]

Setup (cached, built only when missing): ``bench-zoo/repo`` holds the demo model ``digits``
(copied from ``demo-repo/``, built there with ``adaptd demo build`` if absent) and two zoo models
at 128x128 (``MobileNetV2-128``, ``MobileNetV3Small-128``; kinds float32, float16, int8_dynamic,
int8_full, pruned50), calibrated with ``adaptd calibrate`` (the offline profile the priors, and
the static policy, come from). Placements: cpu:0, cpu:1, cpu:0-1 (LiteRT; TensorFlow off), all
variants loaded eagerly.

Background load: ``bench/selection_load.py``, ``--load-procs`` busy processes pinned to core 1,
off for ``--off`` s then on for ``--on`` s, repeating, from the run's t0. cpu:1 and cpu:0-1 slow
down while it is on. ``--daemon-nice N`` runs every thread of the daemon and its workers at nice
N (what ``Nice=`` in the systemd unit does to the service), the load staying at 0.

Stream: one request every ``--period-ms`` (sent at its scheduled time, or at once when the
previous reply came late), for ``--warmup-s + --stream-s`` seconds; model uniform over the three,
constraint entry uniform over the model's mix (see ``mixes``), fixed seed, so every policy gets
the same requests at the same offsets from its t0, i.e. in the same load phase. The first
``--warmup-s`` seconds (one load cycle by default) are sent but not scored. Bounds come from a
profiling pass (every arm measured pinned through the daemon for one off+on cycle, its requests
sent on the runs' cadence, below): latency bounds at 1.3x ("tight"), 2x and 3x the fastest arm's
unloaded median total latency, energy bounds at 1.2x ("tight") and 2x the least median energy
(estimated) of an arm unloaded (``LAT_FACTORS``, ``ENERGY_FACTORS``).

Policies, each against a fresh daemon with the same config except ``[selector]``:
* ``adaptive``: the default selector.
* ``static``: ``[selector] policy = "static"`` (calibrated priors only, never updated, no probes).
* ``most_accurate``: (a) pinned in the client to the variant of highest manifest accuracy (float32
  where accuracy is unknown: the zoo models) on cpu:0-1 (all cores).
* ``smallest``: (b) pinned to the smallest variant (size_bytes; ties by name) on cpu:0-1.
* ``adaptive_alt`` (only with ``--alt JSON``): the adaptive policy with those ``[selector]``
  settings, in the same repetitions as the default one (an A/B comparison).
* ``oracle``: (d) reads the measurement loop below: per arm, the last ``--oracle-window``
  (total latency, energy) samples of the current load state (on/off); an arm meets a bound when
  the ``--oracle-quantile`` percentile of its samples does (99th of 16 by default: the target is
  99% attainment, and a request whose best arm meets its bound in 90% of executions, as the
  earlier 90th-of-8 rule accepted, cannot be met 99% of the time by any policy); among those it
  picks the least median objective (same objective and ties as the selector: latency, then
  energy; energy, then latency), and runs it pinned. No arm meets them: the request is
  *infeasible* (not run).

The measurement loop runs in EVERY policy's run, lock-step with the stream on the same client:
between stream requests it runs pinned requests round-robin over every arm of a *twin* of each
model (``--loop-slots`` of them per stream period), every request of the run, the stream's and
the loop's, sent on one even cadence (``--period-ms / (--loop-slots + 1)``; a slot passed
because the previous reply came late is skipped), so that a measurement follows the same idle
as a stream request does. The total latency of a request grows with the idle before it (the
wake-ups of the daemon and its worker: digits on cpu:0, p50 0.55 ms back to back, 0.85 ms after
5 ms idle, 0.87 after 12 ms); until this cadence the loop's requests came 5 ms after the last
reply and the stream's 9-13 ms, which made the oracle's picture of an arm a little faster than
what a stream request met. The twin is a copy of the model's files under the name
``twin-<model>``, so the same variants on the same placements cost the same, while the
policies' own learning (keyed by model) never sees these executions. Why every run: a request
after an idle spell pays the wake-up of the daemon and its worker, so a run with the loop's
traffic between stream requests is faster than one without (digits on cpu:0, median total
latency 0.50-0.61 ms with it, 0.60-0.77 ms without, measured on this machine when only the
oracle ran the loop). With the loop in the oracle's run only, the oracle both judged
feasibility and served its requests on that faster path, which no other policy had.

Scores, over the scored requests: a request is *feasible* when the oracle found an arm for it
(in the same repetition); attainment = share of feasible requests answered with ``met: true``.
The oracle's rule is also applied in every run to that run's own measurements of the twins, at
the moment of each request: *feasible in its own run*, and the attainment over those requests.
It judges a policy against what the host could do while that policy ran, whereas the oracle's
run is a minute or more away, on a host whose speed drifts (a request feasible in the oracle's
run, on a fast host, can be infeasible for every arm during a slow spell of another run).
Latency is the daemon's ``total_ms`` (what ``met`` judges), energy the daemon's per-request
energy, which on this machine is ESTIMATED from CPU time by the power model (no sensor), and
accuracy the chosen variant's manifest accuracy (digits only). Ratios to the oracle are over the
feasible requests both served, in the same repetition. The runs of a repetition follow each other
a minute or more apart on a shared host whose speed drifts; the measurement loop's pinned work on
the twins, identical in every run, measures that drift: the *host factor* of a run is the median
over arms of its median energy (latency) there against the oracle's run, and the host-adjusted
energy ratio divides by it (both the raw and the adjusted ratio are reported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adaptd.clients.client import Client
from adaptd.clients.errors import AdaptdError
from adaptd.tools.launch import DaemonProcess
from selection_load import load_on
from selection_oracle import TWIN, ArmTable, oracle_pick
from selection_score import fmt, host_factor, median_spread, score, table

ZOO = (("MobileNetV2", 128), ("MobileNetV3Small", 128))
ZOO_KINDS = "float32,float16,int8_dynamic,int8_full,pruned50"
PLACEMENTS = ("cpu:0", "cpu:1", "cpu:0-1")
ALL_CORES = "cpu:0-1"
POLICIES = ("adaptive", "static", "most_accurate", "smallest", "oracle")
ALT = "adaptive_alt"   # the adaptive policy with the ``--alt`` settings, run beside the default one
ADPT = str(Path(sys.executable).parent / "adaptd")


# ----------------------------------------------------------------------------- setup
def prepare(repo: Path, log) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    for name, size in ZOO:
        if not (repo / f"{name}-{size}").is_dir():
            log(f"building zoo model {name} at {size}x{size} into {repo} (1-2 min)")
            subprocess.run([ADPT, "variants", "zoo", name, "--repository", str(repo), "--kinds", ZOO_KINDS,
                            "--input-size", str(size), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    if not (repo / "digits").is_dir():
        demo = ROOT / "demo-repo"
        if not (demo / "digits").is_dir():
            log("building the demo model into demo-repo/ (about 1.5 min)")
            subprocess.run([ADPT, "demo", "build", "--repository", str(demo)], check=True, stdout=subprocess.DEVNULL)
        shutil.copytree(demo / "digits", repo / "digits")
    if not (repo / "calibration.json").is_file():
        log("calibrating the structural predictor on this machine (adaptd calibrate)")
        subprocess.run([ADPT, "calibrate", "--repository", str(repo), "--no-progress"], check=True,
                       stdout=subprocess.DEVNULL)
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith((".", TWIN))):
        twin = repo / (TWIN + model_dir.name)
        if twin.is_dir():
            continue
        log(f"copying {model_dir.name} to {twin.name} (the measured twin)")
        shutil.copytree(model_dir, twin)
        for manifest in twin.glob("*/manifest.json"):
            doc = json.loads(manifest.read_text())
            doc["model"] = TWIN + doc["model"]
            manifest.write_text(json.dumps(doc, indent=2))


def daemon_config(policy: str, selector: dict | None = None, server: dict | None = None) -> dict:
    """The daemon's config for a policy; ``selector``: extra ``[selector]`` settings (the
    adaptive and static policies only, e.g. ``confidence``); ``server``: ``[server]`` settings
    (every policy's daemon, e.g. ``sched_slice_us``)."""
    cfg: dict[str, Any] = {"placements": {"tensorflow": "off", "load": "eager", "include": list(PLACEMENTS)}}
    if server:
        cfg["server"] = dict(server)
    table = dict(selector or {}) if policy in ("adaptive", "static", ALT) else {}
    if policy == "static":
        table["policy"] = "static"
    if table:
        cfg["selector"] = table
    return cfg


class Load:
    """The background load process for one run (its schedule starts at ``t0``)."""

    def __init__(self, args, t0: float, until: float) -> None:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve().parent / "selection_load.py"), "--core", str(args.load_core),
             "--t0", repr(t0), "--on", str(args.on), "--off", str(args.off), "--until", repr(until),
             "--procs", str(args.load_procs)], env=env)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait()


def server_settings(args) -> dict:
    """``[server]`` settings of every daemon of the run, from the command line."""
    return {} if args.sched_slice_us is None else {"sched_slice_us": args.sched_slice_us}


# ----------------------------------------------------------------------------- the repository
def catalogue(client: Client) -> dict[str, dict]:
    """{model: {inputs, variants: {name: {accuracy, size_bytes}}, arms: [(variant, placement)]}}."""
    body = client.models()
    out = {}
    for m in body["models"]:
        if m["name"].startswith(TWIN):
            continue
        variants = {v["name"]: {"accuracy": v.get("accuracy"), "size_bytes": v.get("size_bytes")}
                    for v in m["variants"] if v.get("runtime", "litert") == "litert"}
        spec = m["variants"][0]["inputs"][0]
        out[m["name"]] = {"shape": [d if isinstance(d, int) and d > 0 else 1 for d in spec["shape"]],
                          "variants": variants,
                          "arms": [(v, p) for v in sorted(variants) for p in PLACEMENTS]}
    return out


def make_input(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32)


def fixed_arm(cat: dict, model: str, kind: str) -> tuple[str, str]:
    vs = cat[model]["variants"]
    if kind == "most_accurate":
        known = {n: v["accuracy"] for n, v in vs.items() if v["accuracy"] is not None}
        v = max(sorted(known), key=lambda n: known[n]) if known else "float32"
    else:
        v = min(sorted(vs), key=lambda n: vs[n]["size_bytes"])
    return v, ALL_CORES


def cadence_s(args) -> float:
    """The run's cadence in seconds. Every request of a run, the stream's and the measurement
    loop's, is sent on a grid of ``--period-ms / (--loop-slots + 1)``: a stream request on every
    (slots+1)-th point, a measurement on each point between."""
    return args.period_ms / 1e3 / (args.loop_slots + 1)


# ----------------------------------------------------------------------------- bounds and stream
def profile_bounds(args, repo: Path, workdir: Path, log) -> tuple[dict, dict, dict]:
    """One off+on cycle of pinned measurements of every arm -> per-model bounds."""
    with DaemonProcess.start(repo, workdir / "profile", config=daemon_config("adaptive", server=server_settings(args)),
                             ready_timeout_s=180) as d, Client(d.endpoint, timeout_ms=20_000, retries=0) as c:
        if args.daemon_nice is not None:
            d.renice(args.daemon_nice)
        cat = catalogue(c)
        inputs = {m: make_input(cat[m]["shape"], 1) for m in cat}
        t0 = time.monotonic() + 0.5
        cycle = args.on + args.off
        until = t0 + cycle * args.profile_cycles
        load = Load(args, t0, until + 1.0)
        table = ArmTable(cat, 10_000, cadence_s(args))
        try:   # the same cadence as the runs'
            table.measure_grid(c, inputs, lambda: load_on(time.monotonic(), t0, args.on, args.off), t0,
                               round((until - t0) / table.interval_s))
        finally:
            load.stop()
    bounds, arms_out = {}, {}
    for m in sorted(cat):
        rows = []
        for v, p in cat[m]["arms"]:
            rows.append({"variant": v, "placement": p, "off": table.cost((m, v, p), False),
                         "on": table.cost((m, v, p), True)})
        fastest = min(r["off"][0] for r in rows if r["off"] is not None)
        frugal = min(r["off"][1] for r in rows if r["off"] is not None and r["off"][1] == r["off"][1])
        bounds[m] = {"fastest_ms": fastest, "least_energy_mj": frugal,
                     **{f"L{k}": fastest * k for k in LAT_FACTORS}, **{f"E{k}": frugal * k for k in ENERGY_FACTORS}}
        arms_out[m] = rows
        log(f"  {m}: fastest arm {fastest:.3g} ms, least energy {frugal:.3g} mJ (estimated), unloaded medians")
    return cat, bounds, {"catalogue": {m: {k: v for k, v in cat[m].items() if k != 'arms'} for m in cat},
                    "arms": arms_out}


LAT_FACTORS = (1.3, 2, 3)       # latency bounds: these multiples of the fastest arm's unloaded median
ENERGY_FACTORS = (1.2, 2)       # energy bounds: these multiples of the least energy of an arm, unloaded


def mixes(model: str, b: dict, has_accuracy: bool) -> list[dict]:
    mix = [
        {"name": "lat<=1.3f min energy", "max_latency_ms": b["L1.3"], "objective": "energy"},
        {"name": "lat<=2f min energy", "max_latency_ms": b["L2"], "objective": "energy"},
        {"name": "lat<=3f min energy", "max_latency_ms": b["L3"], "objective": "energy"},
        {"name": "energy<=1.2e min latency", "max_energy_mj": b["E1.2"], "objective": "latency"},
        {"name": "energy<=2e & lat<=2f min latency", "max_energy_mj": b["E2"], "max_latency_ms": b["L2"],
         "objective": "latency"},
    ]
    if has_accuracy:
        mix += [
            {"name": "acc>=0.975 & lat<=2f min energy", "min_accuracy": 0.975, "max_latency_ms": b["L2"],
             "objective": "energy"},
            {"name": "acc>=0.97 & energy<=2e min latency", "min_accuracy": 0.97, "max_energy_mj": b["E2"],
             "objective": "latency"},
        ]
    return mix


def make_stream(cat: dict, bounds: dict, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    models = sorted(cat)
    mix = {m: mixes(m, bounds[m], any(v["accuracy"] is not None for v in cat[m]["variants"].values()))
           for m in models}
    out = []
    for i in range(n):
        m = rng.choice(models)
        e = dict(rng.choice(mix[m]))
        e["model"] = m
        e["i"] = i
        out.append(e)
    return out


# ----------------------------------------------------------------------------- one run
def run_policy(policy: str, args, repo: Path, workdir: Path, stream: list[dict], log):
    cycle = args.on + args.off
    selector = args.alt if policy == ALT else args.selector
    with DaemonProcess.start(repo, workdir / policy, config=daemon_config(policy, selector, server_settings(args)),
                             ready_timeout_s=180) as d, Client(d.endpoint, timeout_ms=20_000, retries=0) as c:
        if args.daemon_nice is not None:
            d.renice(args.daemon_nice)
        cat = catalogue(c)
        inputs = {m: make_input(cat[m]["shape"], 1) for m in cat}
        # Every policy runs beside the same measurement loop (on the twins), so that all face the
        # same traffic; only the oracle reads the measurements.
        table = ArmTable(cat, args.oracle_window, cadence_s(args))
        prelude = cycle   # one cycle of measurements before the stream
        t0 = time.monotonic() + prelude + 0.5
        until = t0 + len(stream) * args.period_ms / 1e3
        load = Load(args, t0, until + 2.0)
        phase = (lambda: load_on(time.monotonic(), t0, args.on, args.off))
        records = []
        try:
            table.measure_grid(c, inputs, phase, t0 - prelude, round(prelude / table.interval_s))
            for req in stream:
                at = t0 + req["i"] * args.period_ms / 1e3
                if req["i"]:   # the measurement slots since the previous stream request
                    table.measure_grid(c, inputs, phase, at - args.period_ms / 1e3 + table.interval_s,
                                       args.loop_slots)
                left = at - time.monotonic()
                if left > 0:
                    time.sleep(left)
                sent = time.monotonic()
                on = load_on(sent, t0, args.on, args.off)
                rec = {"i": req["i"], "model": req["model"], "entry": req["name"], "on": on,
                       "late_ms": (sent - at) * 1e3, "scored": req["i"] * args.period_ms / 1e3 >= args.warmup_s}
                kw = {k: req.get(k) for k in ("min_accuracy", "max_latency_ms", "max_energy_mj")}
                kw["objective"] = req["objective"]
                # what the oracle would pick now, from this run's own measurements of the twins
                pick = oracle_pick(table, cat, req, on, args.oracle_quantile)
                rec["feasible_here"] = pick is not None
                rec["pick_here"] = pick
                if policy in ("most_accurate", "smallest"):
                    kw["variant"], kw["placement"] = fixed_arm(cat, req["model"], policy)
                elif policy == "oracle":
                    rec["oracle_feasible"] = pick is not None
                    if pick is None:
                        rec.update(outcome="infeasible_oracle")
                        records.append(rec)
                        continue
                    kw["variant"], kw["placement"] = pick
                try:
                    r = c.infer(req["model"], inputs[req["model"]], **kw)
                    s = r.selection
                    acc = cat[req["model"]]["variants"][s.variant]["accuracy"]
                    rec.update(outcome="ok", variant=s.variant, placement=s.placement, reason=s.reason.code,
                               total_ms=s.timing.total_ms, compute_ms=s.timing.compute_ms, client_ms=r.client_ms,
                               energy_mj=s.energy.energy_mj, energy_estimated=s.energy.estimated, met=s.met,
                               accuracy=acc, constraints_met=s.constraints_met, queue_ms=s.timing.queue_ms,
                               predicted_latency_ms=s.predicted.latency_ms,
                               predicted_bound_ms=s.predicted.latency_bound_ms,
                               predicted_energy_mj=s.predicted.energy_mj)
                except AdaptdError as exc:
                    rec.update(outcome="rejected" if exc.code == "INFEASIBLE" else f"error:{exc.code}", met=False,
                               error=exc.message)
                rec["on_after"] = phase()
                records.append(rec)
            stats = c.stats() if policy in ("adaptive", "static", ALT) else None
        finally:
            load.stop()
    log(f"  {policy}: {table.next} measurements of the twins, {table.skipped} slots skipped after a late reply")
    return records, stats, table.medians()


def git_head() -> str | None:
    if os.environ.get("BENCH_COMMIT"):   # a run from an exported snapshot of a commit
        return os.environ["BENCH_COMMIT"]
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine() -> dict:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "logical_cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_start": os.getloadavg(), "commit": git_head()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="selection benchmark (issue 6)")
    ap.add_argument("--quick", action="store_true", help="about 2 minutes: 1 repetition, 12 s scored")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--stream-s", type=float, default=36.0, help="scored seconds per run")
    ap.add_argument("--warmup-s", type=float, default=6.0, help="unscored seconds at the start of each run")
    ap.add_argument("--period-ms", type=float, default=25.0, help="one request every this many ms")
    ap.add_argument("--on", type=float, default=3.0)
    ap.add_argument("--off", type=float, default=3.0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument("--load-procs", type=int, default=2)
    ap.add_argument("--oracle-window", type=int, default=16, help="samples per arm and load state")
    ap.add_argument("--oracle-quantile", type=float, default=99.0,
                    help="an arm meets a bound when this percentile of its samples does")
    ap.add_argument("--loop-slots", type=int, default=2,
                    help="measurements between two stream requests, all requests evenly spaced (profile too)")
    ap.add_argument("--profile-cycles", type=int, default=1)
    ap.add_argument("--daemon-nice", type=int, default=None, metavar="N",
                    help="run the daemon's and its workers' threads at this nice value (the load stays at 0; "
                         "below 0 needs root or CAP_SYS_NICE)")
    ap.add_argument("--sched-slice-us", type=int, default=None, metavar="US",
                    help="[server] sched_slice_us for every daemon of the run (default: the daemon's)")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--repository", type=Path, default=ROOT / "bench-zoo" / "repo")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--selector", type=json.loads, default=None, metavar="JSON",
                    help='extra [selector] settings for the adaptive and static policies, e.g. '
                         '\'{"confidence": 0.9}\' (default: the daemon\'s defaults)')
    ap.add_argument("--alt", type=json.loads, default=None, metavar="JSON",
                    help=f"also run the adaptive policy with these [selector] settings, as policy '{ALT}', "
                         "in the same repetitions (an A/B comparison on the same host phases)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--render", type=Path, help="print the table of a JSON file this benchmark wrote, and exit")
    args = ap.parse_args(argv)
    if args.render:
        print(table(json.loads(args.render.read_text())["reps"]))
        return 0
    if args.quick:
        args.reps, args.stream_s = 1, 12.0
    policies = [p for p in POLICIES if p in args.policies.split(",")]
    if args.alt is not None:
        policies.insert(policies.index("adaptive") + 1 if "adaptive" in policies else 0, ALT)
    if "oracle" not in policies:
        policies.append("oracle")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    started = time.time()
    prepare(args.repository, log)
    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="adaptd-bench-sel-"))
    try:
        log("profiling every arm through the daemon for the constraint bounds")
        cat, bounds, profile = profile_bounds(args, args.repository, workdir, log)
        n = round((args.warmup_s + args.stream_s) * 1e3 / args.period_ms)
        stream = make_stream(cat, bounds, n, args.seed)
        reps = []
        for rep in range(args.reps):
            order = policies[rep % len(policies):] + policies[:rep % len(policies)]
            runs, stats, medians = {}, {}, {}
            for pol in order:
                log(f"rep {rep + 1}/{args.reps}: {pol} ({len(stream)} requests)")
                runs[pol], stats[pol], medians[pol] = run_policy(pol, args, args.repository, workdir / f"r{rep}",
                                                                 stream, log)
            scores = {pol: score(runs[pol], runs["oracle"], host_factor(medians[pol], medians["oracle"], 1),
                                 host_factor(medians[pol], medians["oracle"], 0)) for pol in policies}
            reps.append({"order": order, "scores": scores, "records": runs, "stats": stats, "twin_medians": medians})
            for pol in policies:
                s = scores[pol]
                log(f"  {pol:14s} attainment {fmt(s['attainment'], '.1%')} of {s['feasible']} feasible "
                    f"({fmt(s['attainment_here'], '.1%')} of {s['feasible_here']} feasible in its own run); "
                    f"rejected {s['rejected']}; energy {fmt(s['energy_mj_mean'])} mJ (est.), "
                    f"x{fmt(s['energy_ratio_to_oracle'])} oracle (x{fmt(s['energy_ratio_to_oracle_host_adjusted'])} "
                    f"host-adjusted); p50 {fmt(s['latency_ms_p50'])} ms; "
                    f"p99 {fmt(s['latency_ms_p99'])} ms; {s['placements']}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {p: {k: median_spread([r["scores"][p].get(k) for r in reps])
                   for k in ("attainment", "attainment_here", "energy_ratio_to_oracle", "energy_ratio_to_oracle_host_adjusted",
                             "latency_ratio_to_oracle", "energy_mj_mean",
                             "latency_ms_p50", "latency_ms_p99", "accuracy_mean_digits")}
               for p in policies}
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": info,
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "bounds": bounds, "profile": profile, "summary": summary,
           "reps": [{"order": r["order"], "scores": r["scores"], "twin_medians": r["twin_medians"]} for r in reps],
           "wall_s": time.time() - started, "loadavg_end": os.getloadavg()}
    print(f"\nselection benchmark: {info['cpu']}, {info['logical_cpus']} CPUs, {out['date']}, "
          f"{args.reps} repetition(s) x {args.stream_s:g} s scored, load on core {args.load_core} "
          f"{args.off:g} s off / {args.on:g} s on; energy is ESTIMATED (power model, no sensor); "
          f"medians (min-max) over repetitions; wall {out['wall_s']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        full = dict(out, records=[r["records"] for r in reps], daemon_stats=[r["stats"] for r in reps])
        args.json.write_text(json.dumps(full, indent=1, default=str))
        print(f"wrote {args.json}")
    print(table(reps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
