"""The proxy's WebSocket to the controller: route lookups, and connection reports.

Reconnects with backoff. While disconnected, cached routes are still served (the route
table bounds how long) and lookups of unknown tokens answer ``UNAVAILABLE`` (503); once
reconnected, the routes the controller has not confirmed are asked for again. A frame that
does not parse is logged and skipped: one bad message never ends the link.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError
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
from sailplane.proxy.routes import STALE_ROUTE_SECONDS, RouteTable

log = logging.getLogger(__name__)

REPORT_INTERVAL_SECONDS = 1.0


class ControllerLink:
    def __init__(self, controller_url: str, token: str | None = None,
                 stale_route_seconds: float = STALE_ROUTE_SECONDS) -> None:
        self.url = socket_url(controller_url, "/ctrl/proxy-socket")
        self.headers = bearer(token)
        self.routes = RouteTable(self._request, stale_route_seconds)
        self.counts = ConnectionCounts()
        self._outgoing: asyncio.Queue[str] = asyncio.Queue()

    def _request(self, request: RouteRequest) -> None:
        self._outgoing.put_nowait(request.model_dump_json())

    async def run(self) -> None:
        """Stay connected until cancelled."""
        await stay_connected(self.url, self.headers, self._session, self._lost)

    async def _session(self, socket: ClientConnection) -> None:
        self._outgoing = asyncio.Queue()
        self.routes.connected()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._receive(socket))
            group.create_task(self._send(socket))
            group.create_task(self._report(socket))

    def _lost(self) -> None:
        if self.routes.online.is_set():
            self.routes.disconnected(asyncio.get_running_loop().time())

    async def _receive(self, socket: ClientConnection) -> None:
        async for frame in socket:
            try:
                message = to_proxy.validate_json(frame)
            except ValidationError as exc:
                log.warning("the controller sent a message that does not parse (skipped): %s",
                            str(exc).splitlines()[0])
                continue
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
