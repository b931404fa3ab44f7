"""Reply accounting: what was sent, what came back, and what must not have.

Contract
--------
* :class:`Ledger` records each request id sent (:meth:`Ledger.sent`) and each reply received
  (:meth:`Ledger.received`); it classifies every reply as the first answer to one of its ids,
  a duplicate (a second reply for an id already answered), or misrouted (an id this ledger never
  sent: another client's, or none at all). :meth:`Ledger.outstanding` are the ids still
  waiting; once the caller's deadline has passed they are *lost*.
* Counts are plain ints in :class:`Counts` (merged across processes with ``+``), so results
  from client processes are summed by the parent.
* One owner at a time (no locks): each client process or thread keeps its own ledger.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Counts:
    """What one or more ledgers saw. ``codes`` counts error replies by code; ``ok`` counts
    successful replies that passed the caller's checks, ``wrong_outputs`` those that did not."""

    sent: int = 0
    ok: int = 0
    codes: Counter = field(default_factory=Counter)
    lost: int = 0
    duplicated: int = 0
    misrouted: int = 0
    wrong_outputs: int = 0
    replayed: int = 0          # successful replies marked ``replayed`` (none are expected here)
    late: int = 0              # replies for ids already counted lost

    @property
    def answered(self) -> int:
        return self.ok + self.wrong_outputs + sum(self.codes.values())

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.sent + other.sent, self.ok + other.ok, self.codes + other.codes,
                      self.lost + other.lost, self.duplicated + other.duplicated,
                      self.misrouted + other.misrouted, self.wrong_outputs + other.wrong_outputs,
                      self.replayed + other.replayed, self.late + other.late)

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "answered": self.answered, "ok": self.ok, "codes": dict(self.codes),
                "lost": self.lost, "duplicated": self.duplicated, "misrouted": self.misrouted,
                "wrong_outputs": self.wrong_outputs, "replayed": self.replayed, "late": self.late}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Counts:
        return cls(d["sent"], d["ok"], Counter(d["codes"]), d["lost"], d["duplicated"], d["misrouted"],
                   d["wrong_outputs"], d.get("replayed", 0), d.get("late", 0))


class Ledger:
    """Request ids of one client and the replies that came back for them."""

    def __init__(self) -> None:
        self.counts = Counts()
        self._waiting: dict[str, Any] = {}     # id -> what the caller needs to check its reply
        self._answered: set[str] = set()
        self._lost: set[str] = set()

    def sent(self, request_id: str, context: Any = None) -> None:
        if request_id in self._waiting or request_id in self._answered or request_id in self._lost:
            raise ValueError(f"request id {request_id!r} reused: ids must be unique")
        self._waiting[request_id] = context
        self.counts.sent += 1

    def knows(self, request_id: Any) -> bool:
        """Whether ``request_id`` is one of this ledger's (waiting, answered or lost)."""
        return isinstance(request_id, str) and (request_id in self._waiting or request_id in self._answered
                                                or request_id in self._lost)

    def received(self, request_id: Any) -> tuple[str, Any]:
        """Classify a reply's id: ``("first", context)``, ``("duplicate", None)``, ``("late", None)``
        (an id given up as lost) or ``("misrouted", None)``; the counts of all but the first are
        updated here, the first is left to :meth:`ok`, :meth:`error` or :meth:`wrong` once the
        caller has checked the reply."""
        if isinstance(request_id, str) and request_id in self._waiting:
            context = self._waiting.pop(request_id)
            self._answered.add(request_id)
            return "first", context
        if isinstance(request_id, str) and request_id in self._answered:
            self.counts.duplicated += 1
            return "duplicate", None
        if isinstance(request_id, str) and request_id in self._lost:
            self._lost.discard(request_id)
            self._answered.add(request_id)
            self.counts.late += 1
            return "late", None
        self.counts.misrouted += 1
        return "misrouted", None

    def ok(self, replayed: bool = False) -> None:
        self.counts.ok += 1
        self.counts.replayed += bool(replayed)

    def error(self, code: str) -> None:
        self.counts.codes[str(code)] += 1

    def wrong(self) -> None:
        self.counts.wrong_outputs += 1

    def outstanding(self) -> int:
        return len(self._waiting)

    def lose(self, request_id: str) -> None:
        """Count one waiting id as lost (its deadline passed); a reply after this is ``late``."""
        self._waiting.pop(request_id)
        self._lost.add(request_id)
        self.counts.lost += 1

    def give_up(self) -> list[str]:
        """Count every id still waiting as lost; return them."""
        lost = list(self._waiting)
        self.counts.lost += len(lost)
        self._lost.update(lost)
        self._waiting.clear()
        return lost
