"""A drone agent linked over a real WebSocket to a controller stand-in on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from websockets.asyncio.server import ServerConnection, serve

from sailplane.drone.agent import DroneAgent
from sailplane.drone.executor import Executor
from sailplane.protocol import Hello


@contextlib.asynccontextmanager
async def agent_linked_to(
    controller: Callable[[ServerConnection], Awaitable[None]], executor: Executor,
) -> AsyncIterator[asyncio.Task[None]]:
    """Drone ``d1``'s agent for ``executor``, heartbeating every 50 ms to ``controller`` (a
    WebSocket handler), running while the block runs; the agent's task is yielded. At the
    end the agent is stopped and the executor closed."""
    async with serve(controller, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        hello = Hello(drone_id="d1", runtime="docker", host_volumes=[])
        agent = DroneAgent(f"http://127.0.0.1:{port}", executor, hello, heartbeat_seconds=0.05)
        running = asyncio.create_task(agent.run())
        try:
            yield running
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await executor.close()
