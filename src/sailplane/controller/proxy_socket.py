"""The controller's end of a proxy's WebSocket (``/ctrl/proxy-socket``).

It answers route requests (one for a backend still starting when it is ready:
``route_hold.py``), turns connection reports into activity for the idle sweep, and
tells the proxy the moment a backend it routes to leaves ``ready`` (woken by this
controller's drone events, and by polling for other controllers'). A proxy keeps its routes
through a lost link and asks for each again on the next one; from that answer on this socket
watches the route's backend, as for any lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.websockets import WebSocket, WebSocketDisconnect

from sailplane.controller import routes
from sailplane.controller.auth import INSECURE_NOTE
from sailplane.controller.frames import receive_text
from sailplane.controller.notify import Notifier
from sailplane.controller.route_hold import route_when_ready
from sailplane.credentials import Credential
from sailplane.protocol import ConnectionReport, RouteGone, RouteRequest, from_proxy

log = logging.getLogger(__name__)

BACKENDS_CHANGED = "backends"
ROUTE_CHECK_SECONDS = 0.5


async def serve_proxy(
    websocket: WebSocket, engine: Engine, notifier: Notifier, credential: Credential | None,
) -> None:
    """Serve one proxy; ``credential`` is its checked ``proxy`` credential (None: insecure).
    A proxy may only look routes up and report connections: no other message parses, and one
    that does not is logged and skipped; a database error closes the socket (the proxy
    reconnects)."""
    await websocket.accept()
    client = websocket.client.host if websocket.client else "?"
    if credential is None:
        log.warning("proxy connected from %s without a credential: %s", client, INSECURE_NOTE)
    else:
        log.info("proxy %s connected from %s", credential.subject, client)
    watched: set[str] = set()
    lock = asyncio.Lock()
    watcher = asyncio.create_task(_drop_gone_routes(websocket, engine, notifier, watched, lock))
    answering: set[asyncio.Task[None]] = set()  # each may wait for its backend's ``ready``

    async def answer(token: str) -> None:
        try:
            route = await route_when_ready(engine, notifier, token)
        except SQLAlchemyError:
            log.exception("proxy socket: database error; closing it so the proxy reconnects")
            with contextlib.suppress(RuntimeError):
                await websocket.close(code=1011, reason="controller store error")
            return
        async with lock:
            # Watched and answered at once, so the watcher's ``route_gone`` for this
            # backend can only follow the answer, never overtake it.
            if route.backend_id:
                watched.add(route.backend_id)
            await websocket.send_text(route.model_dump_json())

    try:
        while True:
            text = await receive_text(websocket)
            try:
                message = from_proxy.validate_json(text or "")
            except ValidationError as exc:
                log.warning("a proxy sent a message that does not parse (skipped): %s",
                            str(exc).splitlines()[0])
                continue
            if isinstance(message, RouteRequest):
                task = asyncio.create_task(answer(message.token))
                answering.add(task)
                task.add_done_callback(answering.discard)
            elif isinstance(message, ConnectionReport):
                await asyncio.to_thread(routes.record_activity, engine, message.counts)
    except WebSocketDisconnect:
        pass
    except SQLAlchemyError:
        log.exception("proxy socket: database error; closing it so the proxy reconnects")
        with contextlib.suppress(RuntimeError):
            await websocket.close(code=1011, reason="controller store error")
    finally:
        for task in (watcher, *answering):
            task.cancel()
        await asyncio.gather(watcher, *answering, return_exceptions=True)


async def _drop_gone_routes(
    websocket: WebSocket, engine: Engine, notifier: Notifier, watched: set[str],
    lock: asyncio.Lock,
) -> None:
    while True:
        await notifier.wait(BACKENDS_CHANGED, ROUTE_CHECK_SECONDS)
        try:
            gone = await asyncio.to_thread(routes.not_ready, engine, set(watched))
        except SQLAlchemyError:
            log.exception("proxy socket: cannot check routes; retrying")
            continue
        for backend_id in gone:
            watched.discard(backend_id)
            async with lock:
                await websocket.send_text(RouteGone(backend_id=backend_id).model_dump_json())
