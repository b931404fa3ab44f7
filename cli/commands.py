"""The client commands of the CLI: ``infer``, ``explain``, ``models``, ``stats``, ``health``,
``reload``, ``fidelity export``, ``log tail`` and ``log export``.

Contract
--------
* Each ``run_*(args) -> int`` takes the ``argparse.Namespace`` built by ``adaptd.cli.main``,
  prints to stdout (a table for people, or JSON with ``--json``) and returns the exit code.
  Daemon errors, timeouts and bad files become :class:`~adaptd.cli.main.UserError` (one
  line on stderr, exit 1).
* Energy is always printed with its provenance: "estimated" (from a power model) or
  "measured" (a sensor), never a bare figure; where there is no figure, "n/a".
* Units in column headers: ms, mJ, accuracy in %.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adaptd.cli import UserError
from adaptd.clients.client import Client, Explanation, InferResult, default_admin_endpoint
from adaptd.clients.errors import AdaptdError, InfeasibleError
from adaptd.clients.inputs import fit_to_spec, load_array

BATCH_ROWS_SHOWN = 8   # rows of a batch printed per output (all of them with --json)


# --- formatting helpers ---------------------------------------------------------------------

def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def energy_label(energy_mj: float | None, estimated: bool | None, source: str | None = None) -> str:
    if energy_mj is None:
        return "-"
    kind = "estimated" if estimated or (source or "").startswith("estimated") else "measured"
    return f"{energy_mj:.3f} mJ ({kind}{', ' + source if source else ''})"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, (bytes, memoryview)):
        return bytes(o).hex()
    return str(o)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=_json_default))


def split_model(spec: str) -> tuple[str, str | None]:
    name, _, version = spec.partition(":")
    return name, version or None


def _client(args: argparse.Namespace) -> Client:
    return Client(getattr(args, "endpoint", None), timeout_ms=getattr(args, "timeout_ms", 30000.0), retries=1)


def _fail(exc: AdaptdError) -> UserError:
    text = str(exc)
    if isinstance(exc, InfeasibleError):
        for name, v in exc.violations.items():
            if isinstance(v, Mapping):
                text += f"; {name}: predicted {fmt(v.get('predicted'))} vs bound {fmt(v.get('bound'))}"
        if exc.closest:
            text += f"; closest arm: {exc.closest.get('variant')} on {exc.closest.get('placement')}"
        text += " (use --on-infeasible best_effort to run it anyway)"
    return UserError(text)


def _constraint_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"min_accuracy": args.min_accuracy, "max_latency_ms": args.max_latency_ms,
            "max_energy_mj": args.max_energy_mj, "latency_confidence": args.latency_confidence,
            "objective": args.objective,
            "on_infeasible": args.on_infeasible, "variant": args.variant, "placement": args.placement}


# --- infer / explain ----------------------------------------------------------------------

def input_spec(models_body: Mapping[str, Any], model: str, version: str | None) -> dict | None:
    """The model's first input spec from a ``models`` reply, if the model is listed."""
    for m in models_body.get("models", []):
        if m.get("name") == model and (version is None or str(m.get("version")) == version):
            for v in m.get("variants", []):
                inputs = v.get("inputs") or []
                if inputs and inputs[0].get("dtype", "float32").startswith("float"):
                    return inputs[0]
            for v in m.get("variants", []):
                if v.get("inputs"):
                    return v["inputs"][0]
    return None


