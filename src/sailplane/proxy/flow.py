"""What the proxy's two protocols share: their transport, and pausing reads for reasons.

Reading one side can be paused for several reasons at once (the other side is slow to take
our writes, too many pipelined requests wait, an upgrade waits for the backend's ``101``...).
Each reason is a bit; reading resumes when the last one is cleared, so one reason ending
never undoes another's pause.

Back-pressure between the two sides: when our writes to one side pile up above the
transport's high-water mark (asyncio calls ``pause_writing``), we stop reading the *other*
side until the writes drain. The pause is remembered (``held``) so it is always undone: by
the drain, or when the exchange ends.
"""

from __future__ import annotations

import asyncio
from typing import cast

# Why a side's reading is paused (bits of ``FlowControl.paused``).
HELD = 1  # the other side is slow to take what we write to it
EARLY_BODY = 2  # a request body arrived before its backend connection was ready
PIPELINE = 4  # ``max_pipelined`` requests wait on this connection
UPGRADE = 8  # an upgrade request waits for the backend's verdict
REFUSED = 16  # the proxy answered its last word on this connection


class FlowControl(asyncio.Protocol):
    """Base of both proxy protocols; a subclass's ``pause_writing`` calls :meth:`hold`."""

    transport: asyncio.Transport
    write_paused = False  # our writes to this side are above the high-water mark
    held: FlowControl | None = None  # the other side, paused for that reason
    paused = 0  # reasons why reading this side is paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def pause(self, reason: int) -> None:
        if not self.paused:
            self.transport.pause_reading()
        self.paused |= reason

    def unpause(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused:
                self.transport.resume_reading()
                self.reading_resumed()

    def reading_resumed(self) -> None:
        """Called when the last reason to pause is gone."""

    def resume_writing(self) -> None:
        self.write_paused = False
        self.release()

    def hold(self, other: FlowControl) -> None:
        """Stop reading ``other`` until this side has taken what we wrote to it."""
        self.release()
        self.held = other
        other.pause(HELD)

    def release(self) -> None:
        if self.held is not None:
            self.held.unpause(HELD)
            self.held = None
