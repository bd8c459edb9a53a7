"""The drone's local SQLite state: its backends, their hot-plugged mounts, and an outbox of
state events.

Every state change is written to the outbox in order, in the same transaction as the
backend's new status, and stays there until the controller acknowledges it, so a dropped
connection or a drone restart loses no event. SQLite writes take tens of microseconds in WAL
mode, so they run on the event loop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, TypeAdapter

from sailplane.mounts.hot_plug import LiveMount
from sailplane.protocol import SpawnBackend
from sailplane.runtime.base import BackendAddress
from sailplane.sqlite_files import make_private
from sailplane.state import BackendState, BackendStatus, TerminationReason

_SCHEMA = """
CREATE TABLE IF NOT EXISTS backends (
    backend_id TEXT PRIMARY KEY,
    spawn TEXT NOT NULL,
    status TEXT NOT NULL,
    host TEXT,
    port INTEGER,
    stop_reason TEXT
);
CREATE TABLE IF NOT EXISTS backend_mounts (
    backend_id TEXT PRIMARY KEY,
    mounts TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS start_retries (
    backend_id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    backend_id TEXT NOT NULL,
    state TEXT NOT NULL
);
"""


_live_mounts: TypeAdapter[list[LiveMount]] = TypeAdapter(list[LiveMount])


class BackendRecord(BaseModel):
    spawn: SpawnBackend
    status: BackendStatus
    address: tuple[str, int] | None = None
    stop_reason: TerminationReason | None = None

    @property
    def backend_id(self) -> str:
        return self.spawn.backend_id


@dataclass(frozen=True)
class OutboxEvent:
    seq: int
    backend_id: str
    state: BackendState


class DroneStore:
    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            make_private(Path(path))
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, spawn: SpawnBackend) -> bool:
        """Record a new backend as ``scheduled``; False if it is already known (a resend)."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO backends (backend_id, spawn, status) VALUES (?, ?, ?)",
            (spawn.backend_id, spawn.model_dump_json(), BackendStatus.SCHEDULED.value),
        )
        return cursor.rowcount == 1

    def record(self, backend_id: str, state: BackendState) -> int:
        """Set the backend's status and append the event to the outbox, atomically."""
        with self._transaction():
            self._db.execute(
                "UPDATE backends SET status = ? WHERE backend_id = ?",
                (state.status.value, backend_id),
            )
            cursor = self._db.execute(
                "INSERT INTO outbox (backend_id, state) VALUES (?, ?)",
                (backend_id, state.model_dump_json(exclude_none=True)),
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def set_address(self, backend_id: str, address: BackendAddress) -> None:
        self._db.execute(
            "UPDATE backends SET host = ?, port = ? WHERE backend_id = ?",
            (address.host, address.port, backend_id),
        )

    def set_stop_reason(self, backend_id: str, reason: TerminationReason) -> None:
        self._db.execute(
            "UPDATE backends SET stop_reason = ? WHERE backend_id = ?", (reason.value, backend_id)
        )

    def get(self, backend_id: str) -> BackendRecord | None:
        row = self._db.execute(
            "SELECT spawn, status, host, port, stop_reason FROM backends WHERE backend_id = ?",
            (backend_id,),
        ).fetchone()
        return None if row is None else _record(row)

    def unfinished(self) -> list[BackendRecord]:
        """Backends not yet ``terminated``, oldest first."""
        rows = self._db.execute(
            "SELECT spawn, status, host, port, stop_reason FROM backends "
            "WHERE status != ? ORDER BY rowid", (BackendStatus.TERMINATED.value,),
        ).fetchall()
        return [_record(row) for row in rows]

    def mounts(self, backend_id: str) -> list[LiveMount] | None:
        """A backend's mounts as hot-plug last left them; None if it never changed them
        (then they are those of its spawn)."""
        row = self._db.execute(
            "SELECT mounts FROM backend_mounts WHERE backend_id = ?", (backend_id,)
        ).fetchone()
        return None if row is None else _live_mounts.validate_json(row[0])

    def set_mounts(self, backend_id: str, mounts: list[LiveMount]) -> None:
        """Record a backend's mounts after a hot-plug change, so a restarted drone knows
        which pins its running backends hold."""
        self._db.execute(
            "INSERT INTO backend_mounts (backend_id, mounts) VALUES (?, ?) "
            "ON CONFLICT (backend_id) DO UPDATE SET mounts = excluded.mounts",
            (backend_id, _live_mounts.dump_json(mounts).decode()),
        )

    def start_retried(self, backend_id: str) -> bool:
        """Whether the backend's interrupted start ran again once already."""
        row = self._db.execute(
            "SELECT 1 FROM start_retries WHERE backend_id = ?", (backend_id,)).fetchone()
        return row is not None

    def retry_start(self, backend_id: str) -> bool:
        """Note that the backend's interrupted start runs again; False if it did once already."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO start_retries (backend_id) VALUES (?)", (backend_id,))
        return cursor.rowcount == 1

    def pending(self, after: int = 0, limit: int = 1000) -> list[OutboxEvent]:
        """Unacknowledged events after sequence number ``after``, in order."""
        rows = self._db.execute(
            "SELECT seq, backend_id, state FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [OutboxEvent(seq, bid, BackendState.model_validate_json(s)) for seq, bid, s in rows]

    def ack(self, seq: int) -> None:
        """The controller has stored every event up to ``seq``; forget them."""
        self._db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")



def _record(row: tuple[str, str, str | None, int | None, str | None]) -> BackendRecord:
    spawn, status, host, port, stop_reason = row
    return BackendRecord(
        spawn=SpawnBackend.model_validate_json(spawn),
        status=BackendStatus(status),
        address=(host, port) if host is not None and port is not None else None,
        stop_reason=TerminationReason(stop_reason) if stop_reason else None,
    )
