"""Load for the goodput figure: a closed loop for the peak, an open loop at a multiple of it.

Contract
--------
* Every request is the same inference (one input of the model, batch 1) pinned to one variant
  and one placement, so the service time is one arm's; ids are unique; no retries.
* :func:`closed_loop` keeps ``outstanding`` requests in flight on one DEALER socket for
  ``duration_s`` and returns a :class:`LoopResult`; its replies per second is the peak.
* :func:`open_loop` offers ``rate_per_s`` requests per second (Poisson arrivals) for
  ``duration_s`` from ``procs`` processes (spawned; each sends and receives on its own socket,
  never waiting for a reply before the next send), then waits up to ``drain_s`` for the rest of
  the replies. Per request it records the send time, the reply time and the reply's code.
* With ``probe_per_s``, one more process sends a request of the same kind every
  ``1/probe_per_s`` s and waits for its reply before the next, under ``SCHED_FIFO`` when it may
  (else at the nice value it can get; :attr:`OpenLoopRecords.probe_priority` says which), so its
  own schedule adds nothing to what it measures: its BUSY round trips are the daemon's part of
  the BUSY tail, the senders' share of the CPU included, their own lag excluded.
* :func:`summarise` turns an open loop's records into :class:`Overload` figures over the window
  after ``warmup_s``: replies per second (all, successful), BUSY share, BUSY and admitted round
  trips, lost and duplicated replies, and the rate actually offered.
* Times are ``time.monotonic()`` seconds within one process; round trips are reported in ms.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from adaptd.wire import protocol as proto


def _message(cfg: dict[str, Any], rid: str, x: np.ndarray) -> list[Any]:
    header = proto.request_header(rid, cfg["model"], [x], pin_variant=cfg["variant"], pin_placement=cfg["placement"])
    return proto.encode(header, [x])


def _code(frames: list[bytes]) -> tuple[str | None, str, dict]:
    header, _ = proto.decode(frames)
    code = "result" if header.get("type") == "result" else str(header.get("code"))
    return header.get("id"), code, header


@dataclass
class LoopResult:
    replies: int
    results: int
    elapsed_s: float
    latencies_ms: np.ndarray
    compute_ms: float            # mean compute_ms of the results (the interpreter's own time)

    @property
    def replies_per_s(self) -> float:
        return self.replies / self.elapsed_s

    @property
    def results_per_s(self) -> float:
        return self.results / self.elapsed_s


def closed_loop(endpoint: str, cfg: dict[str, Any], outstanding: int, duration_s: float,
                warmup_s: float = 1.0, prefix: str = "peak") -> LoopResult:
    """``prefix`` starts every request id: give each loop on one daemon its own (a reused id
    would be answered from the daemon's replay store)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    # room for every reply it has asked for: with more in flight than the daemon's send_hwm
    # (1000) and ZeroMQ's default receive queue, the daemon drops replies to a client that does
    # not read them in time (PROTOCOL.md §3.2), and this loop would wait for them forever
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    x = np.random.default_rng(0).random(cfg["shape"], dtype=np.float32)
    sent: dict[str, float] = {}
    n = 0
    lat, compute = [], []
    replies = results = 0
    start = time.monotonic()
    t0 = start + warmup_s
    end = t0 + duration_s
    while True:
        now = time.monotonic()
        while now < end and len(sent) < outstanding:
            rid = f"{prefix}-{n}"
            n += 1
            sock.send_multipart(_message(cfg, rid, x))
            sent[rid] = time.monotonic()
        if not sent:
            break
        if not sock.poll(30_000):
            raise TimeoutError("no reply within 30 s in the closed loop")
        rid, code, header = _code(sock.recv_multipart())
        at = sent.pop(rid)
        now = time.monotonic()
        if t0 <= at and now <= end:
            replies += 1
            lat.append((now - at) * 1e3)
            if code == "result":
                results += 1
                compute.append(float(header["timing"]["compute_ms"]))
    sock.close()
    return LoopResult(replies, results, duration_s, np.array(lat), float(np.mean(compute)) if compute else float("nan"))


def _open_loop_proc(endpoint: str, cfg: dict[str, Any], index: int, rate_per_s: float, start_at: float,
                    duration_s: float, drain_s: float, results: Any) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(endpoint)
    x = np.random.default_rng(index).random(cfg["shape"], dtype=np.float32)
    rng = random.Random(index)
    sent_at: list[float] = []
    reply_at: dict[int, float] = {}
    codes: dict[int, str] = {}
    compute: list[float] = []
    duplicates = 0
    # the processes start together: wall clock to agree on the start, monotonic from then on
    while time.time() < start_at:
        sock.poll(max(1, int((start_at - time.time()) * 1e3)))
    t0 = time.monotonic()
    end = t0 + duration_s
    next_send = t0 + rng.expovariate(rate_per_s)
    lag = 0.0

    def receive(timeout_ms: int) -> None:
        nonlocal duplicates
        if not sock.poll(timeout_ms):
            return
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic()
            rid, code, header = _code(frames)
            k = int(str(rid).rsplit("-", 1)[1])
            if k in reply_at:
                duplicates += 1
                continue
            reply_at[k] = now
            codes[k] = code
            if code == "result":
                compute.append(float(header["timing"]["compute_ms"]))

    while True:
        now = time.monotonic()
        while now >= next_send and next_send < end:
            k = len(sent_at)
            sock.send_multipart(_message(cfg, f"{cfg.get('prefix', 'open')}{index}-{k}", x))
            now = time.monotonic()
            sent_at.append(now)            # sends never block (no high-water mark): lag is this process's
            lag = max(lag, now - next_send)
            next_send += rng.expovariate(rate_per_s)
        if now >= end:
            break
        # wait for replies until the next send is due, rounded up to whole milliseconds (poll's
        # unit): rounding down would spin through the last millisecond of every gap and take a
        # core's worth of CPU from the daemon on a small machine
        receive(max(1, math.ceil((next_send - now) * 1e3)))
    drain_end = time.monotonic() + drain_s
    while len(reply_at) < len(sent_at) and time.monotonic() < drain_end:
        receive(50)
    sock.close()
    k = np.arange(len(sent_at))
    results.put((index, t0, np.array(sent_at) - t0,
                 np.array([reply_at.get(i, np.nan) for i in k]) - t0,
                 [codes.get(i, "") for i in k], duplicates, lag, compute))


@dataclass
class OpenLoopRecords:
    sent_s: np.ndarray       # per request: scheduled send, seconds from the start
    reply_s: np.ndarray      # reply time (NaN: none)
    codes: list[str]         # "result", an error code, or "" for none
    duplicates: int
    duration_s: float
    worst_send_lag_s: float  # how far behind its schedule a sender fell (this side's CPU, not the daemon)
    compute_ms: float        # mean compute_ms of the successful replies
    probe_sent_s: np.ndarray = field(default_factory=lambda: np.zeros(0))   # the priority probe's sends,
    probe_rtt_s: np.ndarray = field(default_factory=lambda: np.zeros(0))    # round trips (s)
    probe_codes: list[str] = field(default_factory=list)                   # and codes
    probe_priority: str = ""


def _raise_priority() -> str:
    """SCHED_FIFO 1 for this process when allowed, else the lowest nice value it may take."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        return "SCHED_FIFO"
    except (PermissionError, AttributeError, OSError):
        pass
    for nice in (-10, -5, 0):
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
            return f"nice {nice}"
        except OSError:
            continue
    return "nice 0"


def _probe_proc(endpoint: str, cfg: dict[str, Any], interval_s: float, start_at: float, duration_s: float,
                results: Any) -> None:
    priority = _raise_priority()   # before ZeroMQ starts its I/O thread: it inherits the priority
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    x = np.random.default_rng(99).random(cfg["shape"], dtype=np.float32)
    sent, rtt, codes = [], [], []
    while time.time() < start_at:
        sock.poll(max(1, int((start_at - time.time()) * 1e3)))
    t0 = time.monotonic()
    k = 0
    while (now := time.monotonic()) < t0 + duration_s:
        sock.send_multipart(_message(cfg, f"probe-{k}", x))
        t_send = time.monotonic()
        code = ""
        while sock.poll(2000):
            rid, code, _ = _code(sock.recv_multipart())
            if rid == f"probe-{k}":
                break
        sent.append(t_send - t0)
        rtt.append(time.monotonic() - t_send)
        codes.append(code)
        k += 1
        time.sleep(max(0.0, now + interval_s - time.monotonic()))   # the probe's own pace
    sock.close()
    results.put(("probe", np.array(sent), np.array(rtt), codes, priority))


def open_loop(endpoint: str, cfg: dict[str, Any], rate_per_s: float, duration_s: float, *, procs: int = 2,
              drain_s: float = 30.0, probe_per_s: float = 0.0) -> OpenLoopRecords:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 2.0 + 0.5 * procs         # time for the processes to start
    workers = [ctx.Process(target=_open_loop_proc, args=(endpoint, cfg, i, rate_per_s / procs, start_at,
                                                         duration_s, drain_s, results), daemon=True)
               for i in range(procs)]
    if probe_per_s > 0:
        workers.append(ctx.Process(target=_probe_proc, args=(endpoint, cfg, 1.0 / probe_per_s, start_at,
                                                             duration_s, results), daemon=True))
    for w in workers:
        w.start()
    parts, probe = [], None
    for _ in workers:
        try:
            part = results.get(timeout=duration_s + drain_s + 60)
        except queue.Empty:
            raise RuntimeError("an open-loop process did not report") from None
        if part[0] == "probe":
            probe = part
        else:
            parts.append(part)
    for w in workers:
        w.join(10)
    return OpenLoopRecords(np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]),
                           [c for p in parts for c in p[4]], sum(p[5] for p in parts), duration_s,
                           max(p[6] for p in parts), float(np.mean([c for p in parts for c in p[7]] or [np.nan])),
                           *((probe[1], probe[2], probe[3], probe[4]) if probe else ()))


@dataclass
class Overload:
    offered_per_s: float
    replies_per_s: float
    results_per_s: float
    busy_share: float
    busy_p50_ms: float
    busy_p99_ms: float
    probe_busy_n: int
    probe_busy_p50_ms: float
    probe_busy_p99_ms: float
    admitted_p50_ms: float
    admitted_p99_ms: float
    lost: int
    duplicated: int
    other_codes: dict[str, int]


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def summarise(rec: OpenLoopRecords, warmup_s: float = 1.0) -> Overload:
    window = rec.duration_s - warmup_s
    codes = np.array(rec.codes)
    in_window = (rec.reply_s >= warmup_s) & (rec.reply_s <= rec.duration_s)
    sent_in = (rec.sent_s >= warmup_s) & (rec.sent_s <= rec.duration_s)
    rtt_ms = (rec.reply_s - rec.sent_s) * 1e3
    busy = sent_in & (codes == "BUSY")
    admitted = sent_in & (codes == "result")
    answered = sent_in & (codes != "")
    other: dict[str, int] = {}
    for c in codes[sent_in]:
        if c not in ("result", "BUSY", ""):
            other[c] = other.get(c, 0) + 1
    probe_busy = np.array([c == "BUSY" for c in rec.probe_codes], dtype=bool) & (rec.probe_sent_s >= warmup_s)
    probe_ms = rec.probe_rtt_s[probe_busy] * 1e3 if len(rec.probe_codes) else np.zeros(0)
    return Overload(
        probe_busy_n=int(len(probe_ms)), probe_busy_p50_ms=_pct(probe_ms, 50), probe_busy_p99_ms=_pct(probe_ms, 99),
        offered_per_s=float(sent_in.sum()) / window,
        replies_per_s=float(in_window.sum()) / window,
        results_per_s=float((in_window & (codes == "result")).sum()) / window,
        busy_share=float(busy.sum()) / max(1, int(answered.sum())),
        busy_p50_ms=_pct(rtt_ms[busy], 50), busy_p99_ms=_pct(rtt_ms[busy], 99),
        admitted_p50_ms=_pct(rtt_ms[admitted], 50), admitted_p99_ms=_pct(rtt_ms[admitted], 99),
        lost=int((codes == "").sum()), duplicated=rec.duplicates, other_codes=other)
