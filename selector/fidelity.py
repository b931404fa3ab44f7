"""Live fidelity: each variant's accuracy on the inputs it serves, from shadow runs of the reference.

Contract
--------
* Pure: no I/O, no clock (every time is passed in, seconds, one monotonic origin per tracker),
  no threads. Thread safety: none; the owner (the daemon's selection thread) serialises calls.
* Lifecycle: one :class:`ModelFidelity` per loaded model version (``from_manifest`` or the
  constructor); a reload makes a new one (new variant files, new evidence). Then
  ``record``/``record_outputs`` once per shadow comparison, ``expire(now_s)`` from time to
  time (once a second is plenty: the age limit is minutes), ``accuracy``/``accuracies`` when
  the selector needs the figure, ``snapshot`` for statistics. Only ``record`` and ``expire``
  change state; queries read it. ``record`` and ``expire`` return the
  :class:`FidelityEvent` objects (alarm raised or cleared, accuracy source changed) for the
  owner to log and publish.
* Units: accuracy, agreement and disagreement are shares in [0, 1]; time in s.

The estimator (docs/fidelity.md derives it)
-------------------------------------------
For a variant v of a model whose reference is r (float32, or the variant the manifest names),
on the distribution P of the inputs v serves, with y the true label and d_P = P(v(x) != r(x)):

    acc_P(v) >= acc_P(r) - d_P            (v is right wherever r is right and v agrees with r)

Assumption A: the reference is no less accurate on the served inputs than on its validation
split, acc_P(r) >= acc_val(r). It cannot be checked without labels; if the reference loses
delta, the figure below is optimistic by delta. With d_hi the one-sided Wilson upper bound at
``confidence`` on d_P from the window's comparisons, ``acc_val(r) - d_hi`` is then a lower
confidence bound on acc_P(v) (treating acc_val(r) as exact, as the selector treats every
manifest figure).

That bound sits below the validation accuracy by the variant's ordinary disagreement plus the
interval's width even when nothing has changed, so it is used only once the live disagreement
is significantly above what the validation split allows (the drift test): d_lo > d0, with
d_lo the one-sided Wilson lower bound and d0 the validation disagreement when known
(``validation_disagreement``), else the largest one consistent with both validation
accuracies, ``err_val(v) + err_val(r)``. Until then, and while the window holds fewer than
``min_samples`` comparisons, the figure is the validation accuracy (source ``validation``).
Once the test has fired the figure is ``min(acc_val(v), acc_val(r) - d_hi)`` (source
``live``) until the disagreement is back within validation's at the same confidence
(d_hi <= d0), so the figure does not flap at the test's edge. The reference's own figure is
always its validation accuracy: agreement with itself says nothing.

The price of the test: a disagreement above the validation split's but too small to be
detected (below d0 plus the interval's width) leaves the validation figure in place, which is
then optimistic by up to ``acc_val(v) - acc_val(r) + d_P``. ``live_bound = "always"`` trades
that for a figure that is a lower confidence bound throughout, ``min(acc_val(v), acc_val(r) -
d_hi)`` as soon as the window holds ``min_samples`` comparisons, and therefore below the
validation accuracy (by the ordinary disagreement plus the interval's width) even when nothing
has changed: requests near a variant's bound then move although nothing has drifted.

The drift alarm (separate from the estimate)
--------------------------------------------
Raised when the window's agreement is confidently below ``alarm_agreement`` (its one-sided
upper bound is below it: a false alarm, which an operator acts on, is improbable at the
configured confidence); cleared when it is confidently back above ``alarm_agreement +
alarm_hysteresis`` (the lower bound is), or when the window no longer holds ``min_samples``
comparisons (no evidence left). Between the two it keeps its state: the interval's width is
the hysteresis band, the configured margin widens it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .agreement import AgreementWindow, compare_outputs, wilson_bound

SOURCE_VALIDATION = "validation"
SOURCE_LIVE = "live"
LIVE_BOUNDS = ("on_drift", "always")
EVENTS = ("alarm_raised", "alarm_cleared", "accuracy_live", "accuracy_validation")


@dataclass(frozen=True)
class FidelityParams:
    """The statistics' knobs (the daemon's ``[fidelity]`` table supplies them)."""

    window: int = 200                       # comparisons per variant in the sliding window
    window_max_age_s: float | None = 600.0  # comparisons older than this no longer count (None: never)
    min_samples: int = 30                   # comparisons the window needs before it is used
    confidence: float = 0.95                # of every interval, bound and test
    alarm_agreement: float = 0.90           # the alarm's level of agreement with the reference
    alarm_hysteresis: float = 0.01          # cleared only when confidently above level + this
    rel_error_tolerance: float = 0.05       # regression outputs: agreed when rel. error <= this
    live_bound: str = "on_drift"            # when the live bound is the figure: on_drift | always

    def __post_init__(self) -> None:
        if self.live_bound not in LIVE_BOUNDS:
            raise ValueError(f"live_bound must be one of {', '.join(LIVE_BOUNDS)}, got {self.live_bound!r}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.window_max_age_s is not None and not self.window_max_age_s > 0:
            raise ValueError(f"window_max_age_s must be > 0 or None, got {self.window_max_age_s}")
        if not 1 <= self.min_samples <= self.window:
            raise ValueError(f"min_samples must be in 1..window ({self.window}), got {self.min_samples}")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if not 0.0 < self.alarm_agreement <= 1.0:
            raise ValueError(f"alarm_agreement must be in (0, 1], got {self.alarm_agreement}")
        if not 0.0 <= self.alarm_hysteresis < 1.0 or self.alarm_agreement + self.alarm_hysteresis > 1.0:
            raise ValueError(f"alarm_hysteresis must be >= 0 with alarm_agreement + alarm_hysteresis "
                             f"<= 1, got {self.alarm_hysteresis}")
        if not self.rel_error_tolerance >= 0:
            raise ValueError(f"rel_error_tolerance must be >= 0, got {self.rel_error_tolerance}")


@dataclass(frozen=True)
class AccuracyEstimate:
    """The accuracy a ``min_accuracy`` constraint is judged against, and where it came from.

    ``value`` is None when unknown (a latency-only model): it never meets ``min_accuracy``.
    ``source`` is ``validation`` or ``live``; ``validation`` is the manifest's figure, ``n``
    the window's comparisons and ``disagreement_high`` the upper bound used (None when the
    window was not used)."""

    value: float | None
    source: str
    validation: float | None
    n: int
    disagreement_high: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validation_disagreement_bound(accuracy: float | None, reference_accuracy: float | None) -> float | None:
    """The largest disagreement with the reference that both validation accuracies allow: the
    two can disagree only where at least one of them is wrong."""
    if accuracy is None or reference_accuracy is None:
        return None
    return min(1.0, (1.0 - accuracy) + (1.0 - reference_accuracy))


def estimate_accuracy(*, validation_accuracy: float | None, reference_accuracy: float | None,
                      baseline_disagreement: float | None, n: int, disagreements: int,
                      confidence: float, min_samples: int, was_live: bool,
                      always: bool = False) -> AccuracyEstimate:
    """The estimator of the module docstring for one variant (not the reference).

    ``baseline_disagreement`` is d0 (None: no test possible, the figure stays the validation
    one unless ``always``); ``was_live`` is the previous call's source == live (the
    hysteresis); ``always`` is ``live_bound = "always"`` (no test)."""
    validation = AccuracyEstimate(validation_accuracy, SOURCE_VALIDATION, validation_accuracy, n)
    if n < min_samples or reference_accuracy is None or (baseline_disagreement is None and not always):
        return validation
    d_hi = wilson_bound(disagreements, n, confidence, upper=True)
    if always:
        live = True
    elif was_live:
        live = d_hi > baseline_disagreement
    else:
        live = wilson_bound(disagreements, n, confidence, upper=False) > baseline_disagreement
    if not live:
        return AccuracyEstimate(validation_accuracy, SOURCE_VALIDATION, validation_accuracy, n, d_hi)
    value = max(0.0, reference_accuracy - d_hi)
    if validation_accuracy is not None:
        value = min(validation_accuracy, value)
    return AccuracyEstimate(value, SOURCE_LIVE, validation_accuracy, n, d_hi)


def alarm_next(raised: bool, n: int, agreed: int, params: FidelityParams) -> bool:
    """The alarm's next state from its current one and the window's counts."""
    if n < params.min_samples:
        return False
    if not raised:
        return wilson_bound(agreed, n, params.confidence, upper=True) < params.alarm_agreement
    clear_at = params.alarm_agreement + params.alarm_hysteresis
    return not wilson_bound(agreed, n, params.confidence, upper=False) >= clear_at


@dataclass(frozen=True)
class FidelityEvent:
    """A change the daemon logs and publishes (docs/fidelity.md, the drift record)."""

    event: str                   # one of EVENTS
    ts: float                    # the tracker's time of the change (s)
    model: str
    version: str
    variant: str
    reference: str
    n: int                       # comparisons in the window
    agreement: float | None
    agreement_low: float | None  # two-sided interval at ``confidence``
    agreement_high: float | None
    confidence: float
    alarm_agreement: float
    accuracy_used: float | None
    accuracy_source: str
    validation_accuracy: float | None
    reason: str

    def to_record(self, ts: float | None = None) -> dict[str, Any]:
        """Plain types only, msgpack/JSON-ready; ``type`` is ``fidelity``. ``ts`` replaces the
        tracker's time (the daemon passes Unix time, as in every record it publishes)."""
        out = {"type": "fidelity", **asdict(self)}
        if ts is not None:
            out["ts"] = float(ts)
        return out


