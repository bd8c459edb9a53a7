"""``GET /pub/b/{id}/status-stream``: a backend's states as server-sent events, in Plane's shape.

Each state is one *unnamed* event (so a browser's ``EventSource.onmessage`` sees it) whose
``id`` is the status itself and whose ``data`` is the object ``GET /pub/b/{id}/status``
answers::

    id: ready
    data: {"status": "ready", "time": 1700000000000}

The stream replays the history first, then follows until ``terminated``. A client that
reconnects sends back the last id it saw (``Last-Event-ID: ready``) and gets only the states
after it: statuses only move forward, so the status names the place in the history. An id
that names no status replays everything, as Plane does. While nothing happens a comment line
keeps intermediaries from closing the connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from sqlalchemy import Engine

from sailplane.controller import backends
from sailplane.controller.models import StatusResponse
from sailplane.controller.notify import Notifier
from sailplane.state import BackendStatus

POLL_SECONDS = 0.5  # the longest a new state waits when a notification was missed
KEEP_ALIVE_SECONDS = 15.0  # Plane's (axum's) default keep-alive interval
KEEP_ALIVE = ": keep-alive\n\n"


def last_status(last_event_id: str | None) -> BackendStatus | None:
    """The status a ``Last-Event-ID`` names, or None (replay everything)."""
    try:
        return BackendStatus((last_event_id or "").strip())
    except ValueError:
        return None


def event(state: StatusResponse) -> str:
    """One state as an unnamed event whose id is its status."""
    body = json.dumps(state.model_dump(mode="json", exclude_none=True))
    return f"id: {state.status.value}\ndata: {body}\n\n"


async def status_events(
    engine: Engine, notifier: Notifier, backend_id: str, after: BackendStatus | None,
) -> AsyncIterator[str]:
    """The backend's states after ``after`` (all if None), then each new one, until the end."""
    cursor = 0  # the history's row id: each state is read once
    quiet_since = time.monotonic()
    while True:
        states = await asyncio.to_thread(backends.history, engine, backend_id, cursor)
        for row, state in states:
            cursor = row
            if after is None or state.status.rank > after.rank:
                quiet_since = time.monotonic()
                yield event(state)
            if state.status is BackendStatus.TERMINATED:
                return
        if time.monotonic() - quiet_since >= KEEP_ALIVE_SECONDS:
            quiet_since = time.monotonic()
            yield KEEP_ALIVE
        await notifier.wait(f"backend:{backend_id}", POLL_SECONDS)
