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

    async def wait(self, topic: str, timeout: float) -> None:
        """Return when ``topic`` is notified, or after ``timeout`` seconds."""
        event = self._events[topic]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
