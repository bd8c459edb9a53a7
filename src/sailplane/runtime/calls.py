"""Engine calls, bounded: at most ``limit`` in flight per runtime, on threads of its own.

A drone with a thousand backends asks its engine a thousand things at once when it stops them
all. Fired together, they queue inside the engine (which then answers everything late) or, run
through ``asyncio.to_thread``, on the loop's default pool (``min(32, cores + 4)`` threads,
shared with everything else in the process). So each runtime owns one :class:`EngineCalls`:
a semaphore that every engine call holds while it runs, and, for blocking client libraries,
a thread pool of exactly that size, so no call waits for a thread once it holds its slot.

    calls = EngineCalls("docker")
    container = await calls.thread(client.containers.get, name)   # blocking SDK call
    async with calls.slot():                                       # a subprocess (ctr)
        await run_ctr(...)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# Engine calls one runtime has in flight at most. dockerd and containerd serve a few dozen
# concurrent requests well on a small machine; more only lengthens every answer.
MAX_ENGINE_CALLS = 16


class EngineCalls:
    """The engine-call budget of one runtime (see the module docstring)."""

    def __init__(self, name: str, limit: int = MAX_ENGINE_CALLS) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._name = name
        self._held = 0
        self._pool: ThreadPoolExecutor | None = None  # made on the first threaded call

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the ``limit`` slots for a call made some other way (a subprocess)."""
        async with self._slots:
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1

    async def thread(self, function: Callable[..., T], /, *args: object) -> T:
        """Run the blocking ``function(*args)`` on the runtime's pool, holding a slot.

        Cancelling the caller does not stop a call already running; its slot is freed at
        once and the pool (of ``limit`` threads) bounds what still runs."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.limit, thread_name_prefix=f"{self._name}-call")
        async with self.slot():
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, functools.partial(function, *args))

    @property
    def in_flight(self) -> int:
        """Slots held now (for tests and metrics)."""
        return self._held

    def close(self) -> None:
        """Let the pool's threads end once their calls return; new calls are refused."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
