"""Starts that must not run, or must not be waited for.

A start a crash interrupted runs again only after the controller's first lease renewal, and
not at all if that renewal revokes it (the controller may have given its key to another
backend meanwhile). A hard terminate or a revocation of a backend whose container is still
being created ends it at once; the container that start makes anyway is removed when it
returns, with no second report.

The executor runs on the in-memory runtime of ``test_executor.py`` (the start must block at
one precise point); the link is a real WebSocket to a controller stand-in on loopback.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.server import ServerConnection

from sailplane.drone import executor as executor_module
from sailplane.drone.executor import START_ABANDONED, START_REVOKED, Executor
from sailplane.drone.leases import LeaseKeeper
from sailplane.drone.store import DroneStore
from sailplane.errors import BackendExited, RuntimeFailure
from sailplane.mounts.pin import StagingArea
from sailplane.mounts.policy import MountPolicy
from sailplane.protocol import LeaseRenewal
from sailplane.runtime.base import BackendAddress, BackendSpec, OwnedBackend
from sailplane.state import BackendState, BackendStatus, TerminationReason
from tests.drone.linked import agent_linked_to
from tests.drone.test_executor import WITHIN, FakeRuntime, left_in, spawn_of

S = BackendStatus
PROMPTLY = 1.0  # a terminate during a start returns within this, however long the start takes


class CountingRuntime(FakeRuntime):
    """Records every container start."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []

    async def start(self, spec: BackendSpec) -> BackendAddress:
        self.started.append(spec.backend_id)
        return await super().start(spec)


def test_an_interrupted_start_waits_for_the_first_renewal_and_a_revoked_one_never_runs(
    store: DroneStore, staging: StagingArea,
) -> None:
    # A drone killed while creating two containers; meanwhile the controller declared one
    # of the backends lost (and may have given its key to a new backend).
    left_in(store, "b-kept", S.LOADING, S.STARTING)
    left_in(store, "b-revoked", S.LOADING, S.STARTING)
    runtime = CountingRuntime()
    before_renewal: list[str] = []

    async def controller(socket: ServerConnection) -> None:
        assert json.loads(await socket.recv())["type"] == "hello"
        heartbeat = json.loads(await socket.recv())
        assert heartbeat["type"] == "heartbeat"
        assert set(heartbeat["live"]) == {"b-kept", "b-revoked"}
        await asyncio.sleep(0.5)  # a slow controller: nothing may start meanwhile
        before_renewal.extend(runtime.started)
        await socket.send(LeaseRenewal(time=heartbeat["time"], lease_ms=20_000,
                                       revoked=["b-revoked"]).model_dump_json())
        async for _ in socket:
            pass

    async def scenario() -> None:
        executor = Executor(runtime, MountPolicy.build([]), store, staging)
        await executor.start()
        await asyncio.sleep(0.2)
        assert runtime.started == [], "a start ran again before the drone reached its controller"
        async with agent_linked_to(controller, executor):
            await executor.wait_for("b-kept", S.WAITING, WITHIN)
            await executor.wait_for("b-revoked", S.TERMINATED, WITHIN)

    asyncio.run(scenario())
    assert before_renewal == []
    assert runtime.started == ["b-kept"]  # the revoked one never got a container
    last = states(store, "b-revoked")[-1]
    assert (last.status, last.reason, last.message) == (
        S.TERMINATED, TerminationReason.LOST, START_REVOKED)
    assert store.start_retried("b-kept") and not store.start_retried("b-revoked")


def test_interrupted_starts_end_lost_when_no_renewal_comes(
    store: DroneStore, staging: StagingArea,
) -> None:
    """The controller never answers: the lease keeper's self-stop ends the start that was
    waiting for it, without starting it."""
    left_in(store, "b-waiting", S.LOADING, S.STARTING)
    runtime = CountingRuntime()

    async def scenario() -> None:
        executor = Executor(runtime, MountPolicy.build([]), store, staging)
        await executor.start()
        keeper = LeaseKeeper(executor, lease_ms=10_000, share=0.5)
        try:
            assert keeper.check(keeper.stop_at_ms) == ["b-waiting"]
            await executor.wait_for("b-waiting", S.TERMINATED, WITHIN)
            keeper.renewed(keeper.stop_at_ms, 10_000, revoked=[])  # too late to run it
            await asyncio.sleep(0.05)
        finally:
            await executor.close()

    asyncio.run(scenario())
    assert runtime.started == []
    last = states(store, "b-waiting")[-1]
    assert (last.status, last.reason) == (S.TERMINATED, TerminationReason.LOST)


class BlockedStart(FakeRuntime):
    """A start that returns only when told to, with what it is told (an address or an
    error), as dockerd restarting makes a container creation hang. A killed backend exits."""

    def __init__(self) -> None:
        super().__init__()
        self.starting = asyncio.Event()
        self.outcome: asyncio.Future[BackendAddress] | None = None
        self.removed_event = asyncio.Event()
        self.killed: list[str] = []

    async def start(self, spec: BackendSpec) -> BackendAddress:
        self.outcome = asyncio.get_running_loop().create_future()
        self.starting.set()
        return await self.outcome

    async def signal(self, backend_id: str, hard: bool) -> None:
        if hard:
            self.killed.append(backend_id)
            self.exit(backend_id, 137)

    async def remove(self, backend_id: str) -> None:
        await super().remove(backend_id)
        self.removed_event.set()

    def finish_start(self, outcome: str) -> None:
        assert self.outcome is not None
        if outcome == "container":
            self.outcome.set_result(self.address)
        elif outcome == "exited":
            self.outcome.set_exception(BackendExited(1))
        else:
            self.outcome.set_exception(RuntimeFailure("the engine went away"))


