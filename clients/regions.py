"""Shared-memory regions on the client's side (PROTOCOL.md §11).

Contract
--------
* Lifecycle: a :class:`Region` is made (mapped read-write here) once the daemon has allocated it
  (``register_region``) and unmapped by :meth:`Region.close` (the clients call it when the region
  is unregistered or the client closes). Views made by :meth:`Region.ndarray` must not be used
  after that. :class:`ShmTensor` names a tensor by region and offset instead of carrying it.
* :func:`region_tensor_header` and :func:`outputs_ref` turn arrays and ``outputs_to`` arguments
  into the protocol's region references; no I/O beyond the mapping itself.
* Threads: a Region may be read and written from any thread (it is memory); closing it while
  another thread uses a view is the caller's race to avoid.
* Units: sizes and offsets in bytes.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adaptd.wire import protocol as p


class Region:
    """A shared-memory region the daemon allocated, mapped read-write in this process.

    ``name`` is what requests cite; ``size`` its bytes. :meth:`ndarray` gives writable numpy views
    of it. Made by :meth:`Client.register_region`; ended by :meth:`Client.unregister_region`
    (which also unmaps it here: views made earlier must not be used after that)."""

    def __init__(self, name: str, size: int, path: str) -> None:
        self.name = name
        self.size = int(size)
        self.path = path
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except PermissionError:
            raise PermissionError(f"cannot open {path}: this user may not map the daemon's shared memory "
                                  "(regions have the request socket's owner, group and mode: join its group)") from None
        try:
            self._mm: mmap.mmap | None = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.bytes = np.frombuffer(self._mm, dtype=np.uint8)      # the whole region, writable
        self.address = int(self.bytes.ctypes.data)

    @property
    def closed(self) -> bool:
        return self._mm is None

    def ndarray(self, shape: Any, dtype: Any = np.float32, offset: int = 0) -> np.ndarray:
        """A writable C-contiguous view of ``shape`` x ``dtype`` at ``offset`` bytes."""
        if self._mm is None:
            raise RuntimeError(f"region {self.name} is closed")
        dtype = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(shape, dtype=np.int64))
        if offset < 0 or offset + count * dtype.itemsize > self.size:
            raise ValueError(f"{count * dtype.itemsize} bytes at offset {offset} do not fit region {self.name} "
                             f"of {self.size} bytes")
        return np.frombuffer(self._mm, dtype=dtype, count=count, offset=offset).reshape(shape)

    def offset_of(self, array: np.ndarray) -> int | None:
        """The array's byte offset in this region, if all its bytes lie inside it; else None."""
        if self._mm is None:
            return None
        start = array.__array_interface__["data"][0]
        if self.address <= start and start + array.nbytes <= self.address + self.size:
            return start - self.address
        return None

    def close(self) -> None:
        """Unmap here (the daemon's region is ended by ``unregister_region``)."""
        mm, self._mm = self._mm, None
        self.bytes = np.empty(0, np.uint8)
        if mm is not None:
            try:
                mm.close()
            except BufferError:   # views are still alive: unmapped when the last one goes
                pass

    def __repr__(self) -> str:
        return f"Region({self.name!r}, size={self.size}{', closed' if self.closed else ''})"


@dataclass(frozen=True)
class ShmTensor:
    """A tensor named by region and offset instead of carried as bytes (PROTOCOL.md §11)."""

    region: Region | str
    offset: int
    dtype: Any
    shape: tuple[int, ...]

    @property
    def region_name(self) -> str:
        return self.region if isinstance(self.region, str) else self.region.name


def region_tensor_header(array: np.ndarray, regions: Sequence[Region]) -> dict[str, Any] | None:
    """The §11 header for an array whose bytes lie in a registered region, else None."""
    # DTYPE_NAMES holds the protocol's dtypes in native (little-endian) byte order only
    if not array.flags.c_contiguous or array.dtype not in p.DTYPE_NAMES or array.nbytes == 0:
        return None
    for region in regions:
        offset = region.offset_of(array)
        if offset is not None:
            return p.shm_tensor_header(array.dtype, array.shape, region.name, offset)
    return None


def outputs_ref(outputs_to: Any) -> p.ShmRef | None:
    """``outputs_to``: None, a Region (offset 0), (Region or name, offset), or a ShmTensor."""
    if outputs_to is None:
        return None
    if isinstance(outputs_to, Region):
        return p.ShmRef(outputs_to.name, 0)
    if isinstance(outputs_to, ShmTensor):
        return p.ShmRef(outputs_to.region_name, int(outputs_to.offset))
    region, offset = outputs_to
    return p.ShmRef(region if isinstance(region, str) else region.name, int(offset))
