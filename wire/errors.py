"""ADPT/1's errors: the codes PROTOCOL.md §6 lists, the exception that carries one, the limits.

Contract
--------
* :class:`ProtocolError` is what every check of a message raises: the protocol's error code, a
  one-line message and, when it could be read, the request id and details. It maps onto one
  error reply (:func:`error_header`).
* Pure: constants and small functions, no state. Any thread.
* :mod:`adaptd.wire.protocol` re-exports every public name here: callers use ``proto.X``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_ID_BYTES = 128
MAX_NAME_BYTES = 128        # model, version, variant, placement, client and region names
MAX_MESSAGE_CHARS = 400     # an error reply's message; longer ones are cut (they may quote the client)
MAX_SHOWN_CHARS = 48        # a client's value quoted in an error message
MAX_PID = 1 << 22           # Linux's largest pid_max

# Error codes (PROTOCOL.md §6).
MALFORMED = "MALFORMED"
UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
BAD_REQUEST = "BAD_REQUEST"
BAD_CONSTRAINTS = "BAD_CONSTRAINTS"
BAD_INPUT = "BAD_INPUT"
TOO_LARGE = "TOO_LARGE"
UNKNOWN_MODEL = "UNKNOWN_MODEL"
UNKNOWN_VARIANT = "UNKNOWN_VARIANT"
UNKNOWN_PLACEMENT = "UNKNOWN_PLACEMENT"
INFEASIBLE = "INFEASIBLE"
BUSY = "BUSY"
WORKER_FAILED = "WORKER_FAILED"
SHUTTING_DOWN = "SHUTTING_DOWN"
INTERNAL = "INTERNAL"
UNKNOWN_REGION = "UNKNOWN_REGION"
FORBIDDEN = "FORBIDDEN"
ERROR_CODES = frozenset({
    MALFORMED, UNSUPPORTED_VERSION, BAD_REQUEST, BAD_CONSTRAINTS, BAD_INPUT, TOO_LARGE,
    UNKNOWN_MODEL, UNKNOWN_VARIANT, UNKNOWN_PLACEMENT, INFEASIBLE, BUSY, WORKER_FAILED,
    SHUTTING_DOWN, INTERNAL, UNKNOWN_REGION, FORBIDDEN,
})
# Replies with these codes are not kept for idempotent retry: a retry should run afresh.
TRANSIENT_CODES = frozenset({BUSY, SHUTTING_DOWN, WORKER_FAILED})


class ProtocolError(Exception):
    """A message the daemon (or client) cannot accept; maps onto one error reply."""

    def __init__(self, code: str, message: str, request_id: str | None = None,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        assert code in ERROR_CODES, code
        self.code = code
        self.message = message
        self.request_id = request_id
        self.details = dict(details) if details else None

    def header(self) -> dict[str, Any]:
        return error_header(self.code, self.message, self.request_id, self.details)


def shown(value: Any) -> str:
    """A client's value for an error message: its repr, cut to ``MAX_SHOWN_CHARS``."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS - 3] + "..."


def error_header(code: str, message: str, request_id: str | None = None,
                 details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An error reply's header. The message is cut to ``MAX_MESSAGE_CHARS``: it may quote what a
    client sent, and error replies are kept for replay."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 3] + "..."
    header: dict[str, Any] = {"type": "error", "id": request_id, "code": code, "message": message}
    if details:
        header["details"] = dict(details)
    return header