def describe_result(r: InferResult) -> str:
    s = r.selection
    lines = [f"{s.model} v{s.version}: {s.variant} on {s.placement}"
             f"  [{s.reason.code}{': ' + s.reason.text if s.reason.text else ''}]"
             + ("  (replayed reply)" if s.replayed else "")]
    t, pr = s.timing, s.predicted
    lines.append(f"  latency   {fmt(t.total_ms, 3)} ms total (queue {fmt(t.queue_ms, 3)} ms, compute "
                 f"{fmt(t.compute_ms, 3)} ms); predicted {fmt(pr.latency_ms, 3)} ms, bound {fmt(pr.latency_bound_ms, 3)} ms"
                 f"{'' if pr.latency_confidence is None else f' @{pr.latency_confidence:g}'};"
                 f" client saw {r.client_ms:.3f} ms")
    pe = "-" if pr.energy_mj is None else f"{pr.energy_mj:.3f} mJ ({'estimated' if pr.energy_estimated else 'measured'})"
    lines.append(f"  energy    {s.energy.describe()}; predicted {pe}")
    lines.append(f"  accuracy  {fmt(None if pr.accuracy is None else pr.accuracy * 100, 1)} % (variant's validation top-1)")
    met = ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in s.constraints_met.items()) or "none set"
    lines.append(f"  constraints  {met}  -> {'all met' if s.met else 'NOT met'}")
    for i, out in enumerate(r.outputs):
        line = f"  output {i}  {out.dtype} {list(out.shape)}"
        flat = out.reshape(out.shape[0], -1) if out.ndim > 1 else out.reshape(1, -1)
        rows = [""] if flat.shape[0] == 1 else [f"\n    row {j}" for j in range(min(flat.shape[0], BATCH_ROWS_SHOWN))]
        for j, head in enumerate(rows):
            if flat.shape[1] > 1:
                top = np.argsort(flat[j])[::-1][:3]
                line += head + "  top: " + ", ".join(f"{int(k)} ({flat[j, k]:.3f})" for k in top)
            elif flat.size:
                line += head + f"  value {float(flat[j, 0]):.4f}"
        if flat.shape[0] > BATCH_ROWS_SHOWN:
            line += f"\n    ... {flat.shape[0] - BATCH_ROWS_SHOWN} more row(s) (--json prints them all)"
        lines.append(line)
    return "\n".join(lines)


def run_infer(args: argparse.Namespace) -> int:
    model, version = split_model(args.model)
    try:
        arr = load_array(args.input, key=args.key, index=args.index)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{args.input}: {exc}") from None
    with _client(args) as c:
        try:
            try:
                spec = input_spec(c.models(), model, version)
            except AdaptdError:
                spec = None
            try:
                x = fit_to_spec(arr, spec)
            except ValueError as exc:
                raise UserError(f"{args.input}: {exc}") from None
            r = c.infer(model, x, version=version, **_constraint_kwargs(args))
            # (the selection is read from the reply here: a field it cannot read is a ReplyError)
            text = None if args.json else describe_result(r)
        except AdaptdError as exc:
            raise _fail(exc) from None
    if args.json:
        print_json({**r.header, "outputs": [{"dtype": str(o.dtype), "shape": list(o.shape), "data": o}
                                            for o in r.outputs], "client_ms": r.client_ms})
    else:
        print(text)
    return 0


def describe_explanation(e: Explanation, model: str) -> str:
    lines = []
    if e.feasible:
        lines.append(f"{model}: would run {e.variant} on {e.placement}  [{e.reason.code}: {e.reason.text}]")
    else:
        lines.append(f"{model}: INFEASIBLE, no arm is predicted to meet the constraints  [{e.reason.text}]")
        for name, v in e.violations.items():
            lines.append(f"  {name}: {v}")
        if e.variant:
            lines.append(f"  closest: {e.variant} on {e.placement}")
    rows = []
    for a in sorted(e.alternatives, key=lambda a: (a.get("rank") is None, a.get("rank") or 0)):
        acc = a.get("accuracy")
        rows.append([fmt(a.get("rank")), str(a.get("variant")), str(a.get("placement")),
                     "-" if acc is None else f"{acc * 100:.1f}", fmt(a.get("latency_ms"), 3),
                     fmt(a.get("latency_bound_ms"), 3), fmt(a.get("queue_ms"), 3),
                     fmt(a.get("energy_mj"), 3) + (" est." if a.get("energy_estimated") else ""),
                     ", ".join(a.get("excluded_by") or []) or "-"])
    if rows:
        lines.append("")
        q = e.predicted.latency_confidence
        lines.append(table(rows, ["rank", "variant", "placement", "accuracy %", "pred. latency ms",
                                  "bound ms" if q is None else f"bound ms @{q:g}", "queue ms", "pred. energy mJ",
                                  "excluded by"]))
        if any(a.get("energy_estimated") for a in e.alternatives):
            lines.append("est. = energy estimated from a power model (no sensor), not measured")
    for u in e.body.get("unservable") or []:
        lines.append(f"not considered: {u.get('variant')}: {u.get('reason')}")
    return "\n".join(lines)


