"""The controller's end of a proxy's WebSocket (``/ctrl/proxy-socket``).

It answers route requests, turns connection reports into activity for the idle sweep, and
tells the proxy the moment a backend it routes to leaves ``ready`` (woken by this
controller's drone events, and by polling for other controllers').
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import Engine
from starlette.websockets import WebSocket, WebSocketDisconnect

from sailplane.controller import routes
from sailplane.controller.auth import INSECURE_NOTE
from sailplane.controller.notify import Notifier
from sailplane.credentials import Credential
from sailplane.protocol import ConnectionReport, RouteGone, RouteRequest, from_proxy

log = logging.getLogger(__name__)

BACKENDS_CHANGED = "backends"
ROUTE_CHECK_SECONDS = 0.5


async def serve_proxy(
    websocket: WebSocket, engine: Engine, notifier: Notifier, credential: Credential | None,
) -> None:
    """Serve one proxy; ``credential`` is its checked ``proxy`` credential (None: insecure).
    A proxy may only look routes up and report connections: no other message parses."""
    await websocket.accept()
    client = websocket.client.host if websocket.client else "?"
    if credential is None:
        log.warning("proxy connected from %s without a credential: %s", client, INSECURE_NOTE)
    else:
        log.info("proxy %s connected from %s", credential.subject, client)
    watched: set[str] = set()
    lock = asyncio.Lock()
    watcher = asyncio.create_task(_drop_gone_routes(websocket, engine, notifier, watched, lock))
    try:
        while True:
            message = from_proxy.validate_json(await websocket.receive_text())
            if isinstance(message, RouteRequest):
                route = await asyncio.to_thread(routes.lookup, engine, message.token)
                if route.backend_id:
                    watched.add(route.backend_id)
                async with lock:
                    await websocket.send_text(route.model_dump_json())
            elif isinstance(message, ConnectionReport):
                await asyncio.to_thread(routes.record_activity, engine, message.counts)
    except WebSocketDisconnect:
        pass
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _drop_gone_routes(
    websocket: WebSocket, engine: Engine, notifier: Notifier, watched: set[str],
    lock: asyncio.Lock,
) -> None:
    while True:
        await notifier.wait(BACKENDS_CHANGED, ROUTE_CHECK_SECONDS)
        for backend_id in await asyncio.to_thread(routes.not_ready, engine, set(watched)):
            watched.discard(backend_id)
            async with lock:
                await websocket.send_text(RouteGone(backend_id=backend_id).model_dump_json())
