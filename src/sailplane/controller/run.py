"""``run_controller``: serve the controller's API with uvicorn until cancelled."""

from __future__ import annotations

import asyncio
import gc

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
    server = uvicorn.Server(uvicorn.Config(
        create_app(config, engine), host=host, port=port, log_level="warning",
        ws="websockets-sansio",
    ))
    freeze_start_up()
    return server


def freeze_start_up() -> None:
    """Leave what start-up made out of every later garbage collection.

    Start-up makes most of the objects the process keeps for good (some 100,000: modules,
    functions, models, routes). A full collection walks every tracked object, on the event
    loop, tens of milliseconds during which no request is served: under load the largest
    stalls of the loop, and the connects' p99. Frozen, they are never walked again (objects
    made later still are); collected first, so that no garbage is frozen with them."""
    gc.collect()
    gc.freeze()


async def run_controller(config: ControllerConfig, host: str, port: int) -> None:
    server = await asyncio.to_thread(controller_server, config, host, port)
    await server.serve()
