"""adaptd.daemon.sched: the fair scheduler's per-thread slice, set and read back through the
real syscalls (each case in a thread of its own, so the test process keeps its slice)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from adaptd.daemon import sched


def in_thread(fn):
    out: dict = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc
    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def proc_slice_ns(tid: int) -> int | None:
    for line in Path(f"/proc/self/task/{tid}/sched").read_text().splitlines():
        if line.startswith("se.slice"):
            return int(line.split(":")[1])
    return None


def test_a_slice_outside_the_kernels_bounds_is_refused_before_any_syscall():
    for bad in (0, sched.MIN_SLICE_US - 1, sched.MAX_SLICE_US + 1):
        with pytest.raises(ValueError, match="slice"):
            sched.request_slice(bad)


def test_a_requested_slice_is_the_threads_own_and_reads_back_where_the_kernel_keeps_one():
    main_before = sched.current_slice_us()

    def set_and_read():
        took = sched.request_slice(400)
        return took, sched.current_slice_us(), proc_slice_ns(threading.get_native_id())
    took, read_back, proc_ns = in_thread(set_and_read)
    if not took:
        assert read_back != 400   # the kernel ignored it: said so, not claimed
        pytest.skip("this kernel keeps no per-thread slice (Linux < 6.12)")
    assert read_back == 400
    assert proc_ns == 400_000                      # the kernel's own view agrees
    assert sched.current_slice_us() == main_before  # other threads keep theirs


def test_a_thread_started_after_the_request_inherits_the_slice():
    def parent():
        if not sched.request_slice(800):
            return None
        return in_thread(sched.current_slice_us)
    child = in_thread(parent)
    if child is None:
        pytest.skip("this kernel keeps no per-thread slice (Linux < 6.12)")
    assert child == 800


def test_another_threads_slice_can_be_set_by_its_id():
    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def idle():
        tid.append(threading.get_native_id())
        ready.set()
        done.wait(30)
    t = threading.Thread(target=idle)
    t.start()
    try:
        ready.wait(30)
        took = sched.request_slice(1500, tid[0])
        if not took:
            pytest.skip("this kernel keeps no per-thread slice (Linux < 6.12)")
        assert sched.current_slice_us(tid[0]) == 1500
        assert proc_slice_ns(tid[0]) == 1_500_000
    finally:
        done.set()
        t.join()


def test_a_thread_that_is_gone_is_a_process_lookup_error():
    t = threading.Thread(target=lambda: None)
    t.start()
    gone = t.native_id
    t.join()
    if os.path.exists(f"/proc/self/task/{gone}"):
        pytest.skip("the thread id is still listed")
    with pytest.raises(ProcessLookupError):
        sched.request_slice(500, gone)
