"""Query pieces shared by the controller's modules."""

from __future__ import annotations

from sqlalchemy import Subquery, func, select

from sailplane.controller.db.tables import backends
from sailplane.state import BackendStatus

LIVE_STATUSES = [s.value for s in BackendStatus if s is not BackendStatus.TERMINATED]


def drone_load() -> Subquery:
    """(drone_id, n): how many live backends each drone runs."""
    return (
        select(backends.c.drone_id, func.count().label("n"))
        .where(backends.c.status.in_(LIVE_STATUSES)).group_by(backends.c.drone_id).subquery()
    )
