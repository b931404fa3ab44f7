"""One execution of a variant: what a placement's executor does with a job, in any host.

Contract
--------
* :class:`VariantCache` holds the variants one executor has loaded (keyed by version directory
  and variant), loading each on first use: the file is checked against its manifest's sha256,
  then one run on zeros makes the footprint include the runtime's buffers. Not thread-safe: one
  executor (a worker process, or a placement's thread, or the daemon's main thread running
  inline while the placement's lock is held) uses it at a time.
* :func:`run_job` runs one job and returns ``(ok, header, bodies)`` as PROTOCOL-internal
  ``done``/``fail`` messages: ``done`` with ``t0_ns``, ``t1_ns`` (``time.monotonic_ns()`` around
  the interpreter's run, load excluded), ``compute_ms``, ``cpu_time_s`` (``cpu_clock`` over the
  same span: the process's in a worker process, the thread's in a thread), ``idle_since_ns``,
  ``outputs`` (tensor headers; float32; with ``shm`` when written into a region), and
  ``load_ms``/``memory_bytes`` when the run loaded its variant; ``fail`` with ``code``
  (``BAD_INPUT`` for NaN/inf input when ``reject_nonfinite``, else ``WORKER_FAILED``) and a
  one-line ``message``. A failure never raises: the executor lives on.
* NaN screening (:func:`nonfinite_input`): a worker process screens every input; a placement's
  thread (``inline_screened``) only those in a region, because the daemon's main thread screens
  the inline ones before the hand-off (:meth:`adaptd.daemon.request_path.RequestPath`), where
  the run's thread needs no lock. On a placement's thread the screen of a large input lets go
  of the interpreter lock (numpy's reduction), and taking it back behind a busy main thread cost
  440 µs per MobileNetV2 job with four callers, 6% of the placement's time.
* Shared memory: inputs in a region are numpy views (kept with the mapping by
  :class:`~adaptd.daemon.shm.WorkerMaps`), which a job holds only during its run; outputs
  written to a region go back to back from the given offset (PROTOCOL.md §11.4).
* Imports the interpreter runtime (LiteRT, or TensorFlow for a SavedModel variant) only when a
  variant is loaded.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from adaptd.daemon.shm import WorkerMaps
from adaptd.wire.protocol import DTYPES


def rss_bytes() -> int:
    """This process's resident memory in bytes (from /proc/self/statm)."""
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class VariantCache:
    """Loaded variants of this worker, keyed by (version dir, variant name)."""

    def __init__(self, threads: int, device: str | None) -> None:
        self.threads = threads
        self.device = device
        self.loaded: dict[tuple[str, str], Any] = {}
        self.memory_bytes: dict[tuple[str, str], int] = {}
        self._manifests: dict[str, Any] = {}

    def get(self, version_dir: str, variant: str) -> tuple[Any, float | None]:
        """The loaded variant and, if it was loaded now, its load time in ms."""
        key = (version_dir, variant)
        hit = self.loaded.get(key)
        if hit is not None:
            return hit, None
        from adaptd.variants.manifest import load_manifest
        from adaptd.variants.runtime import load_variant

        manifest = self._manifests.get(version_dir)
        if manifest is None:
            manifest = self._manifests[version_dir] = load_manifest(Path(version_dir))
        record = next((v for v in manifest.variants if v.name == variant), None)
        if record is None:
            raise KeyError(f"variant {variant!r} is not in {version_dir}")
        t0 = time.perf_counter()
        rss0 = rss_bytes()
        kwargs = {"device": self.device} if record.runtime == "tensorflow" and self.device else {}
        loaded = load_variant(Path(version_dir), record, num_threads=self.threads, verify=True, **kwargs)
        # One execution on zeros so the footprint includes the runtime's buffers.
        loaded.run([np.zeros(s.shape, np.float32) for s in record.inputs])
        self.memory_bytes[key] = max(0, rss_bytes() - rss0)
        self.loaded[key] = loaded
        return loaded, (time.perf_counter() - t0) * 1e3

    def unload_except(self, keep_dirs: set[str]) -> None:
        for key in [k for k in self.loaded if k[0] not in keep_dirs]:
            del self.loaded[key]
            self.memory_bytes.pop(key, None)
        for d in [d for d in self._manifests if d not in keep_dirs]:
            del self._manifests[d]


def _inputs(maps: WorkerMaps, headers: list[dict[str, Any]], bodies: list[memoryview]) -> list[np.ndarray]:
    frames = iter(bodies)
    return [maps.view(h["shm"], h["dtype"], h["shape"]) if h.get("shm") is not None
            else np.ndarray(h["shape"], DTYPES[h["dtype"]], next(frames))
            for h in headers]


_FLOAT32 = np.dtype(np.float32)
_LITTLE = sys.byteorder == "little"   # (the wire's order: a float32's last byte is its high one)
# Float32 inputs up to this size are screened by their bytes (_small_float32_nonfinite): 0.7 us
# hot for 256 values against 1.3 for numpy's reduction, and a numpy call on the request path runs
# cold (its dispatch is much code), 12 us there (bench/bench_request_path.py).
SCREEN_MAX_BYTES = 4096


def nonfinite_message(index: int) -> str:
    return f"input {index} holds NaN or infinite values (server.reject_nonfinite)"


