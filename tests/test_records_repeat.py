"""A repeated request's selection row (adaptd.wire.records.repeat_row) is the row selection_row
makes for it: the kept row supplies the request's, client's and decision's columns, the repeat
its id, time and what ran. And the bookkeeping reuses a row only for the same client, decision
and arm (adaptd.daemon.bookkeeping.Bookkeeping.record)."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from adaptd.daemon.bookkeeping import Bookkeeping
from adaptd.wire import protocol as proto
from adaptd.wire.records import repeat_row, selection_row

_ms = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)
_maybe_ms = st.none() | _ms
_timing = st.fixed_dictionaries({"queue_ms": _ms, "compute_ms": _ms, "total_ms": _ms})
_energy = st.fixed_dictionaries({"energy_mj": _maybe_ms, "source": st.sampled_from(["estimated:tx2", "ina3221"]),
                                 "estimated": st.booleans()})
_met = st.dictionaries(st.sampled_from(["min_accuracy", "max_latency_ms", "max_energy_mj"]), st.booleans())
_runtime = st.fixed_dictionaries({"cpu_ms": _ms, "energy_mj": _ms})
_predicted = st.fixed_dictionaries({"latency_ms": _ms, "latency_bound_ms": _ms, "energy_mj": _maybe_ms,
                                    "accuracy": st.floats(0, 1)},
                                   optional={"accuracy_used": st.floats(0, 1), "accuracy_source": st.text(max_size=8),
                                             "energy_estimated": st.booleans()})


def _fields(rid: str, ts: float, predicted, ran) -> dict:
    timing, energy, met, runtime = ran
    return dict(ts=ts, request_id=rid, client="app", model="digits", version="1", objective="latency",
                on_infeasible="reject", constraints={"max_latency_ms": 50.0}, outcome="ok", error_code=None,
                variant="int8", placement="cpu:1", reason_code="LEAST_LATENCY", reason="fastest",
                predicted=predicted, timing=timing, energy=energy, met=met, runtime=runtime)


@settings(max_examples=200, deadline=None)
@given(predicted=_predicted, first=st.tuples(_timing, _energy, _met, _runtime),
       second=st.tuples(_timing | st.none(), _energy | st.none(), _met | st.none(), _runtime | st.none()),
       ts=st.floats(0, 2e9))
def test_a_repeat_row_is_the_row_selection_row_makes(predicted, first, second, ts):
    kept = selection_row(**_fields("r1", 1.0, predicted, first))
    timing, energy, met, runtime = second
    assert repeat_row(kept, ts=ts, request_id="r2", predicted=predicted, timing=timing, energy=energy, met=met,
                      runtime=runtime) == selection_row(**_fields("r2", ts, predicted, second))


def _request(rid: str) -> proto.Request:
    header = proto.request_header(rid, "digits", [], constraints={"max_latency_ms": 50.0})
    header["inputs"] = [{"dtype": "float32", "shape": [1, 4]}]
    request = proto.parse_request(header)
    object.__setattr__(request, "derived", {})   # as RequestMemo keeps a repeated header's
    return request


def test_the_bookkeeping_reuses_a_row_only_for_the_same_client_decision_and_arm():
    rows: deque = deque()
    books = Bookkeeping(rows.append, 16, 0.2)
    model = SimpleNamespace(name="digits", version="1")
    arms = [SimpleNamespace(variant=SimpleNamespace(name=v), placement=SimpleNamespace(name="cpu:1"))
            for v in ("int8", "float32")]
    choices = [SimpleNamespace(code=c, text=c.lower(), predicted={"latency_ms": t, "accuracy": 0.9})
               for c, t in (("LEAST_LATENCY", 0.2), ("PROBE", 0.5))]
    template = _request("r0")
    ran = dict(timing={"queue_ms": 0.1, "compute_ms": 0.2, "total_ms": 0.3},
               energy={"energy_mj": 0.5, "source": "estimated:tx2", "estimated": True},
               met={"max_latency_ms": True}, runtime={"cpu_ms": 0.05, "energy_mj": 0.01})
    cases = [("app", 0, 0), ("app", 0, 0), ("other", 0, 0), ("other", 1, 0), ("other", 1, 1), ("other", 1, 1)]
    for i, (client, c, a) in enumerate(cases):
        request = template.with_id(f"r{i}")
        assert request.derived is template.derived
        books.record(request, model, client, float(i), outcome="ok", error_code=None, choice=choices[c],
                     arm=arms[a], **ran)
        fresh = selection_row(ts=float(i), request_id=f"r{i}", client=client, model="digits", version="1",
                              objective=request.objective, on_infeasible=request.on_infeasible,
                              constraints={"max_latency_ms": 50.0}, outcome="ok", error_code=None,
                              variant=arms[a].variant.name, placement="cpu:1", reason_code=choices[c].code,
                              reason=choices[c].text, predicted=choices[c].predicted, **ran)
        assert rows[-1] == fresh, (i, client, c, a)
        assert template.derived["row"][4][1] == ("r0" if i == 1 else f"r{i - 1}" if i == 5 else f"r{i}")   # kept: the last fresh row
    books.record(template.with_id("bad"), model, "app", 9.0, outcome="error", error_code="BAD_INPUT",
                 choice=choices[0], arm=arms[0])
    assert rows[-1][11:13] == ("error", "BAD_INPUT") and rows[-1][24] is None   # (nothing ran: a row of its own)
