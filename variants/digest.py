"""Content digests of built variants: what the manifest records and what loading checks.

Contract
--------
* :func:`sha256_path` is the manifest's ``sha256`` of a variant: of the file's bytes, or for a
  directory (a SavedModel) of its files' relative paths and contents in sorted order.
* :func:`check_variant` compares a variant's file with its manifest record and returns None when
  they match, else one line naming the file: the daemon refuses such a variant (at start, at
  reload and when a worker loads it), so a file that was truncated, corrupted or replaced after
  the build is never served. Results for unchanged files (same inode, size and modification
  time) are remembered, so a reload re-reads only what changed.
* Pure functions of the files; the memo is a process-wide dict guarded by a lock (safe from any
  thread).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

_CHUNK = 1 << 20
_memo: dict[tuple[str, tuple[int, int, int]], str] = {}
_memo_lock = threading.Lock()


def sha256_path(path: Path) -> str:
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
    return h.hexdigest()


def _signature(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime) of a file, or for a directory summed over its files."""
    if path.is_file():
        st = path.stat()
        return (st.st_ino, st.st_size, st.st_mtime_ns)
    ino = size = mtime = 0
    for f in sorted(path.rglob("*")):
        if f.is_file():
            st = f.stat()
            ino, size, mtime = ino ^ st.st_ino, size + st.st_size, max(mtime, st.st_mtime_ns)
    return (ino, size, mtime)


def check_variant(version_dir: Path, relative_path: str, expected_sha256: str) -> str | None:
    """None when ``version_dir / relative_path`` has the recorded digest, else why not."""
    path = Path(version_dir) / relative_path
    try:
        key = (os.fspath(path.resolve()), _signature(path))
    except OSError as exc:
        return f"{path}: cannot read ({exc.strerror or exc})"
    if not path.exists():
        return f"{path}: the variant's file is missing"
    with _memo_lock:
        digest = _memo.get(key)
    if digest is None:
        try:
            digest = sha256_path(path)
        except OSError as exc:
            return f"{path}: cannot read ({exc.strerror or exc})"
        with _memo_lock:
            _memo[key] = digest
    if digest != expected_sha256:
        return (f"{path}: content does not match the manifest's sha256 (corrupt or replaced after the build; "
                "rebuild it)")
    return None
