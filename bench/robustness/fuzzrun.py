"""One fuzz run against a started daemon, judged whole: what ``bench/fuzz_wire.py`` and the
fuzz test both do.

Contract
--------
* :func:`run` takes a started :class:`~adaptd.tools.launch.DaemonProcess` (configured with
  ``max_message_bytes``), registers one small shared-memory region owned by this process (so
  valid messages can name it), draws the corpus, sends ``messages`` messages, samples the
  daemon's RSS meanwhile, then stops the daemon with SIGTERM and judges: the reply checks of
  :mod:`.fuzz`, the daemon's exit status (0), no ``Traceback`` in its log, and RSS
  :func:`~.watch.flatness`. The daemon is stopped when it returns, whatever happened.
* :class:`Outcome` holds the figures and :meth:`Outcome.failures` (empty: passed);
  :meth:`Outcome.table` prints them for a person.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass

from . import watch, wire
from .fuzz import FuzzReport, fuzz
from .stream import MessageStream, draw_corpus

REGION_BYTES = 64 << 10


@dataclass
class Outcome:
    report: FuzzReport
    corpus_size: int
    corpus_s: float
    flat: watch.Flatness | None
    samples: list[watch.RssSample]
    tracebacks: list[str]
    exit_code: int | None
    messages_per_s: float

    def failures(self) -> dict[str, object]:
        out: dict[str, object] = dict(self.report.failures)
        if self.tracebacks:
            out["tracebacks in the daemon's log"] = len(self.tracebacks)
        if self.exit_code != 0:
            out["daemon exit status after SIGTERM"] = self.exit_code
        if self.flat is not None and not self.flat.flat:
            out["RSS not flat"] = self.flat.describe()
        return out

    def table(self) -> str:
        r = self.report
        success = r.codes.get("result", 0) + r.codes.get("ok", 0)
        lines = [
            f"messages sent           {r.sent + r.mute_sent:>10}  ({r.mute_sent} on sockets that never read; "
            f"{r.skipped_oversize} over ZeroMQ's frame backstop not sent)",
            f"corpus                  {self.corpus_size:>10}  drafts from Hypothesis in {self.corpus_s:.1f} s",
            f"rate                    {self.messages_per_s:>10.0f}  messages/s over {r.elapsed_s:.1f} s",
            f"replies                 {r.replies:>10}  ({success} success)",
            f"health checks           {r.health_ok:>10}  answered, {r.health_failed} not; slowest "
            f"{r.health_worst_s * 1e3:.1f} ms",
            f"daemon exit status      {self.exit_code!s:>10}",
            f"tracebacks in log       {len(self.tracebacks):>10}",
        ]
        if self.flat is not None:
            lines.append(f"memory                  {self.flat.describe()}")
            lines.append(f"RSS by messages sent    {self.rss_curve()}")
        lines.append("replies by code         " + ", ".join(f"{k} {v}" for k, v in r.codes.most_common()))
        fails = self.failures()
        lines.append("failures                " + ("none" if not fails else
                                                   "; ".join(f"{k}: {v}" for k, v in fails.items())))
        lines += [f"  e.g. {e}" for e in r.examples[:6]]
        lines += [f"  traceback: {t.splitlines()[-1]}" for t in self.tracebacks[:3]]
        return "\n".join(lines)

    def rss_curve(self, points: int = 10) -> str:
        """The daemon's RSS (MiB) at each tenth of the messages sent."""
        if not self.samples:
            return "-"
        end = max(s.progress for s in self.samples) or 1
        out = []
        for k in range(1, points + 1):
            at = end * k / points
            sample = min(self.samples, key=lambda s: abs(s.progress - at))
            out.append(f"{k * 100 // points}% {sample.rss_bytes / 2**20:.0f}")
        return ", ".join(out)

    def codes_by_defect(self, top: int = 40) -> str:
        groups: dict[str, Counter] = {}
        for kind, codes in self.report.codes_by_kind.items():
            key = kind.split(":")[0] if kind.startswith("frame") else ".".join(kind.split(".")[:3]).split(":")[0]
            groups.setdefault(key, Counter()).update(codes)
        rows = sorted(groups.items(), key=lambda kv: -sum(kv[1].values()))[:top]
        return "\n".join(f"  {k:<40} " + ", ".join(f"{c} {n}" for c, n in v.most_common()) for k, v in rows)


def register_region(endpoint: str) -> tuple[str, int] | None:
    reply = watch.control(endpoint, "shm_register", size=REGION_BYTES, owner_pid=os.getpid())
    if reply.get("type") != "ok":
        return None
    return reply["body"]["region"], int(reply["body"]["size"])


def run(daemon, messages: int, *, corpus_size: int, seed: int, max_message_bytes: int,
        readers: int = 4, mutes: int = 1, rss_warmup_share: float = 0.2, rss_tolerance_share: float = 0.10,
        rss_tolerance_bytes: int = 16 << 20, rss_ceiling_bytes: int | None = None) -> Outcome:
    log = watch.LogWatch(daemon.log_path, from_start=True)
    try:
        region = register_region(daemon.endpoint)
        models = watch.control(daemon.endpoint, "models")
        target = wire.Target.from_models_reply(models["body"], region=region, owner_pid=os.getpid())
        t0 = time.monotonic()
        corpus = draw_corpus(target, corpus_size, seed)
        corpus_s = time.monotonic() - t0
        stream = MessageStream(target, seed, f"fz{seed}.", max_message_bytes=max_message_bytes, corpus=corpus)
        report = FuzzReport()
        sampler = watch.RssSampler(daemon.proc.pid, lambda: report.attempted)
        try:
            fuzz(daemon.endpoint, stream, messages, readers=readers, mutes=mutes,
                 max_frame_bytes=2 * max_message_bytes - 1, report=report)
        finally:
            samples = sampler.stop()
    finally:
        exit_code = daemon.stop()
    report.finish()
    flat = (watch.flatness(samples, warmup_share=rss_warmup_share, tolerance_share=rss_tolerance_share,
                           tolerance_bytes=rss_tolerance_bytes, ceiling_bytes=rss_ceiling_bytes)
            if samples else None)
    rate = (report.sent + report.mute_sent) / report.elapsed_s if report.elapsed_s else 0.0
    return Outcome(report, len(corpus), corpus_s, flat, samples, log.tracebacks(), exit_code, rate)
