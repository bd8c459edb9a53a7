"""The executor's decisions around a drone restart and early exits, on an in-memory runtime.

The Docker-backed behaviour is in ``tests/integration/test_drone_docker.py``; these cases need
an exit at one precise moment, which only a fake engine can place there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from sailplane.drone.executor import Executor, ExecutorSettings
from sailplane.drone.store import DroneStore
from sailplane.errors import BackendExited
from sailplane.mounts.policy import MountPolicy
from sailplane.protocol import SpawnBackend
from sailplane.runtime.base import (
    BackendAddress,
    BackendExit,
    BackendMetrics,
    BackendSpec,
    OwnedBackend,
    Runtime,
)
from sailplane.spec import ExecutorConfig, KeyConfig, PullPolicy
from sailplane.state import BackendState, BackendStatus, TerminationReason, now_ms

S = BackendStatus
WITHIN = 5.0


class FakeRuntime(Runtime):
    """Answers from fixed values; ``exit()`` reports an exit as the engine would."""

    def __init__(self) -> None:
        self.address = BackendAddress("127.0.0.1", 9)
        self.start_error: Exception | None = None
        self.owned_backends: list[OwnedBackend] = []
        self.while_listing: Callable[[], None] = lambda: None
        self.removed: list[str] = []
        self._exits: asyncio.Queue[BackendExit] = asyncio.Queue()

    def exit(self, backend_id: str, exit_code: int) -> None:
        self._exits.put_nowait(BackendExit(backend_id, exit_code))

    async def prepare(self, image: str, pull_policy: PullPolicy) -> None:
        pass

    async def start(self, spec: BackendSpec) -> BackendAddress:
        if self.start_error is not None:
            raise self.start_error
        return self.address

    async def signal(self, backend_id: str, hard: bool) -> None:
        pass

    async def remove(self, backend_id: str) -> None:
        self.removed.append(backend_id)

    def exits(self) -> AsyncIterator[BackendExit]:
        return self._drain()

    async def _drain(self) -> AsyncIterator[BackendExit]:
        while True:
            yield await self._exits.get()

    async def owned(self) -> list[OwnedBackend]:
        listed = list(self.owned_backends)
        self.while_listing()  # something happens while the engine answers
        await asyncio.sleep(0.01)
        return listed

    async def metrics(self, backend_id: str) -> BackendMetrics:
        return BackendMetrics(memory_bytes=0, cpu_seconds=0.0)

    async def close(self) -> None:
        pass


def spawn_of(backend_id: str) -> SpawnBackend:
    return SpawnBackend(backend_id=backend_id, key=KeyConfig(name="doc-42"),
                        executable=ExecutorConfig(image="sailplane/static:latest"),
                        secret_token="s")


def left_in(store: DroneStore, backend_id: str, *statuses: BackendStatus) -> None:
    """What an earlier run of the drone wrote before it stopped."""
    store.add(spawn_of(backend_id))
    for status in statuses:
        store.record(backend_id, BackendState(status=status, time=now_ms()))


def history(store: DroneStore, backend_id: str) -> list[BackendStatus]:
    return [event.state.status for event in store.pending() if event.backend_id == backend_id]


async def http_server() -> tuple[asyncio.Server, BackendAddress]:
    """A loopback port that answers HTTP, for the executor's readiness probe."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, BackendAddress("127.0.0.1", port)


def test_an_exit_reported_while_adopting_is_not_lost(store, staging):
    left_in(store, "b-live", S.LOADING, S.STARTING, S.WAITING, S.READY)
    store.set_address("b-live", BackendAddress("127.0.0.1", 9))

    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.owned_backends = [OwnedBackend("b-live", True, runtime.address, None)]
        runtime.while_listing = lambda: runtime.exit("b-live", 5)  # listed running, then died
        executor = Executor(runtime, MountPolicy(), store, staging)
        await executor.start()
        try:
            await executor.wait_for("b-live", S.TERMINATED, WITHIN)
        finally:
            await executor.close()
        [*_, last] = [e.state for e in store.pending() if e.backend_id == "b-live"]
        assert (last.reason, last.exit_code) == (TerminationReason.EXITED, 5)
        assert runtime.removed == ["b-live"]

    asyncio.run(scenario())


