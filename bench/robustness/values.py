"""msgpack values for the fuzzer, as Hypothesis strategies, and the choice helpers it draws with.

Contract
--------
* Module-level strategies, each with a ``repr`` that names it fully (no filters with closures),
  so a pooled draw (:class:`~.stream.PooledDraw`) can key its pools by ``repr``. Every value
  packs with msgpack (ints within -2**63..2**64-1, str valid UTF-8, ext codes 0..127: the
  reserved negative codes would make the whole header unreadable instead of one field wrong).
* :func:`pick`, :func:`flag` and :func:`between` choose through Hypothesis under Hypothesis and
  uniformly under a pooled draw, which has ``pick`` and ``between`` methods of its own.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
from hypothesis import strategies as st

MAX_ID_BYTES = 128
HEX = "0123456789abcdef"


def pick(draw, seq):
    """One of ``seq`` (uniform under a pooled draw)."""
    chooser = getattr(draw, "pick", None)
    return chooser(seq) if chooser else draw(st.sampled_from(tuple(seq)))


def flag(draw) -> bool:
    return pick(draw, (False, True))


def between(draw, low: int, high: int) -> int:
    uniform = getattr(draw, "between", None)
    return uniform(low, high) if uniform else draw(st.integers(low, high))


EDGE_INTS = (0, 1, -1, 2, 127, 128, 255, 256, 2**15, 2**16, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62,
             2**63 - 1, 2**63, 2**64 - 1, -2**31, -2**63)
EDGE_FLOATS = (math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, -1e308, 5e-324, 0.5, 1.0, 1.5)

TEXT = st.text(st.characters(codec="utf-8"), max_size=24)
LONG_TEXT = st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(MAX_ID_BYTES + 1, 1 << 17))
INTS = st.one_of(st.sampled_from(EDGE_INTS), st.integers(-2**63, 2**64 - 1))
NEGATIVE_INTS = st.integers(-2**63, -1)
FLOATS = st.one_of(st.sampled_from(EDGE_FLOATS), st.floats())
EXT = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
BINARY = st.binary(max_size=24)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT, BINARY, EXT)
VALUES = st.recursive(SCALARS | LONG_TEXT,
                      lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4),
                      max_leaves=12)
LISTS = st.lists(SCALARS, max_size=4)
MAPS = st.dictionaries(TEXT, SCALARS, max_size=4)
NON_STRINGS = (st.booleans(), INTS, FLOATS, BINARY, LISTS, MAPS, EXT)          # never None
NON_INTS = (st.booleans(), FLOATS, TEXT, BINARY, LISTS, MAPS, EXT)              # never None
NAN_INF = st.sampled_from((math.nan, math.inf, -math.inf))
HEX_NAME = st.text(HEX, min_size=1, max_size=32)


def any_of(draw, *strategies) -> Any:
    return draw(pick(draw, strategies))


def other_text(draw, known) -> str:
    """A string that is none of ``known`` (sometimes empty, sometimes very long)."""
    while True:
        s = draw(LONG_TEXT) if between(draw, 0, 5) == 0 else draw(TEXT)
        if s not in known:
            return s


def not_one_of(draw, known) -> Any:
    """A value that is none of the strings ``known``: other strings or any other type."""
    return other_text(draw, known) if flag(draw) else any_of(draw, *NON_STRINGS)
