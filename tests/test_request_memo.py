"""The memo of repeated inference headers (adaptd.daemon.request_memo): a repeat parses to exactly
what the full decode and parse give, and nothing but a proven repeat skips them."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptd.wire import protocol as proto
from adaptd.daemon import request_memo
from adaptd.daemon.request_memo import RequestMemo, constraints_map, derived, for_constraints, split_id


def message(header: dict, bodies=()) -> list:
    return proto.encode(header, bodies)


def full(msg: list) -> proto.Request:
    return proto.parse_request(proto.decode(msg)[0])


def through(memo: RequestMemo, msg: list) -> proto.Request:
    request, header, _ = memo.decode(msg)
    return request if request is not None else memo.parse(msg, header)


X = np.zeros((1, 4), np.float32)
ids = st.text(min_size=1, max_size=40) | st.text(alphabet="ab", min_size=120, max_size=140)
names = st.text(alphabet="abcxyz_-0123456789", min_size=1, max_size=12)
headers = st.fixed_dictionaries({
    "model": names,
    "shape": st.lists(st.integers(0, 300), min_size=0, max_size=4),
    "dtype": st.sampled_from(["float32", "int8", "uint8"]),
    "constraints": st.none() | st.dictionaries(st.sampled_from(list(proto.CONSTRAINT_KEYS)),
                                               st.floats(0.5, 0.99), max_size=3),
    "objective": st.none() | st.sampled_from(["latency", "energy", "accuracy"]),
    "pin_variant": st.none() | names,
    "client": st.none() | names,
    "explain": st.booleans(),
})


def build(rid: str, h: dict) -> dict:
    header = proto.request_header(rid, h["model"], [], constraints=h["constraints"], objective=h["objective"],
                                  pin_variant=h["pin_variant"], client=h["client"], explain=h["explain"],
                                  input_headers=[{"dtype": h["dtype"], "shape": h["shape"]}])
    return header


@settings(max_examples=300, deadline=None)
@given(h=headers, first=ids, second=ids)
def test_a_repeat_parses_to_what_the_full_path_gives(h, first, second):
    memo = RequestMemo()
    results = []
    for rid in (first, second, first, second):   # (kept on its second sight)
        msg = message(build(rid, h), [b"\0" * 4])
        try:
            expected = full(msg)
        except proto.ProtocolError as exc:   # an id over the limit: the same error either way
            with pytest.raises(proto.ProtocolError) as got:
                through(memo, msg)
            assert (got.value.code, got.value.message) == (exc.code, exc.message)
            results.append(None)
            continue
        assert through(memo, msg) == expected
        results.append(expected)
    if None not in results:
        assert memo.hits == 2 and len(memo) == 1


def test_headers_differing_only_past_the_id_are_kept_apart():
    memo = RequestMemo()
    fields = {"model": "m", "shape": [1, 4], "dtype": "float32", "constraints": {"max_latency_ms": 5.0},
              "pin_variant": None, "client": None, "explain": False}
    a = message(build("r1", {**fields, "objective": "energy"}))
    b = message(build("r2", {**fields, "objective": "accuracy"}))
    for _ in range(3):   # (each kept on its second sight)
        assert through(memo, a).objective == "energy"
        assert through(memo, b).objective == "accuracy"
    assert memo.hits == 2 and len(memo) == 2


def test_headers_differing_only_in_their_constraints_share_a_template_less_them():
    """Two clients of one header but for their bounds: from the second sight of the header less
    its constraints, each copy of that template has its own, as the full parse gives them."""
    memo = RequestMemo()
    fields = {"model": "m", "shape": [1, 4], "dtype": "float32", "objective": None, "pin_variant": None,
              "client": None, "explain": False}
    a = message(build("r1", {**fields, "constraints": {"max_latency_ms": 5.0}}))
    b = message(build("r2", {**fields, "constraints": {"max_latency_ms": 6.0, "min_accuracy": 0.5}}))
    for _ in range(3):
        assert through(memo, a) == full(a)
        assert through(memo, b) == full(b)
    assert memo.hits == 4 and len(memo) == 3   # less its bounds, then each whole header on its second sight
    assert constraints_map(through(memo, a)) == {"max_latency_ms": 5.0}
    assert constraints_map(through(memo, b)) == {"max_latency_ms": 6.0, "min_accuracy": 0.5}


def test_an_id_cut_by_structure_not_by_search():
    """The id's bytes also appear in a later field: only the second entry's value is cut."""
    raw = proto.pack({"type": "infer", "id": "m", "model": "m"})
    key, rid, at = split_id(raw)
    assert rid == "m"
    assert key == raw[:raw.index(b"\xa2id") + 3] + raw[raw.index(b"\xa2id") + 5:]
    assert key.count(b"\xa1m") == 1


@pytest.mark.parametrize("header", [
    {"id": "r1", "type": "infer", "model": "m", "inputs": []},           # another layout
    {"type": "infer", "model": "m", "id": "r1", "inputs": []},
])
def test_another_layout_takes_the_full_path_every_time(header):
    memo = RequestMemo()
    for rid in ("r1", "r2"):
        msg = message({**header, "id": rid})
        assert through(memo, msg) == full(msg)
    assert memo.hits == 0 and len(memo) == 0


def test_control_requests_are_not_kept():
    memo = RequestMemo()
    for rid in ("a", "b"):
        msg = message(proto.request_header(rid, "m", [X], request_type="explain"))
        assert through(memo, msg) == full(msg)
    assert len(memo) == 0


def test_a_key_given_twice_is_not_kept():
    """msgpack keeps a map's last value for a key: a header with ``id`` twice reads as its last
    id, and is never a template (its repeat would keep the stale second id)."""
    def twice(first: str, last: str) -> bytes:
        packer = msgpack.Packer(use_bin_type=True)
        body = b"".join(packer.pack(x) for x in ("type", "infer", "id", first, "model", "m", "inputs", [], "id", last))
        return bytes([0x85]) + body

    memo = RequestMemo()
    for first in ("a", "b"):
        msg = [b"", proto.SIGNATURE, twice(first, "z")]
        request = through(memo, msg)
        assert request.id == "z" == full(msg).id
    assert len(memo) == 0 and memo.hits == 0


def test_an_id_that_is_not_utf8_is_malformed_even_after_a_template():
    memo = RequestMemo()
    good = message(proto.request_header("ok", "m", [X]))
    for _ in range(2):
        through(memo, good)
    assert len(memo) == 1
    raw = bytes(good[2])
    bad = raw.replace(b"\xa2ok", b"\xa2\xff\xfe")
    for _ in range(2):
        with pytest.raises(proto.ProtocolError) as err:
            through(memo, [b"", proto.SIGNATURE, bad])
        assert err.value.code == proto.MALFORMED


def test_a_repeat_with_a_wrong_signature_or_no_delimiter_is_refused_as_ever():
    memo = RequestMemo()
    msg = message(proto.request_header("r1", "m", [X]))
    through(memo, msg)
    through(memo, msg)
    repeat = message(proto.request_header("r2", "m", [X]))
    with pytest.raises(proto.ProtocolError) as err:
        through(memo, [b"", b"ADPT02", repeat[2]])
    assert err.value.code == proto.UNSUPPORTED_VERSION
    with pytest.raises(proto.ProtocolError) as err:
        through(memo, [b"x", proto.SIGNATURE, repeat[2]])
    assert err.value.code == proto.MALFORMED
    assert through(memo, repeat).id == "r2" and memo.hits == 1


def test_the_bodies_of_a_repeat_are_its_own():
    memo = RequestMemo()
    for _ in range(2):
        through(memo, message(proto.request_header("r1", "m", [X]), [b"first"]))
    request, header, bodies = memo.decode(message(proto.request_header("r2", "m", [X]), [b"second", b"third"]))
    assert header is None and request.id == "r2"
    assert [bytes(b) for b in bodies] == [b"second", b"third"]


def test_the_memo_is_bounded():
    memo = RequestMemo()
    for i in range(request_memo.MAX_ENTRIES + 5):
        for _ in range(2):
            through(memo, message(proto.request_header("r", f"model{i}", [X])))
    assert 0 < len(memo) <= request_memo.MAX_ENTRIES
    long_client = proto.request_header("r", "m", [X], client="c" * 100)
    long_client["note"] = "x" * request_memo.MAX_KEY_BYTES   # unknown keys are ignored, never kept
    before = len(memo)
    through(memo, message(long_client))
    assert len(memo) == before


def test_a_header_that_changes_every_request_is_never_kept():
    """A client that names another model on every request sends no header twice: each is parsed
    in full, and the memo keeps none of them (a header is kept on its second sight), while what
    it remembers of them stays bounded."""
    memo = RequestMemo()
    for i in range(request_memo.MAX_ENTRIES * 2 + 3):
        msg = message(proto.request_header(f"r{i}", f"m{i}", [X], constraints={"max_latency_ms": 5.0 + i}))
        request = through(memo, msg)
        assert request == full(msg) and request.derived is None
    assert len(memo) == 0 and memo.hits == 0 and len(memo._seen) <= request_memo.MAX_ENTRIES


def test_a_bound_of_its_own_on_every_request_skips_the_parse_from_the_third():
    """A deadline per frame: the header less its constraints is kept on its second sight; every
    later copy has its own bound, as the full parse gives it, and what depends on the
    constraints is made for them, while the rest is made once for all the copies."""
    memo = RequestMemo()
    made = []
    for i in range(40):
        msg = message(proto.request_header(f"r{i}", "m", [X], constraints={"max_latency_ms": 5.0 + i}))
        request = through(memo, msg)
        assert request == full(msg)
        if i >= 1:
            assert request.derived is not None
            assert derived(request, "shared", lambda: made.append(i) or len(made)) == 1
            assert constraints_map(request) == {"max_latency_ms": 5.0 + i}
    assert memo.hits == 38 and len(memo) == 1 and made == [1]


def test_clients_with_fixed_bounds_of_their_own_each_end_on_the_exact_path():
    """Three clients on one header, each with a bound of its own that it keeps, interleaved: the
    header less its bounds is kept first, then each client's whole header on its second sight as
    a copy, so that what is made for a client's constraints is made a few times, not on every
    request (a selector request, a decision)."""
    memo = RequestMemo()
    made = {5.0: 0, 6.0: 0, 7.0: 0}

    def make(bound):
        made[bound] += 1
        return bound

    for k in range(30):
        for bound in made:
            msg = message(proto.request_header(f"r{k}-{bound}", "m", [X], constraints={"max_latency_ms": bound}))
            request = through(memo, msg)
            assert request == full(msg)
            if request.derived is not None:
                assert for_constraints(request, "made", make, bound) == bound
    assert all(n <= 3 for n in made.values()), made
    assert memo.hits == 30 * 3 - 2 and len(memo) == 4   # the header less its bounds, and each whole header


def test_a_bound_on_every_request_does_not_make_the_memo_forget_a_slower_clients_header():
    """A client with a new bound on every request sends a whole header never seen before each
    time; remembering those does not push out the first sight of a slower client's header,
    which is kept on its second sight however many requests came between."""
    memo = RequestMemo()
    slow = lambda k: message(proto.request_header(f"s{k}", "other", [X]))  # noqa: E731
    through(memo, slow(0))
    for i in range(3 * request_memo.MAX_ENTRIES):
        msg = message(proto.request_header(f"r{i}", "m", [X], constraints={"max_latency_ms": 5.0 + i}))
        assert through(memo, msg) == full(msg)
    through(memo, slow(1))   # its second sight: kept
    hits = memo.hits
    assert through(memo, slow(2)) == full(slow(2)) and memo.hits == hits + 1


def test_a_bound_taking_hundreds_of_values_does_not_push_out_other_clients_templates():
    """A client whose bound takes a few hundred values (a deadline rounded to 0.1 ms) has many of
    its whole headers kept as copies; they go to a map of their own, so the steady clients'
    templates stay and each steady client is parsed in full on its first two requests only."""
    import random

    memo = RequestMemo()
    draw = random.Random(1)
    steady_misses = 0
    for i in range(4 * request_memo.MAX_ENTRIES):
        bound = 5.0 + draw.randrange(400) / 10
        through(memo, message(proto.request_header(f"v{i}", "m", [X], constraints={"max_latency_ms": bound})))
        for c in range(8):
            hits = memo.hits
            msg = message(proto.request_header(f"s{i}-{c}", f"steady{c}", [X]))
            assert through(memo, msg) == full(msg)
            steady_misses += memo.hits == hits
    assert steady_misses == 2 * 8


@settings(max_examples=200, deadline=None)
@given(h=headers, bounds=st.lists(st.dictionaries(st.sampled_from([*proto.CONSTRAINT_KEYS, "max_cost"]),
                                                  st.floats(allow_nan=True) | st.integers(-3, 2**40), max_size=4),
                                  min_size=3, max_size=6))
def test_copies_with_bounds_of_their_own_parse_to_what_the_full_path_gives(h, bounds):
    """Any constraints on a kept template, unknown keys and values out of range among them: the
    same request or the same error as the full decode and parse (an error takes the full path)."""
    memo = RequestMemo()
    for i, c in enumerate([h["constraints"] or {"max_latency_ms": 1.0}] * 2 + bounds):
        packer = msgpack.Packer(use_bin_type=True)   # (ints stay ints: request_header makes floats)
        header = build(f"r{i}", {**h, "constraints": {"max_latency_ms": 1.0}})
        header["constraints"] = c
        msg = [b"", proto.SIGNATURE, packer.pack(header)]
        try:
            expected = full(msg)
        except proto.ProtocolError as exc:
            with pytest.raises(proto.ProtocolError) as got:
                through(memo, msg)
            assert (got.value.code, got.value.message) == (exc.code, exc.message)
            continue
        got = through(memo, msg)
        assert got == expected and got.constraints == expected.constraints
        if got.derived is not None:
            assert constraints_map(got) == expected.constraints.as_dict()
    assert len(memo) <= 2 + len(bounds)   # (the header less its bounds, whole headers seen twice)


def test_what_is_derived_from_a_repeated_header_is_made_once_and_shared_by_its_copies():
    memo = RequestMemo()
    made = []

    def make():
        made.append(1)
        return {"derived": len(made)}

    once = through(memo, message(proto.request_header("r0", "m", [X])))
    assert once.derived is None and len(memo) == 0   # a first sight is remembered, not kept
    first = through(memo, message(proto.request_header("r1", "m", [X])))
    second = through(memo, message(proto.request_header("r2", "m", [X])))
    assert derived(first, "k", make) is derived(second, "k", make) and len(made) == 1
    assert constraints_map(second) is constraints_map(first)
    fresh = full(message(proto.request_header("r3", "m", [X])))
    assert fresh.derived is None and derived(fresh, "k", make) == {"derived": 2}   # made afresh each time


def test_parse_keeps_nothing_for_a_message_that_decode_did_not_just_miss():
    """While a queue is full the daemon decodes a header itself (an early BUSY needs it), then
    parses it: that message is not the memo's last miss, so nothing is kept for it, even with the
    same id (a retry) as the miss before."""
    memo = RequestMemo()
    first = message(proto.request_header("r1", "m", [X]))
    assert memo.decode(first)[0] is None   # a miss whose parse never comes (say, TOO_LARGE)
    other = message(proto.request_header("r1", "other", [X]))
    assert memo.parse(other, proto.decode(other)[0]).model == "other"
    assert len(memo) == 0
    assert through(memo, message(proto.request_header("r2", "m", [X]))).model == "m" and memo.hits == 0


def test_a_repeat_comes_back_the_same_from_zeromq_frames_bytes_or_memoryviews():
    """A ZeroMQ socket gives ``zmq.Frame``s, the local stream memoryviews: a repeat is recognised
    and its bodies given back as buffers of the same bytes either way."""
    import zmq

    memo = RequestMemo()
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    first = [bytes(memoryview(f).cast("B")) for f in message(proto.request_header("r1", "m", [x]), [x])]
    through(memo, first)
    through(memo, first)
    for kind, make in (("bytes", bytes), ("memoryview", memoryview), ("zmq.Frame", zmq.Frame)):
        raw = [bytes(memoryview(f).cast("B")) for f in message(proto.request_header(f"r-{kind}", "m", [x]), [x])]
        request, header, bodies = memo.decode([make(f) for f in raw])
        assert header is None and request.id == f"r-{kind}", kind   # a repeat: no full decode
        assert [bytes(b) for b in bodies] == [x.tobytes()] and isinstance(bodies[0], memoryview), kind
    assert memo.hits == 3
