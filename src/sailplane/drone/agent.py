"""The drone's end of its WebSocket to the controller: hello, heartbeats, the outbox, actions.

The socket is reopened with exponential backoff whenever it drops. On every connection the
whole unacknowledged outbox is sent again from the start, in order; the controller skips
events it already stored, so each lands exactly once.

Nothing the controller sends can wedge the link: an action that does not parse, or that the
executor cannot take, is answered with ``action_refused`` (the controller ends a refused
spawn's backend) and acknowledged that way; any other bad frame is logged and skipped. A
``terminate`` for a backend whose spawn has not arrived yet is held, unacknowledged, and
applied when the spawn comes (so it is never dropped). The heartbeats carry the key leases
(``sailplane.drone.leases``). A ``drone_refused`` (another live drone has this id) ends the
drone with :class:`DroneRefusedError` instead of a reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection

from sailplane.controller_socket import bearer, socket_url, stay_connected
from sailplane.drone.executor import Executor
from sailplane.drone.hot_plug import HotPlug
from sailplane.drone.leases import LeaseKeeper
from sailplane.drone.watchdog import Watchdog
from sailplane.errors import SailplaneError
from sailplane.protocol import (
    ActionAck,
    ActionRefused,
    AddMount,
    BackendEvent,
    DroneRefused,
    EventAck,
    Heartbeat,
    Hello,
    LeaseRenewal,
    RemoveMount,
    SpawnBackend,
    TerminateBackend,
    to_drone,
)
from sailplane.state import now_ms
from sailplane.timing import HEARTBEAT_INTERVAL_SECONDS

log = logging.getLogger(__name__)


class DroneRefusedError(SailplaneError):
    """Raised when the controller refuses this drone for good (its id is taken)."""

    code = "drone_refused"


class DroneAgent:
    def __init__(
        self, controller_url: str, executor: Executor, hello: Hello, token: str | None = None,
        heartbeat_seconds: float = HEARTBEAT_INTERVAL_SECONDS, watchdog: Watchdog | None = None,
    ) -> None:
        self.url = socket_url(controller_url, "/ctrl/drone-socket")
        self.executor = executor
        self.hello = hello
        self.headers = bearer(token)
        self.heartbeat_seconds = heartbeat_seconds
        self.connected = asyncio.Event()
        self.leases = LeaseKeeper(executor, watchdog=watchdog)
        self.hot_plug = HotPlug(executor)
        self._terminations: set[asyncio.Task[None]] = set()
        # Terminates that came before their backend's spawn, unacknowledged until it comes.
        self._early: dict[str, TerminateBackend] = {}

    async def run(self) -> None:
        """Stay connected until cancelled (or refused: :class:`DroneRefusedError`)."""
        refused: DroneRefusedError | None = None
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.leases.watch())
                group.create_task(stay_connected(self.url, self.headers, self._session,
                                                 self._lost))
        except* DroneRefusedError as found:
            refused = _first(found)
        if refused is not None:
            raise refused

    def _lost(self) -> None:
        self.connected.clear()
        self._early.clear()  # unacknowledged: the controller sends them again

    async def _session(self, socket: ClientConnection) -> None:
        await socket.send(self.hello.model_dump_json())
        self.connected.set()
        log.info("connected to %s as drone %s", self.url, self.hello.drone_id)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._heartbeats(socket))
            group.create_task(self._send_events(socket))
            group.create_task(self._receive(socket))

    async def _heartbeats(self, socket: ClientConnection) -> None:
        while True:
            await socket.send(Heartbeat(time=now_ms(), live=self.leases.live())
                              .model_dump_json())
            await asyncio.sleep(self.heartbeat_seconds)

    async def _send_events(self, socket: ClientConnection) -> None:
        sent = 0
        store = self.executor.store
        while True:
            self.executor.new_events.clear()  # before reading, so no wake-up is lost
            for event in store.pending(after=sent):
                address = self.executor.address(event.backend_id)
                await socket.send(BackendEvent(
                    seq=event.seq, backend_id=event.backend_id, state=event.state,
                    address=f"{address.host}:{address.port}" if address else None,
                ).model_dump_json())
                sent = event.seq
            await self.executor.new_events.wait()

    async def _receive(self, socket: ClientConnection) -> None:
        async for frame in socket:
            try:
                message = to_drone.validate_json(frame)
            except ValidationError as exc:
                await self._unreadable(socket, frame, exc)
                continue
            if isinstance(message, EventAck):
                self.executor.store.ack(message.seq)
            elif isinstance(message, LeaseRenewal):
                self.leases.renewed(message.time, message.lease_ms, message.revoked)
            elif isinstance(message, DroneRefused):
                log.error("the controller refused this drone: %s", message.message)
                raise DroneRefusedError(message.message)
            elif isinstance(message, SpawnBackend):
                await self._spawn(socket, message)
            elif isinstance(message, AddMount | RemoveMount):
                self.hot_plug.receive(message, socket.send)
            else:
                await self._terminate(socket, message)

    async def _spawn(self, socket: ClientConnection, message: SpawnBackend) -> None:
        try:
            self.executor.spawn(message)
        except Exception as exc:  # the executor cannot take it: say so, never loop on it
            log.exception("backend %s: cannot take its spawn", message.backend_id)
            await socket.send(ActionRefused(action_id=message.action_id,
                                            message=f"the drone cannot take the spawn: {exc}")
                              .model_dump_json())
            return
        await socket.send(ActionAck(action_id=message.action_id).model_dump_json())
        early = self._early.pop(message.backend_id, None)
        if early is not None:
            await self._terminate(socket, early)

    async def _terminate(self, socket: ClientConnection, message: TerminateBackend) -> None:
        if self.executor.status(message.backend_id) is None:
            log.info("backend %s: terminate before its spawn; held until it comes",
                     message.backend_id)
            self._early[message.backend_id] = message
            return
        task = asyncio.create_task(self.executor.terminate(
            message.backend_id, message.hard, message.reason))
        self._terminations.add(task)
        task.add_done_callback(self._terminations.discard)
        await socket.send(ActionAck(action_id=message.action_id).model_dump_json())

    async def _unreadable(
        self, socket: ClientConnection, frame: str | bytes, exc: ValidationError,
    ) -> None:
        """A frame that does not parse: refuse it if it is an action, else skip it."""
        reason = str(exc).splitlines()[0]
        try:
            data = json.loads(frame)
            action_id = int(data["action_id"])
        except (ValueError, TypeError, KeyError):
            log.warning("skipped a frame from the controller that does not parse: %s", reason)
            return
        log.warning("refusing action %d, which does not parse: %s", action_id, reason)
        message = f"the drone cannot read this {data.get('type', 'action')}: {reason}"
        await socket.send(ActionRefused(action_id=action_id, message=message[:1000])
                          .model_dump_json())


def _first(group: BaseExceptionGroup[DroneRefusedError]) -> DroneRefusedError:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first(error)
        return error
    raise AssertionError("an empty exception group")
