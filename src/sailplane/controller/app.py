"""The controller's HTTP API (docs/architecture.md). Handlers only parse and call; the work is
in ``backends``, ``drones`` and ``sweeper``, which run in worker threads.

Every error, of ours or of the framework (an unknown route, a malformed body), is JSON
``{"error": {"code": ..., "message": ...}}``. ``/docs`` and ``/redoc`` serve their assets from
this process, so they work on a machine without Internet access.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib.resources import files
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from sqlalchemy import Engine
from starlette.exceptions import HTTPException

from sailplane.controller import auth, backends, drones, mount_changes
from sailplane.controller.auth import Guard, Refused
from sailplane.controller.backends import (
    BackendExists,
    BackendNotFound,
    KeyBusy,
    KeyTagMismatch,
    Urls,
)
from sailplane.controller.config import ControllerConfig
from sailplane.controller.connect_lane import ConnectLane
from sailplane.controller.db.engine import make_engine, migrate
from sailplane.controller.drone_socket import send_now, serve_drone
from sailplane.controller.join_batch import JoinBatcher
from sailplane.controller.leases import LeaseTerms
from sailplane.controller.limits import BodyLimit
from sailplane.controller.models import (
    BackendSummary,
    ConnectResponse,
    DroneSummary,
    StatusResponse,
)
from sailplane.controller.notify import Notifier
from sailplane.controller.proxy_socket import serve_proxy
from sailplane.controller.scheduler import NoDroneAvailable
from sailplane.controller.status_stream import last_status, status_events
from sailplane.controller.sweeper import run_sweeper
from sailplane.credentials import Credential, Role
from sailplane.errors import MountRefused, SailplaneError
from sailplane.spec import ConnectRequest
from sailplane.state import BackendStatus, TerminationReason

_STATUS_BY_ERROR: dict[type[SailplaneError], int] = {
    MountRefused: 400, BackendNotFound: 404, KeyTagMismatch: 409, BackendExists: 409,
    NoDroneAvailable: 503, KeyBusy: 503,
}
_CODE_BY_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                   405: "method_not_allowed", 413: "too_large"}
# Prefixes pydantic puts before the message of a validator's own error.
_VALIDATOR_PREFIXES = ("Value error, ", "Assertion failed, ")
DOCS_ASSETS = "/docs-assets"
SocketServer = Callable[[WebSocket, Engine, Notifier, Credential | None], Awaitable[None]]
# Documents the bearer token in the OpenAPI schema (and /docs); the guard reads the header.
_BEARER = HTTPBearer(auto_error=False, description="a credential of the route's role")

log = logging.getLogger(__name__)


def create_app(config: ControllerConfig, engine: Engine | None = None) -> FastAPI:
    engine = engine or make_engine(config.database_url)
    notifier = Notifier()
    urls = Urls(proxy=config.proxy_url, controller=config.controller_url)
    terms = LeaseTerms.of(config.lease_seconds, config.key_release_margin_seconds)
    joins = JoinBatcher(engine, urls)
    registry = CollectorRegistry()
    connect_seconds = Histogram("sailplane_connect_seconds", "Latency of /ctrl/connect",
                                registry=registry)
    backend_gauge = Gauge("sailplane_backends", "Backends by status", ["status"],
                          registry=registry)
    drone_gauge = Gauge("sailplane_drones", "Connected drones", registry=registry)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if config.insecure:
            log.warning("%s: any client may call /ctrl, register as any drone and follow "
                        "routes as a proxy", auth.INSECURE_NOTE)
        await asyncio.to_thread(migrate, engine)
        sweeper = asyncio.create_task(run_sweeper(engine, notifier, config.lost_after_seconds,
                                                  terms=terms))
        yield
        await joins.close()
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper

    guard = Guard(config.secrets, insecure=config.insecure,
                  allowed_origins=config.allowed_origins)

    def require(roles: frozenset[Role]) -> Callable[..., Awaitable[None]]:
        # async: FastAPI runs a plain def dependency in a worker thread, a hop per request
        # for a check of microseconds.
        async def check(
            request: Request,
            _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
        ) -> None:
            guard.check(request.headers.get("authorization"), request.headers.get("origin"),
                        roles, request.url.path)
        return check

    app = FastAPI(title="Sailplane controller", lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Plane's connect API with declarative, secure "
                  "volume mounts. `/ctrl` routes need `Authorization: Bearer TOKEN`.")
    # Outermost first: the body limit, then the live-key lane of /ctrl/connect.
    app.add_middleware(ConnectLane, guard=guard, joins=joins, observe=connect_seconds.observe)
    app.add_middleware(BodyLimit)  # every body, /ctrl/connect's first: 413 past the limit
    ctrl = [Depends(require(auth.API))]

    @app.exception_handler(SailplaneError)
    async def sailplane_error(_request: Request, exc: SailplaneError) -> JSONResponse:
        status = next((code for kind, code in _STATUS_BY_ERROR.items()
                       if isinstance(exc, kind)), 500)
        body: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if isinstance(exc, MountRefused):
            body["mount"] = exc.mount
        return JSONResponse({"error": body}, status_code=status)

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        log.warning("refused %s %s from %s: %s", request.method, request.url.path,
                    request.client.host if request.client else "?", exc.message)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": {"code": exc.code, "message": exc.message}},
                            exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": {"code": "invalid_request",
                                       "message": validation_message(exc.errors())}}, 400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse(
            {"error": {"code": _CODE_BY_STATUS.get(exc.status_code, "http_error"),
                       "message": message}}, exc.status_code, headers=exc.headers)

    _serve_docs(app)

    @app.post("/ctrl/connect", dependencies=ctrl)
    async def connect(request: ConnectRequest) -> ConnectResponse:
        # A live key's connect is answered before it gets here (controller.connect_lane),
        # unless the batch that was to answer it failed: this is the full path.
        started = time.perf_counter()
        spawn = request.spawn_config
        if spawn and spawn.max_idle_seconds is None and config.default_max_idle_seconds:
            request = request.model_copy(update={"spawn_config": spawn.model_copy(
                update={"max_idle_seconds": config.default_max_idle_seconds})})
        response, queued = await asyncio.to_thread(backends.connect, engine, request, urls,
                                                   terms, config.connect_key_wait_seconds)
        if queued is not None:
            await send_now(app, queued, notifier)
        connect_seconds.observe(time.perf_counter() - started)
        return response

    async def terminate(backend_id: str, hard: bool) -> dict[str, bool]:
        drone = await asyncio.to_thread(backends.request_termination, engine, backend_id,
                                        hard, TerminationReason.EXTERNAL)
        if drone:
            notifier.notify(f"drone:{drone}")
        return {"requested": bool(drone)}

    @app.post("/ctrl/b/{backend_id}/soft-terminate", dependencies=ctrl)
    async def soft_terminate(backend_id: str) -> dict[str, bool]:
        return await terminate(backend_id, hard=False)

    @app.post("/ctrl/b/{backend_id}/hard-terminate", dependencies=ctrl)
    async def hard_terminate(backend_id: str) -> dict[str, bool]:
        return await terminate(backend_id, hard=True)

    @app.get("/ctrl/b/{backend_id}", dependencies=ctrl)
    async def backend(backend_id: str) -> BackendSummary:
        """One backend as ``/ctrl/backends`` lists it, with the message of an error."""
        return await asyncio.to_thread(backends.summary, engine, backend_id)

    @app.get("/ctrl/backends", dependencies=ctrl)
    async def list_backends(live: bool = False) -> list[BackendSummary]:
        return await asyncio.to_thread(backends.list_backends, engine, live)

    @app.get("/ctrl/drones", dependencies=ctrl)
    async def list_drones() -> list[DroneSummary]:
        return await asyncio.to_thread(drones.list_drones, engine)

    @app.post("/ctrl/d/{drone_id}/drain", dependencies=ctrl)
    async def drain(drone_id: str) -> dict[str, bool]:
        """No new backend goes to the drone; its running ones go on. Kept across restarts."""
        await asyncio.to_thread(drones.drain, engine, drone_id)
        return {"draining": True}

    @app.post("/ctrl/d/{drone_id}/undrain", dependencies=ctrl)
    async def undrain(drone_id: str) -> dict[str, bool]:
        """The drone takes new backends again."""
        await asyncio.to_thread(drones.drain, engine, drone_id, False)
        return {"draining": False}

    def socket_route(
        serve: SocketServer, roles: frozenset[Role],
    ) -> Callable[[WebSocket], Awaitable[None]]:
        async def route(websocket: WebSocket) -> None:
            try:
                credential = guard.check(websocket.headers.get("authorization"),
                                         websocket.headers.get("origin"), roles,
                                         websocket.url.path)
            except Refused as exc:
                await _deny(websocket, exc)
                return
            await serve(websocket, engine, notifier, credential)
        return route

    app.include_router(mount_changes.router(engine), dependencies=ctrl)  # hot-plug
    app.add_api_websocket_route("/ctrl/drone-socket", socket_route(
        functools.partial(serve_drone, terms=terms), auth.DRONE))
    app.add_api_websocket_route("/ctrl/proxy-socket", socket_route(serve_proxy, auth.PROXY))

    @app.get("/pub/b/{backend_id}/status")
    async def backend_status(backend_id: str) -> StatusResponse:
        return await asyncio.to_thread(backends.status, engine, backend_id)

    @app.get("/pub/b/{backend_id}/status-stream")
    async def status_stream(
        backend_id: str, last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Server-sent events in Plane's shape (sailplane.controller.status_stream)."""
        if not await asyncio.to_thread(backends.exists, engine, backend_id):
            raise BackendNotFound(f"no backend {backend_id!r}")
        events = status_events(engine, notifier, backend_id, last_status(last_event_id))
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    metrics_guard = [] if config.open_metrics else [Depends(require(auth.METRICS))]

    @app.get("/metrics", dependencies=metrics_guard)
    async def metrics() -> PlainTextResponse:
        summaries = await asyncio.to_thread(backends.list_backends, engine, False)
        for status in BackendStatus:
            backend_gauge.labels(status.value).set(
                sum(1 for b in summaries if b.status is status))
        drone_list = await asyncio.to_thread(drones.list_drones, engine)
        drone_gauge.set(sum(1 for d in drone_list if d.connected))
        return PlainTextResponse(generate_latest(registry).decode())

    app.state.engine = engine
    return app


async def _deny(websocket: WebSocket, exc: Refused) -> None:
    """Refuse the upgrade with an HTTP answer (or, on a server without that, close first)."""
    client = websocket.client.host if websocket.client else "?"
    log.warning("refused %s from %s: %s", websocket.url.path, client, exc.message)
    body = JSONResponse({"error": {"code": exc.code, "message": exc.message}}, exc.status)
    try:
        await websocket.send_denial_response(body)
    except RuntimeError:
        await websocket.close(code=1008, reason=exc.message[:120])


def validation_message(errors: Sequence[Any]) -> str:
    """The first of pydantic's errors as one line: where, then what, without its prefixes."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "")
        return f"the body is not valid JSON ({reason})" if reason else \
            "the body is not valid JSON"
    where = ".".join(str(part) for part in first["loc"] if part != "body")
    message = str(first["msg"])
    for prefix in _VALIDATOR_PREFIXES:
        message = message.removeprefix(prefix)
    return f"{where}: {message}" if where else message


def _serve_docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc with the assets the package ships (no CDN)."""
    assets = files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False)
