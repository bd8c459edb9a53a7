"""Questions to connected drones (``sailplane.controller.drone_calls``), with a fake socket."""

from __future__ import annotations

import asyncio

import pytest

from sailplane.controller.drone_calls import DroneCalls, DroneTimeout, DroneUnavailable
from sailplane.protocol import MountResult, RemoveMount, to_drone


def question(request_id: str = "r1") -> RemoveMount:
    return RemoveMount(request_id=request_id, backend_id="b-1234", target="/srv/x")


def test_the_answer_with_the_question_id_is_returned() -> None:
    async def scenario() -> None:
        calls = DroneCalls()
        sent: list[str] = []

        async def send(text: str) -> None:
            sent.append(text)
            calls.answered("other-drone", MountResult(request_id="r1"))  # not its drone
            calls.answered("d1", MountResult(request_id="r0"))  # not its question
            asyncio.get_running_loop().call_soon(
                calls.answered, "d1", MountResult(request_id="r1", error=None))

        calls.attach("d1", send)
        result = await calls.ask("d1", question(), timeout=5)
        assert result.request_id == "r1"
        assert to_drone.validate_json(sent[0]) == question()

    asyncio.run(scenario())


def test_no_socket_no_answer_and_a_lost_socket_are_errors() -> None:
    async def scenario() -> None:
        calls = DroneCalls()
        with pytest.raises(DroneUnavailable, match="not connected to this controller"):
            await calls.ask("d1", question(), timeout=5)

        async def silent(_text: str) -> None:
            return None

        calls.attach("d1", silent)
        with pytest.raises(DroneTimeout, match="did not answer within"):
            await calls.ask("d1", question(), timeout=0.05)

        asking = asyncio.create_task(calls.ask("d1", question("r2"), timeout=5))
        await asyncio.sleep(0.01)
        calls.detach("d1", silent)
        with pytest.raises(DroneUnavailable, match="went away"):
            await asking
        with pytest.raises(DroneUnavailable):
            await calls.ask("d1", question("r3"), timeout=5)

    asyncio.run(scenario())


def test_an_older_socket_closing_leaves_the_newer_one() -> None:
    async def scenario() -> None:
        calls = DroneCalls()

        async def old(_text: str) -> None:
            return None

        async def new(_text: str) -> None:
            calls.answered("d1", MountResult(request_id="r1"))

        calls.attach("d1", old)
        calls.attach("d1", new)  # the drone reconnected before the old socket's end was seen
        calls.detach("d1", old)
        assert (await calls.ask("d1", question(), timeout=5)).request_id == "r1"

    asyncio.run(scenario())
