"""Engine calls are bounded: never more in flight than the runtime's limit."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from sailplane.runtime.calls import EngineCalls


def test_slots_bound_the_calls_in_flight() -> None:
    calls = EngineCalls("test", limit=4)
    most = 0

    async def one() -> None:
        nonlocal most
        async with calls.slot():
            most = max(most, calls.in_flight)
            await asyncio.sleep(0.001)

    async def scenario() -> None:
        await asyncio.gather(*(one() for _ in range(100)))

    asyncio.run(scenario())
    assert most == 4
    assert calls.in_flight == 0


def test_blocking_calls_run_on_the_runtime_s_own_threads_within_the_limit() -> None:
    calls = EngineCalls("test", limit=3)
    lock = threading.Lock()
    running = most = 0
    names: set[str] = set()

    def blocking(value: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            names.add(threading.current_thread().name)
        time.sleep(0.002)
        with lock:
            running -= 1
        return value * 2

    async def scenario() -> list[int]:
        return await asyncio.gather(*(calls.thread(blocking, i) for i in range(30)))

    assert asyncio.run(scenario()) == [i * 2 for i in range(30)]
    calls.close()
    assert most <= 3
    assert names and all(name.startswith("test-call") for name in names)


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EngineCalls("test", limit=0)
