"""Engines for SQLite and PostgreSQL, and schema migration at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import OperationalError

from sailplane.sqlite_files import make_private

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_LOCK_WAIT_SECONDS = 30.0  # how long a SQLite transaction waits for the write lock
# Controllers sharing PostgreSQL start together; this advisory lock makes their migrations
# take turns (the second finds the schema at head) instead of racing on CREATE TABLE.
_MIGRATION_LOCK = 0x5A11_91A1


def make_engine(url: str, *, wait_for_locks: bool = True) -> Engine:
    """An engine for ``sqlite:///path`` (WAL, waits on locks) or ``postgresql://...``.

    ``wait_for_locks=False``: on SQLite, a transaction that finds the write lock taken fails
    at once ("database is locked") instead of sleeping in SQLite's busy handler, whose
    sleeps grow to 100 ms each; the caller retries at its own pace (no effect on
    PostgreSQL)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    options: dict[str, Any] = {}
    if url.startswith("sqlite"):
        options["connect_args"] = {"timeout": SQLITE_LOCK_WAIT_SECONDS if wait_for_locks else 0,
                                   "check_same_thread": False}
        database = make_url(url).database
        if database and database != ":memory:":
            make_private(Path(database))
    else:  # a server may restart under the pool (a SQLite file cannot go away like that)
        options |= {"pool_size": 20, "max_overflow": 20, "pool_pre_ping": True}
    engine = create_engine(url, **options)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        # Take the write lock at BEGIN, so two writers queue instead of deadlocking.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN itself
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (a no-op when it is there already)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def is_lock_busy(exc: OperationalError) -> bool:
    """Whether SQLite refused a transaction because another one holds the write lock."""
    return "database is locked" in str(exc.orig)
