"""Nothing wedges on the drone: a start that fails in any way ends its backend with a message,
a start interrupted by the drone stopping runs again once (not forever), and the drone's link
to its controller outlives frames it cannot read.

The executor runs on the in-memory runtime of ``test_executor.py`` (the failure must come at
one precise point); the link is a real WebSocket to a small controller stand-in on loopback.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from sailplane.drone.executor import START_RETRIED, Executor
from sailplane.drone.store import DroneStore
from sailplane.mounts.pin import StagingArea
from sailplane.mounts.policy import MountPolicy
from sailplane.protocol import EventAck, LeaseRenewal
from sailplane.state import BackendStatus, TerminationReason
from tests.drone.linked import agent_linked_to
from tests.drone.test_executor import WITHIN, FakeRuntime, left_in, spawn_of

S = BackendStatus


class Unexpected(Exception):
    """Not one of the failures the executor knows by type."""


@pytest.mark.parametrize("failure", [
    ValueError("embedded null byte"),
    Unexpected("the engine answered something odd"),
    ConnectionError("Connection aborted"),
])
@pytest.mark.parametrize("step", ["prepare", "start"])
def test_any_exception_in_a_start_ends_the_backend_with_an_error_and_its_message(
    store: DroneStore, staging: StagingArea, failure: Exception, step: str,
) -> None:
    class Failing(FakeRuntime):
        async def prepare(self, image: str, pull_policy: Any) -> None:
            if step == "prepare":
                raise failure

    async def scenario() -> None:
        runtime = Failing()
        if step == "start":
            runtime.start_error = failure
        executor = Executor(runtime, MountPolicy.build([]), store, staging)
        await executor.start()
        try:
            executor.spawn(spawn_of("b-one"))
            await executor.wait_for("b-one", S.TERMINATED, WITHIN)
        finally:
            await executor.close()

    asyncio.run(scenario())
    [last] = [e.state for e in store.pending() if e.backend_id == "b-one"][-1:]
    assert last.status is S.TERMINATED and last.reason is TerminationReason.ERROR
    assert last.message is not None
    assert type(failure).__name__ in last.message and str(failure) in last.message
    assert store.unfinished() == []  # the key is not held by a backend stuck on the drone


class HangingStart(FakeRuntime):
    """A start that never returns: the drone is stopped in the middle of it."""

    def __init__(self) -> None:
        super().__init__()
        self.starting = asyncio.Event()

    async def start(self, spec: Any) -> Any:
        self.starting.set()
        await asyncio.Event().wait()


def test_an_interrupted_start_is_run_again_once_and_not_a_second_time(
    store: DroneStore, staging: StagingArea,
) -> None:
    # A drone stopped while creating the container: `starting`, no address, no container.
    left_in(store, "b-again", S.LOADING, S.STARTING)

    async def restart(runtime: FakeRuntime) -> Executor:
        executor = Executor(runtime, MountPolicy.build([]), store, staging)
        await executor.start()
        executor.resume_starts(set())  # the controller's first renewal revokes nothing
        return executor

    async def scenario() -> None:
        hanging = HangingStart()
        executor = await restart(hanging)  # runs the start again ...
        try:
            async with asyncio.timeout(WITHIN):
                await hanging.starting.wait()
        finally:
            await executor.close()  # ... and the drone stops in the middle of it once more
        assert store.unfinished()[0].status is S.STARTING

        executor = await restart(FakeRuntime())
        try:
            await executor.wait_for("b-again", S.TERMINATED, WITHIN)
        finally:
            await executor.close()

    asyncio.run(scenario())
    [*_, last] = [e.state for e in store.pending() if e.backend_id == "b-again"]
    assert (last.status, last.reason) == (S.TERMINATED, TerminationReason.ERROR)
    assert last.message == START_RETRIED


def test_the_link_outlives_frames_the_drone_cannot_read(
    store: DroneStore, staging: StagingArea,
) -> None:
    """Garbage, a binary frame, an unknown type and an action that does not parse: the last
    is refused by its id, the rest skipped; the same connection goes on (heartbeats, acks)."""
    received: list[dict[str, Any]] = []
    connections = 0

    async def controller(socket: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        hello = json.loads(await socket.recv())
        assert hello["type"] == "hello"
        await socket.send("not json")
        await socket.send(b"\x00\x01binary")
        await socket.send(json.dumps({"type": "who-knows"}))
        await socket.send(json.dumps({"type": "spawn", "action_id": 41, "backend_id": 5}))
        await socket.send(EventAck(seq=0).model_dump_json())
        await socket.send(LeaseRenewal(time=1, lease_ms=20_000, revoked=[]).model_dump_json())
        async for frame in socket:
            received.append(json.loads(frame))

    async def scenario() -> None:
        executor = Executor(FakeRuntime(), MountPolicy.build([]), store, staging)
        await executor.start()
        async with agent_linked_to(controller, executor) as running:
            async with asyncio.timeout(WITHIN):
                while not (refusals(received) and heartbeats_after_refusal(received) >= 3):
                    assert not running.done(), running
                    await asyncio.sleep(0.05)

    asyncio.run(scenario())
    [refused] = refusals(received)
    assert refused["action_id"] == 41 and "cannot read this spawn" in refused["message"]
    assert connections == 1, "the drone reconnected instead of skipping the bad frames"


def refusals(received: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in received if m["type"] == "action_refused"]


def heartbeats_after_refusal(received: list[dict[str, Any]]) -> int:
    types = [m["type"] for m in received]
    if "action_refused" not in types:
        return 0
    return types[types.index("action_refused"):].count("heartbeat")
