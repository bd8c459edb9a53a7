"""The controller's configuration (from ``sailplane controller`` flags or ``sailplane dev``)."""

from __future__ import annotations

from pydantic import BaseModel

from sailplane.timing import DRONE_LOST_SECONDS


class ControllerConfig(BaseModel):
    database_url: str = "sqlite:///.sailplane/controller.db"
    proxy_url: str = "http://127.0.0.1:9091"
    controller_url: str = "http://127.0.0.1:9090"
    ctrl_token: str | None = None
    lost_after_seconds: float = DRONE_LOST_SECONDS
