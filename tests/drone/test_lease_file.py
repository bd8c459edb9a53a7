"""The lease keeper and its watchdog's lease file: written only for an accepted drone, and
read back by a restarted one. (The watchdog process itself: tests/integration/
test_drone_faults.py.)"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

from sailplane.drone.executor import Executor
from sailplane.drone.leases import LeaseKeeper
from sailplane.drone.watchdog import (
    LeaseRecord,
    Watchdog,
    WatchdogConfig,
    read_lease,
    write_lease,
)
from sailplane.state import now_ms


class NoInterruptedStarts:
    """What the keeper asks of an executor when renewals revoke nothing."""

    def resume_starts(self, revoked: set[str]) -> None:
        pass


def keeper(state_dir: Path) -> LeaseKeeper:
    config = WatchdogConfig(drone_id="d1", drone_pid=os.getpid(), state_dir=state_dir)
    return LeaseKeeper(cast(Executor, NoInterruptedStarts()), lease_ms=10_000, share=0.5,
                       watchdog=Watchdog(config))


def test_no_lease_file_before_the_controller_accepts_the_drone(tmp_path: Path) -> None:
    first = keeper(tmp_path)
    first._feed()  # what watch() does first
    assert read_lease(tmp_path / "lease.json") is None

    renewal = now_ms() + 1_000  # later than the keeper's start, which it counts from
    first.renewed(renewal, 8_000, revoked=[])
    written = read_lease(tmp_path / "lease.json")
    assert written is not None
    assert (written.drone_pid, written.renewed_ms, written.lease_ms) == (
        os.getpid(), renewal, 8_000)
    assert written.stop_at_ms == renewal + 4_000  # half the lease, as this keeper's share


def test_a_restarted_drone_counts_from_the_last_renewal_not_its_start(tmp_path: Path) -> None:
    renewal = now_ms() - 3_000  # an earlier run's last renewal, 3 s ago
    write_lease(tmp_path / "lease.json", LeaseRecord(
        drone_pid=1, renewed_ms=renewal, lease_ms=8_000, stop_at_ms=renewal + 4_000))
    again = keeper(tmp_path)
    assert (again.renewed_ms, again.lease_ms) == (renewal, 8_000)
    assert again.stop_at_ms == renewal + 4_000
    again._feed()  # accepted in that earlier run: it writes its own pid at once
    written = read_lease(tmp_path / "lease.json")
    assert written is not None and written.drone_pid == os.getpid()
