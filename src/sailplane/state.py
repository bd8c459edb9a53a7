"""The backend lifecycle (docs/architecture.md) as an enum, and its one rule: only ever forward.

    scheduled -> loading -> starting -> waiting -> ready
              -> terminating -> hard-terminating -> terminated

Any state may jump ahead (a refused mount goes from ``loading`` straight to ``terminated``),
none may go back or repeat. ``terminated`` is final and carries a :class:`TerminationReason`.
"""

from __future__ import annotations

import time
from enum import StrEnum

from pydantic import BaseModel

from sailplane.errors import SailplaneError


class BackendStatus(StrEnum):
    SCHEDULED = "scheduled"
    LOADING = "loading"
    STARTING = "starting"
    WAITING = "waiting"
    READY = "ready"
    TERMINATING = "terminating"
    HARD_TERMINATING = "hard-terminating"
    TERMINATED = "terminated"

    @property
    def rank(self) -> int:
        return _ORDER.index(self)

    @property
    def is_alive(self) -> bool:
        """True until the backend is terminating: it may still serve (or soon) traffic."""
        return self.rank < BackendStatus.TERMINATING.rank


_ORDER = list(BackendStatus)


class TerminationReason(StrEnum):
    SWEPT = "swept"
    LIFETIME = "lifetime"
    EXTERNAL = "external"
    EXITED = "exited"
    LOST = "lost"
    STARTUP_TIMEOUT = "startup-timeout"
    ERROR = "error"


class InvalidTransition(SailplaneError):
    """Raised when a backend would move backwards or repeat a state."""

    code = "invalid_transition"


def check_transition(current: BackendStatus, new: BackendStatus) -> None:
    if new.rank <= current.rank:
        raise InvalidTransition(
            f"a backend in state {current.value!r} can only move forward, not to {new.value!r}"
        )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class BackendState(BaseModel):
    """One step of a backend's history, as reported by the drone and served by the API."""

    status: BackendStatus
    time: int  # milliseconds since the epoch
    reason: TerminationReason | None = None
    exit_code: int | None = None
    message: str | None = None
