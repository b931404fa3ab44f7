"""A request's terms have one set of rules (adaptd.selector.request): the selector's Request and
the protocol parser answer with the same ones, and a Constraints built by the parser is taken as
it is."""

from __future__ import annotations

import pytest
from adaptd.selector.request import Constraints, InvalidConstraintsError, InvalidRequestError, Request
from adaptd.wire import protocol as proto


@pytest.mark.parametrize("kw, message", [
    ({"min_accuracy": 1.5}, "min_accuracy must be within [0, 1]"),
    ({"max_latency_ms": 0.0}, "max_latency_ms must be greater than 0"),
    ({"max_energy_mj": float("nan")}, "max_energy_mj must be a finite number"),
    ({"max_latency_ms": "fast"}, "max_latency_ms must be a finite number; got str"),
    ({"latency_confidence": 1.0}, "latency_confidence must be within [0.5, 1)"),
])
def test_one_set_of_rules_answers_the_library_and_the_protocol(kw, message):
    with pytest.raises(InvalidConstraintsError) as err:
        Request("m", **kw)
    assert message in str(err.value)
    with pytest.raises(proto.ProtocolError) as info:
        proto.parse_constraints(kw, "r1")
    assert info.value.code == proto.BAD_CONSTRAINTS and message in info.value.message


def test_a_request_takes_built_constraints_as_they_are():
    c = Constraints(max_latency_ms=3.0)
    r = Request("m", objective="energy", constraints=c)
    assert r.constraints is c and r.max_latency_ms == 3.0 and r.min_accuracy is None
    assert r.replace(variant="v").constraints == c and r.replace(variant="v").variant == "v"
    with pytest.raises(TypeError):
        Request("m", max_latency_ms=2.0, constraints=c)
    with pytest.raises(InvalidRequestError):
        Request("m", objective="speed", constraints=c)
    assert proto.parse_constraints({"max_latency_ms": 3}, "r1") == c
