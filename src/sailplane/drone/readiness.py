"""Waiting for a backend's port to answer HTTP (the ``waiting`` state)."""

from __future__ import annotations

import asyncio

from sailplane.runtime.base import BackendAddress
from sailplane.timing import (
    READY_POLL_FIRST_SECONDS,
    READY_POLL_MAX_SECONDS,
    READY_PROBE_TIMEOUT_SECONDS,
)

_PROBE = (
    b"GET / HTTP/1.1\r\nHost: backend\r\nUser-Agent: sailplane-drone\r\n"
    b"Connection: close\r\n\r\n"
)


async def answers_http(address: BackendAddress) -> bool:
    """True if the backend answered a request with an HTTP status line (any status)."""
    try:
        async with asyncio.timeout(READY_PROBE_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_connection(address.host, address.port)
            try:
                writer.write(_PROBE)
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False
    return line.startswith(b"HTTP/")


async def wait_until_ready(address: BackendAddress) -> None:
    """Poll until the backend answers; the caller bounds this with its startup timeout."""
    delay = READY_POLL_FIRST_SECONDS
    while not await answers_http(address):
        await asyncio.sleep(delay)
        delay = min(delay * 2, READY_POLL_MAX_SECONDS)
