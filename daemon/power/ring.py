"""A single-writer, many-reader ring buffer of power samples in POSIX shared memory.

Layout (one ``multiprocessing.shared_memory`` block, native byte order):
  header   int64[16]          see the H_* indices below
  t_ns     int64[capacity]    CLOCK_MONOTONIC timestamp of each sample (ns)
  energy   float64[capacity, n_rails]   cumulative energy per rail since the sampler started (mJ)
  power    float64[capacity, n_rails]   power per rail at the sample (mW)

Sample k (k = 0, 1, ...) lives in slot ``k % capacity``. ``header[H_SEQ]`` is the number of
samples written.

Contract
--------
- Exactly one writer (the sampler process) calls ``append``; it writes the slot, then publishes it
  by incrementing ``H_SEQ`` (an aligned 8-byte store, atomic on x86-64 and AArch64).
- Readers (``samples_between``) never lock. A read copies the wanted samples, then re-reads
  ``H_SEQ`` and retries if the writer may have overwritten them meanwhile (a seqlock on the whole
  ring). On CPUs without total store order (AArch64, i.e. the Jetson boards) stores may become
  visible out of order, so there readers treat the newest sample as unpublished until the next one
  arrives (``PUBLISH_LAG`` = 1 sample, i.e. one sample period of extra delay).
- The creator owns the block: ``close(unlink=True)`` removes it; attachers only ``close()``.
- Time is ns (``int``), energy mJ, power mW.
"""
from __future__ import annotations

import platform
import secrets
from multiprocessing import shared_memory

import numpy as np

H_SEQ, H_NRAILS, H_CAP, H_READY, H_STOP, H_CPU_NS, H_WALL_NS, H_ERRORS, H_PID, H_FAILED = range(10)
H_START_NS, H_HZ_MILLI, H_STAT_SAMPLES = 10, 11, 12
HEADER_LEN = 16
PUBLISH_LAG = 0 if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686") else 1


class SampleRing:
    def __init__(self, shm: shared_memory.SharedMemory, n_rails: int, capacity: int, owner: bool) -> None:
        self.shm = shm
        self.name = shm.name
        self.n_rails = n_rails
        self.capacity = capacity
        self._owner = owner
        buf = shm.buf
        off = 0
        self.header = np.ndarray((HEADER_LEN,), np.int64, buf, off)
        off += 8 * HEADER_LEN
        self.t_ns = np.ndarray((capacity,), np.int64, buf, off)
        off += 8 * capacity
        self.energy_mj = np.ndarray((capacity, n_rails), np.float64, buf, off)
        off += 8 * capacity * n_rails
        self.power_mw = np.ndarray((capacity, n_rails), np.float64, buf, off)

    @staticmethod
    def nbytes(n_rails: int, capacity: int) -> int:
        return 8 * (HEADER_LEN + capacity * (1 + 2 * n_rails))

    @classmethod
    def create(cls, n_rails: int, capacity: int) -> "SampleRing":
        name = f"adaptd-power-{secrets.token_hex(6)}"
        shm = shared_memory.SharedMemory(name=name, create=True, size=cls.nbytes(n_rails, capacity))
        ring = cls(shm, n_rails, capacity, owner=True)
        ring.header[:] = 0
        ring.header[H_NRAILS] = n_rails
        ring.header[H_CAP] = capacity
        return ring

    @classmethod
    def attach(cls, name: str, n_rails: int, capacity: int) -> "SampleRing":
        shm = shared_memory.SharedMemory(name=name, create=False)
        # Python < 3.13 registers attached blocks with this process's resource tracker, which
        # would unlink the creator's block when this process exits; the creator owns it.
        try:
            from multiprocessing import resource_tracker

            resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
        except Exception:
            pass
        ring = cls(shm, n_rails, capacity, owner=False)
        if int(ring.header[H_NRAILS]) != n_rails or int(ring.header[H_CAP]) != capacity:
            raise ValueError("shared ring layout mismatch")
        return ring

    # -- writer ---------------------------------------------------------------------------
    def append(self, t_ns: int, energy_mj: np.ndarray, power_mw: np.ndarray) -> None:
        seq = int(self.header[H_SEQ])
        slot = seq % self.capacity
        self.t_ns[slot] = t_ns
        self.energy_mj[slot] = energy_mj
        self.power_mw[slot] = power_mw
        self.header[H_SEQ] = seq + 1

    # -- readers --------------------------------------------------------------------------
    def published(self) -> int:
        """Number of samples a reader may use (``H_SEQ`` minus the publish lag)."""
        return max(int(self.header[H_SEQ]) - PUBLISH_LAG, 0)

    def latest(self) -> tuple[int, np.ndarray, np.ndarray] | None:
        """The newest published sample (t_ns, energy_mj, power_mw), or None if none yet."""
        for _ in range(8):
            n = self.published()
            if n == 0:
                return None
            slot = (n - 1) % self.capacity
            t, e, p = int(self.t_ns[slot]), self.energy_mj[slot].copy(), self.power_mw[slot].copy()
            if int(self.header[H_SEQ]) - (n - 1) < self.capacity - 1:
                return t, e, p
        return None

    def samples_between(self, t_lo_ns: int, t_hi_ns: int):
        """Copies of the published samples covering ``[t_lo_ns, t_hi_ns]``.

        Returns ``(t_ns, energy_mj, power_mw)`` arrays in time order, holding every sample inside
        the interval plus the last one at or before ``t_lo_ns`` and the first one at or after
        ``t_hi_ns`` where they exist, or None when ``t_lo_ns`` is older than the oldest sample
        still in the ring (or there are no samples).
        """
        cap = self.capacity
        for _ in range(8):
            n = self.published()
            if n == 0:
                return None
            oldest = max(n - (cap - 2), 0)  # keep clear of the slot being overwritten
            lo = self._search(oldest, n, t_lo_ns) - 1  # last sample with t <= t_lo
            if lo < oldest:
                if int(self.t_ns[oldest % cap]) > t_lo_ns:
                    return None
                lo = oldest
            hi = min(self._search(lo, n, t_hi_ns - 1) + 1, n)  # first sample with t >= t_hi, if any
            idx = np.arange(lo, hi) % cap
            t, e, p = self.t_ns[idx], self.energy_mj[idx], self.power_mw[idx]
            if int(self.header[H_SEQ]) - lo < cap - 1:  # nothing we copied was overwritten
                return t, e, p
        return None

    def _search(self, k_lo: int, k_hi: int, t_ns: int) -> int:
        """Smallest logical index k in [k_lo, k_hi) with t_ns[k] > t_ns (k_hi if none)."""
        cap = self.capacity
        while k_lo < k_hi:
            mid = (k_lo + k_hi) // 2
            if int(self.t_ns[mid % cap]) <= t_ns:
                k_lo = mid + 1
            else:
                k_hi = mid
        return k_lo

    def close(self, unlink: bool = False) -> None:
        # Drop numpy views before closing the mapping, else BufferError.
        self.header = self.t_ns = self.energy_mj = self.power_mw = None  # type: ignore[assignment]
        try:
            self.shm.close()
        finally:
            if unlink and self._owner:
                try:
                    self.shm.unlink()
                except FileNotFoundError:
                    pass
