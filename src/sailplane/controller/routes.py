"""What proxies need from the database: token -> route, and connection activity."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, bindparam, select, update

from sailplane.controller.db.tables import backends, tokens
from sailplane.protocol import RouteInfo
from sailplane.state import BackendStatus, now_ms


def lookup(engine: Engine, token: str) -> RouteInfo:
    """The route for a user or static token, or an empty answer if it leads nowhere live."""
    return find(engine, token)[0]


def find(engine: Engine, token: str) -> tuple[RouteInfo, str | None]:
    """As :func:`lookup`, and the id of the token's backend if it is on its way to ``ready``
    (spawned, not ready yet, not asked to stop): a request for it can wait for its route."""
    with engine.connect() as conn:
        row: tuple[Any, ...] | None = conn.execute(_BY_TOKEN, {"token": token}).first()
        if row is None:
            static = conn.execute(_BY_STATIC_TOKEN, {"token": token}).first()
            row = None if static is None else (*static, None, None)
    if row is None:
        return RouteInfo(token=token), None
    backend_id, address, status, secret, stop_requested, username, auth = row
    if status != BackendStatus.READY.value or not address:
        starting = (BackendStatus(status).rank < BackendStatus.READY.rank
                    and not stop_requested)
        return RouteInfo(token=token), backend_id if starting else None
    return RouteInfo(token=token, backend_id=backend_id, address=address, username=username,
                     user_data=json.dumps(auth or {}), secret=secret), None


# Built once: the proxies ask for every token they have not seen.
_ROUTE_COLUMNS = (backends.c.id, backends.c.address, backends.c.status, backends.c.secret_token,
                  backends.c.stop_requested)
_BY_TOKEN = (select(*_ROUTE_COLUMNS, tokens.c.username, tokens.c.auth)
             .join(tokens, tokens.c.backend_id == backends.c.id)
             .where(tokens.c.token == bindparam("token")))
_BY_STATIC_TOKEN = select(*_ROUTE_COLUMNS).where(backends.c.static_token == bindparam("token"))


def not_ready(engine: Engine, backend_ids: Iterable[str]) -> list[str]:
    """Those of ``backend_ids`` that are no longer ``ready``."""
    ids = list(backend_ids)
    if not ids:
        return []
    with engine.connect() as conn:
        ready = set(conn.execute(
            select(backends.c.id).where(backends.c.id.in_(ids),
                                        backends.c.status == BackendStatus.READY.value)
        ).scalars())
    return [backend_id for backend_id in ids if backend_id not in ready]


def record_activity(engine: Engine, backend_ids: Iterable[str]) -> None:
    """These backends had live connections just now: their idle time restarts."""
    ids = list(backend_ids)
    if ids:
        with engine.begin() as conn:
            conn.execute(update(backends).where(backends.c.id.in_(ids))
                         .values(last_active_ms=now_ms()))
