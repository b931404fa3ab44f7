"""The daemon's side of CurveZMQ: its key, the allow-list, and the sockets they guard.

Contract
--------
* ``[auth] curve = true``: :meth:`Authenticator.start` loads the daemon's secret certificate
  (``server_key``) and starts pyzmq's ZAP authenticator (a thread of its own) allowing exactly the
  public certificates in ``client_keys``; :meth:`Authenticator.guard` makes a socket a CurveZMQ
  server before it binds. Every request, stream and admin socket is guarded. A client whose key
  is not in the directory never completes the handshake; an allowed client's requests carry its
  public key as ZeroMQ's ``User-Id``, which :mod:`adaptd.daemon.peers` uses as its identity.
* The allow-list is read at start (and again by :meth:`reload`, on SIGHUP): adding a client is
  copying its ``.key`` into the directory and reloading.
* Off (the default): :meth:`guard` does nothing and ``enabled`` is false.
* Failure: a missing or bad key file raises :class:`~adaptd.wire.auth.AuthConfigError` at start.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import zmq

from adaptd.wire.auth import AuthConfigError, load_keypair

log = logging.getLogger("adaptd.auth")


class Authenticator:
    def __init__(self, curve: bool, server_key: Path | None, client_keys: Path | None) -> None:
        self.enabled = curve
        self.server_key = server_key
        self.client_keys = client_keys
        self._public: bytes | None = None
        self._secret: bytes | None = None
        self._zap = None

    def start(self, context: zmq.Context) -> None:
        if not self.enabled:
            return
        assert self.server_key is not None and self.client_keys is not None
        self._public, self._secret = load_keypair(self.server_key, need_secret=True)
        if not self.client_keys.is_dir():
            raise AuthConfigError(f"[auth] client_keys: {self.client_keys} is not a directory")
        from zmq.auth.thread import ThreadAuthenticator

        self._zap = ThreadAuthenticator(context, log=logging.getLogger("adaptd.auth.zap"))
        self._zap.start()
        self.reload()

    def reload(self) -> None:
        if self._zap is None or self.client_keys is None:
            return
        self._zap.configure_curve(domain="*", location=os.fspath(self.client_keys))
        n = len(list(self.client_keys.glob("*.key")))
        log.info("CurveZMQ on: %d allowed client key(s) in %s", n, self.client_keys)

    def guard(self, sock: zmq.Socket) -> None:
        if not self.enabled:
            return
        sock.curve_secretkey = self._secret
        sock.curve_publickey = self._public
        sock.curve_server = True

    def stop(self) -> None:
        if self._zap is not None:
            self._zap.stop()
            self._zap = None