def _small_float32_nonfinite(view: memoryview) -> bool:
    """Whether the little-endian float32 values in ``view`` (a byte-format view of at most
    ``SCREEN_MAX_BYTES``) hold a NaN or an infinity, without a numpy call. A value's last byte
    holds its sign and its exponent's top seven bits: unless one is 0x7f or 0xff (an exponent
    of 254 or 255: at least 2**127 in magnitude, or not finite) every value is finite. Else
    Python's float sum decides: finite exactly when every value is (float32's largest times
    1024 is far below float64's)."""
    high = bytes(view)[3::4]
    # (ints, not one-byte strings: ``bytes.__contains__`` tries its argument as an int first, and
    # a bytes argument makes, formats and drops a TypeError before the search: 0.47 us against 0.07)
    return (0x7F in high or 0xFF in high) and not math.isfinite(sum(view.cast("f")))


def nonfinite_inline(request: Any, bodies: list[memoryview]) -> int | None:
    """The index of the first float input a request (``adaptd.wire.protocol.Request``) sent inline
    that holds a NaN or an infinity, else None (the bodies' lengths already checked)."""
    frames = iter(bodies)
    for i, spec in enumerate(request.inputs):
        if spec.shm is None:
            body = next(frames)
            if spec.dtype.kind != "f":
                continue
            view = memoryview(body)
            if spec.dtype is _FLOAT32 and view.format == "B" and view.nbytes <= SCREEN_MAX_BYTES and _LITTLE:
                if _small_float32_nonfinite(view):   # (the frame's bytes as they came: no array made)
                    return i
            elif nonfinite_input([np.frombuffer(body, spec.dtype)]) is not None:
                return i
    return None


def nonfinite_input(inputs: list[np.ndarray], headers: list[dict[str, Any]] | None = None) -> int | None:
    """The index of the first float input holding a NaN or an infinity, else None; with the
    inputs' ``headers``, only those in a region are looked at (see the module contract). A small
    float32 input is screened by its bytes (:func:`_small_float32_nonfinite`); a larger one by
    its dot product with itself (BLAS: 16 us for 150k values, ``isfinite`` 40), finite for
    finite inputs below 1e17 in magnitude, and checked exactly only when that is not finite."""
    for i, x in enumerate(inputs):
        if x.dtype.kind != "f" or x.size == 0 or headers is not None and headers[i].get("shm") is None:
            continue
        if x.dtype == np.float32:
            if x.nbytes <= SCREEN_MAX_BYTES and _LITTLE and x.flags.c_contiguous:
                if _small_float32_nonfinite(memoryview(x).cast("B")):
                    return i
                continue
            flat = x.reshape(-1)
            if math.isfinite(np.dot(flat, flat)):
                continue
        if not np.isfinite(x).all():
            return i
    return None


def _write_outputs(maps: WorkerMaps, ref: dict[str, Any], outputs: list[np.ndarray]) -> list[dict[str, Any]]:
    """Outputs back to back from ``ref``'s offset, float32 (PROTOCOL.md §11.4)."""
    headers = []
    offset = int(ref["offset"])
    for arr in outputs:
        maps.view({**ref, "offset": offset}, np.float32, arr.shape)[...] = arr
        headers.append({"dtype": "float32", "shape": list(arr.shape),
                        "shm": {"region": ref["region"], "offset": offset}})
        offset += 4 * int(np.prod(arr.shape))
    return headers


def run_job(cache: VariantCache, maps: WorkerMaps, header: dict[str, Any], bodies: list[memoryview],
            idle_since_ns: int, reject_nonfinite: bool = True,
            cpu_clock: Callable[[], float] = time.process_time, *,
            inline_screened: bool = False) -> tuple[bool, dict[str, Any], list[Any]]:
    """One execution (see the module contract); ``header`` is the job: job, dir, variant, inputs
    (tensor headers, ``shm`` for those in a region), optional outputs_to."""
    job = header["job"]
    inputs: list[np.ndarray] = []
    try:
        loaded, load_ms = cache.get(header["dir"], header["variant"])
        inputs = _inputs(maps, header["inputs"], bodies)
        screen = reject_nonfinite and not (inline_screened and len(bodies) == len(inputs))   # (none in a region)
        bad = nonfinite_input(inputs, header["inputs"] if inline_screened else None) if screen else None
        if bad is not None:
            inputs.clear()
            return False, {"job": job, "code": "BAD_INPUT", "message": nonfinite_message(bad)}, []
        cpu0 = cpu_clock()
        t0_ns = time.monotonic_ns()
        outputs = loaded.run(inputs)
        t1_ns = time.monotonic_ns()
        cpu_time_s = cpu_clock() - cpu0
        inputs.clear()   # the job holds its views of a region only during the execution
        out_headers: list[dict[str, Any]] = []
        out_bodies: list[np.ndarray] = []
        if header.get("outputs_to") is not None:
            out_headers = _write_outputs(maps, header["outputs_to"], outputs)
        else:
            for arr in outputs:
                if arr.dtype is not _FLOAT32 or not arr.flags.c_contiguous:   # (what LiteRT returns is)
                    arr = np.ascontiguousarray(arr, dtype=np.float32)
                out_headers.append({"dtype": "float32", "shape": list(arr.shape)})
                out_bodies.append(arr)
    except Exception as exc:  # noqa: BLE001 - the request gets an error reply; the worker lives on
        inputs.clear()
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return False, {"job": job, "code": "WORKER_FAILED", "message": detail}, []
    key = (header["dir"], header["variant"])
    reply = {"job": job, "t0_ns": t0_ns, "t1_ns": t1_ns, "compute_ms": (t1_ns - t0_ns) / 1e6,
             "cpu_time_s": cpu_time_s, "idle_since_ns": idle_since_ns, "outputs": out_headers}
    if load_ms is not None:
        reply["load_ms"] = load_ms
        reply["memory_bytes"] = cache.memory_bytes.get(key, 0)
    return True, reply, out_bodies
