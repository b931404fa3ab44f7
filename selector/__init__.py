"""adaptd.selector: the per-request policy and the cost models behind it (pure: no I/O).

Public API (what the daemon calls):

- :class:`Selector` — ``Selector.from_manifests(manifests, placements, predictor, config)``,
  ``choose(request, now_s, queues)``, ``explain(request, now_s, queues)``,
  ``update(arm_id, latency_ms, energy_mj, energy_estimated, t_s)``, ``stats()``, ``arm_id(...)``.
- :class:`Request` (validated constraints, objective, pins; ``Request.from_dict``),
  :class:`QueueSnapshot`, :class:`Decision` (``to_dict()``), :class:`SelectorConfig`.
- :class:`StructuralPredictor` (cold-start latency/energy from a variant's ``structure``).
- Errors, all ``ValueError`` with a protocol ``code``: :class:`InvalidConstraintsError`,
  :class:`InvalidRequestError`, :class:`UnknownModelError`, :class:`UnknownVariantError`,
  :class:`UnknownPlacementError`.
"""

from .online import OnlineCostModel
from .policy import ArmSpec, Decision, Selector, SelectorConfig, describe_violations
from .predictor import StructuralPredictor, holdout_errors, variant_records
from .request import (
    InvalidConstraintsError,
    InvalidRequestError,
    QueueSnapshot,
    Request,
    SelectorError,
    UnknownModelError,
    UnknownPlacementError,
    UnknownVariantError,
)

__all__ = [
    "ArmSpec", "Decision", "InvalidConstraintsError", "InvalidRequestError", "OnlineCostModel",
    "QueueSnapshot", "Request", "Selector", "SelectorConfig", "SelectorError", "StructuralPredictor",
    "UnknownModelError", "UnknownPlacementError", "UnknownVariantError", "describe_violations",
    "holdout_errors", "variant_records",
]
