"""adaptd.selector: the per-request policy and the cost models behind it (pure: no I/O but reading
a stored calibration, :mod:`.fit`).

Public API (what the daemon calls):

- :class:`Selector` (:mod:`.policy`) — ``Selector.from_manifests(manifests, placements, predictor,
  config, learner)``, ``choose(request, now_s, queues, candidates=...)``, ``explain(...)``,
  ``update(arm_id, latency_ms, energy_mj, energy_estimated, t_s, compute_ms)`` and
  ``update_many`` (a batch of such tuples, :mod:`.learning`), ``stats()``,
  ``arm_id(...)``; :class:`MostAccurate` (:mod:`.baseline`), the baseline, with the same
  ``choose``/``update``.
- :class:`Request` and :class:`Constraints` (validated once, here: :mod:`.request`),
  :class:`QueueSnapshot`; :class:`Decision` with :class:`Prediction`, :class:`Met`,
  :class:`Violation`, :class:`Alternative` (:mod:`.decision`); :class:`SelectorConfig`;
  :class:`ArmSpec` and :func:`arms_from_manifests` (:mod:`.arms`).
- :class:`PriorLearner` (:mod:`.priors`): what the priors miss, learnt across arms and reloads.
- :class:`StructuralPredictor` (cold-start latency/energy from a variant's ``structure``);
  :func:`fit_calibration`, :func:`load_predictor` (:mod:`.fit`).
- Errors, all ``ValueError`` with a protocol ``code``: :class:`InvalidConstraintsError`,
  :class:`InvalidRequestError`, :class:`UnknownModelError`, :class:`UnknownVariantError`,
  :class:`UnknownPlacementError`.

Names are imported on first use, so that ``adaptd.selector.request`` (which the protocol parser
imports) does not pull in the rest.
"""

from importlib import import_module

_WHERE = {
    "ArmSpec": "arms", "ArmTable": "arms", "arms_from_manifests": "arms",
    "MostAccurate": "baseline",
    "SelectorConfig": "config",
    "Alternative": "decision", "Decision": "decision", "Met": "decision", "Prediction": "decision",
    "Violation": "decision", "describe_violations": "decision",
    "fit_calibration": "fit", "holdout_errors": "fit", "load_calibration": "fit", "load_predictor": "fit",
    "OnlineCostModel": "online", "PriorLearner": "priors",
    "Selector": "policy",
    "ProbeBudget": "probe",
    "StructuralPredictor": "predictor", "variant_records": "predictor",
    "Constraints": "request", "InvalidConstraintsError": "request", "InvalidRequestError": "request",
    "QueueSnapshot": "request", "Request": "request", "SelectorError": "request",
    "UnknownModelError": "request", "UnknownPlacementError": "request", "UnknownVariantError": "request",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
