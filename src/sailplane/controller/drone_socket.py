"""The controller's end of a drone's WebSocket (``/ctrl/drone-socket``).

One task reads the drone's messages (heartbeats, events, acks) and acknowledges each stored
event; another sends the drone its queued actions, at once when woken and otherwise by
polling the database (actions another controller queued). Unacknowledged actions are sent
again on every connection, so a drone that reconnects misses nothing.

The drone's credential names it: a ``hello`` for any other drone id closes the socket before
anything is registered or sent, so no one can take another drone's place or its spawns.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import Engine
from starlette.websockets import WebSocket, WebSocketDisconnect

from sailplane.controller import drones
from sailplane.controller.auth import INSECURE_NOTE
from sailplane.controller.notify import Notifier
from sailplane.controller.proxy_socket import BACKENDS_CHANGED
from sailplane.credentials import Credential
from sailplane.protocol import (
    ActionAck,
    BackendEvent,
    EventAck,
    Heartbeat,
    Hello,
    from_drone,
)
from sailplane.timing import ACTION_POLL_SECONDS

log = logging.getLogger(__name__)


async def serve_drone(
    websocket: WebSocket, engine: Engine, notifier: Notifier, credential: Credential | None,
) -> None:
    """Serve one drone; ``credential`` is its checked ``drone`` credential (None: insecure)."""
    await websocket.accept()
    hello = from_drone.validate_json(await websocket.receive_text())
    if not isinstance(hello, Hello):
        await websocket.close(code=1002, reason="expected hello")
        return
    drone_id = hello.drone_id
    if credential is not None and credential.subject != drone_id:
        log.warning("refused drone %r: its credential is for drone %r", drone_id,
                    credential.subject)
        await websocket.close(code=1008, reason="the credential is for another drone")
        return
    await asyncio.to_thread(drones.register, engine, hello)
    if credential is None:
        log.warning("drone %s connected without a credential (pool %r): %s", drone_id,
                    hello.pool, INSECURE_NOTE)
    else:
        log.info("drone %s connected (pool %r)", drone_id, hello.pool)
    send_lock = asyncio.Lock()
    sender = asyncio.create_task(_send_actions(websocket, engine, notifier, drone_id, send_lock))
    try:
        while True:
            message = from_drone.validate_json(await websocket.receive_text())
            if isinstance(message, BackendEvent):
                await asyncio.to_thread(drones.apply_events, engine, drone_id, [message])
                notifier.notify(f"backend:{message.backend_id}")
                notifier.notify(BACKENDS_CHANGED)
                async with send_lock:
                    await websocket.send_text(EventAck(seq=message.seq).model_dump_json())
            elif isinstance(message, Heartbeat):
                await asyncio.to_thread(drones.heartbeat, engine, drone_id)
            elif isinstance(message, ActionAck):
                await asyncio.to_thread(drones.ack_action, engine, drone_id, message.action_id)
    except WebSocketDisconnect:
        pass
    finally:
        sender.cancel()
        await asyncio.to_thread(drones.disconnected, engine, drone_id)
        log.info("drone %s disconnected", drone_id)


async def _send_actions(
    websocket: WebSocket, engine: Engine, notifier: Notifier, drone_id: str,
    send_lock: asyncio.Lock,
) -> None:
    sent = 0
    while True:
        for action in await asyncio.to_thread(drones.pending_actions, engine, drone_id, sent):
            async with send_lock:
                await websocket.send_json(action)
            sent = action["action_id"]
        await notifier.wait(f"drone:{drone_id}", ACTION_POLL_SECONDS)
