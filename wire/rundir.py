"""Where the daemon's sockets live, by one rule for the daemon and its clients, and who may own it.

Contract
--------
* The daemon's runtime directory: ``$RUNTIME_DIRECTORY`` (systemd's ``RuntimeDirectory=``, by
  default ``/run/adaptd``); run by hand, ``$XDG_RUNTIME_DIR/adaptd``, else ``/tmp/adaptd-<uid>``.
  A client looks in ``/run/adaptd`` when the system service's socket is there, else where a
  daemon run by the same user would be.
* :func:`ensure_daemon_dir` creates the directory (mode 0750) or checks an existing one: it must be
  a real directory (not a link) owned by the daemon's user and writable by nobody else. Otherwise
  :class:`RuntimeDirError` (one line): a directory another user made first (``/tmp`` is shared)
  would let that user replace the daemon's sockets and answer its clients.
* :func:`check_client_dir` is the client's side of the same check for the shared ``/tmp``
  fallback: the directory must belong to the user whose uid it is named after.
* Pure functions of the environment and the file system; safe from any thread.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

SYSTEM_RUNTIME_DIR = Path("/run/adaptd")
SOCKET_NAME = "adaptd.sock"
LOCAL_SOCKET_NAME = "adaptd-local.sock"   # the local stream (unix://, PROTOCOL.md §2.3)
STREAM_SOCKET_NAME = "adaptd-selections.sock"
ADMIN_SOCKET_NAME = "adaptd-admin.sock"


class RuntimeDirError(RuntimeError):
    """A runtime directory the daemon or a client must not trust (one line)."""


def hand_run_dir() -> Path:
    """Where a daemon run by hand (not by systemd) keeps its sockets."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "adaptd"
    return Path(f"/tmp/adaptd-{os.getuid()}")


def daemon_runtime_dir() -> Path:
    value = os.environ.get("RUNTIME_DIRECTORY")
    if value:
        return Path(value.split(":")[0])
    return hand_run_dir()


def client_runtime_dir() -> Path:
    if (SYSTEM_RUNTIME_DIR / SOCKET_NAME).exists():
        return SYSTEM_RUNTIME_DIR
    return hand_run_dir()


def ensure_daemon_dir(path: Path) -> None:
    """Create the runtime directory (0750), or check that an existing one is this user's own."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o750)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RuntimeDirError(f"cannot create the runtime directory {path}: {exc.strerror}") from None
    _check_owned(path, os.geteuid(), "the daemon's user")


def check_client_dir(path: Path) -> None:
    """Refuse a ``/tmp/adaptd-<uid>`` that is not that user's (see the module contract)."""
    path = Path(path)
    if path.parent != Path("/tmp") or not path.name.startswith("adaptd-"):
        return
    try:
        uid = int(path.name[len("adaptd-"):])
    except ValueError:
        return
    if path.exists():
        _check_owned(path, uid, f"uid {uid}")


def _check_owned(path: Path, uid: int, whose: str) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"runtime directory {path} is not a directory (a link or a file): refusing it")
    if st.st_uid != uid:
        raise RuntimeDirError(f"runtime directory {path} belongs to uid {st.st_uid}, not {whose}: refusing it "
                              "(another user may have made it to stand in for the daemon); remove it or choose "
                              "another runtime_dir")
    if st.st_mode & 0o022:
        raise RuntimeDirError(f"runtime directory {path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}): "
                              "refusing it; make it 0750 or 0700")
