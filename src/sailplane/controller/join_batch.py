"""Group commit for the connect hot path: connects to live keys are answered in batches.

A connect to a key whose backend runs needs one read (the key's backend) and one write (the
fresh token it is answered with). One transaction per connect, in a worker thread each, makes
SQLite's single writer the queue (each thread takes the write lock in turn, and one that
finds it taken sleeps in SQLite's busy handler) and costs PostgreSQL one commit per connect.

Here the connects that arrive while a batch is being committed wait for the next one. A batch
is one transaction (``join_store`` runs it, one way for each database): one read of every
key in it (by the key lock's primary key), one insert of all their tokens, one commit, and
only then the answers. So nothing is answered before it is durable, each key's backend is
read in the same transaction that stores its token (as on the full path), and the cost of a
transaction is shared by every connect in it. Under no load a batch holds one connect and
starts at once: there is no timer to wait for.

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
from dataclasses import dataclass, field

from sqlalchemy import Engine

from sailplane.controller.backends import Urls
from sailplane.controller.join_store import JoinStore, store_for
from sailplane.controller.models import ConnectResponse
from sailplane.errors import SailplaneError
from sailplane.spec import ConnectRequest

log = logging.getLogger(__name__)

# The most connects one transaction answers (a bound on its statement's parameters and on
# how long a batch holds SQLite's write lock); more wait for the next batch.
MAX_BATCH = 256


class JoinFailed(SailplaneError):
    """Raised to every connect of a batch whose transaction failed (the full path answers)."""

    code = "join_failed"


@dataclass
class _Waiting:
    request: ConnectRequest
    answer: asyncio.Future[ConnectResponse | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class JoinBatcher:
    """Answers connects to live keys, every connect that waits meanwhile in one transaction;
    up to the store's ``parallel`` transactions at once."""

    def __init__(self, engine: Engine, urls: Urls, max_batch: int = MAX_BATCH,
                 store: JoinStore | None = None) -> None:
        self._store = store or store_for(engine, urls)
        self._max_batch = max_batch
        self._waiting: list[_Waiting] = []
        self._committers: set[asyncio.Task[None]] = set()

    async def join(self, request: ConnectRequest) -> ConnectResponse | None:
        """The response joining the key's live backend (its token stored), or None if the key
        is not live. Raises :class:`JoinFailed` if the batch's transaction failed."""
        waiting = _Waiting(request)
        self._waiting.append(waiting)
        if len(self._committers) < self._store.parallel:
            self._committers.add(asyncio.create_task(self._commit_batches()))
        return await waiting.answer

    async def close(self) -> None:
        """Stop committing; connects still waiting are cancelled."""
        for task in list(self._committers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for waiting in self._waiting:
            waiting.answer.cancel()
        self._waiting.clear()
        await self._store.close()

    async def _commit_batches(self) -> None:
        batch: list[_Waiting] = []
        try:
            while self._waiting:
                batch = self._waiting[:self._max_batch]
                del self._waiting[:self._max_batch]
                try:
                    answers = await self._store.join([w.request for w in batch])
                except Exception as exc:
                    log.warning("a batch of %d connects failed (the full path answers them): "
                                "%s", len(batch), exc)
                    for waiting in batch:
                        if not waiting.answer.done():
                            waiting.answer.set_exception(JoinFailed(str(exc)))
                    continue
                for waiting, answer in zip(batch, answers, strict=True):
                    if not waiting.answer.done():  # its client may have gone
                        waiting.answer.set_result(answer)
        finally:
            # Here, not in a done callback: a connect arriving after the last batch was taken
            # must find this committer gone, or nothing would take it.
            task = asyncio.current_task()
            if task is not None:
                self._committers.discard(task)
            for waiting in batch:
                waiting.answer.cancel()  # a no-op for those answered
