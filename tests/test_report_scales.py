"""The report's scale decisions, on their own: bin widths, durations, time axes, value scales and
the "too short" note (pure functions; property tests over runs from milliseconds to a year)."""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptd.tools.report_scales import (
    CLOCK_MIN_SPAN_S,
    DAY,
    HUMAN_STEPS_S,
    MIN_PER_BIN,
    TARGET_BINS,
    format_duration,
    nice_bin_width,
    time_axis,
    time_bins,
    too_short_for_time_plot,
    value_scale,
)

JUNE_2025 = 1_748_736_000.0   # 2025-06-01 00:00 UTC


@contextlib.contextmanager
def timezone(name: str):
    old = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.parametrize("seconds, text", [
    (0.0999999, "100 ms"), (0.05, "50 ms"), (0.0454545, "45.5 ms"), (0.9999, "1 s"), (1.5, "1.5 s"),
    (15, "15 s"), (600, "10 min"), (5400, "1.5 h"), (3600, "1 h"), (DAY, "1 day"), (7 * DAY, "7 days"),
    (30 * DAY, "30 days"),
])
def test_durations_read_like_people_write_them(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("span_s, n, width", [
    (0.9, 500, 0.05),            # a one-second real run: 18 intervals of ~28 decisions
    (6 * 3600, 3000, 600.0),     # six hours: 10 min
    (30 * DAY, 4000, DAY),       # a month: a day
    (0.05, 12, 0.05),            # a handful of decisions: one interval (or two)
])
def test_bin_widths_are_human_steps(span_s, n, width):
    assert nice_bin_width(span_s, n) == width


@given(span=st.floats(0.0, 400 * DAY), n=st.integers(1, 2_000_000))
def test_bin_width_keeps_the_interval_count_and_fill(span, n):
    width = nice_bin_width(span, n)
    assert width in HUMAN_STEPS_S or width % HUMAN_STEPS_S[-1] == 0
    eff = max(span, HUMAN_STEPS_S[0])
    assert eff / width <= TARGET_BINS + 1e-6
    assert n * width / eff >= MIN_PER_BIN * (1 - 1e-9)
    smaller = [w for w in HUMAN_STEPS_S if w < width]
    if smaller and width in HUMAN_STEPS_S:   # the smallest step that does
        assert eff / smaller[-1] > TARGET_BINS or n * smaller[-1] / eff < MIN_PER_BIN


@given(t0=st.floats(JUNE_2025, JUNE_2025 + 365 * DAY), span=st.floats(0.0, 60 * DAY), n=st.integers(1, 10**6))
def test_bins_cover_every_decision(t0, span, n):
    edges = time_bins(t0, t0 + span, n)
    widths = np.diff(edges)
    assert np.allclose(widths, widths[0], rtol=0, atol=1e-6)   # Unix seconds carry ~0.2 us of float error
    assert edges[0] <= t0 and edges[-1] > t0 + span
    assert len(edges) - 1 <= TARGET_BINS + 2
    if span < CLOCK_MIN_SPAN_S:
        assert edges[0] == t0   # short runs: from the first decision


def check_axis(ax, lo, hi):
    assert len(ax.ticks) == len(ax.labels)
    assert all(ax.labels), ax.labels
    assert len(set(ax.labels)) == len(ax.labels), ax.labels            # distinct
    assert list(ax.ticks) == sorted(ax.ticks)
    assert all(ax.lo - 1e-6 <= t <= ax.hi + 1e-6 for t in ax.ticks)
    assert ax.lo == pytest.approx(lo - ax.origin) and ax.hi == pytest.approx(hi - ax.origin)
    if hi - lo >= 0.01:
        assert len(ax.ticks) >= 2
    if hi - lo < CLOCK_MIN_SPAN_S:
        assert not ax.clock and ax.label.endswith("(s)") and "since the first decision" in ax.label
    else:
        assert ax.clock and "local time" in ax.label


@settings(max_examples=300)
@given(t0=st.floats(JUNE_2025, JUNE_2025 + 365 * DAY), span=st.floats(1e-3, 400 * DAY),
       zone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]))
def test_time_axes_have_distinct_labelled_ticks_at_any_span(t0, span, zone):
    with timezone(zone):
        check_axis(time_axis(t0, t0 + span), t0, t0 + span)


