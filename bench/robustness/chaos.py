"""Many clients with every reply checked, while workers are killed: lost, duplicated, misrouted.

Contract
--------
* :func:`run` takes a started :class:`~adaptd.tools.launch.DaemonProcess` and an
  :class:`~.expected.Expected` file; it starts ``clients`` client processes (multiprocessing,
  spawn) that together send ``requests`` inference requests, each with a unique id and one of
  the client's own inputs (no two clients share one; their outputs are pairwise distinct), with
  up to ``window`` outstanding per client and no retries. Meanwhile a :class:`Killer` SIGKILLs
  one of the daemon's workers every ``kill_every_s`` (a rate, not a synchronisation). Then it
  stops the daemon with SIGTERM and returns a :class:`ChaosOutcome`. The daemon is always
  stopped (or found dead) when it returns.
* Every reply is judged by its client (:class:`~.ledger.Ledger`): the first reply under one of
  its ids, checked against the output a local LiteRT run of the named variant gives for that
  request's input (``ok``, or ``wrong_outputs`` when it is not, including when it is another
  request's); a second reply under one id (``duplicated``); a reply under an id the client never
  sent (``misrouted``); no reply within ``deadline_s`` (``lost``). Error replies count by code:
  ``WORKER_FAILED`` (the request was running on a killed worker) is an acceptable answer.
* A client keeps its socket open until the daemon has exited, then reads what is left, so a
  second reply sent at any time is counted.
* Units: seconds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from adaptd.wire import protocol as proto

from . import watch
from .expected import Expected
from .ledger import Counts, Ledger


# --- the client process ----------------------------------------------------------------------

def client_main(cfg: dict[str, Any], go: Any, stop_sending: Any, daemon_gone: Any, ready: Any, done: Any,
                results: Any) -> None:
    """One client: once ``go`` is set, send ``cfg['requests']`` requests, judge every reply,
    report its counts."""
    exp = Expected.load(Path(cfg["expected"]))
    per = len(exp.inputs) // cfg["clients"]
    mine = list(range(cfg["index"] * per, (cfg["index"] + 1) * per))
    rng = random.Random(cfg["seed"] * 1000 + cfg["index"])
    ledger = Ledger()
    notes: list[str] = []
    sent_at: dict[str, float] = {}
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cfg["endpoint"])

    def note(text: str) -> None:
        if len(notes) < 8:
            notes.append(f"client {cfg['index']}: {text}"[:400])

    def on_reply(frames: list[bytes]) -> None:
        try:
            header, bodies = proto.decode(frames)
        except proto.ProtocolError as exc:
            note(f"undecodable reply: {exc}")
            ledger.counts.misrouted += 1
            return
        rid = header.get("id")
        verdict, index = ledger.received(rid)
        sent_at.pop(rid, None)
        if verdict != "first":
            note(f"{verdict} reply for id {rid!r}: {str(header)[:160]}")
            return
        if header.get("type") != "result":
            ledger.error(header.get("code", "?"))
            return
        try:
            specs = proto.parse_tensor_headers(header.get("outputs"), "outputs", rid)
            outputs = proto.tensors_from_frames(specs, bodies, rid, "output")
        except proto.ProtocolError as exc:
            note(f"reply {rid} outputs unreadable: {exc}")
            ledger.wrong()
            return
        verdict = exp.check(str(header.get("variant")), index, outputs)
        if verdict == "ok":
            ledger.ok(bool(header.get("replayed")))
        else:
            ledger.wrong()
            note(f"reply {rid} ({header.get('variant')}@{header.get('placement')}): outputs {verdict}")

    ready.set()
    go.wait()
    seq = 0
    while True:
        sending = seq < cfg["requests"] and not stop_sending.is_set() and not daemon_gone.is_set()
        while sending and ledger.outstanding() < cfg["window"]:
            k = rng.choice(mine)
            rid = f"{cfg['prefix']}c{cfg['index']}-{seq}"
            pin = rng.choice(cfg["placements"]) if rng.random() < cfg["pin_share"] else None
            x = exp.input(k)
            sock.send_multipart(proto.encode(proto.request_header(rid, exp.model, [x], pin_placement=pin), [x]))
            ledger.sent(rid, k)
            sent_at[rid] = time.monotonic()
            seq += 1
            sending = seq < cfg["requests"]
        if not sending and not ledger.outstanding():
            break
        if daemon_gone.is_set():
            break
        if sock.poll(100):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                on_reply(frames)
        # requests with no reply within the deadline are lost (oldest first: ids in send order)
        now = time.monotonic()
        expired = [rid for rid, at in sent_at.items() if now - at > cfg["deadline_s"]]
        for rid in expired:
            sent_at.pop(rid)
            ledger.lose(rid)
    done.set()
    daemon_gone.wait(cfg["deadline_s"] + 60)
    while sock.poll(200):          # whatever the daemon sent before it exited: late or second replies
        on_reply(sock.recv_multipart())
    lost = ledger.give_up()
    if lost:
        note(f"{len(lost)} requests never answered, e.g. {lost[:3]}")
    sock.close()
    results.put((cfg["index"], ledger.counts.to_dict(), notes))


# --- the killer --------------------------------------------------------------------------------

class Killer:
    """SIGKILLs one of the daemon's workers every ``every_s`` on its own thread. With
    ``busy_only`` it waits for a worker the daemon says is running a request and kills that
    one, so each kill lands on a request in flight."""

    def __init__(self, endpoint: str, daemon_pid: int, every_s: float, seed: int = 0,
                 busy_only: bool = False) -> None:
        self.endpoint = endpoint
        self.daemon_pid = daemon_pid
        self.every_s = every_s
        self.busy_only = busy_only
        self.rng = random.Random(seed)
        self.kills: list[tuple[float, str, int]] = []       # (time, placement, pid)
        self.failed_lookups = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="killer", daemon=True)

    def start(self) -> Killer:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def _target(self) -> tuple[str, int] | None:
        deadline = time.monotonic() + self.every_s
        while not self._stop.is_set():
            try:
                reply = watch.control(self.endpoint, "placements", timeout_s=5.0)
            except TimeoutError:
                self.failed_lookups += 1
                return None
            places = [p for p in reply.get("body", {}).get("placements", [])
                      if isinstance(p.get("worker_pid"), int) and (p.get("busy") or not self.busy_only)]
            live = [(p["name"], p["worker_pid"]) for p in places
                    if watch.parent_pid(p["worker_pid"]) == self.daemon_pid]
            if live:
                return self.rng.choice(live)
            if time.monotonic() > deadline or self._stop.wait(0.002):
                return None
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            if watch.parent_pid(self.daemon_pid) is None:
                return
            target = self._target()
            if target is None:
                continue
            name, pid = target
            try:
                os.kill(pid, signal.SIGKILL)
                self.kills.append((time.monotonic() - self._t0, name, pid))
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --- a whole run --------------------------------------------------------------------------------

@dataclass
class ChaosOutcome:
    counts: Counts
    kills: int
    failed_lookups: int
    survived: bool                  # the daemon was running and answered health after the load
    exit_code: int | None           # after SIGTERM (or the code it died with)
    elapsed_s: float
    restarts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)     # in the daemon's log
    planned: int = 0

    def failures(self) -> dict[str, object]:
        c = self.counts
        out = {"lost": c.lost, "duplicated": c.duplicated, "misrouted": c.misrouted,
               "wrong outputs": c.wrong_outputs, "replayed": c.replayed, "late": c.late}
        fails: dict[str, object] = {k: v for k, v in out.items() if v}
        if not self.survived:
            fails["daemon died"] = True
        if self.exit_code != 0:
            fails["daemon exit status after SIGTERM"] = self.exit_code
        if c.codes.get(proto.INTERNAL):
            fails["INTERNAL replies"] = c.codes[proto.INTERNAL]
        if self.tracebacks:
            fails["tracebacks in the daemon's log"] = len(self.tracebacks)
        return fails

    def table(self) -> str:
        c = self.counts
        rate = c.answered / self.elapsed_s if self.elapsed_s else 0.0
        rows = [("requests sent", f"{c.sent} of {self.planned}"), ("answered ok (outputs checked)", c.ok)]
        rows += [(f"answered {code}", n) for code, n in c.codes.most_common()]
        rows += [("lost (no reply in the deadline)", c.lost), ("duplicated", c.duplicated),
                 ("misrouted (another's id)", c.misrouted), ("wrong outputs (incl. another's)", c.wrong_outputs),
                 ("late replies", c.late), ("workers killed", self.kills),
                 ("daemon survived", "yes" if self.survived else "NO"), ("exit status after SIGTERM", self.exit_code),
                 ("elapsed", f"{self.elapsed_s:.1f} s ({rate:.0f} replies/s)"),
                 ("worker restarts", ", ".join(f"{k} {v}" for k, v in self.restarts.items()) or "-")]
        lines = [f"{k:<34} {v}" for k, v in rows]
        fails = self.failures()
        lines.append(f"{'failures':<34} " + ("none" if not fails else "; ".join(f"{k}: {v}" for k, v in fails.items())))
        lines += [f"  e.g. {n}" for n in self.notes[:8]]
        for tb in self.tracebacks[:2]:
            lines += ["  daemon log:", *(f"    {line}" for line in tb.splitlines()[-8:])]
        return "\n".join(lines)


def run(daemon, expected_path: Path, *, requests: int, clients: int, kill_every_s: float, window: int = 8,
        deadline_s: float = 30.0, pin_share: float = 0.5, busy_only: bool = False, seed: int = 0,
        progress: Any = None) -> ChaosOutcome:
    ctx = mp.get_context("spawn")
    go, stop_sending, daemon_gone = ctx.Event(), ctx.Event(), ctx.Event()
    results = ctx.Queue()
    placements = [p["name"] for p in watch.control(daemon.endpoint, "placements")["body"]["placements"]]
    procs, readies, dones = [], [], []
    for i in range(clients):
        cfg = {"endpoint": daemon.endpoint, "expected": str(expected_path), "index": i, "clients": clients,
               "requests": requests // clients + (1 if i < requests % clients else 0), "window": window,
               "deadline_s": deadline_s, "pin_share": pin_share, "placements": placements, "seed": seed,
               "prefix": f"r{seed}."}
        ready, done = ctx.Event(), ctx.Event()
        p = ctx.Process(target=client_main, args=(cfg, go, stop_sending, daemon_gone, ready, done, results),
                        daemon=True)
        p.start()
        procs.append(p)
        readies.append(ready)
        dones.append(done)
    for p, ready in zip(procs, readies):      # the clients start together, the clock and killer with them
        while not ready.wait(1.0):
            if not p.is_alive():
                raise RuntimeError("a client process died while starting")
    go.set()
    t0 = time.monotonic()
    killer = Killer(daemon.endpoint, daemon.proc.pid, kill_every_s, seed, busy_only).start()
    exit_code = None
    try:
        while not all(d.is_set() for d in dones):
            if daemon.proc.poll() is not None:       # it died: nothing more will come
                exit_code = daemon.proc.returncode
                daemon_gone.set()
                break
            if any(not p.is_alive() and not d.is_set() for p, d in zip(procs, dones)):
                raise RuntimeError("a client process died")
            next(d for d in dones if not d.is_set()).wait(0.2)
            if progress is not None:
                progress(sum(d.is_set() for d in dones))
    finally:
        killer.stop()
        stop_sending.set()
    elapsed = time.monotonic() - t0
    survived = daemon.proc.poll() is None
    restarts: dict[str, int] = {}
    if survived:
        try:
            health = watch.control(daemon.endpoint, "health", timeout_s=10.0)
            survived = health.get("type") == "ok"
            restarts = {p["name"]: p["restarts"] for p in
                        watch.control(daemon.endpoint, "placements")["body"]["placements"]}
        except TimeoutError:
            survived = False
    if exit_code is None:
        exit_code = daemon.stop()
    else:
        daemon.stop()
    daemon_gone.set()
    total, notes = Counts(), []
    for _ in procs:
        try:
            _, counts, client_notes = results.get(timeout=deadline_s + 120)
        except queue.Empty:
            raise RuntimeError("a client process did not report") from None
        total += Counts.from_dict(counts)
        notes += client_notes
    for p in procs:
        p.join(30)
    return ChaosOutcome(total, len(killer.kills), killer.failed_lookups, survived, exit_code, elapsed, restarts, notes,
                        watch.LogWatch(daemon.log_path, from_start=True).tracebacks(), requests)

