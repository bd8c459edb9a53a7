"""The drone's end of its WebSocket to the controller: hello, heartbeats, the outbox, actions.

The socket is reopened with exponential backoff whenever it drops. On every connection the
whole unacknowledged outbox is sent again from the start, in order; the controller skips
events it already stored, so each lands exactly once.
"""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.client import ClientConnection

from sailplane.controller_socket import bearer, socket_url, stay_connected
from sailplane.drone.executor import Executor
from sailplane.protocol import (
    ActionAck,
    BackendEvent,
    EventAck,
    Heartbeat,
    Hello,
    SpawnBackend,
    TerminateBackend,
    to_drone,
)
from sailplane.state import now_ms
from sailplane.timing import HEARTBEAT_INTERVAL_SECONDS

log = logging.getLogger(__name__)


class DroneAgent:
    def __init__(
        self, controller_url: str, executor: Executor, hello: Hello, token: str | None = None,
        heartbeat_seconds: float = HEARTBEAT_INTERVAL_SECONDS,
    ) -> None:
        self.url = socket_url(controller_url, "/ctrl/drone-socket")
        self.executor = executor
        self.hello = hello
        self.headers = bearer(token)
        self.heartbeat_seconds = heartbeat_seconds
        self.connected = asyncio.Event()
        self._terminations: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Stay connected until cancelled."""
        await stay_connected(self.url, self.headers, self._session, self.connected.clear)

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
            await socket.send(Heartbeat(time=now_ms()).model_dump_json())
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
            message = to_drone.validate_json(frame)
            if isinstance(message, EventAck):
                self.executor.store.ack(message.seq)
                continue
            if isinstance(message, SpawnBackend):
                self.executor.spawn(message)
            elif isinstance(message, TerminateBackend):
                task = asyncio.create_task(self.executor.terminate(
                    message.backend_id, message.hard, message.reason))
                self._terminations.add(task)
                task.add_done_callback(self._terminations.discard)
            await socket.send(ActionAck(action_id=message.action_id).model_dump_json())
