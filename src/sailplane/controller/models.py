"""The controller API's response models (the request models live in ``sailplane.spec``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from sailplane.protocol import HostVolumeOffer
from sailplane.state import BackendStatus, TerminationReason


class ConnectResponse(BaseModel):
    backend_id: str
    spawned: bool
    status: BackendStatus
    token: str
    url: str
    status_url: str
    drone: str | None
    secret_token: str | None


class StatusResponse(BaseModel):
    """``GET /pub/b/{id}/status`` and every status-stream event. Public: no host details."""

    status: BackendStatus
    time: int
    reason: TerminationReason | None = None
    exit_code: int | None = None


class BackendSummary(BaseModel):
    backend_id: str
    drone: str
    key: dict[str, str]
    status: BackendStatus
    status_time: int
    address: str | None
    reason: TerminationReason | None
    exit_code: int | None
    message: str | None


class DroneSummary(BaseModel):
    drone_id: str
    pool: str
    runtime: str
    connected: bool
    draining: bool
    last_seen: int
    load: int
    host_volumes: list[HostVolumeOffer]


class ErrorBody(BaseModel):
    error: dict[str, Any]