def run_explain(args: argparse.Namespace) -> int:
    model, version = split_model(args.model)
    with _client(args) as c:
        try:
            e = c.explain(model, version=version, **_constraint_kwargs(args))
        except AdaptdError as exc:
            raise _fail(exc) from None
    if args.json:
        print_json(e.body)
    else:
        print(describe_explanation(e, args.model))
    return 0 if e.feasible or args.on_infeasible == "best_effort" else 1


# --- models / stats / health / reload -----------------------------------------------------------

def _control(args: argparse.Namespace, what: str) -> dict[str, Any]:
    with _client(args) as c:
        try:
            return getattr(c, what)()
        except AdaptdError as exc:
            raise _fail(exc) from None


def describe_models(body: Mapping[str, Any]) -> str:
    rows, unservable = [], []
    for m in body.get("models", []):
        for v in m.get("variants", []):
            acc = v.get("accuracy")
            servable = v.get("servable", True)   # a daemon predating the field serves every variant it lists
            if not servable:
                unservable.append(f"{m.get('name')}:{m.get('version')} {v.get('name')} is not served: "
                                  f"{v.get('unservable_reason') or 'no placement can run it'}")
            rows.append([str(m.get("name")), str(m.get("version")), str(v.get("name")), str(v.get("kind")),
                         str(v.get("runtime")), str(v.get("quantization")), fmt(v.get("sparsity")),
                         "-" if acc is None else f"{acc * 100:.1f}",
                         fmt(None if v.get("size_bytes") is None else v["size_bytes"] / 1024, 1),
                         " ".join(f"{i.get('dtype')}{list(i.get('shape', []))}" for i in v.get("inputs") or []),
                         "yes" if servable else "NO (see below)"])
    out = [table(rows, ["model", "version", "variant", "kind", "runtime", "quantization", "sparsity",
                        "accuracy %", "size KiB", "inputs", "served"])]
    out += unservable
    pl = body.get("placements")
    if pl:
        out += ["", describe_placements(pl)]
    return "\n".join(out)


def describe_placements(placements: Sequence[Mapping[str, Any]]) -> str:
    rows = [[str(p.get("name")), str(p.get("kind")), str(p.get("runtime")), ",".join(map(str, p.get("cores") or [])),
             fmt(p.get("threads")), f"{p.get('queued', 0)}/{p.get('queue_limit', '-')}", fmt(p.get("busy")),
             fmt(p.get("running_s")), fmt(p.get("worker_pid")), fmt(p.get("restarts"))] for p in placements]
    return table(rows, ["placement", "kind", "runtime", "cores", "threads", "queued/limit", "busy", "running s",
                        "worker pid", "restarts"])


def run_models(args: argparse.Namespace) -> int:
    body = _control(args, "models")
    print_json(body) if args.json else print(describe_models(body))
    return 0


def arm_energy_kind(arm: Mapping[str, Any]) -> str:
    """The provenance of an arm's energy figures in a ``stats`` reply: "estimated", "measured",
    or "n/a" for an arm with no energy figure (it never ran, or its runs had no energy reading)."""
    en = arm.get("energy_mj") or {}
    if all(en.get(k) is None for k in ("last", "ewma", "p50", "p95", "p99")):
        return "n/a"
    if arm.get("energy_estimated") or str(arm.get("energy_source") or "").startswith("estimated"):
        return "estimated"
    return "measured"


