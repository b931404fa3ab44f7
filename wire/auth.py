"""CurveZMQ keys: how a client proves who it is to the daemon, and checks the daemon is the daemon.

Contract
--------
* Keys are ZeroMQ certificate files (``zmq.auth`` format: a ``.key`` file holds a public key, a
  ``.key_secret`` file both). :func:`new_keypair` writes a pair; the daemon's operator copies a
  client's public ``.key`` into the daemon's ``[auth] client_keys`` directory to allow it, and
  gives the client the daemon's public ``.key``.
* :class:`CurveKeys` is what a client needs: its own key pair and the daemon's public key.
  :meth:`CurveKeys.apply` sets them on a socket before it connects. :meth:`CurveKeys.from_env`
  reads ``ADAPTD_CURVE_CLIENT_KEY`` (the client's ``.key_secret``) and ``ADAPTD_CURVE_SERVER_KEY``
  (the daemon's ``.key``), so every client and CLI verb authenticates without code changes.
* Failure: a missing or unreadable file raises :class:`AuthConfigError` (one line). A daemon that
  refuses the client (key not allowed) closes the handshake: the client sees no reply, only its
  timeout (ZeroMQ does not tell a refused peer why).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

CLIENT_KEY_ENV = "ADAPTD_CURVE_CLIENT_KEY"
SERVER_KEY_ENV = "ADAPTD_CURVE_SERVER_KEY"


class AuthConfigError(ValueError):
    """A key file that cannot be used (one line)."""


def load_keypair(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) z85 keys from a certificate file; secret None for a public-only file."""
    try:
        public, secret = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise AuthConfigError(f"{path}: not a readable ZeroMQ certificate ({exc})") from None
    if need_secret and not secret:
        raise AuthConfigError(f"{path}: holds no secret key (give the .key_secret file)")
    return public, secret


def new_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``name.key`` (public) and ``name.key_secret`` (mode 0600) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(os.fspath(directory), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


@dataclass(frozen=True)
class CurveKeys:
    client_public: bytes
    client_secret: bytes
    server_public: bytes

    @classmethod
    def from_files(cls, client_secret_file: Path, server_public_file: Path) -> CurveKeys:
        public, secret = load_keypair(Path(client_secret_file), need_secret=True)
        server, _ = load_keypair(Path(server_public_file), need_secret=False)
        assert secret is not None
        return cls(public, secret, server)

    @classmethod
    def from_env(cls) -> CurveKeys | None:
        client, server = os.environ.get(CLIENT_KEY_ENV), os.environ.get(SERVER_KEY_ENV)
        if not client and not server:
            return None
        if not client or not server:
            raise AuthConfigError(f"set both {CLIENT_KEY_ENV} (this client's .key_secret) and {SERVER_KEY_ENV} "
                                  "(the daemon's .key), or neither")
        return cls.from_files(Path(client), Path(server))

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (not yet connected) a CurveZMQ client of the daemon."""
        sock.curve_publickey = self.client_public
        sock.curve_secretkey = self.client_secret
        sock.curve_serverkey = self.server_public
