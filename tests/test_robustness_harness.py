"""The robustness harnesses' own parts judge what they must: a harness that cannot see a
duplicate, a leak or another request's outputs would pass any daemon. Pure and fast, except the
last test, which builds expected outputs from the tiny model with a real LiteRT run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from robustness import expected, stream, watch, wire  # noqa: E402
from robustness.ledger import Counts, Ledger  # noqa: E402

TARGET = wire.Target(models=(wire.ModelInfo("m", ("1",), ((1, 8, 8, 1),), ("int8",), 10, ("float32", "int8_full")),),
                     placements=("cpu:0", "cpu:1"), region=("adaptd-1-ab", 4096), owner_pid=1)


def test_the_ledger_tells_first_duplicate_misrouted_lost_and_late_replies():
    ledger = Ledger()
    for rid in ("a", "b", "c"):
        ledger.sent(rid, rid.upper())
    assert ledger.received("a") == ("first", "A")
    ledger.ok()
    assert ledger.received("a") == ("duplicate", None)
    assert ledger.received("zz") == ("misrouted", None)
    assert ledger.received(None) == ("misrouted", None)
    ledger.lose("b")
    assert ledger.received("b") == ("late", None)
    assert ledger.give_up() == ["c"]
    with pytest.raises(ValueError):
        ledger.sent("a")
    c = ledger.counts
    assert (c.sent, c.ok, c.duplicated, c.misrouted, c.lost, c.late) == (3, 1, 1, 2, 2, 1)
    total = Counts.from_dict(c.to_dict()) + c
    assert total.duplicated == 2 and total.lost == 4


def samples(rss: list[float]) -> list[watch.RssSample]:
    return [watch.RssSample(i * 0.25, int(r * 2**20), i * 1000) for i, r in enumerate(rss)]


def test_flatness_passes_a_plateau_and_fails_a_steady_leak():
    plateau = [40 + min(i, 10) * 2 + (i % 3) for i in range(100)]     # fills during warm-up, then noise
    assert watch.flatness(samples(plateau)).flat
    leak = [40 + i * 0.5 for i in range(100)]                         # 50 MiB over the run
    result = watch.flatness(samples(leak))
    assert not result.flat and result.growth_bytes > 16 << 20
    assert not watch.flatness(samples(plateau), ceiling_bytes=50 << 20).flat


def test_log_watch_finds_each_traceback_written_after_it(tmp_path):
    log = tmp_path / "daemon.log"
    log.write_text("INFO old\nTraceback (most recent call last):\n  File x\nValueError: old\n")
    watch_new = watch.LogWatch(log)
    with open(log, "a") as fh:
        fh.write("INFO fine\nERROR adaptd: boom\nTraceback (most recent call last):\n  File y\nTypeError: new\n")
    found = watch_new.tracebacks()
    assert len(found) == 1 and found[0].endswith("TypeError: new")
    assert len(watch.LogWatch(log, from_start=True).tracebacks()) == 2


def test_the_stream_is_seeded_and_gives_each_readable_id_once():
    a = stream.MessageStream(TARGET, 3, "p.", max_message_bytes=1 << 20, pool_size=20)
    b = stream.MessageStream(TARGET, 3, "p.", max_message_bytes=1 << 20, pool_size=20)
    first = [a.next() for _ in range(300)]
    assert [m.frames for m in first] == [b.next().frames for _ in range(300)]
    rids = [m.rid for m in first if m.rid is not None]
    assert len(rids) == len(set(rids)) > 50
    kinds = {m.kind.split(".")[0].split(":")[0] for m in first}
    assert {"valid", "infer", "frame", "random", "mutated"} <= kinds, kinds


def test_a_near_valid_draft_breaks_exactly_the_field_it_names():
    s = stream.MessageStream(TARGET, 11, "q.", max_message_bytes=1 << 20, pool_size=20)
    seen = 0
    for _ in range(400):
        draft = wire.make_draft(s.draw, TARGET)
        if draft.valid:
            continue
        frames, readable = wire.encode(draft, "rid-1")
        if draft.defect.startswith("frame:"):
            assert not readable
            continue
        header = msgpack.unpackb(frames[2], raw=False, strict_map_key=False)
        rtype, field = draft.defect.split(".")[:2]
        if field == "id":
            assert header.get("id") != "rid-1"
        elif field == "missing" or draft.defect.endswith(".missing"):
            assert draft.defect.split(".")[1] not in header
        elif field == "type":
            assert header.get("type") not in wire.REQUEST_TYPES
        elif field == "dtype" or ".dtype." in draft.defect:
            assert any(not isinstance(t, dict) or t.get("dtype") not in ("float32", "int8")
                       for t in header["inputs"]), header["inputs"]
        seen += 1
    assert seen > 100


def test_expected_outputs_tell_a_requests_own_outputs_from_anothers(tiny_repository, tmp_path):
    repo, name, version = tiny_repository
    exp = expected.build(repo, name, version, 6)
    exp.save(tmp_path / "e.npz")
    exp = expected.Expected.load(tmp_path / "e.npz")
    for variant, outs in exp.outputs.items():
        assert exp.check(variant, 2, [outs[0][2:3]]) == "ok"
        assert exp.check(variant, 2, [outs[0][4:5]]) == "other"
        assert exp.check(variant, 2, [outs[0][2:3] + 0.5]) == "wrong"
    assert exp.check("no-such-variant", 2, [np.zeros((1, 10), np.float32)]) == "unknown-variant"
