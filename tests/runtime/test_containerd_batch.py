"""Removals that arrive together become few commands, each caller told its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from sailplane.runtime.calls import EngineCalls
from sailplane.runtime.containerd.batch import Batcher
from sailplane.runtime.containerd.ctr import CtrError


class Recorder:
    """A command that takes many ids: records each batch, fails the ids it is told to."""

    def __init__(self, fail: Mapping[str, str] | None = None, seconds: float = 0.01) -> None:
        self.batches: list[list[str]] = []
        self.fail = dict(fail or {})
        self.seconds = seconds

    async def __call__(self, ids: list[str]) -> dict[str, Exception]:
        self.batches.append(ids)
        await asyncio.sleep(self.seconds)
        return {cid: CtrError(("containers", "delete"), 1, self.fail[cid])
                for cid in ids if cid in self.fail}


def test_a_thousand_concurrent_ids_run_as_few_batches_within_the_slots() -> None:
    calls = EngineCalls("test", limit=4)
    run = Recorder()
    batcher = Batcher(run, calls.slot, max_batch=16)
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, calls.in_flight)
            await asyncio.sleep(0.001)

    async def scenario() -> None:
        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(batcher.submit(f"c{index}") for index in range(1000)))
        watcher.cancel()
        await batcher.close()

    asyncio.run(scenario())
    ids = [cid for batch in run.batches for cid in batch]
    assert sorted(ids) == sorted(f"c{index}" for index in range(1000))  # each id once
    assert max(map(len, run.batches)) == 16
    assert len(run.batches) <= 1000 // 16 + 4
    assert most == 4  # batches run side by side, never more than the runtime's slots


def test_each_caller_gets_its_own_error_and_the_others_succeed() -> None:
    batcher = Batcher(Recorder(fail={"b": "container \"b\": not found"}),
                      EngineCalls("test").slot)

    async def scenario() -> list[BaseException | None]:
        results = await asyncio.gather(*(batcher.submit(cid) for cid in "abc"),
                                       return_exceptions=True)
        return list(results)

    results = asyncio.run(scenario())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], CtrError) and results[1].not_found


def test_a_command_that_fails_as_a_whole_fails_every_id_of_its_batch() -> None:
    async def broken(ids: list[str]) -> dict[str, Exception]:
        raise CtrError(("containers", "delete"), -1, "no answer within 60 s")

    batcher = Batcher(broken, EngineCalls("test").slot)

    async def scenario() -> list[BaseException | None]:
        return list(await asyncio.gather(*(batcher.submit(cid) for cid in "ab"),
                                         return_exceptions=True))

    assert [str(error) for error in asyncio.run(scenario())] == [
        "ctr containers delete failed (-1): no answer within 60 s"] * 2


def test_a_quiet_drone_runs_a_lone_id_at_once_and_one_id_asked_twice_once() -> None:
    run = Recorder()
    batcher = Batcher(run, EngineCalls("test").slot)

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await batcher.submit("a")
        elapsed = loop.time() - started
        await asyncio.gather(batcher.submit("b"), batcher.submit("b"))
        return elapsed

    assert asyncio.run(scenario()) < 0.5
    assert run.batches == [["a"], ["b"]]


def test_a_caller_cancelled_before_its_batch_is_taken_is_left_out() -> None:
    calls = EngineCalls("test", limit=1)
    run = Recorder(seconds=0.05)
    batcher = Batcher(run, calls.slot)

    async def scenario() -> None:
        first = asyncio.create_task(batcher.submit("a"))
        await asyncio.sleep(0.02)  # "a" runs, holding the only slot
        withdrawn = asyncio.create_task(batcher.submit("b"))
        kept = asyncio.create_task(batcher.submit("c"))
        await asyncio.sleep(0)
        withdrawn.cancel()
        await asyncio.gather(first, kept)
        with pytest.raises(asyncio.CancelledError):
            await withdrawn

    asyncio.run(scenario())
    assert run.batches == [["a"], ["c"]]


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Batcher(Recorder(), EngineCalls("test").slot, max_batch=0)
