"""What a client connection is configured with: where, how long, how often, who.

Contract
--------
* :class:`ClientSettings` is a frozen dataclass, validated once when it is made (``ValueError``
  naming the field); both clients and :class:`adaptd.clients.core.ClientCore` read it and never
  change it. :meth:`ClientSettings.resolve` fills in what the clients' constructors leave out:
  the endpoint from :func:`adaptd.clients.endpoints.default_endpoint`, the CurveZMQ keys from
  ``$ADAPTD_CURVE_CLIENT_KEY`` / ``$ADAPTD_CURVE_SERVER_KEY`` (none when unset).
* Immutable; safe to share between threads and clients.
* Units: ``*_ms`` milliseconds; ``retries`` and ``busy_retries`` are counts of resends (0: send
  once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adaptd.clients.endpoints import default_endpoint
from adaptd.wire.auth import CurveKeys

DEFAULT_TIMEOUT_MS = 30_000.0
DEFAULT_RETRIES = 2
# close() asks the daemon to end this client's regions, once each, within this budget in all;
# those it has not ended when the budget runs out are only unmapped here (the daemon ends a
# region when the process that registered it exits, PROTOCOL.md §11.2).
CLOSE_TIMEOUT_MS = 2000.0
DEFAULT_BUSY_BACKOFF_MS = 2.0      # the first wait before resending a request answered BUSY
BUSY_BACKOFF_MAX_MS = 100.0        # the longest such wait


@dataclass(frozen=True)
class ClientSettings:
    """One client's configuration (see the module docstring)."""

    endpoint: str                                  # ZeroMQ endpoint of the daemon's request socket
    timeout_ms: float = DEFAULT_TIMEOUT_MS         # how long one attempt waits for its reply
    retries: int = DEFAULT_RETRIES                 # resends (same id) after a timeout
    name: str | None = None                        # sent as the requests' ``client`` field
    busy_retries: int = 0                          # resends (same id) of an inference answered BUSY
    busy_backoff_ms: float = DEFAULT_BUSY_BACKOFF_MS   # the first wait before such a resend
    curve: CurveKeys | None = None                 # CurveZMQ keys, or None for a plain connection

    def __post_init__(self) -> None:
        if not isinstance(self.endpoint, str) or not self.endpoint:
            raise ValueError(f"endpoint must be a non-empty string, got {self.endpoint!r}")
        if not math.isfinite(self.timeout_ms) or self.timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be > 0, got {self.timeout_ms}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.busy_retries < 0:
            raise ValueError(f"busy_retries must be >= 0, got {self.busy_retries}")
        if not 0 < self.busy_backoff_ms <= BUSY_BACKOFF_MAX_MS:
            raise ValueError(f"busy_backoff_ms must be in (0, {BUSY_BACKOFF_MAX_MS:g}], got {self.busy_backoff_ms}")
        for key, kind in (("timeout_ms", float), ("retries", int), ("busy_retries", int),
                          ("busy_backoff_ms", float)):
            object.__setattr__(self, key, kind(getattr(self, key)))

    @classmethod
    def resolve(cls, endpoint: str | None = None, *, timeout_ms: float = DEFAULT_TIMEOUT_MS,
                retries: int = DEFAULT_RETRIES, name: str | None = None, busy_retries: int = 0,
                busy_backoff_ms: float = DEFAULT_BUSY_BACKOFF_MS, curve: CurveKeys | None = None) -> ClientSettings:
        """Settings as the clients' constructors take them: the endpoint defaults to
        :func:`~adaptd.clients.endpoints.default_endpoint`, the keys to those in the environment."""
        keys = curve if curve is not None else CurveKeys.from_env()
        return cls(endpoint or default_endpoint(stream=keys is None), timeout_ms, retries, name, busy_retries,
                   busy_backoff_ms, keys)

    @property
    def close_budget_ms(self) -> float:
        """How long close() may spend asking the daemon to end this client's regions, in all."""
        return min(self.timeout_ms, CLOSE_TIMEOUT_MS)
