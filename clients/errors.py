"""Client-side exceptions, one per ADPT/1 error code (PROTOCOL.md §6).

Contract
--------
* Every error reply from the daemon becomes an :class:`AdaptdError` subclass chosen by its
  ``code``; ``.code``, ``.request_id``, ``.message`` and ``.details`` carry the reply's
  fields unchanged. An unknown code (a newer daemon) becomes a plain :class:`AdaptdError`.
* :class:`RequestTimeout` (also a builtin :class:`TimeoutError`) is raised by the client
  itself when no reply came within the timeout after every retry; its ``code`` is
  ``"TIMEOUT"``, which is not a protocol code.
* :class:`ReplyError` is raised when the daemon's reply itself violates the protocol.
* Plain data; safe to pickle and to share between threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class AdaptdError(Exception):
    """An error reply from the daemon (or a client-side failure with a code of its own)."""

    code: str = "ERROR"

    def __init__(self, message: str, *, code: str | None = None, request_id: str | None = None,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.request_id = request_id
        self.details: dict[str, Any] = dict(details) if details else {}

    def __str__(self) -> str:
        rid = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.code}: {self.message}{rid}"


class MalformedError(AdaptdError):
    code = "MALFORMED"


class UnsupportedVersionError(AdaptdError):
    code = "UNSUPPORTED_VERSION"


class BadRequestError(AdaptdError):
    code = "BAD_REQUEST"


class BadConstraintsError(BadRequestError):
    code = "BAD_CONSTRAINTS"


class BadInputError(BadRequestError):
    code = "BAD_INPUT"


class TooLargeError(BadRequestError):
    code = "TOO_LARGE"


class UnknownModelError(AdaptdError):
    code = "UNKNOWN_MODEL"


class UnknownVariantError(AdaptdError):
    code = "UNKNOWN_VARIANT"


class UnknownPlacementError(AdaptdError):
    code = "UNKNOWN_PLACEMENT"


class UnknownRegionError(AdaptdError):
    """The request names a shared-memory region the daemon does not have (any more): it was
    unregistered, its owner exited, or the daemon restarted. Register a new region."""

    code = "UNKNOWN_REGION"


class InfeasibleError(AdaptdError):
    """No arm is predicted to meet the constraints; ``closest`` and ``violations`` say why."""

    code = "INFEASIBLE"

    @property
    def closest(self) -> dict[str, Any] | None:
        return self.details.get("closest")

    @property
    def violations(self) -> dict[str, Any]:
        return self.details.get("violations") or {}


class TransientError(AdaptdError):
    """The daemon could not run the request now; the same request may succeed later."""


class BusyError(TransientError):
    code = "BUSY"


class WorkerFailedError(TransientError):
    code = "WORKER_FAILED"


class ShuttingDownError(TransientError):
    code = "SHUTTING_DOWN"


class InternalError(AdaptdError):
    code = "INTERNAL"


class ReplyError(AdaptdError):
    """The daemon's reply does not follow ADPT/1 (a client-side code, not a protocol one)."""

    code = "BAD_REPLY"


class RequestTimeout(AdaptdError, TimeoutError):
    """No reply within the timeout, after every retry (each retry reused the request id)."""

    code = "TIMEOUT"


ERRORS_BY_CODE: dict[str, type[AdaptdError]] = {
    cls.code: cls
    for cls in (MalformedError, UnsupportedVersionError, BadRequestError, BadConstraintsError,
                BadInputError, TooLargeError, UnknownModelError, UnknownVariantError,
                UnknownPlacementError, InfeasibleError, BusyError, WorkerFailedError,
                ShuttingDownError, InternalError, UnknownRegionError)
}


def error_from_header(header: Mapping[str, Any]) -> AdaptdError:
    """The exception for an ``{"type": "error", ...}`` reply header."""
    code = header.get("code")
    code = code if isinstance(code, str) else "INTERNAL"
    message = header.get("message")
    message = message if isinstance(message, str) else "(no message)"
    rid = header.get("id") if isinstance(header.get("id"), str) else None
    details = header.get("details") if isinstance(header.get("details"), Mapping) else None
    cls = ERRORS_BY_CODE.get(code, AdaptdError)
    return cls(message, code=code, request_id=rid, details=details)
