"""Kill workers under load: no request lost, none answered twice, none answered with another's.

    .venv/bin/python bench/chaos_workers.py --repository demo-repo --requests 100000 --clients 8 --kill-every-s 2

Starts a daemon (``DaemonProcess``: the repository given, every discovered LiteRT placement,
``queue_limit`` 64 so requests queue behind the one running), computes with a local LiteRT run of
every variant the outputs of a set of inputs that are pairwise distinct under every variant, and
starts ``--clients`` client processes that send ``--requests`` inference requests in all, each
with a unique id and one of its own client's inputs (half of them pinned to a random placement so
that every worker has work), up to ``--window`` outstanding per client and no retries. Every
``--kill-every-s`` seconds one of the daemon's workers (its ``placements`` reply, checked against
``/proc`` to be the daemon's child) is SIGKILLed.

Counts: requests sent; answered ok (outputs equal to the local run of the variant the reply
names, for this request's input); answered with each error code (WORKER_FAILED, the request that
was running on a killed worker, is an acceptable answer); lost (no reply within ``--deadline-s``);
duplicated (a second reply under one id); misrouted (a reply under an id the client never sent);
wrong outputs (including another request's); workers killed; whether the daemon survived (running
and answering ``health`` after the load); its exit status after SIGTERM. Exit 1 when any of lost,
duplicated, misrouted, wrong outputs or INTERNAL replies is above 0, or the daemon died or did
not exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from adaptd.tools.launch import DaemonProcess
from robustness import chaos, expected, watch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repository", type=Path, default=Path("demo-repo"))
    ap.add_argument("--model", default=None, help="default: the repository's first model")
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--kill-every-s", type=float, default=2.0)
    ap.add_argument("--window", type=int, default=8, help="requests outstanding per client")
    ap.add_argument("--deadline-s", type=float, default=30.0, help="a request unanswered this long is lost")
    ap.add_argument("--queue-limit", type=int, default=64)
    ap.add_argument("--inputs-per-client", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the counts here too")
    args = ap.parse_args(argv)
    if not args.repository.is_dir():
        ap.error(f"no repository at {args.repository}: build one with `adaptd demo build --repository demo-repo`")
    with tempfile.TemporaryDirectory(prefix="adaptd-chaos-") as work:
        daemon = DaemonProcess.start(args.repository, Path(work), config={
            "placements": {"tensorflow": "off", "queue_limit": args.queue_limit, "isolation": "process"}})
        try:
            models = watch.control(daemon.endpoint, "models")["body"]["models"]
            entry = next((m for m in models if m["name"] == args.model), None) if args.model else models[0]
            if entry is None:
                ap.error(f"no model {args.model!r}; the daemon serves {', '.join(m['name'] for m in models)}")
            exp_path = Path(work) / "expected.npz"
            expected.build(args.repository, entry["name"], entry["version"],
                           args.clients * args.inputs_per_client, seed=args.seed).save(exp_path)
            outcome = chaos.run(daemon, exp_path, requests=args.requests, clients=args.clients,
                                kill_every_s=args.kill_every_s, window=args.window, deadline_s=args.deadline_s,
                                seed=args.seed)
        finally:
            daemon.kill()      # a no-op when chaos.run stopped it
    print(f"model {entry['name']}:{entry['version']}, {args.clients} clients x {args.window} outstanding, "
          f"a worker killed every {args.kill_every_s} s; load average {os.getloadavg()[0]:.2f}")
    print(outcome.table())
    if args.json:
        args.json.write_text(json.dumps({**outcome.counts.to_dict(), "kills": outcome.kills,
                                         "survived": outcome.survived, "exit_code": outcome.exit_code,
                                         "elapsed_s": outcome.elapsed_s,
                                         "failures": {k: str(v) for k, v in outcome.failures().items()}}, indent=1))
    return 1 if outcome.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
