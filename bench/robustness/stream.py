"""A fast, seeded stream of fuzz messages whose values come from Hypothesis' strategies.

Contract
--------
* Hypothesis spends milliseconds per example on this machine (its bookkeeping per draw, not the
  strategies), so a million messages are not drawn through it one by one. :class:`PooledDraw`
  stands in for Hypothesis' ``draw``: the first time a strategy (keyed by its ``repr``) is
  drawn from, it draws ``pool_size`` examples of it through Hypothesis' public runner
  (``@given`` with ``max_examples``, the generate phase only, no database, seeded) and keeps the
  distinct ones; later draws pick uniformly among them. :func:`.wire.make_draft` then builds
  every message's structure in plain Python from those values, at tens of thousands a second.
  :func:`draw_corpus` also draws whole drafts through Hypothesis (its own structure, slower);
  a stream mixes some in.
* :class:`MessageStream` yields :class:`Message` objects deterministically from its seed, in a
  mix of: drafts (pooled and, if given, from the corpus) encoded with a fresh unique id and
  fresh body bytes; random frames (random counts and lengths, some with the right delimiter or
  signature in front); and byte-level mutations of encoded drafts (header bytes flipped,
  inserted or dropped; every frame's bytes re-split at random points).
* ``Message.rid`` is set only where the daemon can read the id back (a draft whose id slot was
  filled, within ``max_message_bytes``); it is then unique across streams with different ``prefix`` es, and the message must
  be answered exactly once under that id. ``Message.valid`` is False when PROTOCOL.md rules the
  message out (no success reply is allowed); mutated messages are labelled valid (their fate is
  unknown) and carry no readable id.
* Not thread-safe: one stream per sender.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from . import wire


@dataclass(frozen=True)
class Message:
    frames: list[bytes]
    rid: str | None       # the id the reply must carry (exactly one reply), or None
    valid: bool           # False: the protocol rules it out, any success reply is wrong
    kind: str             # "valid", the draft's defect, "random", "mutated:<how>"


def examples(strategy: st.SearchStrategy, count: int, seed: int) -> list[Any]:
    """``count`` examples of ``strategy`` through Hypothesis' runner, outside any test framework."""
    out: list[Any] = []

    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: Any) -> None:
        out.append(value)

    hypothesis_seed(seed)(collect)()
    return out


def draw_corpus(target: wire.Target, size: int, seed: int = 0) -> list[wire.Draft]:
    """``size`` drafts drawn whole by Hypothesis (the same seed and size give the same corpus)."""
    return examples(wire.drafts(target), size, seed)


class PooledDraw:
    """A ``draw`` for :func:`.wire.make_draft` whose values come from per-strategy pools that
    Hypothesis fills once; ``pick`` and ``between`` choose uniformly."""

    def __init__(self, rng: random.Random, pool_size: int = 200, seed: int = 0) -> None:
        self.rng = rng
        self.pool_size = pool_size
        self.seed = seed
        self.pools: dict[str, list[Any]] = {}

    def __call__(self, strategy: st.SearchStrategy) -> Any:
        key = repr(strategy)
        pool = self.pools.get(key)
        if pool is None:
            distinct: dict[str, Any] = {}
            for value in examples(strategy, self.pool_size, self.seed + len(self.pools)):
                distinct.setdefault(f"{type(value).__name__}:{value!r}", value)
            pool = self.pools[key] = list(distinct.values())
        return self.rng.choice(pool)

    def pick(self, seq: Any) -> Any:
        return self.rng.choice(tuple(seq))

    def between(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)


# Shares of the stream, in order: drafts, random frames, byte-level mutations.
DEFAULT_MIX = (0.70, 0.15, 0.15)
CORPUS_SHARE = 0.2      # of the drafts, those taken from the corpus (when there is one)


class MessageStream:
    def __init__(self, target: wire.Target, seed: int, prefix: str, *, max_message_bytes: int,
                 corpus: list[wire.Draft] = (), mix: tuple[float, float, float] = DEFAULT_MIX,
                 pool_size: int = 200) -> None:
        self.target = target
        self.corpus = list(corpus)
        self.rng = random.Random(seed)
        self.draw = PooledDraw(self.rng, pool_size, seed)
        self.prefix = prefix
        self.max_message_bytes = max_message_bytes
        self.mix = mix
        self.count = 0

    def _new_id(self) -> str:
        self.count += 1
        return f"{self.prefix}{self.count:x}.{self.rng.getrandbits(48):012x}"

    def _draft(self) -> wire.Draft:
        if self.corpus and self.rng.random() < CORPUS_SHARE:
            return self._fresh_bodies(self.rng.choice(self.corpus))
        return wire.make_draft(self.draw, self.target)

    def _fresh_bodies(self, draft: wire.Draft) -> wire.Draft:
        bodies = [wire.Body(b.nbytes, self.rng.getrandbits(32)) if isinstance(b, wire.Body) else b
                  for b in draft.bodies]
        return wire.Draft(draft.header, bodies, draft.valid, draft.defect, draft.frame)

    def next(self) -> Message:
        r = self.rng.random()
        if r < self.mix[0]:
            draft = self._draft()
            rid = self._new_id()
            frames, readable = wire.encode(draft, rid)
            if sum(map(len, frames)) > self.max_message_bytes:
                # TOO_LARGE; a daemon may refuse it unread, so its id is not owed back
                return Message(frames, None, False, "too_large")
            return Message(frames, rid if readable else None, draft.valid, draft.defect)
        if r < self.mix[0] + self.mix[1]:
            return Message(self._random_frames(), None, False, "random")
        return self._mutated()

    # --- random frames ------------------------------------------------------------------
    def _length(self) -> int:
        r = self.rng.random()
        if r < 0.70:
            return self.rng.randrange(0, 33)
        if r < 0.97:
            return self.rng.randrange(33, 1025)
        return self.rng.randrange(1025, 1 << 16)

    def _random_frames(self) -> list[bytes]:
        frames = [self.rng.randbytes(self._length()) for _ in range(self.rng.randrange(1, 7))]
        if self.rng.random() < 0.4:
            frames[0] = b""
            if len(frames) > 1 and self.rng.random() < 0.6:
                frames[1] = wire.SIGNATURE
        # a random message that happens to be a valid request is left to chance: its header
        # would have to be a msgpack map naming a type and an id, which random bytes never are
        return frames

    # --- byte-level mutations of encoded drafts ---------------------------------------------
    def _mutated(self) -> Message:
        frames, _ = wire.encode(self._draft(), self._new_id())
        how = self.rng.choice(("flip", "insert", "drop", "resplit"))
        if how == "resplit":
            blob = b"".join(frames)
            cuts = sorted(self.rng.randrange(0, len(blob) + 1) for _ in range(self.rng.randrange(0, 6)))
            frames = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)])]
        elif len(frames) >= 3:
            header = bytearray(frames[2])
            for _ in range(self.rng.randrange(1, 5)):
                at = self.rng.randrange(0, len(header) + 1)
                if how == "flip" and at < len(header):
                    header[at] ^= self.rng.randrange(1, 256)
                elif how == "insert":
                    header[at:at] = self.rng.randbytes(self.rng.randrange(1, 9))
                elif how == "drop" and at < len(header):
                    del header[at:at + self.rng.randrange(1, 9)]
            frames = [*frames[:2], bytes(header), *frames[3:]]
        # the id may or may not still be readable, and the request may still be valid: the
        # reply is counted (exactly one) but neither its id nor its success is judged
        return Message(frames, None, True, f"mutated:{how}")
