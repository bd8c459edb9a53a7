"""Key leases on the controller's side: renewal by heartbeat, revocation, release on expiry.

A backend holds its key (a ``backend_keys`` row) under a lease. Each heartbeat of its drone
moves the lease's end ``lease_ms`` ahead. The controller never hands a key to a new backend
while an old one may still run:

* the drone reports the backend ``terminated``: its container is gone, the key is free now;
* the controller itself ends it (``lost``, its drone went silent): the key stays held until the
  lease has run out plus ``margin_ms``; by then the drone, hearing no renewal, has killed the
  container itself (``sailplane.drone.leases``).

A heartbeat lists what the drone runs; whatever of that the controller counts as terminated
(or never knew) is *revoked*, and the drone kills it before anything else: a drone returning
after its backends were declared lost reconciles this way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, and_, bindparam, delete, select, update

from sailplane.controller.db.queries import LIVE_STATUSES
from sailplane.controller.db.tables import backend_keys, backends
from sailplane.state import BackendStatus
from sailplane.timing import KEY_RELEASE_MARGIN_SECONDS, LEASE_SECONDS


@dataclass(frozen=True)
class LeaseTerms:
    lease_ms: int = int(LEASE_SECONDS * 1000)
    margin_ms: int = int(KEY_RELEASE_MARGIN_SECONDS * 1000)

    @classmethod
    def of(cls, lease_seconds: float, margin_seconds: float) -> LeaseTerms:
        return cls(int(lease_seconds * 1000), int(margin_seconds * 1000))

    def releasable(self, expires_ms: int | None, now: int) -> bool:
        """Whether a lost backend's key may go to another backend at ``now``."""
        return expires_ms is None or now >= expires_ms + self.margin_ms


DEFAULT_TERMS = LeaseTerms()


def renew(
    conn: Connection, drone_id: str, live: Iterable[str] | None, now: int, terms: LeaseTerms,
) -> list[str]:
    """Extend the leases of the drone's live backends; return those of ``live`` to revoke."""
    mine = select(backends.c.id).where(backends.c.drone_id == drone_id,
                                       backends.c.status.in_(LIVE_STATUSES))
    conn.execute(update(backend_keys).where(backend_keys.c.backend_id.in_(mine))
                 .values(expires_ms=now + terms.lease_ms))
    listed = sorted(set(live or ()))
    if not listed:
        return []
    alive = set(conn.execute(
        select(backends.c.id).where(backends.c.id.in_(listed), backends.c.drone_id == drone_id,
                                    backends.c.status != BackendStatus.TERMINATED.value)
    ).scalars())
    return [backend_id for backend_id in listed if backend_id not in alive]


def release_expired(conn: Connection, now: int, terms: LeaseTerms) -> int:
    """Free the keys of terminated backends whose lease (plus the margin) has run out."""
    ended = select(backends.c.id).where(backends.c.status == BackendStatus.TERMINATED.value)
    result = conn.execute(delete(backend_keys).where(and_(
        backend_keys.c.backend_id.in_(ended),
        backend_keys.c.expires_ms < now - terms.margin_ms,
    )))
    return int(result.rowcount or 0)


def release(conn: Connection, backend_id: str) -> None:
    """Free the backend's key now (its drone confirmed the container is gone)."""
    conn.execute(_RELEASE, {"backend_id": backend_id})


_RELEASE = delete(backend_keys).where(backend_keys.c.backend_id == bindparam("backend_id"))
