"""Malformed requests get one clear error reply and leave no traceback: a real daemon, real sockets.

Each case is a field of a type or size PROTOCOL.md rules out, of the kinds a fuzzer found
reaching the daemon's internals: a ``dtype`` that is a list or a map (unhashable), an
``owner_pid`` past what a pid can be, ``size`` and ``shape`` numbers past 64 bits' worth of
meaning. The reply must be BAD_REQUEST or BAD_INPUT (never INTERNAL, never silence), the daemon's
log must hold no ``Traceback`` from it, and the daemon must go on serving. Only the wire
protocol, the daemon's log and its ``health`` reply are used.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from adaptd.wire import protocol as proto  # noqa: E402
from adaptd.tools.launch import DaemonProcess  # noqa: E402
from robustness.watch import LogWatch  # noqa: E402

CLEAR_CODES = {"BAD_REQUEST", "BAD_INPUT"}


@pytest.fixture(scope="module")
def daemon(tiny_repository, tmp_path_factory):
    repo, _, _ = tiny_repository
    d = DaemonProcess.start(repo, tmp_path_factory.mktemp("malformed"), config={"placements": {"tensorflow": "off"}})
    yield d
    assert d.stop() == 0, d.log()


@pytest.fixture(scope="module")
def shape(daemon, tiny_repository):
    _, name, _ = tiny_repository
    reply, _ = daemon.request({"type": "models", "id": "models"})
    entry = next(m for m in reply["body"]["models"] if m["name"] == name)
    return [1, *entry["variants"][0]["inputs"][0]["shape"][1:]]


def infer_header(name: str, tensor: dict) -> dict:
    return {"type": "infer", "id": f"bad-{uuid.uuid4().hex}", "model": name, "inputs": [tensor]}


TENSOR_CASES = {
    "dtype as a list": lambda shape: {"dtype": ["float32"], "shape": shape},
    "dtype as a map": lambda shape: {"dtype": {"float32": 1}, "shape": shape},
    "dtype as an empty list": lambda shape: {"dtype": [], "shape": shape},
    "dtype as a nested map": lambda shape: {"dtype": {"a": {"b": []}}, "shape": shape},
    "shape as a map": lambda shape: {"dtype": "float32", "shape": {"0": 1}},
    "shape with 2**64 - 1": lambda shape: {"dtype": "float32", "shape": [2**64 - 1, *shape[1:]]},
    "shm as a list": lambda shape: {"dtype": "float32", "shape": shape, "shm": ["region", 0]},
    "shm offset 2**64 - 1": lambda shape: {"dtype": "float32", "shape": shape,
                                           "shm": {"region": "adaptd-1-00", "offset": 2**64 - 1}},
}


@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_a_malformed_tensor_header_gets_a_clear_error_and_no_traceback(daemon, tiny_repository, shape, case):
    _, name, _ = tiny_repository
    log = LogWatch(daemon.log_path)
    tensor = TENSOR_CASES[case](shape)
    header = infer_header(name, tensor)
    body = np.zeros(shape, np.float32)
    reply, bodies = daemon.request(header, [] if "shm" in tensor else [body])
    assert reply["type"] == "error" and reply["id"] == header["id"], reply
    assert reply["code"] in CLEAR_CODES, reply
    assert bodies == []
    assert_serving(daemon, name, shape)
    assert log.tracebacks() == []


REGISTER_CASES = {
    "owner_pid 2**31": {"size": 4096, "owner_pid": 2**31},
    "owner_pid 2**63": {"size": 4096, "owner_pid": 2**63},
    "owner_pid 2**64 - 1": {"size": 4096, "owner_pid": 2**64 - 1},
    "owner_pid past pid_max": {"size": 4096, "owner_pid": (1 << 22) + 1},
    "size 2**63": {"size": 2**63},
    "size 2**64 - 1": {"size": 2**64 - 1},
}


@pytest.mark.parametrize("case", sorted(REGISTER_CASES))
def test_shm_register_with_an_impossible_number_gets_bad_request_and_no_traceback(daemon, tiny_repository, shape,
                                                                                  case):
    _, name, _ = tiny_repository
    log = LogWatch(daemon.log_path)
    header = {"type": "shm_register", "id": f"reg-{uuid.uuid4().hex}", **REGISTER_CASES[case]}
    reply, _ = daemon.request(header)
    assert reply["type"] == "error" and reply["id"] == header["id"], reply
    assert reply["code"] in CLEAR_CODES, reply
    regions, _ = daemon.request({"type": "shm_regions", "id": f"regions-{uuid.uuid4().hex}"})
    assert regions["type"] == "ok" and regions["body"]["regions"] == [], regions
    assert_serving(daemon, name, shape)
    assert log.tracebacks() == []


def assert_serving(daemon: DaemonProcess, name: str, shape: list[int]) -> None:
    health, _ = daemon.request({"type": "health", "id": f"health-{uuid.uuid4().hex}"})
    assert health["type"] == "ok" and health["body"]["status"] == "serving", health
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    reply, bodies = daemon.request(proto.request_header(f"ok-{uuid.uuid4().hex}", name, [x]), [x])
    assert reply["type"] == "result" and len(bodies) == 1, reply
