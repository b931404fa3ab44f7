"""Fuzz a real daemon's request socket: structure-aware messages and random bytes, many sockets.

    .venv/bin/python bench/fuzz_wire.py --repository demo-repo --messages 1000000

Starts a daemon (``DaemonProcess``: the given repository, every discovered LiteRT placement,
``max_message_bytes`` 1 MiB so TOO_LARGE is cheap to reach and ZeroMQ's 2 MiB frame backstop is
never), registers one small shared-memory region, draws a corpus of ADPT01 drafts from Hypothesis
strategies (valid requests of every type, requests with one field broken as PROTOCOL.md rules out,
frame-level breakage) and sends ``--messages`` messages built from it (re-encoded with fresh ids
and bodies, plus random frames and byte-level mutations) on ``--readers`` DEALER sockets with up to
16 messages outstanding each, and a share on ``--mutes`` sockets that never read their replies.

Passes (exit 0) when: every message with a readable id is answered exactly once under it; every
reading socket gets as many replies as it sent messages; no message the protocol rules out gets a
success reply; no reply is INTERNAL; a health request every second is answered within 10 s; the
daemon exits 0 on SIGTERM; its log holds no Traceback; and its RSS is flat: after the first 20% of
the messages (warm-up: caches and allocator arenas fill), the largest RSS sample of the last
quarter of the rest exceeds the largest of its first quarter by at most 10% or 16 MiB, whichever is
more, and (with ``--rss-ceiling-mb``) no sample exceeds the ceiling. A leak of 100 bytes per
message is 80 MB over 800,000 messages: far outside that band; a bounded cache that fills during
warm-up stays inside it.
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
from robustness import fuzzrun

MAX_MESSAGE_BYTES = 1 << 20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repository", type=Path, default=Path("demo-repo"))
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--corpus", type=int, default=2_000, help="drafts drawn whole by Hypothesis (the rest "
                    "of the stream is built from pools of values it draws)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--mutes", type=int, default=1)
    ap.add_argument("--rss-ceiling-mb", type=float, default=None,
                    help="fail when the daemon's RSS ever exceeds this")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args(argv)
    if not (args.repository / ".").exists():
        ap.error(f"no repository at {args.repository}: build one with "
                 "`adaptd demo build --repository demo-repo`")
    with tempfile.TemporaryDirectory(prefix="adaptd-fuzz-") as work:
        daemon = DaemonProcess.start(args.repository, Path(work), config={
            "server": {"max_message_bytes": MAX_MESSAGE_BYTES},
            "placements": {"tensorflow": "off"},
        })
        outcome = fuzzrun.run(daemon, args.messages, corpus_size=args.corpus, seed=args.seed,
                              max_message_bytes=MAX_MESSAGE_BYTES, readers=args.readers, mutes=args.mutes,
                              rss_ceiling_bytes=int(args.rss_ceiling_mb * 2**20) if args.rss_ceiling_mb else None)
    print(outcome.table())
    print("replies by defect (first reply under each readable id):")
    print(outcome.codes_by_defect())
    if args.json:
        r = outcome.report
        args.json.write_text(json.dumps({
            "messages": r.sent + r.mute_sent, "messages_per_s": outcome.messages_per_s,
            "codes": dict(r.codes), "failures": {k: str(v) for k, v in outcome.failures().items()},
            "rss": outcome.flat.__dict__ if outcome.flat else None, "load": os.getloadavg(),
        }, indent=1))
    return 1 if outcome.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