async def blocked_in_its_start(executor: Executor, runtime: BlockedStart) -> None:
    await executor.start()
    executor.spawn(spawn_of("b-slow"))
    async with asyncio.timeout(WITHIN):
        await runtime.starting.wait()
    assert executor.status("b-slow") is S.STARTING


OUTCOMES = ["container", "exited", "failed"]


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_a_revocation_during_a_start_ends_the_backend_at_once_and_removes_its_container(
    store: DroneStore, staging: StagingArea, outcome: str,
) -> None:
    """The controller counts it terminated already: it hears so at once, and the container
    the start makes long after is removed, with no second report."""
    runtime = BlockedStart()

    async def scenario() -> None:
        executor = Executor(runtime, MountPolicy.build([]), store, staging)
        keeper = LeaseKeeper(executor)
        try:
            await blocked_in_its_start(executor, runtime)
            keeper.renewed(keeper.renewed_ms, keeper.lease_ms, revoked=["b-slow"])
            await executor.wait_for("b-slow", S.TERMINATED, PROMPTLY)
            assert keeper.live() == []  # the next heartbeat no longer holds its key
            assert runtime.removed == []  # no container yet: its start has not returned
            runtime.finish_start(outcome)  # long after, the engine finishes the start
            async with asyncio.timeout(WITHIN):
                await runtime.removed_event.wait()
            await executor.removals_done(WITHIN)
            runtime.exit("b-slow", 137)  # the engine reports the removed container's death
            await asyncio.sleep(0.05)
        finally:
            await executor.close()

    asyncio.run(scenario())
    assert runtime.removed == ["b-slow"]
    assert [s.status for s in states(store, "b-slow")] == [S.LOADING, S.STARTING, S.TERMINATED]
    last = states(store, "b-slow")[-1]
    assert (last.reason, last.message) == (TerminationReason.LOST, START_ABANDONED)


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_a_hard_terminate_during_a_start_is_hard_terminating_at_once_and_ends_with_the_start(
    store: DroneStore, staging: StagingArea, outcome: str,
) -> None:
    """The controller still holds the key: it hears ``hard-terminating`` at once, and
    ``terminated`` only once the container the start made is killed, never before (then a
    new backend for the key could run beside it)."""
    runtime = BlockedStart()

    async def scenario() -> None:
        executor = Executor(runtime, MountPolicy.build([]), store, staging)
        try:
            await blocked_in_its_start(executor, runtime)
            async with asyncio.timeout(PROMPTLY):
                await executor.terminate("b-slow", True, TerminationReason.EXTERNAL)
            assert executor.status("b-slow") is S.HARD_TERMINATING
            await asyncio.sleep(0.1)
            assert executor.status("b-slow") is S.HARD_TERMINATING  # until the start returns
            runtime.finish_start(outcome)
            await executor.wait_for("b-slow", S.TERMINATED, WITHIN)
            await executor.removals_done(WITHIN)
        finally:
            await executor.close()

    asyncio.run(scenario())
    assert runtime.removed == ["b-slow"]
    assert runtime.killed == (["b-slow"] if outcome == "container" else [])
    history = states(store, "b-slow")
    assert [s.status for s in history] == [
        S.LOADING, S.STARTING, S.HARD_TERMINATING, S.TERMINATED]
    if outcome != "failed":
        assert history[-1].reason is TerminationReason.EXTERNAL


class LosesItsFirstAnswer(FakeRuntime):
    """The first list of the drone's containers never comes back (an engine restarting)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def owned(self) -> list[OwnedBackend]:
        self.asked += 1
        if self.asked == 1:
            await asyncio.Event().wait()
        return await super().owned()


def test_a_start_whose_container_list_never_comes_asks_again(
    store: DroneStore, staging: StagingArea, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(executor_module, "OWNED_LIST_SECONDS", 0.2)
    left_in(store, "b-live", S.LOADING, S.STARTING, S.WAITING, S.READY)
    store.set_address("b-live", BackendAddress("127.0.0.1", 9))
    runtime = LosesItsFirstAnswer()
    runtime.owned_backends = [OwnedBackend("b-live", False, None, 3)]

    async def scenario() -> None:
        executor = Executor(runtime, MountPolicy.build([]), store, staging)
        try:
            async with asyncio.timeout(WITHIN):
                await executor.start()
            await executor.wait_for("b-live", S.TERMINATED, WITHIN)
        finally:
            await executor.close()

    asyncio.run(scenario())
    assert runtime.asked == 2
    assert runtime.removed == ["b-live"]


def states(store: DroneStore, backend_id: str) -> list[BackendState]:
    return [event.state for event in store.pending() if event.backend_id == backend_id]


class EngineAwayOnce(FakeRuntime):
    """The first removal is lost: the engine restarts under it."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    async def remove(self, backend_id: str) -> None:
        self.attempts += 1
        if self.attempts == 1:
            raise ConnectionError("Connection aborted.")
        await super().remove(backend_id)


def test_a_removal_lost_to_an_engine_restart_is_tried_again(
    store: DroneStore, staging: StagingArea,
) -> None:
    runtime = EngineAwayOnce()

    async def scenario() -> None:
        executor = Executor(runtime, MountPolicy.build([]), store, staging)
        await executor.start()
        try:
            executor.spawn(spawn_of("b-gone"))
            await executor.wait_for("b-gone", S.WAITING, WITHIN)
            runtime.exit("b-gone", 0)
            await executor.wait_for("b-gone", S.TERMINATED, WITHIN)
            assert await executor.removals_done(WITHIN)
        finally:
            await executor.close()

    asyncio.run(scenario())
    assert (runtime.attempts, runtime.removed) == (2, ["b-gone"])
