"""Shared-memory tensor regions (PROTOCOL.md §11): the daemon's table and the worker's mappings.

Contract
--------
* The daemon allocates, the client maps. :meth:`RegionTable.create` makes a POSIX shared-memory
  file ``/dev/shm/adaptd-<daemon pid>-<32 hex>`` (``O_EXCL``, the request socket's owner, group
  and mode, execute bits dropped), reserves its pages with ``posix_fallocate`` (so no process
  touching it can get SIGBUS for want of tmpfs space) and returns its name. The daemon process
  never maps a region and never reads or writes tensor bytes: it only checks a request's
  ``offset + nbytes`` against the size it recorded.
* Ownership: a region belongs to the peer (the client connection, or with authentication the
  client's key: see :mod:`adaptd.daemon.peers`) that registered it. Every other peer is told it
  does not exist: it cannot list it, name it in a request, or unregister it; only the admin
  endpoint sees and ends every region (``peer=None`` below). Each peer may hold at most
  ``max_regions_per_peer`` regions and ``max_bytes_per_peer`` bytes, so one client cannot take the
  daemon's whole allowance.
* Lifetime: a region lives until the first of ``shm_unregister``, the exit of the process that
  registered it (``owner_pid``, watched by :class:`~adaptd.daemon.procwatch.ProcessWatch`:
  :meth:`RegionTable.sweep_owners`), and the daemon's exit (:meth:`RegionTable.close_all`). Ending
  a region stops new requests naming it at once; its file is unlinked, and the workers told to
  unmap it, when the last request using it has finished (:meth:`RegionTable.release`). A daemon
  killed outright leaves its files behind; the next daemon's :meth:`RegionTable.sweep_stale`
  removes the files of every daemon pid that is no longer alive.
* Workers (:class:`WorkerMaps`) map a region the first time a job names it, keep the mapping, and
  unmap it when the daemon says the region has ended; a restarted worker maps afresh. The numpy
  views a worker makes over a mapping are kept with it (at most ``VIEWS_PER_REGION`` per region,
  by offset, dtype and shape) and dropped before it is unmapped; a job's input views are used
  only during its execution.
* Threads: not thread-safe. A RegionTable is the daemon's main thread's; a WorkerMaps is one
  executor's: a worker process's only thread, or a placement's (its thread, or the main thread
  running a job inline under the placement's lock). Sizes and offsets are bytes.
"""

from __future__ import annotations

import mmap
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adaptd.daemon.procwatch import ProcessWatch

SHM_DIR = Path("/dev/shm")
PREFIX = "adaptd-"
NAME_RE = re.compile(r"^adaptd-(\d+)-[0-9a-f]{32}$")
MAX_REGION_BYTES = 1 << 30         # one region
MAX_TOTAL_BYTES = 4 << 30          # all regions of one daemon
MAX_REGIONS = 256
MAX_REGIONS_PER_PEER = 16
MAX_BYTES_PER_PEER = 1 << 30


