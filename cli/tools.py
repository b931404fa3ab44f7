"""The command-line entries of the tools: ``adaptd report``, ``adaptd load``, ``adaptd demo run``.

Each takes the ``argparse.Namespace`` built by :mod:`adaptd.cli.main`, calls the tool and turns
what it raises into a :class:`~adaptd.cli.UserError` (one line, exit 1).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from adaptd.cli import UserError
from adaptd.cli.commands import input_spec, split_model
from adaptd.clients.client import Client
from adaptd.clients.errors import AdaptdError
from adaptd.clients.inputs import fit_to_spec, load_array


def run_report(args: argparse.Namespace) -> int:
    from adaptd.tools.export import parse_since
    from adaptd.tools.report import build_report
    from adaptd.wire.records import read_fidelity_events, read_selections

    try:
        since = parse_since(args.since)
        records = list(read_selections(args.store, since=since, model=args.model))
        events = [e for e in read_fidelity_events(args.store, since=since) if args.model in (None, e["model"])]
        index = build_report(records, args.out, repository=getattr(args, "repository", None),
                             source=str(args.store), fidelity_events=events)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {index} ({len(records)} decisions)")
    return 0


def default_input(endpoint: str | None, model: str, version: str | None, timeout_ms: float) -> np.ndarray:
    """Zeros of the model's first input shape, from the daemon's ``models`` reply."""
    with Client(endpoint, timeout_ms=timeout_ms, retries=1) as c:
        spec = input_spec(c.models(), model, version)
    if spec is None:
        raise ValueError(f"the daemon does not list model {model!r}; pass --input")
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec["shape"]]
    return np.zeros(shape, np.dtype(spec.get("dtype", "float32")))


def run_load(args: argparse.Namespace) -> int:
    from adaptd.clients.loadgen import load_mix, run_scenario

    model, version = split_model(args.model)
    try:
        mix = load_mix(args.mix)
        if args.input is not None:
            try:
                with Client(args.endpoint, timeout_ms=args.timeout_ms, retries=1) as c:
                    spec = input_spec(c.models(), model, version)
            except AdaptdError:
                spec = None
            x = fit_to_spec(load_array(args.input), spec)
        else:
            x = default_input(args.endpoint, model, version, args.timeout_ms)
        result = run_scenario(args.endpoint, model, x, scenario=args.scenario, requests=args.requests,
                              duration_s=args.duration_s, rate_per_s=args.rate, mix=mix,
                              concurrency=args.concurrency, timeout_ms=args.timeout_ms, version=version)
    except (OSError, ValueError, AdaptdError) as exc:
        raise UserError(str(exc)) from None
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.describe())
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from adaptd.tools.demo import run_demo as demo

    try:
        demo(Path(args.repository), Path(args.workdir), progress=not args.no_progress)
    except (OSError, RuntimeError) as exc:
        raise UserError(str(exc)) from None
    return 0
