"""Where the daemon's sockets are, as a client finds them.

Contract
--------
* Each function reads its environment variable first (``$ADAPTD_ENDPOINT``,
  ``$ADAPTD_PUB_ENDPOINT``, ``$ADAPTD_ADMIN_ENDPOINT``), else names the daemon's default ipc socket
  in :func:`default_runtime_dir`; they read the environment and check that directory each call
  (nothing cached). A ``/tmp/adaptd-<uid>`` that another user owns is refused (RuntimeDirError).
* Endpoints are ZeroMQ endpoint strings (``ipc://...``, ``tcp://...``) or the local stream's
  (``unix://...``, request endpoint only). Safe from any thread.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from adaptd.wire.rundir import (ADMIN_SOCKET_NAME, LOCAL_SOCKET_NAME, SOCKET_NAME, STREAM_SOCKET_NAME,
                                check_client_dir, client_runtime_dir)

ENDPOINT_ENV = "ADAPTD_ENDPOINT"
PUB_ENDPOINT_ENV = "ADAPTD_PUB_ENDPOINT"
ADMIN_ENDPOINT_ENV = "ADAPTD_ADMIN_ENDPOINT"


def default_runtime_dir() -> Path:
    """Where the daemon's sockets are (:mod:`adaptd.wire.rundir`: the system service's
    ``/run/adaptd`` when it is running, else where a daemon run by this user keeps them). A
    ``/tmp/adaptd-<uid>`` that another user owns is refused (RuntimeDirError)."""
    path = client_runtime_dir()
    check_client_dir(path)
    return path


def default_endpoint(stream: bool = True) -> str:
    """The request endpoint: ``$ADAPTD_ENDPOINT``, else (with ``stream``) the daemon's default local
    stream where a daemon listens on it (``unix://``, PROTOCOL.md §2.3, the cheaper path), else
    its default ipc socket. ``stream=False`` for a client with CurveZMQ keys: a stream has none."""
    value = os.environ.get(ENDPOINT_ENV)
    if value:
        return value
    directory = default_runtime_dir()
    local = directory / LOCAL_SOCKET_NAME
    return f"unix://{local}" if stream and _listening(local) else f"ipc://{directory / SOCKET_NAME}"


def _listening(path: Path) -> bool:
    """Whether a process accepts connections on the Unix socket at ``path`` (a file a killed
    daemon left refuses them)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        probe.connect(str(path))
    except BlockingIOError:   # a full backlog: someone listens
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return True


def default_pub_endpoint() -> str:
    """The selection stream: ``$ADAPTD_PUB_ENDPOINT``, else the daemon's default ipc socket."""
    return os.environ.get(PUB_ENDPOINT_ENV) or f"ipc://{default_runtime_dir() / STREAM_SOCKET_NAME}"


def default_admin_endpoint() -> str:
    """The admin endpoint (``reload``; every client's regions): ``$ADAPTD_ADMIN_ENDPOINT``, else the
    daemon's default admin socket, which only the daemon's user (and root) may connect to."""
    return os.environ.get(ADMIN_ENDPOINT_ENV) or f"ipc://{default_runtime_dir() / ADMIN_SOCKET_NAME}"