def test_the_one_second_run_gets_seconds_and_long_runs_the_clock():
    with timezone("UTC"):
        short = time_axis(JUNE_2025 + 0.25, JUNE_2025 + 1.2)
        assert short.labels == ("0.0", "0.2", "0.4", "0.6", "0.8")
        assert short.label == "time since the first decision, 2025-06-01 00:00:00.250 UTC (s)"
        six_hours = time_axis(JUNE_2025 + 1800, JUNE_2025 + 6.5 * 3600)
        assert six_hours.labels == ("Jun 01\n01:00", "02:00", "03:00", "04:00", "05:00", "06:00")
        assert six_hours.label == "local time, UTC (HH:MM)"
        days = time_axis(JUNE_2025, JUNE_2025 + 3 * DAY)
        assert days.labels[:3] == ("Jun 01\n00:00", "Jun 01\n12:00", "Jun 02\n00:00")   # a day repeats times
        month = time_axis(JUNE_2025, JUNE_2025 + 30 * DAY)
        assert month.labels == ("Jun 01", "Jun 08", "Jun 15", "Jun 22", "Jun 29")
    with timezone("Europe/Berlin"):   # local midnight, not UTC's
        assert time_axis(JUNE_2025, JUNE_2025 + 30 * DAY).labels[0] == "Jun 02"
        assert time_axis(JUNE_2025, JUNE_2025 + 6 * 3600).labels[0] == "Jun 01\n02:00"   # 00:00 UTC


def test_value_scales():
    rng = np.random.default_rng(0)
    bulk = list(rng.uniform(0.3, 0.6, 500))
    first_load = value_scale(bulk + [70.0])          # the report's old corner plot
    assert first_load.kind == "clipped" and first_load.limits[1] < 1.0
    assert first_load.beyond == 1 and first_load.beyond_max == 70.0
    assert "1 request(s) beyond it (up to 70 ms)" in first_load.note("ms")
    assert first_load.suffix == ", axis clipped"
    spread = value_scale(list(rng.lognormal(0, 1.5, 500)))   # orders of magnitude
    assert spread.kind == "log" and spread.suffix == ", log scale"
    assert spread.limits[0] > 0
    assert value_scale(bulk).kind == "linear" and value_scale(bulk).note("ms") is None
    assert value_scale([0.3] * 10 + [70.0]).kind == "log"        # few points: never clipped
    assert value_scale([1, 2, 3, 200], min_points_to_clip=10**9).kind == "log"
    assert value_scale([-5.0] + bulk + [70.0]).kind == "clipped"   # not positive: never log
    assert value_scale([None, float("nan")]).kind == "linear"
    assert value_scale([2.0] * 50).kind == "linear"
    # 2% of first loads: the 99th percentile is one of them, so the bulk test cannot see them
    loads = value_scale(bulk + list(np.linspace(5.0, 8.0, 10)))
    assert loads.kind == "log" and loads.limits[0] < 0.3 and loads.limits[1] > 8.0
    assert value_scale(bulk + [0.9] * 10).kind == "linear"   # a tail, not outliers
    for ties in ([100.0] * 8 + [101.0], [5.0] * 5 + [6.0], [2.0] * 16 + [2.2] * 4):   # no orders of magnitude
        assert value_scale(ties).kind == "linear", ties


def test_too_short_notes():
    assert too_short_for_time_plot(500, 0.9, time_bins(0.0, 0.9, 500)) is None
    note = too_short_for_time_plot(12, 0.05, time_bins(0.0, 0.05, 12))
    assert note.startswith("Too short to show change over time: 12 decision(s) over 50 ms")
    assert too_short_for_time_plot(5, 6 * 3600, time_bins(0.0, 6 * 3600, 5)) is not None   # too few
    assert too_short_for_time_plot(3000, 6 * 3600, time_bins(0.0, 6 * 3600, 3000)) is None


@pytest.mark.parametrize("zone, t0, span", [
    ("Europe/Berlin", 1774731337.83, 26133.6),        # 2026-03-29: 02:00 does not exist
    ("America/New_York", 1772944283.12, 16448.3),     # 2026-03-08: nor here
    ("America/New_York", 1762063495.82, 3135.4),      # 2025-11-02: 01:00 to 02:00 happens twice
    ("Australia/Lord_Howe", 1775314829.06, 1342.8),   # 2026-04-05: the clocks go back half an hour
])
def test_clock_ticks_across_a_change_of_the_clocks(zone, t0, span):
    with timezone(zone):
        check_axis(time_axis(t0, t0 + span), t0, t0 + span)


def test_an_hour_the_clocks_go_back_over_gets_its_ticks_twice():
    """New York, 2025-11-02: 01:00 to 02:00 happens first in EDT, then in EST; a 15-minute axis
    over it has a tick every 15 minutes of real time, none missing."""
    with timezone("America/New_York"):
        t0 = 1762059600.0   # 2025-11-02 01:00 EDT (05:00 UTC)
        ax = time_axis(t0, t0 + 2 * 3600)
        gaps = np.diff(np.array(ax.ticks))
        assert len(ax.ticks) >= 5 and np.allclose(gaps, gaps[0]), ax.labels
        # both passes of a repeated time are labelled with their zone, not only the second
        repeated = [label for label in ax.labels if label.endswith(("EDT", "EST"))]
        assert "01:00 EDT" in " ".join(repeated) and "01:00 EST" in " ".join(repeated), ax.labels
        assert len(set(ax.labels)) == len(ax.labels)
