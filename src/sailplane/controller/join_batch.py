"""Group commit for the connect hot path: connects to live keys are answered in batches.

A connect to a key whose backend runs needs one read (the key's backend) and one write (the
fresh token it is answered with). One transaction per connect, in a worker thread each, makes
SQLite's single writer the queue (each thread takes the write lock in turn, and one that
finds it taken sleeps in SQLite's busy handler) and costs PostgreSQL one commit per connect.

Here the connects that arrive while a batch is being committed wait for the next one; a batch
is one transaction in one worker thread: one read of every key in it (an index scan of the
key lock's primary key), one insert of all their tokens, one commit, and only then the
answers. So nothing is answered before it is durable, each key's backend is read in the same
transaction that stores its token (as on the full path), and a transaction's cost is shared
by every connect in it. Under no load a batch holds one connect and starts at once: there is
no timer to wait for.

This path only joins: a connect whose key is not live here (free, held by a backend on its
way out, asked for with another tag) gets None and takes the full path
(:func:`sailplane.controller.backends.connect`), which spawns, waits for the key or refuses.
Spawning is never batched, so the key lock and everything that guards one backend per key
stay exactly where they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, insert, select, tuple_
from sqlalchemy.exc import OperationalError

from sailplane.controller.backends import Urls, connect_response, joinable, new_token_row
from sailplane.controller.db.engine import SQLITE_LOCK_WAIT_SECONDS, is_lock_busy, make_engine
from sailplane.controller.db.tables import backend_keys, backends, tokens
from sailplane.controller.models import ConnectResponse
from sailplane.spec import ConnectRequest
from sailplane.state import BackendStatus

log = logging.getLogger(__name__)

# The most connects one transaction answers (a bound on its statement's parameters and on
# how long a batch holds SQLite's write lock); more wait for the next batch.
MAX_BATCH = 256
LOCK_RETRY_SECONDS = 0.001

_COLUMNS = (backend_keys.c.namespace, backend_keys.c.name, backends.c.id, backends.c.status,
            backends.c.stop_requested, backends.c.key_tag, backends.c.static_token,
            backends.c.drone_id, backends.c.secret_token)


def join_live(
    engine: Engine, requests: Sequence[ConnectRequest], urls: Urls,
) -> list[ConnectResponse | None]:
    """For each request (each has a key), the response joining its key's live backend, or None
    if the key is not live; the tokens of all of them are committed in one transaction.

    On SQLite ``engine`` should not wait for locks (``make_engine(wait_for_locks=False)``):
    while another transaction holds the write lock, the batch is tried again every
    :data:`LOCK_RETRY_SECONDS`, so it starts within a moment of the lock's release rather
    than after one of SQLite's growing sleeps."""
    deadline = time.monotonic() + SQLITE_LOCK_WAIT_SECONDS
    while True:
        try:
            with engine.begin() as conn:
                return _join_live(conn, requests, urls)
        except OperationalError as exc:
            if not is_lock_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(LOCK_RETRY_SECONDS)


def _join_live(
    conn: Connection, requests: Sequence[ConnectRequest], urls: Urls,
) -> list[ConnectResponse | None]:
    wanted = list({(r.key.namespace, r.key.name) for r in requests if r.key is not None})
    answers: list[ConnectResponse | None] = []
    found = {(row.namespace, row.name): row for row in conn.execute(
        select(*_COLUMNS).join(backends, backends.c.id == backend_keys.c.backend_id)
        .where(tuple_(backend_keys.c.namespace, backend_keys.c.name).in_(wanted)))}
    new_tokens = []
    for request in requests:
        assert request.key is not None
        row = found.get((request.key.namespace, request.key.name))
        if row is None or not joinable(row.status, row.stop_requested, row.key_tag,
                                       request.key):
            answers.append(None)
            continue
        token = row.static_token
        if not token:
            values = new_token_row(row.id, request)
            new_tokens.append(values)
            token = values["token"]
        answers.append(connect_response(row.id, False, BackendStatus(row.status), token,
                                        row.drone_id, row.secret_token, urls))
    if new_tokens:
        conn.execute(insert(tokens), new_tokens)
    return answers


@dataclass
class _Waiting:
    request: ConnectRequest
    answer: asyncio.Future[ConnectResponse | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class JoinBatcher:
    """Answers connects to live keys, every connect that waits meanwhile in one transaction."""

    def __init__(self, engine: Engine, urls: Urls, max_batch: int = MAX_BATCH) -> None:
        # On SQLite the batches have an engine of their own that does not sleep on the write
        # lock (see join_live); PostgreSQL has no such lock, and the batches share the pool.
        self._engine = engine if engine.dialect.name != "sqlite" else make_engine(
            engine.url.render_as_string(hide_password=False), wait_for_locks=False)
        self._own_engine = self._engine is not engine
        self._urls = urls
        self._max_batch = max_batch
        self._waiting: list[_Waiting] = []
        self._committing: asyncio.Task[None] | None = None

    async def join(self, request: ConnectRequest) -> ConnectResponse | None:
        """The response joining the key's live backend (its token stored), or None if the key
        is not live. Raises what the database raised for the batch."""
        waiting = _Waiting(request)
        self._waiting.append(waiting)
        if self._committing is None:
            self._committing = asyncio.create_task(self._commit_batches())
        return await waiting.answer

    async def close(self) -> None:
        """Stop committing; connects still waiting are cancelled."""
        if self._committing is not None:
            self._committing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committing
        if self._own_engine:
            self._engine.dispose()

    async def _commit_batches(self) -> None:
        batch: list[_Waiting] = []
        try:
            while self._waiting:
                batch = self._waiting[:self._max_batch]
                del self._waiting[:self._max_batch]
                try:
                    answers = await asyncio.to_thread(
                        join_live, self._engine, [w.request for w in batch], self._urls)
                except Exception as exc:  # each connect of the batch answers with it (a 500)
                    for waiting in batch:
                        if not waiting.answer.done():
                            waiting.answer.set_exception(exc)
                    continue
                for waiting, answer in zip(batch, answers, strict=True):
                    if not waiting.answer.done():  # its client may have gone
                        waiting.answer.set_result(answer)
        finally:
            self._committing = None
            for waiting in [*batch, *self._waiting]:
                waiting.answer.cancel()  # a no-op for those answered
            self._waiting.clear()