def describe_stats(body: Mapping[str, Any]) -> str:
    rows = []
    estimated_any = False
    for a in body.get("arms", []):
        lat, en = a.get("latency_ms") or {}, a.get("energy_mj") or {}
        kind = arm_energy_kind(a)
        estimated_any |= kind == "estimated"
        rows.append([f"{a.get('model')}:{a.get('version')}", str(a.get("variant")), str(a.get("placement")),
                     fmt(a.get("count")), fmt(a.get("errors")), fmt(a.get("loaded")),
                     fmt(lat.get("p50"), 3), fmt(lat.get("p95"), 3), fmt(lat.get("p99"), 3), fmt(lat.get("ewma"), 3),
                     fmt(en.get("p50"), 3), fmt(en.get("ewma"), 3), kind, fmt(a.get("age_s"), 1)])
    out = [table(rows, ["model", "variant", "placement", "runs", "errors", "loaded", "p50 ms", "p95 ms",
                        "p99 ms", "ewma ms", "energy p50 mJ", "energy ewma mJ", "energy", "age s"])]
    meter = body.get("energy") or {}
    if meter:
        out.append("")
        src = meter.get("source")
        out.append(f"power meter: {src}" + (" (ESTIMATED: a power model, no sensor)" if meter.get("estimated")
                                            or str(src).startswith("estimated") else ""))
    elif estimated_any:
        out.append("energy 'estimated': from a power model, not measured by a sensor")
    if any(r[12] == "n/a" for r in rows):
        out.append("energy 'n/a': no energy figure for the arm yet (it has not run)")
    fidelity = body.get("fidelity")
    if fidelity:
        out += ["", describe_fidelity(fidelity)]
    return "\n".join(out)


def describe_fidelity(f: Mapping[str, Any]) -> str:
    """``stats``' fidelity section: per variant the accuracy its requests are judged on, where it
    came from, and its agreement with the reference (PROTOCOL.md §5.3)."""
    if not f.get("enabled"):
        return "live fidelity: off ([fidelity] enabled = false)"
    rows = []
    for m in f.get("models", []):
        for name, v in (m.get("variants") or {}).items():
            a = v.get("agreement") or {}
            interval = "-" if a.get("agreement") is None else \
                f"{a['agreement']:.3f} [{a['agreement_low']:.3f}, {a['agreement_high']:.3f}]"
            rows.append([f"{m.get('model')}:{m.get('version')}", name,
                         "reference" if name == m.get("reference") else fmt(a.get("n")), interval,
                         fmt(v.get("accuracy_used"), 4), str(v.get("accuracy_source")),
                         fmt(v.get("validation_accuracy"), 4), "ALARM" if v.get("alarm") else "-"])
    s = f.get("shadow") or {}
    energy = energy_label(s.get("energy_mj"), s.get("energy_estimated"))
    return "\n".join([table(rows, ["model", "variant", "compared", "agreement [interval]", "accuracy used",
                                   "source", "validation", "alarm"]), "",
                      f"shadow runs: {fmt(s.get('runs'))} ({fmt(s.get('compared'))} compared), "
                      f"CPU {fmt(s.get('cpu_ms_measured'), 1)} ms (budget {fmt(s.get('budget_ms_per_s'), 1)} ms/s), "
                      f"energy {energy}: the runtime's, not the requests'"])


def run_stats(args: argparse.Namespace) -> int:
    body = _control(args, "stats")
    print_json(body) if args.json else print(describe_stats(body))
    return 0


def run_health(args: argparse.Namespace) -> int:
    body = _control(args, "health")
    if args.json:
        print_json(body)
    else:
        for k in ("status", "uptime_s", "pid", "rss_bytes", "workers_rss_bytes", "requests", "errors",
                  "in_flight", "repository", "generation"):
            if k in body:
                v = body[k]
                if k.endswith("_bytes") and isinstance(v, (int, float)):
                    v = f"{v / 2**20:.1f} MiB"
                print(f"{k:18} {fmt(v, 1)}")
        if isinstance(body.get("store"), Mapping) and "board_id" in body["store"]:
            print(f"{'board_id':18} {fmt(body['store']['board_id'])}")
    return 0 if body.get("status") == "serving" else 1


