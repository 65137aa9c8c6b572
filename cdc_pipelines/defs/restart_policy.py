"""When to restart a failed connector task again, and when to stop trying and escalate.

Pure and free of Dagster: the connector-health sensor keeps one :class:`RestartState`
per failed task in its cursor and asks :meth:`RestartPolicy.decide` what to do each tick.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

RESTART_BUDGET = 5
"""Restarts tried per failure before a human is asked to look."""
BASE_BACKOFF_S = 30.0
MAX_BACKOFF_S = 30 * 60.0
BACKOFF_FACTOR = 2.0
MS_PER_S = 1000


class Action(StrEnum):
    RESTART = "restart"
    WAIT = "wait"
    ESCALATE = "escalate"
    ESCALATED = "escalated"


@dataclass(frozen=True)
class RestartState:
    """One failure of one task: when it was first seen, restarts so far, the next allowed one."""

    first_failed_ms: int
    attempts: int = 0
    next_attempt_ms: int = 0
    escalated: bool = False

    def to_json(self) -> list[Any]:
        return [self.first_failed_ms, self.attempts, self.next_attempt_ms, self.escalated]

    @classmethod
    def from_json(cls, data: Any) -> RestartState | None:
        try:
            first, attempts, next_ms, escalated = data
            return cls(int(first), int(attempts), int(next_ms), bool(escalated))
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff between restarts (30 s, 60 s, 120 s … capped) and a retry budget."""

    budget: int = RESTART_BUDGET
    base_backoff_s: float = BASE_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S

    def backoff_s(self, attempts: int) -> float:
        """The wait after the ``attempts``-th restart."""
        return min(self.max_backoff_s, self.base_backoff_s * BACKOFF_FACTOR ** max(0, attempts - 1))

    def decide(self, state: RestartState | None, now_ms: int) -> tuple[Action, RestartState]:
        """What to do about a task that is FAILED now, and the state to remember.

        The first sighting restarts at once; each later restart waits out the backoff
        of the previous one; when the backoff after the last budgeted restart has
        passed and the task is still failed, escalate once, then only remember.
        """
        current = state or RestartState(first_failed_ms=now_ms)
        if current.escalated:
            return Action.ESCALATED, current
        if now_ms < current.next_attempt_ms:
            return Action.WAIT, current
        if current.attempts >= self.budget:
            return Action.ESCALATE, RestartState(
                current.first_failed_ms, current.attempts, current.next_attempt_ms, True
            )
        attempts = current.attempts + 1
        next_ms = now_ms + int(self.backoff_s(attempts) * MS_PER_S)
        return Action.RESTART, RestartState(current.first_failed_ms, attempts, next_ms, False)
