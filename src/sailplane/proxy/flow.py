"""What the proxy's two protocols share: their transport, and back-pressure between them.

When our writes to one side pile up above the transport's high-water mark (asyncio calls
``pause_writing``), we stop reading the *other* side until the writes drain. The pause is
remembered (``held``) so it is always undone: by the drain, or when the exchange ends.
"""

from __future__ import annotations

import asyncio
from typing import cast


class FlowControl(asyncio.Protocol):
    """Base of both proxy protocols; a subclass's ``pause_writing`` calls :meth:`hold`."""

    transport: asyncio.Transport
    write_paused = False  # our writes to this side are above the high-water mark
    held: asyncio.Transport | None = None  # the other side, paused for that reason

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def resume_writing(self) -> None:
        self.write_paused = False
        self.release()

    def hold(self, other: asyncio.Transport) -> None:
        """Stop reading ``other`` until this side has taken what we wrote to it."""
        self.release()
        self.held = other
        other.pause_reading()

    def release(self) -> None:
        if self.held is not None:
            self.held.resume_reading()
            self.held = None
