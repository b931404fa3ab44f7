"""Deferred bookkeeping (adaptd.daemon.bookkeeping): a flush does the oldest work first, a sliced
flush leaves the rest for later rounds, and the policy gets the executions in one batch once the
backlog is done (or once a batch is full), never one by one; the loop's idle flushes hold them for
a batch of LEARN_BATCH, or LEARN_MAX_AGE_S at most."""

from __future__ import annotations

from collections import deque

from adaptd.daemon.bookkeeping import DEFER_MAX_ITEMS, LEARN_BATCH, LEARN_GAP_S, LEARN_MAX_AGE_S, Bookkeeping


def test_a_sliced_flush_does_the_oldest_work_and_hands_the_batch_over_when_the_backlog_is_done():
    batches: list[list] = []
    books = Bookkeeping(deque().append, 16, 0.2, lambda observations: batches.append(list(observations)))
    done: list[int] = []
    for k in range(10):
        books.defer(lambda k=k: (done.append(k), books.observe(k)))
    books.flush(4)
    assert done == [0, 1, 2, 3] and books.waiting and batches == []   # the rest waits; no batch yet
    books.flush(4)
    assert done == list(range(8)) and batches == []
    books.flush(4)   # the backlog is done: one batch, in order
    assert done == list(range(10)) and batches == [list(range(10))] and not books.waiting


def test_a_full_batch_goes_to_the_policy_even_while_a_backlog_remains():
    batches: list[list] = []
    books = Bookkeeping(deque().append, 16, 0.2, lambda observations: batches.append(list(observations)))
    n = DEFER_MAX_ITEMS + 8
    for k in range(n):
        books.defer(books.observe, k)
    while books.waiting:
        books.flush(4)
    assert batches[0] == list(range(DEFER_MAX_ITEMS)) and sum(batches, []) == list(range(n))


def test_a_failing_item_is_logged_and_the_others_still_run(caplog):
    books = Bookkeeping(deque().append, 16, 0.2)
    done: list[int] = []

    def broken():
        raise RuntimeError("bug in one record")
    books.defer(done.append, 1)
    books.defer(broken)
    books.defer(done.append, 2)
    books.flush()
    assert done == [1, 2] and "bookkeeping of an answered request failed" in caplog.text


def test_a_never_idle_loop_keeps_the_backlog_bounded_even_when_a_round_defers_more_than_a_slice():
    """A round of the loop may answer 16 requests and defer two items for each; a slice per round
    must still keep the backlog at about DEFER_MAX_ITEMS, not let it grow without bound."""
    books = Bookkeeping(deque().append, 16, 0.2, lambda observations: None)
    done: list[int] = []
    k = 0
    for _ in range(200):          # rounds, none of them idle
        for _ in range(32):
            books.defer(done.append, k)
            k += 1
        if books.full:
            books.flush_slice()
        assert books.backlog <= DEFER_MAX_ITEMS
    assert done == list(range(len(done))) and len(done) >= k - DEFER_MAX_ITEMS


class Clock:
    """A settable monotonic clock (s): the hold's age is the behaviour under test."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def held_books() -> tuple[Bookkeeping, list[list], Clock]:
    batches: list[list] = []
    clock = Clock()
    books = Bookkeeping(deque().append, 16, 0.2, lambda observations: batches.append(list(observations)), clock=clock)
    return books, batches, clock


def test_idle_flushes_hold_a_steady_clients_executions_until_a_batch_is_full():
    """A lone client's loop is idle after every reply: the policy gets its executions
    LEARN_BATCH at a time, in order, once they come steadily (the first after a pause is handed
    over at once), and the record work is not held."""
    books, batches, clock = held_books()
    done: list[int] = []
    for k in range(2 * LEARN_BATCH + 1):
        clock.now += LEARN_MAX_AGE_S / (2 * LEARN_BATCH)   # a batch fills before its age
        books.defer(lambda k=k: (done.append(k), books.observe(k)))
        books.flush(hold=True)
        assert done[-1] == k and not books.waiting
    assert batches == [[0], list(range(1, LEARN_BATCH + 1)), list(range(LEARN_BATCH + 1, 2 * LEARN_BATCH + 1))]


def test_a_paced_clients_executions_are_handed_over_at_once():
    """Executions further apart than LEARN_GAP_S (a camera at 30 frames a second) would be
    alone in their batch: holding them would cost the loop a wake-up per batch of one."""
    books, batches, clock = held_books()
    for k in range(4):
        clock.now += 2 * LEARN_GAP_S
        books.defer(books.observe, k)
        books.flush(hold=True)
        assert batches[-1] == [k] and books.learn_due_s is None


def test_held_executions_are_due_after_their_age_and_any_other_flush_hands_them_over():
    books, batches, clock = held_books()
    assert books.learn_due_s is None
    books.defer(books.observe, "first")
    books.flush(hold=True)   # the first after a pause: at once
    assert batches == [["first"]]
    books.defer(books.observe, "a")
    books.flush(hold=True)
    assert batches == [["first"]] and books.learn_due_s == clock.now + LEARN_MAX_AGE_S
    clock.now += LEARN_GAP_S / 2
    books.defer(books.observe, "b")
    books.flush(hold=True)
    assert batches == [["first"]] and books.learn_due_s == 100.0 + LEARN_MAX_AGE_S   # the oldest one's age
    clock.now = books.learn_due_s
    books.flush(hold=True)   # the loop woke for it: nothing deferred, the executions are due
    assert batches[1:] == [["a", "b"]] and books.learn_due_s is None
    clock.now += LEARN_GAP_S
    for name in ("c", "d"):   # "c" after a pause: at once; "d" held
        books.defer(books.observe, name)
        books.flush(hold=True)
    assert batches[1:] == [["a", "b"], ["c"]] and books.learn_due_s is not None
    books.flush()   # a control message's, a reload's or shutdown's: every execution reaches the policy first
    assert batches[1:] == [["a", "b"], ["c"], ["d"]] and books.learn_due_s is None