class RegionError(Exception):
    """A region request the daemon refuses: ``kind`` is "unknown", "bounds" or "limit"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class Region:
    name: str
    size: int
    path: Path
    owner_pid: int | None
    owner: ProcessWatch | None   # watches owner_pid's process
    created_at: float
    peer: bytes | None = None   # who registered it (None: the admin endpoint)
    users: int = 0              # requests queued or running that name it
    ended: bool = False         # unregistered (or owner gone): no new requests; unlink when users == 0

    def describe(self) -> dict[str, Any]:
        return {"region": self.name, "size": self.size, "owner_pid": self.owner_pid, "in_use": self.users,
                "ended": self.ended, "age_s": time.time() - self.created_at}


class RegionTable:
    """The daemon's registered regions (see the module contract)."""

    def __init__(self, mode: int = 0o660, directory: Path = SHM_DIR, *, max_region_bytes: int = MAX_REGION_BYTES,
                 max_total_bytes: int = MAX_TOTAL_BYTES, max_regions: int = MAX_REGIONS,
                 max_regions_per_peer: int = MAX_REGIONS_PER_PEER,
                 max_bytes_per_peer: int = MAX_BYTES_PER_PEER) -> None:
        self.mode = mode & 0o666
        self.directory = Path(directory)
        self.max_region_bytes = max_region_bytes
        self.max_total_bytes = max_total_bytes
        self.max_regions = max_regions
        self.max_regions_per_peer = max_regions_per_peer
        self.max_bytes_per_peer = max_bytes_per_peer
        self.regions: dict[str, Region] = {}

    # --- lifecycle ---------------------------------------------------------------------------
    def sweep_stale(self) -> list[str]:
        """Remove the region files of daemons that are no longer running (start-up)."""
        removed = []
        try:
            names = os.listdir(self.directory)
        except OSError:
            return removed
        for name in names:
            m = NAME_RE.match(name)
            if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
                continue
            try:
                os.unlink(self.directory / name)
                removed.append(name)
            except OSError:   # another user's file, or gone meanwhile
                pass
        return removed

    def close_all(self) -> None:
        for region in list(self.regions.values()):
            self._unlink(region)
        self.regions.clear()

    # --- control messages --------------------------------------------------------------------
    def create(self, size: int, owner_pid: int | None, peer: bytes | None = None) -> Region:
        if not 0 < size <= self.max_region_bytes:
            raise RegionError("limit", f"size must be within 1..{self.max_region_bytes} bytes; got {size}")
        live = [r for r in self.regions.values()]
        if len(live) >= self.max_regions:
            raise RegionError("limit", f"{len(live)} regions are registered; the limit is {self.max_regions}")
        total = sum(r.size for r in live)
        if total + size > self.max_total_bytes:
            raise RegionError("limit", f"{total} bytes are registered; {size} more would pass the limit of "
                                       f"{self.max_total_bytes}")
        if peer is not None:
            mine = [r for r in live if r.peer == peer]
            if len(mine) >= self.max_regions_per_peer:
                raise RegionError("limit", f"this client holds {len(mine)} regions; the limit per client is "
                                           f"{self.max_regions_per_peer}")
            held = sum(r.size for r in mine)
            if held + size > self.max_bytes_per_peer:
                raise RegionError("limit", f"this client holds {held} bytes of regions; {size} more would pass the "
                                           f"limit per client of {self.max_bytes_per_peer}")
        owner = None
        if owner_pid is not None:
            try:
                owner = ProcessWatch(owner_pid)
            except OSError as exc:
                raise RegionError("limit", f"owner_pid {owner_pid} is not a running process here ({exc.strerror})") from None
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(16)}"
        path = self.directory / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if owner is not None:
                owner.close()
            raise RegionError("limit", f"cannot create {path}: {exc.strerror}") from None
        try:
            os.fchmod(fd, self.mode)          # the umask is not applied by fchmod
            os.posix_fallocate(fd, 0, size)   # reserve tmpfs pages now: no SIGBUS later
        except OSError as exc:
            os.close(fd)
            os.unlink(path)
            if owner is not None:
                owner.close()
            raise RegionError("limit", f"cannot reserve {size} bytes of shared memory: {exc.strerror}") from None
        os.close(fd)
        region = Region(name, size, path, owner_pid, owner, time.time(), peer)
        self.regions[name] = region
        return region

    def lookup(self, name: str, peer: bytes | None = None) -> Region:
        """The live region ``name`` as ``peer`` may see it (None: the admin, who sees all)."""
        region = self.regions.get(name)
        if region is None or region.ended or (peer is not None and region.peer != peer):
            raise RegionError("unknown", f"no region {name!r} is registered (unregistered, its owner exited, "
                                         "or the daemon restarted: register a new one)")
        return region

    def check(self, name: str, offset: int, nbytes: int, peer: bytes | None = None) -> Region:
        """The region, if ``peer`` may use it and ``[offset, offset + nbytes)`` lies inside it;
        else RegionError."""
        region = self.lookup(name, peer)
        if offset < 0 or offset + nbytes > region.size:
            raise RegionError("bounds", f"bytes [{offset}, {offset + nbytes}) are outside region {name} "
                                        f"of {region.size} bytes")
        return region

    def end(self, name: str, peer: bytes | None = None) -> list[str]:
        """Unregister: refuse new requests now; returns the names unlinked now (tell the workers)."""
        region = self.lookup(name, peer)
        region.ended = True
        return self._maybe_unlink(region)

    def acquire(self, names: Iterable[str]) -> None:
        for name in names:
            self.regions[name].users += 1

    def release(self, names: Iterable[str]) -> list[str]:
        gone: list[str] = []
        for name in names:
            region = self.regions.get(name)
            if region is not None:
                region.users -= 1
                gone += self._maybe_unlink(region)
        return gone

    def sweep_owners(self) -> list[str]:
        """End the regions whose registering process has exited; returns the names unlinked now."""
        gone: list[str] = []
        for region in list(self.regions.values()):
            if region.owner is not None and not region.ended and region.owner.exited():
                region.ended = True
                gone += self._maybe_unlink(region)
        return gone

    def owned(self) -> bool:
        return any(r.owner is not None and not r.ended for r in self.regions.values())

    def describe(self, peer: bytes | None = None) -> list[dict[str, Any]]:
        """The regions ``peer`` may see (None: all)."""
        return [r.describe() for r in self.regions.values() if peer is None or r.peer == peer]

    # --- internals -----------------------------------------------------------------------------
    def _maybe_unlink(self, region: Region) -> list[str]:
        if region.ended and region.users <= 0:
            self._unlink(region)
            del self.regions[region.name]
            return [region.name]
        return []

    @staticmethod
    def _unlink(region: Region) -> None:
        try:
            os.unlink(region.path)
        except FileNotFoundError:
            pass
        if region.owner is not None:
            region.owner.close()
            region.owner = None


