"""The live accuracy estimate (a lower confidence bound once drift is detected), the drift alarm,
and the per-model tracker, from synthetic comparisons and from real LiteRT interpreters run on
inputs shifted out of the int8 variants' calibration range."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptd.selector import ArmSpec, Request, Selector, SelectorConfig
from adaptd.selector.agreement import wilson_bound
from adaptd.selector.fidelity import (
    SOURCE_LIVE,
    SOURCE_VALIDATION,
    FidelityParams,
    ModelFidelity,
    alarm_next,
    estimate_accuracy,
    validation_disagreement_bound,
)

REF_ACC, V_ACC = 0.969, 0.972          # the demo's float32 and int8_full validation accuracies
D0 = validation_disagreement_bound(V_ACC, REF_ACC)


def est(n: int, disagreements: int, *, was_live: bool = False, min_samples: int = 30, **kw):
    args = dict(validation_accuracy=V_ACC, reference_accuracy=REF_ACC, baseline_disagreement=D0,
                confidence=0.95, min_samples=min_samples, was_live=was_live)
    args.update(kw)
    return estimate_accuracy(n=n, disagreements=disagreements, **args)


def test_the_baseline_is_the_largest_disagreement_both_validation_accuracies_allow():
    assert D0 == pytest.approx(0.028 + 0.031)
    assert validation_disagreement_bound(0.2, 0.3) == 1.0
    assert validation_disagreement_bound(None, 0.9) is None


def test_too_few_comparisons_leave_the_validation_accuracy():
    e = est(29, 29)
    assert (e.value, e.source, e.n, e.disagreement_high) == (V_ACC, SOURCE_VALIDATION, 29, None)


def test_disagreement_within_the_validation_splits_keeps_the_validation_accuracy():
    e = est(200, 2)
    assert e.value == V_ACC and e.source == SOURCE_VALIDATION
    assert e.disagreement_high == pytest.approx(wilson_bound(198, 200, 0.95, upper=False) * -1 + 1)


def test_significant_disagreement_gives_the_reference_accuracy_minus_its_upper_bound():
    e = est(100, 40)
    d_hi = wilson_bound(40, 100, 0.95, upper=True)
    assert e.source == SOURCE_LIVE
    assert e.value == pytest.approx(REF_ACC - d_hi) and e.disagreement_high == pytest.approx(d_hi)
    assert e.value < REF_ACC - 0.40 < V_ACC     # below the point estimate: a lower bound


def test_the_live_figure_never_exceeds_the_validation_one():
    # A variant more accurate than the reference on validation, disagreeing just above d0.
    e = estimate_accuracy(validation_accuracy=0.90, reference_accuracy=0.99, baseline_disagreement=0.0,
                          n=10_000, disagreements=30, confidence=0.95, min_samples=30, was_live=False)
    assert e.source == SOURCE_LIVE and e.value == 0.90


def test_the_source_has_hysteresis():
    # 12 of 100: the lower bound (about 0.076) is above d0 = 0.059 ...
    assert est(100, 12).source == SOURCE_LIVE
    # ... 8 of 100: lower bound below d0, upper above: the state is kept either way.
    assert wilson_bound(8, 100, 0.95, upper=False) < D0 < wilson_bound(8, 100, 0.95, upper=True)
    assert est(100, 8, was_live=False).source == SOURCE_VALIDATION
    assert est(100, 8, was_live=True).source == SOURCE_LIVE
    # 1 of 200: upper bound below d0: back to the validation figure.
    assert wilson_bound(1, 200, 0.95, upper=True) < D0
    assert est(200, 1, was_live=True).source == SOURCE_VALIDATION


def test_unknown_accuracies_stay_unknown_or_untested():
    assert est(200, 150, validation_accuracy=None, reference_accuracy=None, baseline_disagreement=None).value is None
    assert est(200, 150, baseline_disagreement=None).value == V_ACC


def _coverage(d: float, n: int, seed: int, **kw) -> tuple[float, float]:
    """Worst case of the bound: the reference keeps its validation accuracy and the variant is
    wrong on every input where it disagrees (true accuracy REF_ACC - d). Over 400 windows of n
    comparisons: the share where the figure is at or below it, and the share where it is live."""
    draws = np.random.default_rng(seed).binomial(n, d, size=400)
    estimates = [est(n, int(k), **kw) for k in draws]
    return (float(np.mean([e.value <= REF_ACC - d + 1e-12 for e in estimates])),
            float(np.mean([e.source == SOURCE_LIVE for e in estimates])))


@settings(max_examples=30, deadline=None)
@given(st.floats(min_value=0.0, max_value=0.7), st.integers(min_value=30, max_value=400),
       st.integers(min_value=0, max_value=2**31))
def test_with_live_bound_always_the_figure_is_a_lower_confidence_bound(d, n, seed):
    covered, live = _coverage(d, n, seed, baseline_disagreement=None, always=True)
    assert live == 1.0 and covered >= 0.9, covered


@settings(max_examples=30, deadline=None)
@given(st.floats(min_value=D0 + 0.15, max_value=0.7), st.integers(min_value=100, max_value=400),
       st.integers(min_value=0, max_value=2**31))
def test_on_drift_the_figure_is_a_lower_confidence_bound_once_the_shift_is_detectable(d, n, seed):
    covered, live = _coverage(d, n, seed)
    assert live >= 0.95 and covered >= 0.9, (covered, live)


@pytest.mark.parametrize("d", [0.003, D0])
def test_on_drift_the_test_rarely_fires_without_a_shift(d):
    # At the validation split's own disagreement (int8_full's 0.003), or at the largest one the
    # validation accuracies allow, the live figure is used in at most about 1 - confidence.
    for n in (30, 100, 200):
        _, live = _coverage(d, n, seed=n)
        assert live <= (0.0 if d < 0.01 else 0.08), (n, live)


def test_between_the_two_the_figure_may_be_optimistic_by_at_most_the_stated_amount():
    # d = 0.1 over 30 comparisons: not yet detectable; the validation figure is optimistic by
    # V_ACC - (REF_ACC - d), the amount the module's docstring states.
    e = est(30, 3)
    assert e.source == SOURCE_VALIDATION and e.value - (REF_ACC - 0.1) == pytest.approx(V_ACC - REF_ACC + 0.1)


def test_the_alarm_is_raised_below_its_level_and_cleared_above_level_plus_hysteresis():
    p = FidelityParams(alarm_agreement=0.9, alarm_hysteresis=0.02, min_samples=30)
    assert alarm_next(False, 29, 0, p) is False                       # too few comparisons
    assert alarm_next(False, 100, 80, p) is True                      # upper bound ~0.86 < 0.9
    assert alarm_next(False, 100, 88, p) is False                     # 0.88 but not confidently below
    assert alarm_next(True, 100, 88, p) is True                       # kept: not confidently above 0.92
    assert wilson_bound(195, 200, 0.95, upper=False) >= 0.92
    assert alarm_next(True, 200, 195, p) is False                     # cleared
    assert alarm_next(True, 10, 10, p) is False                       # no evidence left


def _tracker(**kw) -> ModelFidelity:
    accs = {"float32": REF_ACC, "int8_full": V_ACC, "int8_dynamic": 0.969, "pruned75": 0.978}
    return ModelFidelity("digits", "1", "float32", accs, FidelityParams(**kw))


def test_with_no_shift_nothing_changes():
    mf = _tracker()
    rng = np.random.default_rng(7)
    t = 0.0
    for _ in range(3000):     # agreement as on the validation split: int8_full 0.997, pruned75 0.975
        t += 0.05
        assert mf.record("int8_full", [rng.random() < 0.997], t) == []
        assert mf.record("pruned75", [rng.random() < 0.975], t) == []
        for v, acc in (("int8_full", V_ACC), ("pruned75", 0.978)):
            e = mf.accuracy(v)
            assert (e.value, e.source) == (acc, SOURCE_VALIDATION)
    s = mf.snapshot()["variants"]["int8_full"]["agreement"]
    assert s["n"] == 200 and s["n_all"] == 3000 and s["agreement_low"] <= 0.997 <= s["agreement_high"]


def test_a_shift_lowers_the_estimate_within_a_bounded_number_of_comparisons_and_raises_the_alarm():
    mf = _tracker()
    rng = np.random.default_rng(3)
    t = 0.0
    for _ in range(400):
        t += 0.05
        mf.record("int8_full", [rng.random() < 0.997], t)
    events = []
    for i in range(200):      # the demo at 4x + 0.75: int8_full agrees with float32 on about half
        t += 0.05
        for e in mf.record("int8_full", [rng.random() < 0.5], t):
            events.append((i, e))
    kinds = [e.event for _, e in events]
    assert kinds == ["accuracy_live", "alarm_raised"], kinds
    first = events[0][0]
    assert first < 60, first             # with a window full of agreement before the shift
    est = mf.accuracy("int8_full")
    assert est.source == SOURCE_LIVE and est.value < 0.6
    raised = events[1][1].to_record(ts=1.7e9)
    assert raised["ts"] == 1.7e9 and events[1][1].to_record()["ts"] == events[1][1].ts
    assert raised["type"] == "fidelity" and raised["variant"] == "int8_full" and raised["reference"] == "float32"
    assert raised["accuracy_source"] == SOURCE_LIVE and raised["agreement_high"] < 0.9 + 0.1
    # The reference's own figure stays its validation accuracy; other variants are untouched.
    assert mf.accuracy("float32").value == REF_ACC and mf.accuracy("pruned75").value == 0.978
    # Recovery: the window refills with agreement, the alarm clears, the source goes back.
    for i in range(400):
        t += 0.05
        events += [(i, e) for e in mf.record("int8_full", [rng.random() < 0.997], t)]
    assert [e.event for _, e in events[2:]] == ["alarm_cleared", "accuracy_validation"]
    assert mf.accuracy("int8_full").value == V_ACC


def test_comparisons_age_out_and_take_the_live_figure_with_them():
    mf = _tracker(window_max_age_s=60.0)
    for i in range(100):
        mf.record("int8_full", [i % 2 == 0], float(i) * 0.1)
    assert mf.accuracy("int8_full").source == SOURCE_LIVE and mf.alarm("int8_full")
    assert mf.expire(30.0) == []
    events = mf.expire(100.0)
    assert sorted(e.event for e in events) == ["accuracy_validation", "alarm_cleared"]
    assert all("window expired" in e.reason for e in events)
    assert mf.accuracy("int8_full").value == V_ACC


def test_a_request_moves_off_a_variant_that_no_longer_meets_its_bound():
    mf = _tracker()
    arms = lambda: [ArmSpec("digits", v, "cpu:0", mf.accuracy(v).value, lat)  # noqa: E731
                    for v, lat in (("float32", 0.30), ("int8_full", 0.10), ("int8_dynamic", 0.20),
                                   ("pruned75", 0.25))]
    req = Request(model="digits", min_accuracy=0.96, objective="latency")
    before = Selector(arms(), ["cpu:0"], SelectorConfig(probe_share=0.0)).choose(req, 0.0)
    assert before.variant == "int8_full"
    for i in range(100):
        mf.record("int8_full", [i % 2 == 0], float(i))
    after = Selector(arms(), ["cpu:0"], SelectorConfig(probe_share=0.0)).choose(req, 0.0)
    assert after.variant == "int8_dynamic" and after.predicted.accuracy >= 0.96


def test_from_manifest_reads_the_validation_accuracies_and_checks_the_reference(tiny_repository):
    from adaptd.variants.repository import resolve

    repo, model, version = tiny_repository
    _, manifest = resolve(repo, model, version)
    mf = ModelFidelity.from_manifest(manifest.to_dict())
    assert mf.reference == "float32" and "float32" not in mf.variants and "int8_full" in mf.variants
    assert mf.accuracy("int8_full").value == manifest.variant("int8_full").metrics.accuracy
    named = {**manifest.to_dict(), "reference": "float16"}
    assert ModelFidelity.from_manifest(named, default_reference="pruned50").reference == "float16"
    assert ModelFidelity.from_manifest(manifest.to_dict(), default_reference="pruned50").reference == "pruned50"
    with pytest.raises(ValueError, match="reference"):
        ModelFidelity.from_manifest(manifest.to_dict(), default_reference="float64")
    with pytest.raises(ValueError, match="reference"):
        mf.record("float32", [True], 0.0)


@pytest.mark.slow
def test_real_interpreters_on_shifted_inputs(tiny_repository, tiny_source):
    """The tiny model's validation images through real LiteRT interpreters, as served: on the
    images as they are nothing changes; at 4x + 0.75 (beyond int8_full's calibrated input
    range of [0, 1]) float32 stays right on the labels while int8_full's figure falls."""
    from adaptd.variants.repository import resolve
    from adaptd.variants.runtime import load_variant

    repo, model, version = tiny_repository
    vdir, manifest = resolve(repo, model, version)
    data = np.load(tiny_source[1])
    x, y = data["x_val"].astype(np.float32), data["y_val"]
    ref = load_variant(vdir, manifest.variant("float32"))
    served = load_variant(vdir, manifest.variant("int8_full"))
    q = manifest.variant("int8_full").inputs[0].quantization
    assert (127 - q.zero_point) * q.scale < 4.75 * 0.5          # shifted inputs saturate
    for shift, moves in (((1.0, 0.0), False), ((4.0, 0.75), True)):
        mf = ModelFidelity.from_manifest(manifest.to_dict())
        xs = x * np.float32(shift[0]) + np.float32(shift[1])
        events, f32_right = [], 0
        for i in range(0, len(xs), 5):
            r_out, s_out = ref.run([xs[i:i + 5]])[0], served.run([xs[i:i + 5]])[0]
            f32_right += int(np.sum(np.argmax(r_out, -1) == y[i:i + 5]))
            events += mf.record_outputs("int8_full", s_out, r_out, float(i))
        f32_acc = manifest.variant("float32").metrics.accuracy
        assert f32_right / len(xs) >= f32_acc - 0.05               # float32 stays right
        e = mf.accuracy("int8_full")
        if moves:
            assert e.source == SOURCE_LIVE and e.value < manifest.variant("int8_full").metrics.accuracy - 0.2
            assert {"accuracy_live", "alarm_raised"} <= {ev.event for ev in events}
        else:
            assert e.source == SOURCE_VALIDATION and events == []
            assert e.value == manifest.variant("int8_full").metrics.accuracy
