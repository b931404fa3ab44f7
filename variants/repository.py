"""The model repository on disk: listing entries and publishing new ones atomically.

Layout
------
``REPO/<model>/<version>/manifest.json`` plus the files the manifest names. Model names are
``[A-Za-z0-9][A-Za-z0-9._-]*``; versions are decimal integers ("1", "2", ...), newest = largest.
Anything else under ``REPO`` (names starting with ``.``, such as ``.tmp-*`` build directories,
and version directories without a manifest) is ignored by the readers here.

Contract
--------
* Readers (``list_models``, ``list_versions``, ``resolve``) never import TensorFlow and never
  write. They see a version either completely or not at all, because writers publish with
  one ``os.rename`` of a finished directory.
* ``staging(repo, model, version)`` is the only writer: it yields an empty directory
  ``REPO/.tmp-<model>-<random>/`` on the same filesystem; when the ``with`` body returns, every
  file in it is fsynced, the directory is renamed to ``REPO/<model>/<version>`` and the parent
  directories are fsynced. If the body raises (or is interrupted), the staging directory is
  removed and nothing is published. An existing version is never overwritten
  (``RepositoryError``). While a build runs, its process holds an exclusive ``flock`` on the
  staging directory; the kernel drops it when that process exits, however it exits. A build
  killed with SIGKILL (or a power cut) leaves its ``.tmp-*`` directory behind: readers ignore it,
  and ``remove_stale_staging`` deletes every one whose lock is free, which ``staging`` does
  before each build, so leftovers do not pile up. A directory in use is never removed. The
  lock assumes a local filesystem (``flock`` on a read-only descriptor; NFS would want a
  writable one).
* Thread/process safety: concurrent readers are safe. Two writers publishing the same
  model/version race; the loser gets ``RepositoryError`` and its staging dir is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from .manifest import MANIFEST_FILE, Manifest, load_manifest

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STAGING_PREFIX = ".tmp-"
# A staging directory is locked a moment after it is made; one younger than this is left alone,
# whether or not it is locked yet.
STAGING_GRACE_S = 10.0
_DIR_LOCK_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC   # a directory opened to flock it

log = logging.getLogger("adaptd.repository")


class RepositoryError(Exception):
    """The repository path is unusable, or a version cannot be published (one-line message)."""


def check_model_name(name: str) -> str:
    if not MODEL_NAME_RE.match(name or ""):
        raise RepositoryError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def check_repository(repo: Path, create: bool = False) -> Path:
    """Return ``repo`` if it is (or, with ``create``, can be made) a directory."""
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise RepositoryError(f"repository path {repo} is a file, not a directory")
    if not repo.exists():
        if not create:
            raise RepositoryError(f"repository {repo} does not exist")
        for parent in repo.parents:
            if parent.exists() and not parent.is_dir():
                raise RepositoryError(f"repository path {repo}: {parent} is a file, not a directory")
        try:
            repo.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RepositoryError(f"cannot create repository {repo}: {exc.strerror or exc}") from exc
    return repo


def list_models(repo: Path) -> list[str]:
    """Names of models with at least one published version, sorted."""
    repo = Path(repo)
    if not repo.is_dir():
        return []
    return sorted(
        p.name for p in repo.iterdir()
        if p.is_dir() and MODEL_NAME_RE.match(p.name) and list_versions(repo, p.name)
    )


def list_versions(repo: Path, model: str) -> list[str]:
    """Published versions of ``model`` (directories with a manifest), oldest first."""
    d = Path(repo) / model
    if not d.is_dir():
        return []
    versions = [p.name for p in d.iterdir()
                if p.name.isdigit() and (p / MANIFEST_FILE).is_file()]
    return sorted(versions, key=int)


def version_dir(repo: Path, model: str, version: str | None = None) -> Path:
    """The directory of ``model``'s ``version`` (default: newest); ``RepositoryError`` if absent."""
    versions = list_versions(repo, model)
    if not versions:
        raise RepositoryError(f"model {model!r} not found in repository {repo}")
    if version is None:
        version = versions[-1]
    if str(version) not in versions:
        raise RepositoryError(f"model {model!r} has no version {version} (have {', '.join(versions)})")
    return Path(repo) / model / str(version)


def resolve(repo: Path, model: str, version: str | None = None) -> tuple[Path, Manifest]:
    """``(version_dir, manifest)`` of ``model`` at ``version`` (default: newest)."""
    d = version_dir(repo, model, version)
    return d, load_manifest(d)


def next_version(repo: Path, model: str) -> str:
    """One more than the newest version present (counting unfinished-looking dirs too), else "1"."""
    d = Path(repo) / model
    used = [int(p.name) for p in d.iterdir() if p.name.isdigit()] if d.is_dir() else []
    return str(max(used, default=0) + 1)


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (directories after their contents)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for f in filenames:
            _fsync_path(Path(dirpath) / f)
        _fsync_path(Path(dirpath))


@contextlib.contextmanager
def staging(repo: Path, model: str, version: str) -> Iterator[Path]:
    """Yield an empty staging dir; publish it as ``REPO/model/version`` if the body succeeds."""
    repo = check_repository(repo, create=True)
    check_model_name(model)
    if not str(version).isdigit():
        raise RepositoryError(f"invalid version {version!r}: expected a decimal integer")
    final = repo / model / str(version)
    if final.exists():
        raise RepositoryError(f"{final} already exists; versions are never overwritten")
    for stale in remove_stale_staging(repo):
        log.info("removed %s, left by a build that did not finish", stale)
    tmp = repo / f"{STAGING_PREFIX}{model}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
    except OSError as exc:
        raise RepositoryError(f"cannot write to repository {repo}: {exc.strerror or exc}") from exc
    lock_fd = None
    try:
        lock_fd = os.open(tmp, _DIR_LOCK_OPEN)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)   # held until this build ends (see the contract)
    except BaseException as exc:
        if lock_fd is not None:
            os.close(lock_fd)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise RepositoryError(f"cannot lock staging dir {tmp}: {exc.strerror or exc}") from exc
        raise
    try:
        yield tmp
        if not (tmp / MANIFEST_FILE).is_file():
            raise RepositoryError(f"internal: staging dir {tmp} has no {MANIFEST_FILE}")
        try:
            fsync_tree(tmp)
            (repo / model).mkdir(exist_ok=True)
            if final.exists():
                raise RepositoryError(f"{final} appeared during the build; versions are never overwritten")
            os.rename(tmp, final)
            _fsync_path(repo / model)
            _fsync_path(repo)
        except OSError as exc:
            raise RepositoryError(f"cannot publish {final}: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        os.close(lock_fd)


def remove_stale_staging(repo: Path, grace_s: float = STAGING_GRACE_S) -> list[Path]:
    """Delete the ``.tmp-*`` staging dirs no build holds any more; return what was removed.

    Safe while other builds run against ``repo``: a directory whose lock is held, or that was
    modified less than ``grace_s`` ago (a build that has made it but not yet locked it), is kept.
    """
    removed = []
    repo = Path(repo)
    if not repo.is_dir():
        return removed
    now = time.time()
    for p in repo.iterdir():
        if not p.name.startswith(STAGING_PREFIX):
            continue
        try:
            fd = os.open(p, _DIR_LOCK_OPEN)
        except OSError:   # not a directory, or gone already
            continue
        try:
            if now - os.fstat(fd).st_mtime < grace_s:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:   # a running build's
                continue
            shutil.rmtree(p, ignore_errors=True)
            if not p.exists():
                removed.append(p)
        finally:
            os.close(fd)
    return removed
