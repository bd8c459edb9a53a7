"""In-process wake-ups: a drone socket learns at once that an action was queued for it, a
status stream that its backend changed. Other controllers' changes arrive by polling the
database, so a missed wake-up costs latency, never correctness."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def notify(self, topic: str) -> None:
        if topic in self._events:
            self._events.pop(topic).set()

    def changed(self, topic: str) -> asyncio.Event:
        """The event the next notification of ``topic`` sets. Taken before reading what the
        topic guards, it also catches a change made while that read is under way."""
        return self._events[topic]

    async def wait(self, topic: str, timeout: float) -> None:
        """Return when ``topic`` is notified, or after ``timeout`` seconds."""
        await wait_set(self._events[topic], timeout)


async def wait_set(event: asyncio.Event, timeout: float) -> None:
    """Return when ``event`` is set, or after ``timeout`` seconds."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
