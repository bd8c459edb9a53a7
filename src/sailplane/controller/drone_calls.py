"""Questions the controller puts to a connected drone and waits for (hot-plug's mount changes).

Actions (spawn, terminate) go through the database and are sent until acknowledged, whichever
controller holds the drone's socket. A question is different: an HTTP caller waits for its
answer. So it is sent once, over the drone's socket held by *this* controller process, and
its answer, matched by ``request_id``, is awaited with a timeout. A drone whose socket another
controller holds (several controllers sharing one database), or none, cannot be asked from
here: :class:`DroneUnavailable`. A drone that goes away while a question waits fails it at
once, with the same error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette

from sailplane.errors import SailplaneError
from sailplane.protocol import AddMount, MountResult, RemoveMount

Send = Callable[[str], Awaitable[None]]
Question = AddMount | RemoveMount


class DroneUnavailable(SailplaneError):
    """Raised when the drone to ask is not connected to this controller (HTTP 503)."""

    code = "drone_unavailable"


class DroneTimeout(SailplaneError):
    """Raised when the drone did not answer in time (HTTP 504); the change may have happened."""

    code = "drone_timeout"


class DroneCalls:
    """The drone sockets of one controller app, and the questions waiting for an answer."""

    def __init__(self) -> None:
        self._sockets: dict[str, Send] = {}
        self._waiting: dict[str, tuple[str, asyncio.Future[MountResult]]] = {}

    def attach(self, drone_id: str, send: Send) -> None:
        """The drone is connected here; questions to it go through ``send``."""
        self._sockets[drone_id] = send

    def detach(self, drone_id: str, send: Send) -> None:
        """That socket closed: forget it (unless a newer one replaced it) and fail the
        questions waiting for this drone."""
        if self._sockets.get(drone_id) == send:
            del self._sockets[drone_id]
        for asked, future in self._waiting.values():
            if asked == drone_id and not future.done():
                future.set_exception(DroneUnavailable(
                    f"drone {drone_id} went away before it answered"))

    def answered(self, drone_id: str, result: MountResult) -> None:
        """A drone's answer; one to a question not (or no longer) waiting, or put to another
        drone, is dropped."""
        waiting = self._waiting.get(result.request_id)
        if waiting is not None and waiting[0] == drone_id and not waiting[1].done():
            waiting[1].set_result(result)

    async def ask(self, drone_id: str, question: Question, timeout: float) -> MountResult:
        send = self._sockets.get(drone_id)
        if send is None:
            raise DroneUnavailable(f"drone {drone_id} is not connected to this controller")
        future: asyncio.Future[MountResult] = asyncio.get_running_loop().create_future()
        self._waiting[question.request_id] = (drone_id, future)
        try:
            try:
                await send(question.model_dump_json())
            except Exception as exc:  # the socket closed under us
                raise DroneUnavailable(f"drone {drone_id}: cannot send ({exc})") from exc
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise DroneTimeout(f"drone {drone_id} did not answer within {timeout:.0f} s; the "
                               "change may or may not have happened") from None
        finally:
            del self._waiting[question.request_id]


def of(app: Starlette) -> DroneCalls:
    """The one :class:`DroneCalls` of a controller app (made on first use)."""
    calls: DroneCalls | None = getattr(app.state, "drone_calls", None)
    if calls is None:
        calls = app.state.drone_calls = DroneCalls()
    return calls
