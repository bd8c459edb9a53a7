"""SQLite files made private without dropping the process's own SQLite locks.

The defect these tests stop: making the controller's database 0600 opened and closed a
descriptor of the file while the process had it open, which drops every POSIX lock of the
process on it. Another process closing its connection (here: one that adds and drops a
trigger, as an operator's tool might) then deleted the write-ahead log under the
controller's connections: their later commits were lost, or failed with "disk I/O error".
"""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from sailplane.controller.db.engine import make_engine
from sailplane.sqlite_files import make_private

OTHER_PROCESS = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
db.execute("CREATE TRIGGER other BEFORE UPDATE ON t BEGIN SELECT RAISE(ABORT, 'x'); END")
db.execute("DROP TRIGGER other")
db.close()
"""


def rows_seen_by_a_new_process(path: Path) -> int:
    out = subprocess.run(
        [sys.executable, "-c", "import sqlite3, sys; "
         "print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM t').fetchone()[0])",
         str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout)


def another_process_opens_changes_and_closes(path: Path) -> None:
    subprocess.run([sys.executable, "-c", OTHER_PROCESS, str(path)], check=True)


def test_a_second_controller_engine_keeps_the_first_ones_commits(tmp_path: Path) -> None:
    """What the controller does at start: its engine, then the connect batches' own engine
    on the same file, then writes while another process comes and goes."""
    path = tmp_path / "c.db"
    first = make_engine(f"sqlite:///{path}")
    try:
        with first.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        make_engine(f"sqlite:///{path}").dispose()
        another_process_opens_changes_and_closes(path)
        assert path.with_name("c.db-wal").exists(), "the log was deleted under the engine"
        for value in (2, 3, 4):
            with first.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": value})
        assert rows_seen_by_a_new_process(path) == 4
    finally:
        first.dispose()


def test_making_an_open_database_private_keeps_its_locks(tmp_path: Path) -> None:
    """The drone's store: a plain sqlite3 connection, the file made private while open."""
    path = tmp_path / "drone.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x INTEGER)")
        db.execute("INSERT INTO t VALUES (1)")
        make_private(path)
        another_process_opens_changes_and_closes(path)
        db.execute("INSERT INTO t VALUES (2)")
        assert rows_seen_by_a_new_process(path) == 2
    finally:
        db.close()


def test_new_and_existing_files_end_up_0600(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    make_private(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    old = tmp_path / "old.db"
    for path in (old, old.with_name("old.db-wal"), old.with_name("old.db-shm")):
        path.write_bytes(b"")
        path.chmod(0o644)
    make_private(old)
    for path in (old, old.with_name("old.db-wal"), old.with_name("old.db-shm")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
