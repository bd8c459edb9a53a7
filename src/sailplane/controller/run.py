"""``run_controller``: serve the controller's API with uvicorn until cancelled."""

from __future__ import annotations

import asyncio

import uvicorn

from sailplane.controller.app import create_app
from sailplane.controller.config import ControllerConfig
from sailplane.controller.db.engine import make_engine, migrate


def controller_server(config: ControllerConfig, host: str, port: int) -> uvicorn.Server:
    """The controller's server, not started: ``await server.serve()`` runs it until its
    ``should_exit`` is set (or SIGINT/SIGTERM); ``server.started`` is true once it listens.

    The database is reached and migrated here, so that a database that cannot be used fails
    in the caller (one clear error) rather than inside the server's start-up."""
    engine = make_engine(config.database_url)
    migrate(engine)
    return uvicorn.Server(uvicorn.Config(
        create_app(config, engine), host=host, port=port, log_level="warning",
        ws="websockets-sansio",
    ))


async def run_controller(config: ControllerConfig, host: str, port: int) -> None:
    server = await asyncio.to_thread(controller_server, config, host, port)
    await server.serve()
