"""Requests for one command that arrive together, run as one process per batch.

Stopping a thousand backends asks ``ctr`` to delete a thousand containers within a few
seconds. One ``ctr`` process per container costs a process start, a Go runtime and a gRPC
connection each time, which is most of the work on a small machine; ``ctr containers delete``
and ``ctr tasks delete`` take many ids, so the runtime hands them ids in batches instead::

    deletes = Batcher(delete_many, calls.slot)
    await deletes.submit("sailplane-b1")   # raises what the batch reported for this id

A batch gathers for ``window`` and is taken only once it holds one of the runtime's
engine-call slots: while every slot is busy, requests pile up and the next batch takes them
(up to ``max_batch``; a bigger backlog starts the batch after it at once). So a quiet drone
runs a lone id after ``window`` and a busy one few, full batches. Several batches run at once,
each holding its own slot, so containerd still works on several ids in parallel (``ctr``
handles the ids of one batch one after another).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager

# Long enough for the exits of a terminate-all, which arrive within microseconds of each
# other, to meet; short against a single removal (tens of milliseconds).
BATCH_WINDOW_SECONDS = 0.005
# A batch is worked through one id at a time; this many keeps one ``ctr`` under a second or
# so and leaves the other ids to batches running beside it.
MAX_BATCH = 16

# Runs one batch: the ids that failed, each with its own error (the others succeeded). An
# exception raised instead is every id's error.
BatchRun = Callable[[list[str]], Awaitable[Mapping[str, Exception]]]


class Batcher:
    """Collects ids for one command and runs them in batches (see the module docstring)."""

    def __init__(
        self, run: BatchRun, slot: Callable[[], AbstractAsyncContextManager[None]],
        window: float = BATCH_WINDOW_SECONDS, max_batch: int = MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self._run = run
        self._slot = slot
        self._window = window
        self._max_batch = max_batch
        self._pending: dict[str, list[asyncio.Future[None]]] = {}  # in arrival order
        self._collecting = False  # a batch is gathering (waiting for the window or a slot)
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, key: str) -> None:
        """Run the command for ``key`` in the next batch; raises that batch's error for it.

        Cancelling the caller withdraws ``key`` if its batch has not been taken yet; once
        taken, the command runs for it anyway (as a cancelled single call would have)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append(future)
        if not self._collecting:
            self._start_batch(self._window)
        await future

    def _start_batch(self, window: float) -> None:
        self._collecting = True
        task = asyncio.create_task(self._batch(window))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _batch(self, window: float) -> None:
        batch: dict[str, list[asyncio.Future[None]]] = {}
        taken = False
        try:
            await asyncio.sleep(window)
            async with self._slot():
                batch, taken = self._take(), True
                self._collecting = False
                if self._pending:  # a backlog: the next batch needs no window to fill
                    self._start_batch(0)
                if batch:
                    await self._settle(batch)
        except BaseException:  # cancelled (the loop is closing): nobody is left waiting
            if not taken:  # this batch was the one gathering: its callers go with it
                self._collecting = False
                batch = {key: self._pending.pop(key) for key in list(self._pending)}
            for future in (future for futures in batch.values() for future in futures):
                future.cancel()
            raise

    async def _settle(self, batch: dict[str, list[asyncio.Future[None]]]) -> None:
        """Run the command for the batch and tell each caller its own outcome."""
        try:
            failures: Mapping[str, Exception] = await self._run(list(batch))
        except Exception as exc:  # the whole command failed: so did each id
            failures = dict.fromkeys(batch, exc)
        for key, futures in batch.items():
            error = failures.get(key)
            for future in futures:
                if future.done():  # its caller was cancelled meanwhile
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

    def _take(self) -> dict[str, list[asyncio.Future[None]]]:
        """Up to ``max_batch`` pending ids whose callers still wait, oldest first."""
        batch: dict[str, list[asyncio.Future[None]]] = {}
        for key in list(self._pending):
            if len(batch) == self._max_batch:
                break
            waiting = [future for future in self._pending.pop(key) if not future.done()]
            if waiting:
                batch[key] = waiting
        return batch

    async def close(self) -> None:
        """Wait for the batches under way (their callers wait for them anyway)."""
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
