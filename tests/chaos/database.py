"""A database of the chaos run's own: a fresh SQLite file, or a fresh PostgreSQL database on
the test server (``SAILPLANE_TEST_POSTGRES_URL``), dropped afterwards. Other tests use that
server's default database at the same time; a database per run keeps them apart."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import psycopg

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:55432/sailplane_test"
Database = Literal["postgresql", "sqlite"]


class DatabaseMissing(RuntimeError):
    """PostgreSQL does not answer: the run fails (a missing engine is never a skip)."""


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def chaos_database(kind: Database, workdir: Path) -> Iterator[str]:
    """The URL of an empty database for one run."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir}/controller.db"
        return
    server = os.environ.get("SAILPLANE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    name = f"sailplane_chaos_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(server, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise DatabaseMissing(f"PostgreSQL at {server} does not answer (scripts/setup starts "
                              f"it; or set SAILPLANE_TEST_POSTGRES_URL): {exc}") from exc
    try:
        yield _with_database(server, name)
    finally:
        with psycopg.connect(server, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
