"""``run_controller``: serve the controller's API with uvicorn until cancelled."""

from __future__ import annotations

import uvicorn

from sailplane.controller.app import create_app
from sailplane.controller.config import ControllerConfig


async def run_controller(config: ControllerConfig, host: str, port: int) -> None:
    server = uvicorn.Server(uvicorn.Config(
        create_app(config), host=host, port=port, log_level="warning", ws="websockets-sansio",
    ))
    await server.serve()
