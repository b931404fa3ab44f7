"""Which arms are set aside now, and why: a variant refused for its file, an arm in quarantine, a
placement whose worker is held back.

Contract
--------
* An arm (variant x placement of one model version) is *set aside* when its variant's file no
  longer matches the manifest (refused on every placement until a reload), when it keeps failing
  (:mod:`adaptd.daemon.quarantine`), or when its placement's worker keeps dying as it starts or
  could not be started again (``down_reason`` says so). A set-aside arm is left out of every decision: :class:`ArmHealth`
  tells the policy through ``set_available(model, arm, available)`` as an arm leaves and comes
  back, and answers :meth:`ArmHealth.why` for the admission's messages.
* :meth:`ArmHealth.sync` (about once a second) puts back the arms whose quarantine ended and whose
  placement is up; :meth:`ArmHealth.reset` starts over after a reload (the new registry checked
  every file again; quarantines of versions still loaded are kept).
* The daemon's main thread only. Times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from adaptd.daemon.quarantine import Quarantine
from adaptd.daemon.registry import Arm, ModelVersion, Registry
from adaptd.variants.digest import check_variant

log = logging.getLogger("adaptd.arms")

ArmKey = tuple[str, str, str]   # (version directory, variant, placement)


def arm_key(model: ModelVersion, arm: Arm) -> ArmKey:
    return (model.version_dir, arm.variant.name, arm.placement.name)


class ArmHealth:
    def __init__(self, set_available: Callable[[ModelVersion, Arm, bool], None],
                 down_reason: Callable[[str], str | None], quarantine: Quarantine | None = None) -> None:
        self.quarantine = quarantine or Quarantine()
        self._set_available = set_available
        self._down_reason = down_reason
        self._aside: set[ArmKey] = set()
        self._refused: dict[tuple[str, str], str] = {}   # (dir, variant) whose file went bad after loading

    def any(self) -> bool:
        return bool(self._aside)

    def why(self, model: ModelVersion, arm: Arm, now: float) -> str | None:
        """Why an arm is set aside now, else None."""
        key = arm_key(model, arm)
        if key not in self._aside:
            return None
        refused = self._refused.get((key[0], key[1]))
        if refused is not None:
            return f"variant {arm.variant.name} is refused: {refused}"
        # Set aside until sync() puts it back (within a second of its quarantine's end), so the
        # admission and the policy, which sync() updates, always agree on it.
        return (self.quarantine.reason(key, now) or self._down_reason(arm.placement.name)
                or f"{arm.variant.name} on {arm.placement.name} is set aside; it is put back within a second")

    def set_aside(self, model: ModelVersion, arm: Arm) -> None:
        key = arm_key(model, arm)
        if key not in self._aside:
            self._aside.add(key)
            self._set_available(model, arm, False)

    def placement_down(self, registry: Registry, placement: str) -> None:
        for model in registry.newest():
            for arm in model.arms:
                if arm.placement.name == placement:
                    self.set_aside(model, arm)

    def failed(self, registry: Registry, key: ArmKey, message: str, now: float) -> None:
        """An arm's load or execution failed. If its file no longer matches the manifest, the
        variant is refused on every placement until a reload; otherwise the arm is quarantined
        once it has failed repeatedly."""
        model = next((m for m in registry.newest() if m.version_dir == key[0]), None)
        if model is None or key[1] not in model.variants:
            return
        record = model.variants[key[1]]
        problem = check_variant(model.directory, record.path, record.sha256)
        if problem is not None:
            if (key[0], key[1]) not in self._refused:
                self._refused[(key[0], key[1])] = problem
                log.error("%s:%s variant %s refused until the repository is reloaded: %s", model.name,
                          model.version, key[1], problem)
                for arm in model.arms:
                    if arm.variant.name == key[1]:
                        self.set_aside(model, arm)
            return
        length = self.quarantine.failed(key, now, message)
        if length is None:
            return
        log.warning("%s on %s set aside for %.0f s after repeated failures: %s", key[1], key[2], length, message)
        arm = model.arm(key[1], key[2])
        if arm is not None:
            self.set_aside(model, arm)

    def succeeded(self, model: ModelVersion, arm: Arm) -> None:
        if self.quarantine.any():
            self.quarantine.succeeded(arm_key(model, arm))

    def sync(self, registry: Registry, now: float) -> None:
        """Put back the arms whose quarantine ended and whose placement is up."""
        if not self._aside:
            return
        for model in registry.newest():
            for arm in model.arms:
                key = arm_key(model, arm)
                if key in self._aside and not self.quarantine.blocked(key, now) \
                        and (key[0], key[1]) not in self._refused and self._down_reason(arm.placement.name) is None:
                    self._aside.discard(key)
                    self._set_available(model, arm, True)
        live = registry.directories()
        self._aside = {k for k in self._aside if k[0] in live}

    def reset(self, registry: Registry, now: float) -> None:
        """After a reload: the new policy has every arm; set aside again what is still down."""
        self.quarantine.forget_except(registry.directories())
        self._refused.clear()
        self._aside.clear()
        for model in registry.newest():
            for arm in model.arms:
                if self.quarantine.blocked(arm_key(model, arm), now) or self._down_reason(arm.placement.name):
                    self.set_aside(model, arm)

    def describe(self, model: ModelVersion, arm: Arm, now: float) -> dict[str, Any]:
        """The ``stats`` fields of an arm's health."""
        return self.quarantine.describe(arm_key(model, arm), now)