VIEWS_PER_REGION = 16   # views kept per mapped region (more: the region's are dropped and made afresh)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerMaps:
    """A worker's mappings of regions, by name, and the views it made over them (see the module contract)."""

    def __init__(self, directory: Path = SHM_DIR) -> None:
        self.directory = Path(directory)
        self.maps: dict[str, mmap.mmap] = {}
        self._views: dict[str, dict[tuple[Any, Any, tuple[int, ...]], np.ndarray]] = {}

    def get(self, name: str, size: int) -> mmap.mmap:
        mm = self.maps.get(name)
        if mm is None:
            if NAME_RE.match(name) is None:
                raise ValueError(f"not a region name: {name!r}")
            fd = os.open(self.directory / name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if os.fstat(fd).st_size < size:
                    raise ValueError(f"region {name} is smaller than its registered {size} bytes")
                mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
            self.maps[name] = mm
        return mm

    def view(self, ref: dict[str, Any], dtype: Any, shape: Any) -> Any:
        """A numpy view of a tensor in a region: ``ref`` is ``{region, offset, size}``. The view is
        kept, and given again for the same offset, dtype and shape until the region is unmapped
        or more than ``VIEWS_PER_REGION`` are kept for it (then they are made afresh): a steady
        client names the same tensor in each request, and a look-up saves numpy's dtype and
        buffer calls, the path's largest leaf run cold."""
        name = ref["region"]
        key = (ref["offset"], dtype, tuple(shape))
        kept = self._views.get(name)
        if kept is not None:
            found = kept.get(key)
            if found is not None:
                return found
        np_dtype = np.dtype(dtype)
        count = 1
        for d in shape:
            count *= int(d)
        mm = self.get(name, int(ref["size"]))
        offset = int(ref["offset"])
        if offset < 0 or offset + count * np_dtype.itemsize > len(mm):
            raise ValueError(f"bytes [{offset}, {offset + count * np_dtype.itemsize}) are outside region "
                             f"{name} of {len(mm)} bytes")
        # (frombuffer holds the mapping's buffer while the view lives, so an unmap meanwhile is
        # refused rather than leaving the view on unmapped memory; np.ndarray over it would not)
        found = np.frombuffer(mm, dtype=np_dtype, count=count, offset=offset).reshape(shape)
        if kept is None or len(kept) >= VIEWS_PER_REGION:
            kept = self._views[name] = {}
        kept[key] = found
        return found

    def unmap(self, names: Iterable[str]) -> None:
        for name in names:
            self._views.pop(name, None)   # (first: a view holds its mapping)
            mm = self.maps.pop(name, None)
            if mm is not None:
                try:
                    mm.close()
                except BufferError:   # a view still alive (should not happen): unmapped when it dies
                    pass

    def close(self) -> None:
        self.unmap(list(self.maps))
