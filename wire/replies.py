"""Reply headers, built in one place for the daemon (and the tests that hold them to PROTOCOL.md).

Contract
--------
* :func:`result_header` is §5's successful inference reply, :func:`ok_header` §7's control reply;
  error replies are :func:`adaptd.wire.protocol.error_header`. Each returns a plain map, ready for
  :func:`adaptd.wire.protocol.encode`; none copies a tensor (outputs travel as body frames, or in
  a region, beside the header).
* ``tests/test_protocol.py`` builds the spec's examples with these functions and compares them
  with PROTOCOL.md key by key, so the builders and the spec cannot drift apart.
* Pure; safe from any thread. Units as in the spec: ``*_ms`` milliseconds, ``*_mj`` millijoules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def result_header(*, request_id: str, model: str, version: str, variant: str, placement: str,
                  outputs: Sequence[Mapping[str, Any]], queue_ms: float, compute_ms: float, total_ms: float,
                  energy_mj: float | None, energy_source: str, energy_estimated: bool,
                  predicted: Mapping[str, Any], constraints_met: Mapping[str, bool], reason_code: str,
                  reason_text: str, alternatives: Sequence[Mapping[str, Any]] | None = None,
                  runtime: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """§5: what ran, its outputs' headers, what it cost, what was predicted and why; ``runtime``:
    the daemon's own cost for this request (:func:`runtime_cost`). The maps and lists given are
    held, not copied (the daemon's decision shares its ``predicted`` map among the replies of a
    kept decision): a reply is packed and read, never changed."""
    header = {
        "type": "result", "id": request_id, "model": model, "version": version,
        "variant": variant, "placement": placement, "outputs": outputs,
        "timing": {"queue_ms": queue_ms, "compute_ms": compute_ms, "total_ms": total_ms},
        "energy": {"energy_mj": energy_mj, "source": energy_source, "estimated": energy_estimated},
        "predicted": predicted,
        "constraints_met": constraints_met, "met": all(constraints_met.values()),
        "reason": {"code": reason_code, "text": reason_text},
        "replayed": False,
    }
    if runtime is not None:
        header["runtime"] = runtime
    if alternatives is not None:
        header["alternatives"] = alternatives
    return header


def runtime_cost(cpu_ms: float, energy_mj: float, source: str) -> dict[str, Any]:
    """§5 ``runtime``: the daemon's own CPU for one request, outside the execution, and its energy,
    always estimated (a power model applied to that CPU time: no sensor isolates it)."""
    return {"cpu_ms": cpu_ms, "energy_mj": energy_mj, "source": source, "estimated": True}


def replayed(header: Mapping[str, Any]) -> dict[str, Any]:
    """A stored reply sent again for a retried id (§8)."""
    return {**header, "replayed": True}


def ok_header(of: str, request_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """§7: a control request's successful reply."""
    return {"type": "ok", "id": request_id, "of": of, "body": dict(body)}


def met_constraints(constraints: Mapping[str, float | None], accuracy: float | None, total_ms: float,
                    energy_mj: float | None) -> dict[str, bool]:
    """§5 ``constraints_met``: per bound the request set, whether the execution met it (accuracy by
    the variant's figure, latency by the measured total, energy by the measured or estimated
    energy; an unknown figure does not meet its bound)."""
    met: dict[str, bool] = {}
    bound = constraints.get("min_accuracy")
    if bound is not None:
        met["min_accuracy"] = accuracy is not None and accuracy >= bound
    bound = constraints.get("max_latency_ms")
    if bound is not None:
        met["max_latency_ms"] = total_ms <= bound
    bound = constraints.get("max_energy_mj")
    if bound is not None:
        met["max_energy_mj"] = energy_mj is not None and energy_mj <= bound
    return met
