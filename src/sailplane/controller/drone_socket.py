"""The controller's end of a drone's WebSocket (``/ctrl/drone-socket``).

One task reads the drone's messages (heartbeats, events, acks, refusals) and acknowledges each
stored event; another sends the drone its queued actions, at once when woken and otherwise by
polling the database (actions another controller queued). Every unacknowledged action not yet
sent on this connection is sent, whatever its id (:func:`drones.pending_actions`), so a late
commit is never skipped; a drone that reconnects gets them all again and skips the ones it has.
A spawn this controller just committed goes down the socket at once (:func:`send_now`).

The drone's credential names it: a ``hello`` for any other drone id closes the socket before
anything is registered or sent, so no one can take another drone's place or its spawns. A
second drone with a live drone's id is told so (``drone_refused``) and closed.

Nothing a drone sends can end the link: a message that does not parse is logged and skipped.
A database error closes the socket (1011), so the drone reconnects and sends its unacknowledged
events again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.websockets import WebSocket, WebSocketDisconnect

from sailplane.controller import drone_calls, drones
from sailplane.controller.auth import INSECURE_NOTE
from sailplane.controller.backends import QueuedAction
from sailplane.controller.frames import receive_text
from sailplane.controller.leases import DEFAULT_TERMS, LeaseTerms
from sailplane.controller.notify import Notifier
from sailplane.controller.proxy_socket import BACKENDS_CHANGED
from sailplane.credentials import Credential
from sailplane.protocol import (
    MAX_FRAME_BYTES,
    ActionAck,
    ActionRefused,
    BackendEvent,
    DroneRefused,
    EventAck,
    Heartbeat,
    Hello,
    LeaseRenewal,
    MessageFromDrone,
    MountResult,
    from_drone,
)
from sailplane.timing import ACTION_POLL_SECONDS

log = logging.getLogger(__name__)

# Close codes: the drone is refused for good (it exits), or the controller failed (it retries).
CLOSE_REFUSED = 4009
CLOSE_STORE_ERROR = 1011


async def serve_drone(
    websocket: WebSocket, engine: Engine, notifier: Notifier, credential: Credential | None,
    terms: LeaseTerms = DEFAULT_TERMS,
) -> None:
    """Serve one drone; ``credential`` is its checked ``drone`` credential (None: insecure)."""
    await websocket.accept()
    try:
        hello = from_drone.validate_json(await websocket.receive_text())
    except (ValidationError, WebSocketDisconnect, KeyError) as exc:
        log.warning("drone socket closed before a valid hello: %s", exc)
        with contextlib.suppress(RuntimeError):
            await websocket.close(code=1002, reason="expected hello")
        return
    if not isinstance(hello, Hello):
        await websocket.close(code=1002, reason="expected hello")
        return
    drone_id = hello.drone_id
    if credential is not None and credential.subject != drone_id:
        log.warning("refused drone %r: its credential is for drone %r", drone_id,
                    credential.subject)
        await websocket.close(code=1008, reason="the credential is for another drone")
        return
    try:
        connection = await asyncio.to_thread(drones.register, engine, hello)
    except drones.DroneIdInUse as exc:
        log.warning("refused drone %s: %s", drone_id, exc.message)
        await websocket.send_text(DroneRefused(code=exc.code, message=exc.message)
                                  .model_dump_json())
        await websocket.close(code=CLOSE_REFUSED, reason=exc.code)
        return
    if credential is None:
        log.warning("drone %s connected without a credential (pool %r): %s", drone_id,
                    hello.pool, INSECURE_NOTE)
    else:
        log.info("drone %s connected (pool %r)", drone_id, hello.pool)
    link = _DroneLink(websocket, engine, notifier, drone_id, terms)
    sender = asyncio.create_task(link.send_actions())
    calls = drone_calls.of(websocket.app)  # hot-plug's questions go out through this link
    calls.attach(drone_id, link.send)
    links = _links(websocket.app)
    links[drone_id] = link
    try:
        while True:
            text = await receive_text(websocket)
            if text is None:
                log.warning("drone %s sent a binary frame (skipped)", drone_id)
                continue
            try:
                message = from_drone.validate_json(text)
            except ValidationError as exc:
                log.warning("drone %s sent a message that does not parse (skipped): %s",
                            drone_id, str(exc).splitlines()[0])
                continue
            await link.handle(message)
    except WebSocketDisconnect:
        pass
    except SQLAlchemyError:
        log.exception("drone %s: database error; closing its socket so it reconnects", drone_id)
        with contextlib.suppress(RuntimeError):
            await websocket.close(code=CLOSE_STORE_ERROR, reason="controller store error")
    finally:
        calls.detach(drone_id, link.send)
        if links.get(drone_id) is link:
            del links[drone_id]
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        with contextlib.suppress(SQLAlchemyError):
            await asyncio.to_thread(drones.disconnected, engine, drone_id, connection)
        log.info("drone %s disconnected", drone_id)


class _DroneLink:
    def __init__(self, websocket: WebSocket, engine: Engine, notifier: Notifier, drone_id: str,
                 terms: LeaseTerms) -> None:
        self.websocket = websocket
        self.engine = engine
        self.notifier = notifier
        self.drone_id = drone_id
        self.terms = terms
        self.lock = asyncio.Lock()
        # Actions sent on this connection; acknowledged ones stop being pending.
        self.sent: set[int] = set()

    async def send(self, text: str) -> None:
        async with self.lock:
            await self.websocket.send_text(text)

    async def handle(self, message: MessageFromDrone) -> None:
        engine, drone_id = self.engine, self.drone_id
        if isinstance(message, BackendEvent):
            await asyncio.to_thread(drones.apply_events, engine, drone_id, [message])
            self.notifier.notify(f"backend:{message.backend_id}")
            self.notifier.notify(BACKENDS_CHANGED)
            await self.send(EventAck(seq=message.seq).model_dump_json())
        elif isinstance(message, Heartbeat):
            revoked = await asyncio.to_thread(drones.heartbeat, engine, drone_id, message.live,
                                              self.terms)
            if revoked:
                log.warning("drone %s runs backends this controller counts as terminated; "
                            "revoking them: %s", drone_id, ", ".join(revoked))
            if message.live is not None:
                await self.send(LeaseRenewal(time=message.time, lease_ms=self.terms.lease_ms,
                                             revoked=revoked).model_dump_json())
        elif isinstance(message, ActionAck):
            await asyncio.to_thread(drones.ack_action, engine, drone_id, message.action_id)
        elif isinstance(message, ActionRefused):
            log.warning("drone %s refused action %d: %s", drone_id, message.action_id,
                        message.message)
            await self._refuse(message.action_id, message.message)
        elif isinstance(message, MountResult):
            drone_calls.of(self.websocket.app).answered(drone_id, message)
        else:
            log.warning("drone %s sent an unexpected %s (skipped)", drone_id, message.type)

    async def _refuse(self, action_id: int, message: str) -> None:
        backend_id = await asyncio.to_thread(drones.refuse_action, self.engine, self.drone_id,
                                             action_id, message)
        if backend_id:
            self.notifier.notify(f"backend:{backend_id}")
            self.notifier.notify(BACKENDS_CHANGED)

    async def send_actions(self) -> None:
        while True:
            try:
                pending = await asyncio.to_thread(drones.pending_actions, self.engine,
                                                  self.drone_id, self.sent)
            except SQLAlchemyError:
                log.exception("drone %s: cannot read its actions; retrying", self.drone_id)
                pending = []
            for action in pending:
                await self.send_action(action)
            if len(self.sent) > _SENT_MEMORY:  # forget the acknowledged ones
                self.sent &= {int(a["action_id"]) for a in await asyncio.to_thread(
                    drones.pending_actions, self.engine, self.drone_id)}
            await self.notifier.wait(f"drone:{self.drone_id}", ACTION_POLL_SECONDS)

    async def send_action(self, action: dict[str, Any]) -> None:
        """Send a queued action unless this connection sent it already."""
        action_id = int(action["action_id"])
        if action_id in self.sent:
            return
        self.sent.add(action_id)  # before sending: no second sender takes it meanwhile
        text = _json(action)
        if len(text.encode()) > MAX_FRAME_BYTES:
            await self._refuse(action_id, f"the {action.get('type')} message is "
                               f"{len(text.encode())} bytes, over the "
                               f"{MAX_FRAME_BYTES}-byte frame limit")
            return
        await self.send(text)


async def send_now(app: Starlette, queued: QueuedAction, notifier: Notifier) -> None:
    """Send an action this controller just committed straight down its drone's socket, if
    it holds that socket: no wake-up and read of the queue in between, which sit on a new
    backend's path to running. Otherwise (or if that send fails) the sender that holds the
    socket is woken as for any action; it sends whatever is unacknowledged, so nothing is
    lost either way."""
    link = _links(app).get(queued.drone_id)
    if link is not None:
        try:
            await link.send_action(queued.message)
            return
        except Exception as exc:  # the socket is closing, or the store failed: left to the sender
            link.sent.discard(int(queued.message["action_id"]))
            log.info("drone %s: could not send action %s at once: %s", queued.drone_id,
                     queued.message["action_id"], exc)
    notifier.notify(f"drone:{queued.drone_id}")


def _links(app: Starlette) -> dict[str, _DroneLink]:
    """The drone links this controller app holds, by drone id (made on first use)."""
    links: dict[str, _DroneLink] | None = getattr(app.state, "drone_links", None)
    if links is None:
        links = app.state.drone_links = {}
    return links


_SENT_MEMORY = 10_000


def _json(action: dict[str, object]) -> str:
    return json.dumps(action, separators=(",", ":"))

