"""Background load for the selection benchmark: busy processes pinned to one core, switched on
and off on a fixed schedule.

Usage (the benchmark starts it): python bench/selection_load.py --core 1 --t0 T0 --on 3 --off 3
--until T1 [--procs 2]

``T0`` and ``T1`` are ``time.monotonic()`` seconds (CLOCK_MONOTONIC is system-wide on Linux, so
parent and child agree). The schedule repeats every ``off + on`` seconds from ``T0``: ``off``
seconds idle first, then ``on`` seconds busy (:func:`load_on` is the one definition both the
benchmark and this process use). While on, each process multiplies 256x256 float32 matrices in
a loop (single-threaded BLAS, pinned with ``os.sched_setaffinity``); while off it sleeps in 2 ms
steps. Every process exits at ``T1`` or when its parent is gone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def load_on(t: float, t0: float, on_s: float, off_s: float) -> bool:
    """Whether the background load is on at monotonic time ``t`` (off first, then on)."""
    return (t - t0) % (on_s + off_s) >= off_s


def spin(core: int, t0: float, on_s: float, off_s: float, until: float) -> None:
    import numpy as np

    os.sched_setaffinity(0, {core})
    parent = os.getppid()
    a = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    while (now := time.monotonic()) < until:
        if os.getppid() != parent:
            return
        if load_on(now, t0, on_s, off_s):
            for _ in range(4):
                a = a @ a
                a *= 1e-3
        else:
            time.sleep(0.002)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--core", type=int, default=1)
    ap.add_argument("--t0", type=float, required=True)
    ap.add_argument("--on", type=float, default=3.0)
    ap.add_argument("--off", type=float, default=3.0)
    ap.add_argument("--until", type=float, required=True)
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args(argv)
    children = []
    for _ in range(args.procs - 1):
        pid = os.fork()
        if pid == 0:
            spin(args.core, args.t0, args.on, args.off, args.until)
            os._exit(0)
        children.append(pid)
    spin(args.core, args.t0, args.on, args.off, args.until)
    for pid in children:
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    sys.exit(main())