def run_keys_new(args: argparse.Namespace) -> int:
    from adaptd.wire.auth import new_keypair

    target = Path(args.directory) / f"{args.name}.key_secret"
    if target.exists():
        raise UserError(f"{target} exists: choose another name or remove it first")
    public, secret = new_keypair(Path(args.directory), args.name)
    print(f"public key: {public}  (give it to the other side: a client's goes into [auth] client_keys)")
    print(f"secret key: {secret}  (mode 0600: keep it here)")
    return 0


def run_reload(args: argparse.Namespace) -> int:
    if getattr(args, "endpoint", None) is None:   # reload is an admin verb: the admin socket
        args.endpoint = default_admin_endpoint()
    body = _control(args, "reload")
    print(f"reloaded: generation {body.get('generation')}; models: {body.get('models')}")
    return 0


def run_fidelity_export(args: argparse.Namespace) -> int:
    if getattr(args, "endpoint", None) is None:   # the export holds every client's inputs: admin only
        args.endpoint = default_admin_endpoint()
    out = Path(args.out)
    if out.suffix != ".npz":
        raise UserError(f"{out}: the export is an .npz; name the file so")
    with _client(args) as c:
        try:
            body, data = c.fidelity_export(args.model, args.version)
        except AdaptdError as exc:
            raise _fail(exc) from None
    tmp = out.with_name(f".{out.name}.part")
    try:
        tmp.write_bytes(data)
        tmp.replace(out)
    except OSError as exc:
        raise UserError(f"{out}: cannot write: {exc.strerror or exc}") from None
    print(f"wrote {body.get('items')} input(s) of {args.model} to {out} (labels: the reference's top-1, "
          "not ground truth); rebuild with: adaptd variants build ... --data " + str(out), file=sys.stderr)
    return 0


# --- log ----------------------------------------------------------------------------------------

def describe_record(r: Mapping[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(r.get("ts") or 0)) + f".{int((r.get('ts') or 0) % 1 * 1000):03d}"
    cons = " ".join(f"{k}={fmt(r.get(k))}" for k in ("min_accuracy", "max_latency_ms", "latency_confidence",
                                                     "max_energy_mj")
                    if r.get(k) is not None) or "no constraints"
    head = f"{when} {r.get('model')}:{r.get('version')} {r.get('request_id')} [{r.get('outcome')}]"
    if r.get("outcome") == "error":
        return f"{head} {r.get('error_code')}"
    arm = f"{r.get('variant')}@{r.get('placement')}"
    met = {True: "met", False: "MISSED", None: "-"}[r.get("met")]
    return (f"{head} {arm} ({r.get('reason_code')}) {cons} objective={r.get('objective')} "
            f"total={fmt(r.get('total_ms'), 3)}ms (pred {fmt(r.get('predicted_latency_ms'), 3)}) "
            f"energy={energy_label(r.get('energy_mj'), r.get('energy_estimated'))} {met}")


def run_log_tail(args: argparse.Namespace) -> int:
    from adaptd.clients.subscriber import Subscriber

    n = 0
    with Subscriber(args.pub_endpoint, models=args.model) as sub:
        for record in sub:
            print(json.dumps(record, default=_json_default) if args.json else describe_record(record), flush=True)
            n += 1
            if args.count is not None and n >= args.count:
                break
    return 0


def run_log_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adaptd.tools.export import export_board_id, export_format, export_selections, parse_since

    try:
        fmt = export_format(Path(args.out))
        board_id, source = export_board_id(args.store, getattr(args, "board_id", None))
        n = export_selections(args.store, args.out, since=parse_since(args.since), model=args.model, fmt=fmt,
                              board_id=board_id)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(str(exc)) from None
    what = "a Parquet dataset partitioned by board_id, model and date in " if fmt == "dataset" else ""
    print(f"wrote {n} selection(s) of board {board_id} ({source}) to {what}{args.out}", file=sys.stderr)
    return 0


