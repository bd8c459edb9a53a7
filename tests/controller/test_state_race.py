"""Two transactions storing states of one backend at once never move it backwards.

Found by the chaos suite (tests/chaos): a controller starting again marked a silent drone's
backend ``terminated (lost)`` while the returning drone's queued events (``waiting``,
``ready``) were applied on another connection. Both read ``starting``; the second wrote its
state over the first's, so a terminated backend was ``ready`` again and its status stream,
which ends at the first ``terminated``, never showed it. On PostgreSQL only: SQLite takes the
write lock at BEGIN.
"""

from __future__ import annotations

import threading

from sqlalchemy import Engine

from sailplane.controller import backends
from sailplane.controller.db.engine import make_engine, migrate
from sailplane.spec import ConnectRequest
from sailplane.state import BackendState, BackendStatus, TerminationReason, now_ms
from tests.controller.conftest import (
    CONTROLLER_URL,
    PROXY_URL,
    add_drone,
    reset_postgres,
    spawn_body,
)

URLS = backends.Urls(proxy=PROXY_URL, controller=CONTROLLER_URL)
BLOCKED_SECONDS = 0.5  # long enough for the second writer to reach the row


def test_a_lost_backend_is_not_made_ready_by_a_concurrent_event() -> None:
    engine: Engine = make_engine(reset_postgres())
    try:
        migrate(engine)
        add_drone(engine)
        response, _ = backends.connect(engine, ConnectRequest.model_validate(spawn_body()),
                                       URLS, key_wait_seconds=0)
        backend_id = response.backend_id
        with engine.begin() as conn:
            backends.record_state(conn, backend_id, BackendState(
                status=BackendStatus.STARTING, time=now_ms()))
        stored: list[bool] = []

        def drone_event() -> None:  # the drone's late "waiting", on another connection
            with engine.begin() as conn:
                stored.append(backends.record_state(conn, backend_id, BackendState(
                    status=BackendStatus.WAITING, time=now_ms())))

        with engine.begin() as lost:  # the sweeper's "lost", not committed yet
            assert backends.record_state(lost, backend_id, BackendState(
                status=BackendStatus.TERMINATED, time=now_ms(),
                reason=TerminationReason.LOST), release_key=False)
            writer = threading.Thread(target=drone_event)
            writer.start()
            writer.join(BLOCKED_SECONDS)
        writer.join(10)
        assert stored == [False]
        assert backends.status(engine, backend_id).status is BackendStatus.TERMINATED
        statuses = [state.status for _, state in backends.history(engine, backend_id)]
        assert statuses[-1] is BackendStatus.TERMINATED
    finally:
        engine.dispose()
