"""Which jobs run on the receiving thread (adaptd.daemon.inline_rule): pure, times given."""

from __future__ import annotations

from adaptd.daemon.inline_rule import InlineRule

MS = 1_000_000
S = 1_000_000_000


def never_busy() -> bool:
    return False


def test_short_jobs_run_inline_for_anyone_and_longer_ones_only_past_their_limits():
    rule = InlineRule(inline_max_ms=2.0, sole_caller_max_ms=10.0, window_s=1.0)
    rule.seen(b"a", 0)
    assert rule.allows(2.0, None, b"a", 0, never_busy)            # short: whoever, whenever
    assert not rule.allows(5.0, None, b"a", S - 1, never_busy)    # a sole caller's only after a whole window
    assert rule.allows(5.0, None, b"a", S, never_busy)
    assert rule.allows(10.0, None, b"a", 5 * S, never_busy)
    assert not rule.allows(10.5, None, b"a", 5 * S, never_busy)   # over the sole caller's limit


def test_another_caller_ends_a_sole_callers_run_for_a_window_and_becomes_the_candidate():
    rule = InlineRule(2.0, 10.0, window_s=1.0)
    rule.seen(b"a", 0)
    assert rule.allows(5.0, None, b"a", 2 * S, never_busy)
    rule.seen(b"b", 2 * S)                                  # another app's inference
    assert not rule.allows(5.0, None, b"a", 2 * S + MS, never_busy)
    assert not rule.allows(5.0, None, b"b", 2 * S + MS, never_busy)
    rule.seen(b"a", 2 * S + 2 * MS)                         # both active: neither is sole
    rule.seen(b"b", 2 * S + 3 * MS)
    assert not rule.allows(5.0, None, b"b", 3 * S, never_busy)
    assert rule.allows(5.0, None, b"b", 3 * S + 3 * MS, never_busy)   # b alone for a window since its last switch


def test_a_busy_daemon_runs_no_long_job_inline_and_is_asked_only_when_it_matters():
    rule = InlineRule(2.0, 10.0, window_s=0.0)
    rule.seen(b"a", 0)
    asked = []

    def busy() -> bool:
        asked.append(True)
        return True
    assert not rule.allows(5.0, None, b"a", 0, busy) and asked == [True]
    assert rule.allows(1.0, None, b"a", 0, busy) and not rule.allows(50.0, None, b"a", 0, busy) and asked == [True]


def test_a_sole_callers_job_is_judged_on_its_latency_bound_where_known():
    rule = InlineRule(2.0, 10.0, window_s=0.0)
    rule.seen(b"a", 0)
    assert rule.allows(7.0, 9.5, b"a", 0, never_busy)
    assert not rule.allows(7.0, 12.0, b"a", 0, never_busy)   # a mean under the limit, its bound over
    assert rule.allows(1.5, 12.0, b"a", 0, never_busy)       # (a short job: its mean, whoever calls)


def test_zero_limits_turn_each_kind_of_inline_run_off():
    rule = InlineRule(0.0, 0.0, window_s=0.0)
    rule.seen(b"a", 0)
    assert not rule.allows(0.01, None, b"a", S, never_busy)
    assert rule.allows(0.0, None, b"a", S, never_busy)   # (a prediction of 0 ms is within any limit)
