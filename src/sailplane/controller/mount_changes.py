"""Hot-plug routes: add a mount to a running backend, or take one out (docs/mounts.md).

    POST   /ctrl/b/{backend_id}/mounts            body: one ``volume_mounts`` entry (host type)
    DELETE /ctrl/b/{backend_id}/mounts?target=T

Both answer ``{"backend_id": ..., "mounts": [...]}``, the backend's mounts after the change.
The controller checks the entry's shape (400, as a connect would), then asks the backend's
drone over its socket (``drone_calls``) and waits for its answer: the drone authorizes the
mount with its own policy and the backend's key, pins and injects it (``drone/hot_plug.py``).
Errors: 404 unknown backend (``not_found``) or no mount at the target (``mount_not_found``);
409 the backend is not running (``not_running``); 400 a refused mount (``mount_refused``,
naming the field); 501 a drone whose runtime cannot change a running container
(``hot_plug_unsupported``); 503 the drone is not connected to this controller; 504 no answer
in time.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Engine, select

from sailplane.controller import drone_calls
from sailplane.controller.backends import BackendNotFound
from sailplane.controller.db.tables import backends
from sailplane.errors import MountRefused
from sailplane.mounts.hot_plug import (
    HotPlugUnsupported,
    MountInfo,
    MountNotFound,
    NotRunning,
    check_added,
)
from sailplane.mounts.validate import TemplateValues, check_target
from sailplane.protocol import AddMount, MountResult, RemoveMount
from sailplane.spec import VolumeMount
from sailplane.state import BackendStatus

# The drone's injection helper may take up to 10 s (mounts/inject.py); the answer comes after.
HOT_PLUG_TIMEOUT_SECONDS = 20.0
# Whose container is there to change: from ``waiting`` (started) to ``ready``.
_RUNNING = frozenset({BackendStatus.WAITING.value, BackendStatus.READY.value})
_STATUS_BY_CODE = {MountRefused.code: 400, MountNotFound.code: 404, NotRunning.code: 409,
                   HotPlugUnsupported.code: 501, drone_calls.DroneUnavailable.code: 503,
                   drone_calls.DroneTimeout.code: 504}


class BackendMounts(BaseModel):
    """A backend's mounts after a hot-plug change: from its spawn, then hot-plugged ones."""

    backend_id: str
    mounts: list[MountInfo]


@dataclass(frozen=True)
class _Running:
    drone_id: str
    values: TemplateValues


def router(engine: Engine) -> APIRouter:
    routes = APIRouter()

    @routes.post("/ctrl/b/{backend_id}/mounts", response_model=None)
    async def add_mount(
        backend_id: str, mount: Annotated[VolumeMount, Body()], request: Request,
    ) -> BackendMounts | JSONResponse:
        """Hot-plug one mount (a ``volume_mounts`` entry of type ``host``) into a running
        backend, with the authorization and pinning of a spawn; read-only unless asked."""
        running = await asyncio.to_thread(_running, engine, backend_id)
        if isinstance(running, JSONResponse):
            return running
        check_added(mount, None, running.values, [])  # the shape: MountRefused is a 400
        return await _ask(request, running.drone_id, AddMount(
            request_id=secrets.token_hex(8), backend_id=backend_id, mount=mount))

    @routes.delete("/ctrl/b/{backend_id}/mounts", response_model=None)
    async def remove_mount(
        backend_id: str, target: str, request: Request,
    ) -> BackendMounts | JSONResponse:
        """Take the mount at ``target`` out of a running backend (hot-plugged or from its
        spawn) and release the directory the drone pinned for it."""
        check_target(target, "target", "target")
        running = await asyncio.to_thread(_running, engine, backend_id)
        if isinstance(running, JSONResponse):
            return running
        return await _ask(request, running.drone_id, RemoveMount(
            request_id=secrets.token_hex(8), backend_id=backend_id, target=target))

    return routes


def _running(engine: Engine, backend_id: str) -> _Running | JSONResponse:
    with engine.connect() as conn:
        row = conn.execute(
            select(backends.c.drone_id, backends.c.status, backends.c.stop_requested,
                   backends.c.key_name, backends.c.key_namespace)
            .where(backends.c.id == backend_id)
        ).first()
    if row is None:
        raise BackendNotFound(f"no backend {backend_id!r}")
    drone_id, status, stop_requested, key_name, namespace = row
    if status not in _RUNNING or stop_requested:
        state = "terminating" if stop_requested and status in _RUNNING else status
        return _error(NotRunning.code, f"backend {backend_id} is {state}; only a running "
                                       "backend's mounts can change")
    return _Running(drone_id, TemplateValues(key_name, namespace, backend_id))


async def _ask(request: Request, drone_id: str,
               question: AddMount | RemoveMount) -> BackendMounts | JSONResponse:
    try:
        result: MountResult = await drone_calls.of(request.app).ask(
            drone_id, question, HOT_PLUG_TIMEOUT_SECONDS)
    except (drone_calls.DroneUnavailable, drone_calls.DroneTimeout) as exc:
        return _error(exc.code, exc.message)
    if result.error is not None:
        return _error(result.error.code, result.error.message, result.error.field)
    return BackendMounts(backend_id=question.backend_id, mounts=result.mounts)


def _error(code: str, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["mount"] = field  # as a refused connect names its mount
    return JSONResponse({"error": body}, _STATUS_BY_CODE.get(code, 500))