class _VariantState:
    __slots__ = ("alarm", "estimate", "window")

    def __init__(self, window: AgreementWindow, estimate: AccuracyEstimate) -> None:
        self.window = window
        self.alarm = False
        self.estimate = estimate


class ModelFidelity:
    """Agreement, accuracy estimates and alarms of one model version's variants."""

    def __init__(self, model: str, version: str, reference: str,
                 validation_accuracy: Mapping[str, float | None], params: FidelityParams | None = None,
                 validation_disagreement: Mapping[str, float] | None = None) -> None:
        if reference not in validation_accuracy:
            raise ValueError(f"{model} v{version}: reference variant {reference!r} is not one of its variants")
        self.model, self.version, self.reference = model, str(version), reference
        self.params = params or FidelityParams()
        self._validation = {k: (None if v is None else float(v)) for k, v in validation_accuracy.items()}
        known = dict(validation_disagreement or {})
        ref_acc = self._validation[reference]
        self._baseline = {v: known.get(v, validation_disagreement_bound(acc, ref_acc))
                          for v, acc in self._validation.items()}
        self._state = {v: _VariantState(AgreementWindow(self.params.window, self.params.window_max_age_s),
                                        AccuracyEstimate(acc, SOURCE_VALIDATION, acc, 0))
                       for v, acc in self._validation.items() if v != reference}

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], params: FidelityParams | None = None,
                      default_reference: str = "float32") -> ModelFidelity:
        """From a manifest's dict (``Manifest.to_dict()`` or manifest.json). The reference is
        the variant the manifest names (``manifest["reference"]``), else ``default_reference``
        (``[fidelity] reference``). Raises ``ValueError`` when the model has no such variant:
        its variants then cannot be compared, and the owner runs no shadows for it."""
        accs = {}
        for v in manifest["variants"]:
            metrics = v.get("metrics")
            accs[v["name"]] = None if not isinstance(metrics, Mapping) or metrics.get("accuracy") is None \
                else float(metrics["accuracy"])
        ref = manifest.get("reference") or default_reference
        return cls(manifest["model"], str(manifest["version"]), ref, accs, params)

    @property
    def variants(self) -> tuple[str, ...]:
        """The variants compared with the reference (every one but the reference)."""
        return tuple(self._state)

    def _variant(self, variant: str) -> _VariantState:
        try:
            return self._state[variant]
        except KeyError:
            if variant == self.reference:
                raise ValueError(f"{self.model}: {variant!r} is the reference; it is not compared with itself") from None
            raise ValueError(f"{self.model} v{self.version}: no variant {variant!r}") from None

    def record(self, variant: str, agreed: Iterable[bool], t_s: float,
               rel_errors: Iterable[float] | None = None) -> list[FidelityEvent]:
        """Comparisons of ``variant`` with the reference made at ``t_s`` (one per input row)."""
        st = self._variant(variant)
        agreed = list(agreed)
        rels = [None] * len(agreed) if rel_errors is None else [float(r) for r in rel_errors]
        if len(rels) != len(agreed):
            raise ValueError(f"{len(agreed)} agreements but {len(rels)} relative errors")
        for a, r in zip(agreed, rels):
            st.window.add(bool(a), t_s, r)
        return self._update(variant, st, t_s, "comparison")

    def record_outputs(self, variant: str, served: np.ndarray, reference: np.ndarray, t_s: float, *,
                       classification: bool = True) -> list[FidelityEvent]:
        """Compare the served variant's first output with the reference's and record it."""
        agreed, rel = compare_outputs(served, reference, classification=classification,
                                      tolerance=self.params.rel_error_tolerance)
        return self.record(variant, agreed.tolist(), t_s, rel.tolist())

    def expire(self, now_s: float) -> list[FidelityEvent]:
        """Drop comparisons older than the window's age limit from every variant."""
        events: list[FidelityEvent] = []
        for variant, st in self._state.items():
            if st.window.expire(now_s):
                events += self._update(variant, st, now_s, "window expired")
        return events

    def _update(self, variant: str, st: _VariantState, t_s: float, why: str) -> list[FidelityEvent]:
        p, w = self.params, st.window
        before_source, before_alarm = st.estimate.source, st.alarm
        st.estimate = estimate_accuracy(
            validation_accuracy=self._validation[variant], reference_accuracy=self._validation[self.reference],
            baseline_disagreement=self._baseline[variant], n=w.n, disagreements=w.n - w.agreed,
            confidence=p.confidence, min_samples=p.min_samples, was_live=before_source == SOURCE_LIVE,
            always=p.live_bound == "always")
        st.alarm = alarm_next(st.alarm, w.n, w.agreed, p)
        events = []
        few = w.n < p.min_samples
        if st.alarm != before_alarm:
            reason = (f"agreement confidently below {p.alarm_agreement:g}" if st.alarm else
                      f"{why}: fewer than {p.min_samples} comparisons" if few else
                      f"agreement confidently above {p.alarm_agreement + p.alarm_hysteresis:g}")
            events.append(self._event("alarm_raised" if st.alarm else "alarm_cleared", variant, st, t_s, reason))
        if st.estimate.source != before_source:
            live = st.estimate.source == SOURCE_LIVE
            reason = ("live_bound = always: the live bound is the figure" if live and p.live_bound == "always" else
                      "disagreement confidently above the validation split's" if live else
                      f"{why}: fewer than {p.min_samples} comparisons" if few else
                      "disagreement back within the validation split's")
            events.append(self._event("accuracy_live" if live else "accuracy_validation", variant, st, t_s, reason))
        return events

    def _event(self, kind: str, variant: str, st: _VariantState, t_s: float, reason: str) -> FidelityEvent:
        s = st.window.summary(self.params.confidence)
        return FidelityEvent(
            event=kind, ts=float(t_s), model=self.model, version=self.version, variant=variant,
            reference=self.reference, n=s.n, agreement=s.agreement, agreement_low=s.agreement_low,
            agreement_high=s.agreement_high, confidence=self.params.confidence,
            alarm_agreement=self.params.alarm_agreement, accuracy_used=st.estimate.value,
            accuracy_source=st.estimate.source, validation_accuracy=self._validation[variant], reason=reason)

    def accuracy(self, variant: str) -> AccuracyEstimate:
        """The figure ``min_accuracy`` is judged against now (as of the last ``record`` or
        ``expire``; reading it changes nothing)."""
        if variant == self.reference:
            acc = self._validation[variant]
            return AccuracyEstimate(acc, SOURCE_VALIDATION, acc, 0)
        return self._variant(variant).estimate

    def accuracies(self) -> dict[str, AccuracyEstimate]:
        """Every variant's figure, the reference's included."""
        return {v: self.accuracy(v) for v in self._validation}

    def alarm(self, variant: str) -> bool:
        return False if variant == self.reference else self._variant(variant).alarm

    def snapshot(self) -> dict[str, Any]:
        """For ``adaptd stats`` and the report: plain types only, one entry per variant."""
        out: dict[str, Any] = {"model": self.model, "version": self.version, "reference": self.reference,
                               "confidence": self.params.confidence, "variants": {}}
        for v in self._validation:
            est = self.accuracy(v)
            entry: dict[str, Any] = {"accuracy_used": est.value, "accuracy_source": est.source,
                                     "validation_accuracy": est.validation, "alarm": self.alarm(v)}
            if v != self.reference:
                entry["agreement"] = self._state[v].window.summary(self.params.confidence).to_dict()
                base = self._baseline[v]
                entry["baseline_disagreement"] = None if base is None or not math.isfinite(base) else base
            out["variants"][v] = entry
        return out
