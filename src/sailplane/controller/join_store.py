"""One batch of live-key joins as one transaction, on each database (``join_batch`` batches).

A batch reads the backend holding each of its keys, decides each connect
(:func:`answer_batch`), inserts the fresh tokens, and commits; only then are the answers
given. How the transaction runs is the database's business:

* SQLite (:class:`SqliteJoins`): SQLAlchemy on the event loop itself. SQLite is a library
  call away, and a batch's few statements cost less than handing them to a worker thread,
  which gives the interpreter lock up at every statement and every row and must then wait to
  take it back from a busy event loop (up to its switch interval, 5 ms, each time). So that
  the loop never stops in SQLite, the batch's connections do not wait for the write lock
  (while another transaction holds it the batch yields and is tried again every
  :data:`LOCK_RETRY_SECONDS`, where SQLite's own busy handler would sleep up to 100 ms a time)
  and do not checkpoint the log at commit (a checkpoint fsyncs): a worker thread does, every
  :data:`CHECKPOINT_EVERY` batches, on the controller's own engine, while batches go on (a
  ``PASSIVE`` checkpoint waits for no one). Such a checkpoint copies the log into the database
  file, but under steady load the log is never started anew (that takes a moment when every
  page in it is copied and nobody writes), so once it passes :data:`LOG_LIMIT_PAGES` the next
  batch waits for one that copies the rest and has the next writer start it from the
  beginning. Holding every batch for every checkpoint (copying and syncing hundreds of pages,
  each sync taking up to tens of milliseconds on a shared disk) made the connects' p99.
* PostgreSQL (:class:`PostgresJoins`): psycopg asynchronous connections driven by the event
  loop itself, up to four batches under way at once. Most of a batch's time is its commit
  waiting for the server's log flush (which durability needs); batches committing together
  share a flush, where a batch that found every connection busy would wait for whole
  flushes first. A worker thread would pay for each of the transaction's round trips twice: the
  network, then the wait to take the interpreter lock back from a busy event loop (up to its
  switch interval, 5 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import psycopg
from sqlalchemy import Engine, bindparam, event, insert, select, tuple_
from sqlalchemy.exc import OperationalError

from sailplane.controller.backends import Urls, connect_response, joinable, new_token_row
from sailplane.controller.db.engine import SQLITE_LOCK_WAIT_SECONDS, is_lock_busy, make_engine
from sailplane.controller.db.tables import backend_keys, backends, tokens
from sailplane.controller.models import ConnectResponse
from sailplane.spec import ConnectRequest
from sailplane.state import BackendStatus

log = logging.getLogger(__name__)

LOCK_RETRY_SECONDS = 0.001
# Batches between two checkpoints of SQLite's log by a worker thread (each batch appends a
# few pages; SQLite's own default is to checkpoint at 1,000 pages).
CHECKPOINT_EVERY = 200
# The log's size (4 KiB pages) past which batches wait for it to be started anew: bounded
# disk, and a hold every few seconds under full load instead of one per checkpoint.
LOG_LIMIT_PAGES = 16_000

Answers = list[ConnectResponse | None]


class JoinStore(Protocol):
    parallel: int  # how many batches may be under way at once

    async def join(self, requests: Sequence[ConnectRequest]) -> Answers:
        """Each request's answer (None: its key is not live), its token committed."""

    async def close(self) -> None: ...


def store_for(engine: Engine, urls: Urls) -> JoinStore:
    """The store for the controller's database."""
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name == "sqlite":
        return SqliteJoins(make_engine(url, wait_for_locks=False), urls, checkpointer=engine)
    return PostgresJoins(engine.url.set(drivername="postgresql")
                         .render_as_string(hide_password=False), urls)


# The backend row columns a decision needs, in this order, after the key's namespace and name.
_COLUMNS = (backend_keys.c.namespace, backend_keys.c.name, backends.c.id, backends.c.status,
            backends.c.stop_requested, backends.c.key_tag, backends.c.static_token,
            backends.c.drone_id, backends.c.secret_token)


def answer_batch(
    requests: Sequence[ConnectRequest], rows: Iterable[Sequence[Any]], urls: Urls,
) -> tuple[Answers, list[dict[str, Any]]]:
    """Each request's answer from the rows read (:data:`_COLUMNS`), and the token rows to
    insert before any answer is given."""
    found = {(row[0], row[1]): row for row in rows}
    answers: Answers = []
    new_tokens: list[dict[str, Any]] = []
    for request in requests:
        assert request.key is not None
        row = found.get((request.key.namespace, request.key.name))
        if row is None:
            answers.append(None)
            continue
        _, _, backend_id, status, stop_requested, key_tag, static, drone, secret = row
        if not joinable(status, stop_requested, key_tag, request.key):
            answers.append(None)
            continue
        token = static
        if not token:
            values = new_token_row(backend_id, request)
            new_tokens.append(values)
            token = values["token"]
        answers.append(connect_response(backend_id, False, BackendStatus(status), token, drone,
                                        secret, urls))
    return answers, new_tokens


def _keys(requests: Sequence[ConnectRequest]) -> list[tuple[str, str]]:
    return list({(r.key.namespace, r.key.name) for r in requests if r.key is not None})


