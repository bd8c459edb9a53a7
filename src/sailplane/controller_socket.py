"""The client side of a drone's or a proxy's long-lived WebSocket to a controller.

:func:`stay_connected` opens the socket, runs a session on it, and when the socket drops
(or never opens) tries again with exponential backoff, until cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from sailplane.timing import RECONNECT_MAX_SECONDS

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.1


def socket_url(controller_url: str, path: str) -> str:
    """``http://host:9090`` + ``/ctrl/drone-socket`` -> ``ws://host:9090/ctrl/drone-socket``."""
    base = controller_url.rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
    return base + path


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _reason(error: Exception) -> str:
    """One line for the log; a refused credential says so plainly."""
    if isinstance(error, InvalidStatus) and error.response.status_code in (401, 403):
        return (f"the controller refused this credential (HTTP "
                f"{error.response.status_code}); see docs/security.md")
    return str(error)


async def stay_connected(
    url: str, headers: dict[str, str],
    session: Callable[[ClientConnection], Awaitable[None]],
    on_lost: Callable[[], None],
) -> None:
    delay = FIRST_RETRY_SECONDS
    while True:
        try:
            async with websockets.connect(url, additional_headers=headers,
                                          open_timeout=5) as socket:
                delay = FIRST_RETRY_SECONDS
                await session(socket)
        # except*: a session's errors come wrapped in its TaskGroup's ExceptionGroup.
        except* (OSError, websockets.WebSocketException, TimeoutError) as group:
            log.warning("connection to %s lost (%s); retrying in %.1fs",
                        url, _reason(group.exceptions[0]), delay)
        finally:
            on_lost()
        await asyncio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_SECONDS)
