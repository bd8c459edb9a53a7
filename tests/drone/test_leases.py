"""The drone's lease keeper: revoked backends die at once, and all die when renewals stop
before the lease can end."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

from sailplane.drone.executor import Executor
from sailplane.drone.leases import LeaseKeeper
from sailplane.state import TerminationReason, now_ms


@dataclass
class Record:
    backend_id: str


@dataclass
class FakeExecutor:
    running: list[str]
    killed: list[tuple[str, bool, TerminationReason]] = field(default_factory=list)

    @property
    def store(self) -> Any:
        return self

    def unfinished(self) -> list[Record]:
        return [Record(b) for b in self.running]

    def resume_starts(self, revoked: set[str]) -> None:
        pass  # no start was interrupted

    async def revoke(self, backend_id: str) -> None:
        await self.terminate(backend_id, True, TerminationReason.LOST)

    async def terminate(self, backend_id: str, hard: bool, reason: TerminationReason) -> None:
        self.killed.append((backend_id, hard, reason))
        self.running.remove(backend_id)


def test_revoked_backends_are_killed_and_a_lapse_kills_the_rest() -> None:
    async def scenario() -> FakeExecutor:
        executor = FakeExecutor(["a", "b", "c"])
        keeper = LeaseKeeper(cast(Executor, executor), lease_ms=10_000, share=0.5)
        assert keeper.live() == ["a", "b", "c"]
        start = now_ms()
        keeper.renewed(start, 10_000, revoked=["b"])
        await asyncio.sleep(0.05)
        assert executor.killed == [("b", True, TerminationReason.LOST)]
        assert keeper.check(start + 4_999) == []  # within the share of the lease
        assert keeper.check(start + 5_000) == ["a", "c"]
        await asyncio.sleep(0.05)
        return executor

    executor = asyncio.run(scenario())
    assert executor.running == []
    assert {k[0] for k in executor.killed} == {"a", "b", "c"}
