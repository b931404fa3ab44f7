"""Python's garbage collector run at the daemon loop's idle moments (adaptd.daemon.collector):
the real collector, cycles of real objects, and its callbacks saying which generation each
collection took. The expected sequences are CPython's own rule (3.10 to 3.13)."""

from __future__ import annotations

import gc
import weakref

import pytest

from adaptd.daemon.collector import BUSY_FACTOR, GENERATIONAL, IdleCollector

pytestmark = pytest.mark.skipif(not GENERATIONAL, reason="the collector is left automatic on this Python")


class Node:
    pass


def cycles(n: int) -> list[weakref.ref]:
    """``n`` unreachable reference cycles (two objects each): only a collection frees them."""
    refs = []
    for _ in range(n):
        a, b = Node(), Node()
        a.other, b.other = b, a
        refs.append(weakref.ref(a))
    return refs


@pytest.fixture
def collector():
    thresholds = gc.get_threshold()
    gc.set_threshold(100, 2, 2)   # (small: a few hundred objects pass them)
    c = IdleCollector()
    c.start()
    generations: list[int] = []

    def seen(phase, info):
        if phase == "start":
            generations.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        yield c, generations
    finally:
        gc.callbacks.remove(seen)
        c.stop()
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_start_freezes_what_is_there_and_turns_the_automatic_collector_off(collector):
    c, generations = collector
    assert not gc.isenabled() and gc.get_freeze_count() > 0
    refs = cycles(300)   # past the youngest threshold three times over: no collection comes by itself
    assert gc.get_count()[0] > 100 and generations == [] and all(r() is not None for r in refs)
    c.stop()
    assert gc.isenabled()


def test_an_idle_moment_collects_once_the_youngest_threshold_is_passed(collector):
    c, generations = collector
    c.idle()
    assert generations == [] and c.collections == 0   # (nothing allocated since the start)
    refs = cycles(60)   # 120 objects: past 100
    c.idle()
    assert generations == [0] and all(r() is None for r in refs) and c.collections == 1


def test_idle_moments_collect_the_middle_generation_as_cpython_would(collector):
    c, generations = collector
    for _ in range(13):
        cycles(60)
        c.idle()
    # thresholds (100, 2, 2): a generation is taken once the collections of the one below it since
    # its own last are more than 2, so every fourth the middle one; the oldest's turn (the 13th)
    # is skipped: the objects moved into it since start are not a quarter of those frozen then
    assert generations == [0, 0, 0, 1] * 3 + [0]


def test_the_oldest_generation_is_collected_once_what_it_gained_is_a_quarter_of_what_it_kept(collector):
    c, generations = collector
    kept = [Node() for _ in range(gc.get_freeze_count() // 4 + 1000)]   # survivors: into the oldest
    for _ in range(13):
        cycles(60)
        c.idle()
    assert generations == [0, 0, 0, 1] * 3 + [2]
    for _ in range(4):   # and from there, as before
        cycles(60)
        c.idle()
    assert generations[13:] == [0, 0, 0, 1] and len(kept) > 0


def test_after_a_skip_the_oldest_is_looked_at_again_only_after_another_threshold_of_its_count(collector,
                                                                                              monkeypatch):
    c, generations = collector
    listed = []
    get_objects = gc.get_objects

    def counted(*args, **kwargs):
        listed.append(len(generations))
        return get_objects(*args, **kwargs)

    monkeypatch.setattr(gc, "get_objects", counted)
    for _ in range(24):
        cycles(60)
        c.idle()
    # looked at before the 13th collection (the oldest's count 3 > 2), found too few and skipped;
    # not again until its count passes 3 + 2, before the 25th
    assert listed == [12] and 2 not in generations
    cycles(60)
    c.idle()
    assert listed == [12, 24] and 2 not in generations


def test_a_full_collection_made_elsewhere_starts_the_count_of_the_oldest_afresh(collector):
    c, generations = collector
    for _ in range(13):   # the oldest's turn skipped: looked at again once its count passes 5
        cycles(60)
        c.idle()
    gc.collect()   # (elsewhere: its count back to 0)
    del generations[:]
    kept = [Node() for _ in range(gc.get_freeze_count() // 4 + 1000)]
    for _ in range(13):
        cycles(60)
        c.idle()
    # its count passes 2 again before the 13th: looked at, and what it holds since the other
    # collection is a quarter of what it kept (without the fresh count, not before its count passed 5)
    assert generations == [0, 0, 0, 1] * 3 + [2] and kept


def test_a_loop_that_is_never_idle_collects_at_the_busy_factor(collector):
    c, generations = collector
    refs = cycles(60)
    c.busy()
    assert generations == [] and all(r() is not None for r in refs)   # past the threshold, not the factor
    refs += cycles(100 * BUSY_FACTOR // 2)
    c.busy()
    assert generations == [0] and all(r() is None for r in refs)


def test_with_automatic_collection_off_already_it_is_left_off():
    thresholds = gc.get_threshold()
    gc.set_threshold(0)
    c = IdleCollector()
    try:
        c.start()
        cycles(10)
        c.idle()
        c.busy()
        assert c.collections == 0
        c.stop()
        assert gc.isenabled()   # (threshold 0: enabled, and never collecting by itself)
        gc.set_threshold(*thresholds)
        gc.disable()   # (a process that turned it off)
        c.start()
        cycles(200)
        c.idle()
        c.stop()
        assert c.collections == 0 and not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
