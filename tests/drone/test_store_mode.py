"""The drone's store holds every spawn's env and secret token: it is 0600, WAL files too."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sailplane.drone.store import DroneStore


def test_the_store_and_its_wal_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        path = tmp_path / "drone.db"
        DroneStore(path).close()
        path.chmod(0o644)  # an older store, made with the default umask
        store = DroneStore(path)
        store.ack(0)
        files = sorted(tmp_path.iterdir())
        assert [p.name for p in files][:2] == ["drone.db", "drone.db-shm"]
        for file in files:
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        store.close()
    finally:
        os.umask(old_umask)
