"""A bounded uniform sample of the inputs on which a variant disagreed with its reference.

Contract
--------
* One :class:`DisagreementReservoir` per model version (its inputs share one shape); the daemon
  owns it and offers it every shadow comparison that disagreed. It keeps a uniform random
  sample of everything offered (Algorithm R, seeded), at most ``max_items`` inputs and at most
  ``max_bytes`` bytes of them: the capacity in items is ``min(max_items, max_bytes //
  bytes per input)``, fixed by the first input offered.
* Thread safety: every public method takes the reservoir's lock; ``offer`` copies an input only
  when it is kept (a rejected offer costs one random draw), so callers may pass views into
  buffers they reuse (a worker's output, a shared-memory region) and ``export`` writes a
  consistent copy while offers continue.
* Inputs are one tensor per comparison (the one-input models ``adaptd variants build`` makes);
  a model of several inputs is a later extension. Each row of a batch is offered on its own
  (``offer`` takes one input without the batch axis, ``offer_batch`` a batch). Inputs must be
  floating point, in the model's float domain: a request that sent a variant's own integer
  dtype is dequantized (``adaptd.variants.runtime.dequantize``) before it is offered. An input
  of another shape than the first is refused (``ValueError``), never stored.
* ``export(path)`` writes an ``.npz`` that ``adaptd variants build --data`` accepts
  (``adaptd.variants.dataset.load_dataset``): ``x_val`` (float32, the inputs) and ``y_val``
  (int64, **pseudo-labels**: the reference variant's top-1 on each input, not true labels),
  plus ``label_source`` (a string naming that), ``reference``, ``model``, ``version``,
  ``served_variant`` and ``served_top1`` per row, which the loader ignores. Used as
  ``--data``, the build calibrates the full-integer variants on these inputs (the
  representative data is the training split when the file has one, else ``x_val``), and the
  accuracies it records are agreement with the reference on them, not accuracy. The file is
  written to a temporary name and renamed into place: a failed export leaves nothing.
* Units: bytes; ``t_s`` in seconds, any origin (kept for the record only).
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LABEL_SOURCE = "pseudo-labels: top-1 of the reference variant, not ground truth"


@dataclass(frozen=True)
class ReservoirItem:
    x: np.ndarray            # float32, the input without the batch axis (owned by the reservoir)
    reference_top1: int
    served_variant: str
    served_top1: int
    t_s: float


class DisagreementReservoir:
    """Algorithm R over disagreeing inputs, bounded in items and bytes (module contract)."""

    def __init__(self, model: str, version: str, reference: str, *, max_items: int = 256,
                 max_bytes: int = 16 << 20, seed: int = 0) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError(f"max_items and max_bytes must be >= 1, got {max_items} and {max_bytes}")
        self.model, self.version, self.reference = model, str(version), reference
        self.max_items, self.max_bytes = int(max_items), int(max_bytes)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._items: list[ReservoirItem] = []
        self._shape: tuple[int, ...] | None = None
        self._capacity = 0
        self.offered = 0            # inputs offered of the accepted shape (Algorithm R's n)

    @property
    def capacity(self) -> int:
        """Inputs it can hold (0 until the first offer fixes the input size)."""
        with self._lock:
            return self._capacity

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(it.x.nbytes for it in self._items)

    def offer(self, x: np.ndarray, *, reference_top1: int, served_variant: str, served_top1: int,
              t_s: float) -> bool:
        """Offer one input (no batch axis); returns whether it was kept."""
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{self.model}: inputs must be floating point (dequantize first), got {x.dtype}")
        with self._lock:
            if self._shape is None:
                row_bytes = int(np.prod(x.shape, dtype=np.int64)) * 4   # kept as float32
                self._capacity = min(self.max_items, self.max_bytes // max(1, row_bytes))
                self._shape = tuple(x.shape)
            elif tuple(x.shape) != self._shape:
                raise ValueError(f"{self.model}: input shape {tuple(x.shape)} differs from the "
                                 f"reservoir's {self._shape}")
            self.offered += 1
            if self._capacity == 0:
                return False
            if len(self._items) < self._capacity:
                slot = len(self._items)
            else:
                slot = self._rng.randrange(self.offered)
                if slot >= self._capacity:
                    return False
            item = ReservoirItem(np.array(x, dtype=np.float32, copy=True), int(reference_top1),
                                 str(served_variant), int(served_top1), float(t_s))
            if slot == len(self._items):
                self._items.append(item)
            else:
                self._items[slot] = item
            return True

    def offer_batch(self, x: np.ndarray, *, reference_top1: np.ndarray, served_variant: str,
                    served_top1: np.ndarray, t_s: float, disagreed: np.ndarray | None = None) -> int:
        """Offer the rows of a batch (only those where ``disagreed`` is true, when given);
        returns how many were kept."""
        x = np.asarray(x)
        ref, served = np.asarray(reference_top1).reshape(-1), np.asarray(served_top1).reshape(-1)
        if len(ref) != len(x) or len(served) != len(x):
            raise ValueError(f"{len(x)} inputs but {len(ref)} reference and {len(served)} served labels")
        rows = range(len(x)) if disagreed is None else np.flatnonzero(np.asarray(disagreed).reshape(-1))
        return sum(self.offer(x[i], reference_top1=int(ref[i]), served_variant=served_variant,
                              served_top1=int(served[i]), t_s=t_s) for i in rows)

    def items(self) -> list[ReservoirItem]:
        """A snapshot of the kept items (the arrays are the reservoir's: do not modify them)."""
        with self._lock:
            return list(self._items)

    def export(self, path: Path) -> int:
        """Write the sample as an ``.npz`` (module contract); returns the number of inputs.
        Raises ``ValueError`` when the reservoir is empty (a dataset needs one input)."""
        items = self.items()
        if not items:
            raise ValueError(f"{self.model}: no disagreeing inputs kept yet; nothing to export")
        path = Path(path)
        arrays = {
            "x_val": np.stack([it.x for it in items]).astype(np.float32),
            "y_val": np.array([it.reference_top1 for it in items], dtype=np.int64),
            "label_source": np.array(LABEL_SOURCE),
            "reference": np.array(self.reference),
            "model": np.array(self.model),
            "version": np.array(self.version),
            "served_variant": np.array([it.served_variant for it in items]),
            "served_top1": np.array([it.served_top1 for it in items], dtype=np.int64),
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent or Path("."))
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return len(items)
