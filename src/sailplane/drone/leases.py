"""The drone's side of the key leases: stop every backend before its lease can run out.

Every heartbeat lists the drone's live backends; the controller's ``lease_renewal`` answer
(echoing the heartbeat's time) extends their leases from that time and names the backends it
*revokes* (it counts them terminated, or never knew them), which the drone kills at once. A
drone that has heard no renewal for ``LEASE_SELF_STOP_SHARE`` of the lease (its link is down,
it was paused, the controller is gone) kills all its backends itself: by the time the
controller gives their keys to new backends (lease plus a margin), they are gone.

    heartbeat(t) --> controller: lease until t' + lease  (t' >= t, its own clock)
    renewal(t)   <-- the drone counts the lease from t, the earlier, safe side
    no renewal for share * lease --> SIGKILL every backend (reason ``lost``)

A drone starting up counts from the last renewal its watchdog's lease file records (from its
start if there is none): it adopts its containers and has what is left of that time to reach
the controller, whose first renewal revokes whatever was declared lost meanwhile.

All this runs in the drone's own process, which can be paused or wedged; the lease watchdog
(``sailplane.drone.watchdog``), a process of its own that the keeper starts and tells every
new lapse time, kills the drone's containers then.
"""

from __future__ import annotations

import asyncio
import logging

from sailplane.drone.executor import Executor
from sailplane.drone.watchdog import Watchdog
from sailplane.state import TerminationReason, now_ms
from sailplane.timing import LEASE_CHECK_SECONDS, LEASE_SECONDS, LEASE_SELF_STOP_SHARE

log = logging.getLogger(__name__)

LAPSED_MESSAGE = "the drone could not renew its key lease, so it stopped the backend"
REVOKED_MESSAGE = "the controller revoked the backend's key lease (it counts it terminated)"


class LeaseKeeper:
    def __init__(self, executor: Executor, lease_ms: int = int(LEASE_SECONDS * 1000),
                 share: float = LEASE_SELF_STOP_SHARE, watchdog: Watchdog | None = None) -> None:
        self.executor = executor
        self.lease_ms = lease_ms  # replaced by what each renewal says
        self.share = share
        self.renewed_ms = now_ms()
        self.watchdog = watchdog
        last = watchdog.last_lease() if watchdog is not None else None
        if last is not None:  # a restart: the controller counts from that renewal too
            self.renewed_ms, self.lease_ms = last.renewed_ms, last.lease_ms
        # The watchdog kills by drone id; it runs only for a drone the controller accepted
        # (now, or in an earlier run: a lease file), never for a second drone taking a live
        # drone's id, whose containers it would kill.
        self._accepted = last is not None
        self._kills: set[asyncio.Task[None]] = set()

    def live(self) -> list[str]:
        """The backends this drone runs, for a heartbeat."""
        return [record.backend_id for record in self.executor.store.unfinished()]

    def renewed(self, heartbeat_ms: int, lease_ms: int, revoked: list[str]) -> None:
        self.renewed_ms = max(self.renewed_ms, heartbeat_ms)
        self.lease_ms = lease_ms
        self._accepted = True
        self._feed()
        # Only now, reconciled with the controller, may starts a crash interrupted run again.
        self.executor.resume_starts(set(revoked))
        for backend_id in revoked:
            log.warning("backend %s: %s", backend_id, REVOKED_MESSAGE)
            self._kill(backend_id, revoked=True)

    @property
    def stop_at_ms(self) -> int:
        return self.renewed_ms + int(self.lease_ms * self.share)

    def check(self, now: int) -> list[str]:
        """Kill every backend if the lease is about to lapse; the ids killed."""
        if now < self.stop_at_ms:
            return []
        doomed = [b for b in self.live() if b not in self._killing()]
        if doomed:
            log.error("no lease renewal for %.1f s: stopping %d backends before their "
                      "leases end", (now - self.renewed_ms) / 1000, len(doomed))
        for backend_id in doomed:
            self._kill(backend_id)
        return doomed

    async def watch(self, interval: float = LEASE_CHECK_SECONDS) -> None:
        """Check the lease (and that the watchdog runs) until cancelled; then let the
        watchdog know the drone is leaving."""
        self._feed()  # before the watchdog starts: it finds this drone's lease
        try:
            while True:
                if self.watchdog is not None and self._accepted:
                    self.watchdog.ensure_running()
                self.check(now_ms())
                await asyncio.sleep(interval)
        finally:
            if self.watchdog is not None:
                self.watchdog.stop()

    def _feed(self) -> None:
        if self.watchdog is not None and self._accepted:
            self.watchdog.feed(self.renewed_ms, self.lease_ms, self.stop_at_ms)

    def _killing(self) -> set[str]:
        return {task.get_name() for task in self._kills}

    def _kill(self, backend_id: str, revoked: bool = False) -> None:
        if backend_id in self._killing():
            return
        # A lapse is not a revocation: the controller may still hold the key, so it must
        # hear of no termination before the container is gone.
        stop = (self.executor.revoke(backend_id) if revoked
                else self.executor.terminate(backend_id, True, TerminationReason.LOST))
        task = asyncio.create_task(stop, name=backend_id)
        self._kills.add(task)
        task.add_done_callback(self._kills.discard)
