"""Deadlines: lifetime limits, idle backends, and drones gone silent (docs/architecture.md)."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import Engine, select

from sailplane.controller.backends import request_termination
from sailplane.controller.db.tables import backends
from sailplane.controller.drones import mark_lost
from sailplane.controller.leases import DEFAULT_TERMS, LeaseTerms, release_expired
from sailplane.controller.notify import Notifier
from sailplane.state import BackendStatus, TerminationReason, now_ms
from sailplane.timing import DRONE_LOST_SECONDS, SWEEP_INTERVAL_SECONDS

log = logging.getLogger(__name__)
_ALIVE = [s.value for s in BackendStatus if s.is_alive]


def sweep_once(
    engine: Engine, now: int, lost_after_seconds: float, terms: LeaseTerms = DEFAULT_TERMS,
) -> list[str]:
    """Ask for the termination of every backend past a deadline; returns drones to wake.
    Marks silent drones' backends lost, and frees keys whose lease ran out.

    Idle time counts from ``ready`` or the last proxy report of a live connection."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(backends.c.id, backends.c.status, backends.c.lifetime_deadline_ms,
                   backends.c.max_idle_seconds, backends.c.last_active_ms)
            .where(backends.c.status.in_(_ALIVE), backends.c.stop_requested.is_(None))
        ).all()
    wake: list[str] = []
    for backend_id, status, deadline, max_idle, last_active in rows:
        reason = None
        if deadline is not None and now >= deadline:
            reason = TerminationReason.LIFETIME
        elif (max_idle is not None and status == BackendStatus.READY.value
              and now >= last_active + max_idle * 1000):
            reason = TerminationReason.SWEPT
        if reason is not None:
            log.info("backend %s: %s deadline reached", backend_id, reason.value)
            drone = request_termination(engine, backend_id, False, reason)
            if drone:
                wake.append(drone)
    lost = mark_lost(engine, now - int(lost_after_seconds * 1000))
    for backend_id in lost:
        log.warning("backend %s lost with its drone", backend_id)
    with engine.begin() as conn:
        freed = release_expired(conn, now, terms)
    if freed:
        log.info("freed %d keys of lost backends whose lease ran out", freed)
    return wake


async def run_sweeper(
    engine: Engine, notifier: Notifier, lost_after_seconds: float = DRONE_LOST_SECONDS,
    interval: float = SWEEP_INTERVAL_SECONDS, terms: LeaseTerms = DEFAULT_TERMS,
) -> None:
    while True:
        try:
            for drone in await asyncio.to_thread(sweep_once, engine, now_ms(),
                                                 lost_after_seconds, terms):
                notifier.notify(f"drone:{drone}")
        except Exception:
            log.exception("sweep failed; retrying")
        await asyncio.sleep(interval)