class SqliteJoins:
    """Batches on the event loop itself; see the module. The engine's connections must not
    wait for locks (``make_engine(wait_for_locks=False)``)."""

    parallel = 1  # one writer at a time is all SQLite has

    def __init__(self, engine: Engine, urls: Urls, checkpointer: Engine,
                 checkpoint_every: int = CHECKPOINT_EVERY,
                 log_limit_pages: int = LOG_LIMIT_PAGES) -> None:
        self._engine = engine
        self._urls = urls
        self._checkpointer = checkpointer  # one that waits for locks: the controller's
        self._checkpoint_every = checkpoint_every
        self._log_limit_pages = log_limit_pages
        self._batches = 0
        self._checkpoint: asyncio.Task[int] | None = None  # a passive one, batches going on
        # A commit that checkpoints writes the database file and fsyncs it: not on the loop.
        event.listen(engine, "connect", _no_automatic_checkpoint)

    async def join(self, requests: Sequence[ConnectRequest]) -> Answers:
        if self._checkpoint is not None and self._checkpoint.done():
            pages, self._checkpoint = self._checkpoint.result(), None
            if pages >= self._log_limit_pages:
                # Here, between two batches: one writing now would keep the checkpoint from
                # ever taking the lock (it retries far more often than SQLite's busy handler).
                await asyncio.to_thread(self._checkpoint_wal, "RESTART")
        deadline = time.monotonic() + SQLITE_LOCK_WAIT_SECONDS
        while True:
            try:
                answers = self._join(requests)
                break
            except OperationalError as exc:  # all of it rolled back: nothing was answered
                if not is_lock_busy(exc) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(LOCK_RETRY_SECONDS)  # another writer: the loop goes on
        self._batches += 1
        if self._batches % self._checkpoint_every == 0 and self._checkpoint is None:
            self._checkpoint = asyncio.create_task(
                asyncio.to_thread(self._checkpoint_wal, "PASSIVE"))
        return answers

    async def close(self) -> None:
        if self._checkpoint is not None:
            await self._checkpoint
        self._engine.dispose()

    def _join(self, requests: Sequence[ConnectRequest]) -> Answers:
        with self._engine.begin() as conn:
            rows = conn.execute(_SQLITE_SELECT, {"keys": _keys(requests)})
            answers, new_tokens = answer_batch(requests, rows, self._urls)
            if new_tokens:
                conn.execute(_INSERT_TOKENS, new_tokens)
        return answers

    def _checkpoint_wal(self, mode: str) -> int:
        """Copy the log into the database file: ``PASSIVE`` what it can without waiting for
        anyone (batches go on), ``RESTART`` all of it, the next writer starting the log anew
        (batches wait; it waits for readers). The pages in the log (0 if it failed)."""
        raw = self._checkpointer.raw_connection()
        try:
            _busy, pages, _copied = raw.driver_connection.execute(  # type: ignore[union-attr]
                f"PRAGMA wal_checkpoint({mode})").fetchone()
            return int(pages)
        except sqlite3.Error as exc:  # the next one may succeed; batches go on meanwhile
            log.warning("checkpointing the SQLite log failed: %s", exc)
            return 0
        finally:
            raw.close()


def _no_automatic_checkpoint(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")


# Built once (an expanding parameter takes any number of keys): building the statement and
# its cache key cost more than running it.
_SQLITE_SELECT = (
    select(*_COLUMNS).join(backends, backends.c.id == backend_keys.c.backend_id)
    .where(tuple_(backend_keys.c.namespace, backend_keys.c.name)
           .in_(bindparam("keys", expanding=True)))
)
_INSERT_TOKENS = insert(tokens)

_PG_SELECT = f"""
SELECT {", ".join(f"{c.table.name}.{c.name}" for c in _COLUMNS)}
FROM unnest(%s::text[], %s::text[]) AS wanted(namespace, name)
JOIN {backend_keys.name} ON {backend_keys.name}.namespace = wanted.namespace
                        AND {backend_keys.name}.name = wanted.name
JOIN {backends.name} ON {backends.name}.id = {backend_keys.name}.backend_id
"""
_PG_INSERT = f"""
INSERT INTO {tokens.name} (token, backend_id, username, auth, created_ms)
SELECT token, backend_id, username, auth::json, created_ms
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[])
     AS new(token, backend_id, username, auth, created_ms)
"""


class PostgresJoins:
    """Batches on asynchronous connections, :attr:`parallel` at once: while one batch waits
    for the server the next one is under way. A connection is opened when none is idle and
    closed when its batch failed (it may be what broke)."""

    # Measured on a loaded machine, against two, in eight interleaved rounds each: 1.6x the
    # connects per second and a lower p50 (more batches share each log flush), p99 no worse.
    parallel = 4

    def __init__(self, conninfo: str, urls: Urls) -> None:
        self._conninfo = conninfo
        self._urls = urls
        self._idle: list[psycopg.AsyncConnection[Any]] = []

    async def join(self, requests: Sequence[ConnectRequest]) -> Answers:
        conn = self._idle.pop() if self._idle else \
            await psycopg.AsyncConnection.connect(self._conninfo)
        keys = _keys(requests)
        try:
            # Pipelined: BEGIN goes with the read, the insert with COMMIT; two round trips.
            async with conn.pipeline(), conn.transaction():
                cursor = await conn.execute(_PG_SELECT, ([k[0] for k in keys],
                                                         [k[1] for k in keys]))
                answers, new_tokens = answer_batch(requests, await cursor.fetchall(),
                                                   self._urls)
                if new_tokens:
                    await conn.execute(_PG_INSERT, tuple(
                        [row[column] if column != "auth" else json.dumps(row[column])
                         for row in new_tokens]
                        for column in ("token", "backend_id", "username", "auth",
                                       "created_ms")))
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
            raise
        self._idle.append(conn)
        return answers

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
