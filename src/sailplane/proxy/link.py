"""The proxy's WebSocket to the controller: route lookups, and connection reports.

Reconnects with backoff; while disconnected, cached routes are dropped (they may be stale)
and lookups fail at once, so clients get a quick 404 rather than a hang.
"""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.client import ClientConnection

from sailplane.controller_socket import bearer, socket_url, stay_connected
from sailplane.protocol import (
    ConnectionReport,
    RouteGone,
    RouteInfo,
    RouteRequest,
    to_proxy,
)
from sailplane.proxy.counts import ConnectionCounts
from sailplane.proxy.routes import RouteTable

log = logging.getLogger(__name__)

REPORT_INTERVAL_SECONDS = 1.0


class ControllerLink:
    def __init__(self, controller_url: str, token: str | None = None) -> None:
        self.url = socket_url(controller_url, "/ctrl/proxy-socket")
        self.headers = bearer(token)
        self.routes = RouteTable(self._request)
        self.counts = ConnectionCounts()
        self.connected = asyncio.Event()
        self._socket: ClientConnection | None = None
        self._outgoing: asyncio.Queue[str] = asyncio.Queue()

    def _request(self, request: RouteRequest) -> bool:
        if self._socket is None:
            return False
        self._outgoing.put_nowait(request.model_dump_json())
        return True

    async def run(self) -> None:
        """Stay connected until cancelled."""
        await stay_connected(self.url, self.headers, self._session, self._lost)

    async def _session(self, socket: ClientConnection) -> None:
        self._socket = socket
        self.connected.set()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._receive(socket))
            group.create_task(self._send(socket))
            group.create_task(self._report(socket))

    def _lost(self) -> None:
        self._socket = None
        self._outgoing = asyncio.Queue()
        self.connected.clear()
        self.routes.disconnected()

    async def _receive(self, socket: ClientConnection) -> None:
        async for frame in socket:
            message = to_proxy.validate_json(frame)
            if isinstance(message, RouteInfo):
                self.routes.on_route_info(message)
            elif isinstance(message, RouteGone):
                self.routes.on_route_gone(message)

    async def _send(self, socket: ClientConnection) -> None:
        while True:
            await socket.send(await self._outgoing.get())

    async def _report(self, socket: ClientConnection) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL_SECONDS)
            counts = self.counts.report()
            if counts:
                await socket.send(ConnectionReport(counts=counts).model_dump_json())