def test_a_backend_adopted_while_loading_goes_on_without_repeating_loading(store, staging):
    left_in(store, "b-slow", S.LOADING)

    async def scenario() -> None:
        server, address = await http_server()
        runtime = FakeRuntime()
        runtime.address = address
        executor = Executor(runtime, MountPolicy(), store, staging)
        await executor.start()
        executor.resume_starts(set())  # the controller's first renewal revokes nothing
        try:
            await executor.wait_for("b-slow", S.READY, WITHIN)
        finally:
            await executor.close()
            server.close()
        assert history(store, "b-slow") == [S.LOADING, S.STARTING, S.WAITING, S.READY]

    asyncio.run(scenario())


@pytest.mark.parametrize("keep", [False, True])
def test_a_backend_that_exits_as_it_starts_is_exited_with_its_code(store, staging, keep):
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.start_error = BackendExited(3)
        executor = Executor(runtime, MountPolicy(), store, staging,
                            ExecutorSettings(keep_containers=keep))
        await executor.start()
        try:
            executor.spawn(spawn_of("b-brief"))
            await executor.wait_for("b-brief", S.TERMINATED, WITHIN)
            runtime.exit("b-brief", 3)  # the engine's report of the same exit comes later
            await asyncio.sleep(0.01)
        finally:
            await executor.close()
        events = [e.state for e in store.pending() if e.backend_id == "b-brief"]
        assert [e.status for e in events] == [S.LOADING, S.STARTING, S.TERMINATED]
        assert (events[-1].reason, events[-1].exit_code) == (TerminationReason.EXITED, 3)
        assert runtime.removed == ([] if keep else ["b-brief"])

    asyncio.run(scenario())


class ExitingRuntime(FakeRuntime):
    """Every signalled backend exits at once, as a well-behaved backend does on SIGTERM; a
    removal takes a moment."""

    async def signal(self, backend_id: str, hard: bool) -> None:
        self.exit(backend_id, 137 if hard else 0)

    async def remove(self, backend_id: str) -> None:
        await asyncio.sleep(0.01)
        await super().remove(backend_id)


def test_terminate_all_returns_once_every_container_is_removed(store, staging):
    runtime = ExitingRuntime()
    ids = [f"b-{index}" for index in range(50)]

    async def scenario() -> None:
        server, runtime.address = await http_server()
        executor = Executor(runtime, MountPolicy(), store, staging, ExecutorSettings())
        try:
            await executor.start()
            for backend_id in ids:
                executor.spawn(spawn_of(backend_id))
            await asyncio.gather(*(executor.wait_for(b, S.READY, WITHIN) for b in ids))
            assert executor.live_count == 50
            await executor.terminate_all(TerminationReason.EXTERNAL)
            assert sorted(runtime.removed) == sorted(ids)
            assert executor.live_count == 0
            # Finished backends leave the executor's memory; the store still answers for them.
            assert executor._backends == {}
            assert all(executor.status(b) is S.TERMINATED for b in ids)
            await executor.wait_for(ids[0], S.TERMINATED, WITHIN)
            assert history(store, ids[0])[-2:] == [S.TERMINATING, S.TERMINATED]
        finally:
            await executor.close()
            server.close()

    asyncio.run(scenario())


def test_a_backend_never_known_is_a_key_error_for_wait_for(store, staging):
    async def scenario() -> None:
        executor = Executor(FakeRuntime(), MountPolicy(), store, staging)
        with pytest.raises(KeyError):
            await executor.wait_for("b-nobody", S.READY, WITHIN)
        assert executor.status("b-nobody") is None

    asyncio.run(scenario())
