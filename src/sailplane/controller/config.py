"""The controller's configuration (from ``sailplane controller`` flags or ``sailplane dev``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from sailplane.timing import (
    CONNECT_KEY_WAIT_SECONDS,
    DRONE_LOST_SECONDS,
    KEY_RELEASE_MARGIN_SECONDS,
    LEASE_SECONDS,
)


class ControllerConfig(BaseModel):
    database_url: str = "sqlite:///.sailplane/controller.db"
    proxy_url: str = "http://127.0.0.1:9091"
    controller_url: str = "http://127.0.0.1:9090"
    lost_after_seconds: float = DRONE_LOST_SECONDS
    # Key leases (sailplane.controller.leases); drones learn the lease from each renewal.
    lease_seconds: float = LEASE_SECONDS
    key_release_margin_seconds: float = KEY_RELEASE_MARGIN_SECONDS
    connect_key_wait_seconds: float = CONNECT_KEY_WAIT_SECONDS
    # Credentials (sailplane.credentials): the secrets that sign them, the first signing new
    # ones. None given: the controller refuses to start unless ``insecure``.
    secrets: list[str] = Field(default_factory=list, repr=False)
    insecure: bool = False
    open_metrics: bool = False  # /metrics without a credential
    allowed_origins: list[str] = Field(default_factory=list)  # browser origins let through
    # The idle limit of a spawn that gives no max_idle_seconds; None: no limit (Plane's API).
    default_max_idle_seconds: int | None = Field(default=None, gt=0)
