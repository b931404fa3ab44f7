"""Arms set aside after failing again and again, with a back-off.

Contract
--------
* An arm (model version directory, variant, placement) whose loads or executions fail
  ``threshold`` times in a row is *quarantined*: the daemon leaves it out of every request's
  candidates until its quarantine ends. The first quarantine lasts ``base_s``; each further one
  in a row (the arm failed again on its first try after a quarantine) lasts twice the last, up to
  ``max_s``. One success ends the streak and forgets it all.
* What counts as a failure: an execution answered ``fail`` by the worker, the worker's death
  while running or loading the arm, a load that failed. A request refused before it ran (BUSY,
  bad input) says nothing about the arm and is not counted.
* Pure bookkeeping: times are passed in (``time.monotonic()`` seconds); nothing here blocks.
  Used from the daemon's main thread only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ArmKey = tuple[str, str, str]    # (version directory, variant, placement)


@dataclass
class _Health:
    failures: int = 0                # in a row
    quarantines: int = 0             # in a row
    until: float = 0.0               # quarantined until (monotonic s); 0: not quarantined
    last_error: str = ""


class Quarantine:
    def __init__(self, threshold: int = 3, base_s: float = 5.0, max_s: float = 300.0) -> None:
        if threshold < 1 or base_s <= 0 or max_s < base_s:
            raise ValueError("quarantine: threshold >= 1 and 0 < base_s <= max_s")
        self.threshold = threshold
        self.base_s = base_s
        self.max_s = max_s
        self._arms: dict[ArmKey, _Health] = {}

    def failed(self, arm: ArmKey, now: float, error: str) -> float | None:
        """Count a failure; returns the quarantine's length in seconds when it starts one."""
        h = self._arms.setdefault(arm, _Health())
        h.failures += 1
        h.last_error = error[:200]
        if h.failures < self.threshold or now < h.until:
            return None
        length = min(self.base_s * 2.0 ** h.quarantines, self.max_s)
        h.quarantines += 1
        h.until = now + length
        return length

    def succeeded(self, arm: ArmKey) -> None:
        if self._arms:
            self._arms.pop(arm, None)

    def blocked(self, arm: ArmKey, now: float) -> bool:
        h = self._arms.get(arm) if self._arms else None
        return h is not None and now < h.until

    def reason(self, arm: ArmKey, now: float) -> str | None:
        """Why the arm is set aside now (None when it is not)."""
        h = self._arms.get(arm)
        if h is None or now >= h.until:
            return None
        return (f"{arm[1]} on {arm[2]} is set aside for {h.until - now:.1f} s more after {h.failures} failures "
                f"in a row (last: {h.last_error})")

    def any(self) -> bool:
        return bool(self._arms)

    def describe(self, arm: ArmKey, now: float) -> dict[str, Any]:
        """The ``stats`` fields of one arm."""
        h = self._arms.get(arm)
        if h is None:
            return {"failures_in_row": 0, "quarantined_for_s": None, "last_error": None}
        return {"failures_in_row": h.failures,
                "quarantined_for_s": round(h.until - now, 3) if now < h.until else None,
                "last_error": h.last_error or None}

    def forget_except(self, directories: set[str]) -> None:
        """After a reload: drop the arms of model versions no longer loaded."""
        for arm in [a for a in self._arms if a[0] not in directories]:
            del self._arms[arm]
