"""The controller's HTTP API through FastAPI's TestClient, with fake drones registered straight
into the database (no WebSocket): the lifespan runs the migrations and the sweeper."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from sailplane.controller import backends, drones
from sailplane.controller.db import tables
from sailplane.controller.sweeper import sweep_once
from sailplane.mounts.policy import Access
from sailplane.state import BackendState, BackendStatus, TerminationReason, now_ms
from tests.controller.conftest import (
    CONTROLLER_URL,
    PROXY_URL,
    add_drone,
    make_client,
    spawn_body,
)
from tests.eventsource import on_message, parse

NEVER_LOST = 1e9


def engine_of(client: TestClient) -> Engine:
    engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
    return engine


def connect(client: TestClient, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = client.post("/ctrl/connect", json=body)
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


def error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert body["code"] == code
    return body


def record(engine: Engine, backend_id: str, status: BackendStatus, **extra: Any) -> None:
    with engine.begin() as conn:
        assert backends.record_state(conn, backend_id,
                                     BackendState(status=status, time=now_ms(), **extra))


@pytest.fixture
def live(client: TestClient) -> TestClient:
    add_drone(engine_of(client))
    return client


def test_connect_spawns(any_client: TestClient) -> None:
    add_drone(engine_of(any_client))
    body = connect(any_client, spawn_body())
    assert body["spawned"] is True
    assert body["status"] == "scheduled"
    assert body["drone"] == "d1"
    assert body["token"] and body["secret_token"]
    assert body["url"] == f"{PROXY_URL}/{body['token']}/"
    assert body["status_url"] == f"{CONTROLLER_URL}/pub/b/{body['backend_id']}/status"
    actions = drones.pending_actions(engine_of(any_client), "d1")
    assert [(a["type"], a["backend_id"]) for a in actions] == [("spawn", body["backend_id"])]


def test_second_connect_joins(any_client: TestClient) -> None:
    add_drone(engine_of(any_client))
    first = connect(any_client, spawn_body())
    second = connect(any_client, spawn_body())
    assert second["spawned"] is False
    assert second["backend_id"] == first["backend_id"]
    assert second["token"] != first["token"]
    assert second["url"] == f"{PROXY_URL}/{second['token']}/"
    key_only = connect(any_client, {"key": {"name": "doc-1"}})
    assert key_only["backend_id"] == first["backend_id"]
    assert len(drones.pending_actions(engine_of(any_client), "d1")) == 1


def test_static_token_is_reused(live: TestClient) -> None:
    first = connect(live, spawn_body(use_static_token=True))
    second = connect(live, spawn_body(use_static_token=True))
    assert first["token"] == second["token"]
    assert first["token"].startswith(backends.STATIC_TOKEN_PREFIX)


def test_tag_mismatch_409(live: TestClient) -> None:
    connect(live, spawn_body(tag="v1"))
    body = error(live.post("/ctrl/connect", json=spawn_body(tag="v2")), 409, "tag_mismatch")
    assert "'v1'" in body["message"]


def test_key_only_without_live_backend_404(live: TestClient) -> None:
    body = error(live.post("/ctrl/connect", json={"key": {"name": "nobody"}}), 404, "not_found")
    assert "nobody" in body["message"]


def test_no_drone_503_with_reason(client: TestClient) -> None:
    body = error(client.post("/ctrl/connect", json=spawn_body()), 503, "no_drone_available")
    assert body["message"] == "no drone is connected"


def test_no_drone_offers_the_volume_503(live: TestClient) -> None:
    mounts = [{"type": "host", "volume": "data", "target": "/data", "read_only": False}]
    response = live.post("/ctrl/connect",
                         json=spawn_body(executable={"volume_mounts": mounts}))
    body = error(response, 503, "no_drone_available")
    assert "'data' read-write" in body["message"]
    add_drone(engine_of(live), "d2", volumes={"data": Access.RW})
    assert connect(live, spawn_body(executable={"volume_mounts": mounts}))["drone"] == "d2"


def test_sub_path_escape_refused_400(live: TestClient) -> None:
    mounts = [{"type": "host", "volume": "data", "sub_path": "../x", "target": "/data"}]
    response = live.post("/ctrl/connect",
                         json=spawn_body(executable={"volume_mounts": mounts}))
    body = error(response, 400, "mount_refused")
    assert body["mount"] == 0
    assert backends.list_backends(engine_of(live)) == []


def test_bad_json_400(live: TestClient) -> None:
    response = live.post("/ctrl/connect", content=b'{"key": ',
                         headers={"content-type": "application/json"})
    error(response, 400, "invalid_request")


@pytest.mark.parametrize(("body", "field"), [
    (spawn_body(lifetime_limit_seconds="soon"), "spawn_config.lifetime_limit_seconds"),
    (spawn_body(executable={"env": {"A": 1}}), "spawn_config.executable.env.A"),
    (spawn_body(executable={"volume_mounts": [{"type": "host", "volume": "data",
                                               "target": "/d", "sub_paht": "x"}]}),
     "spawn_config.executable.volume_mounts.0.host.sub_paht"),
    ({"key": {"name": 5}}, "key.name"),
    ({}, "at least one of 'key' and 'spawn_config'"),
])
def test_wrong_types_name_the_field(live: TestClient, body: dict[str, Any], field: str) -> None:
    assert field in error(live.post("/ctrl/connect", json=body), 400, "invalid_request")["message"]


def _host(**fields: Any) -> dict[str, Any]:
    return spawn_body(executable={"volume_mounts": [
        {"type": "host", "volume": "data", "target": "/data", **fields},
    ]})


@pytest.mark.parametrize(("body", "code", "field"), [
    (_host(target="/data\n/x"), "mount_refused", "volume_mounts[0].target: contains a control "
     "character (U+000A)"),
    (_host(sub_path="a\nb"), "mount_refused", "volume_mounts[0].sub_path: contains a control "
     "character (U+000A)"),
    (_host(volume="data\n"), "invalid_request", "spawn_config.executable.volume_mounts.0.host."
     "volume"),
    (spawn_body(name="doc\n1"), "invalid_request", "key.name"),
    (spawn_body(namespace="a\tb"), "invalid_request", "key.namespace"),
    (spawn_body(executable={"mount": "docs\x7f"}), "mount_refused", "mount: contains a control"),
    (spawn_body(executable={"image": "Bad Image!!"}), "invalid_request",
     "spawn_config.executable.image"),
    (spawn_body(executable={"image": "-foo"}), "invalid_request",
     "spawn_config.executable.image"),
    (spawn_body(executable={"env": {"A=B": "x"}}), "invalid_request",
     "spawn_config.executable.env"),
    (spawn_body(executable={"env": {"A\x00": "x"}}), "invalid_request",
     "spawn_config.executable.env"),
    (spawn_body(executable={"env": {"A": "x\x00"}}), "invalid_request",
     "spawn_config.executable.env.A"),
])
def test_control_characters_and_bad_names_are_refused_at_connect_400(
    live: TestClient, body: dict[str, Any], code: str, field: str
) -> None:
    body_error = error(live.post("/ctrl/connect", json=body), 400, code)
    assert field in body_error["message"]
    assert backends.list_backends(engine_of(live)) == []


def test_unknown_backend_404(live: TestClient) -> None:
    error(live.get("/pub/b/b-0000000000000000/status"), 404, "not_found")
    error(live.get("/pub/b/b-0000000000000000/status-stream"), 404, "not_found")
    error(live.post("/ctrl/b/b-0000000000000000/soft-terminate"), 404, "not_found")


def test_public_status_hides_host_details(any_client: TestClient) -> None:
    engine = engine_of(any_client)
    add_drone(engine)
    backend_id = connect(any_client, spawn_body())["backend_id"]
    assert any_client.get(f"/pub/b/{backend_id}/status").json()["status"] == "scheduled"
    record(engine, backend_id, BackendStatus.READY)
    with engine.begin() as conn:
        backends.record_state(conn, backend_id, BackendState(
            status=BackendStatus.TERMINATED, time=now_ms(), reason=TerminationReason.ERROR,
            exit_code=3, message="mount refused: /srv/secret/volumes/data is a symlink",
        ), address="10.1.2.3:8080")
    response = any_client.get(f"/pub/b/{backend_id}/status")
    body = response.json()
    assert set(body) == {"status", "time", "reason", "exit_code"}
    assert (body["status"], body["reason"], body["exit_code"]) == ("terminated", "error", 3)
    assert "/srv" not in response.text and "symlink" not in response.text
    [summary] = any_client.get("/ctrl/backends").json()
    assert "/srv/secret" in summary["message"]  # the trusted API may tell


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_metrics(live: TestClient) -> None:  # the client sends an API token
    connect(live, spawn_body())
    text = live.get("/metrics").text
    assert 'sailplane_backends{status="scheduled"} 1.0' in text
    assert "sailplane_connect_seconds_count 1.0" in text
    assert "sailplane_drones 1.0" in text


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """What a browser's EventSource.onmessage sees: (lastEventId, the parsed data)."""
    seen = on_message(text)
    assert len(seen) == len(parse(text))  # every event is unnamed, so onmessage gets it
    return [(event.last_event_id, json.loads(event.data)) for event in seen]


def test_status_stream_replays_and_follows(any_client: TestClient) -> None:
    engine = engine_of(any_client)
    add_drone(engine)
    backend_id = connect(any_client, spawn_body())["backend_id"]
    record(engine, backend_id, BackendStatus.LOADING)
    record(engine, backend_id, BackendStatus.READY)
    finish = threading.Timer(0.3, record, (engine, backend_id, BackendStatus.TERMINATED),
                             {"reason": TerminationReason.EXTERNAL})
    finish.start()
    try:
        response = any_client.get(f"/pub/b/{backend_id}/status-stream")
    finally:
        finish.join()
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "event:" not in response.text
    history = events(response.text)
    assert [e["status"] for _, e in history] == ["scheduled", "loading", "ready", "terminated"]
    assert history[-1][1]["reason"] == "external"
    assert [event_id for event_id, _ in history] == [e["status"] for _, e in history]

    # Plane's clients reconnect with the status they saw last (EventSource does it itself).
    resumed = any_client.get(f"/pub/b/{backend_id}/status-stream",
                             headers={"last-event-id": "ready"})
    assert resumed.status_code == 200
    assert events(resumed.text) == history[3:]
    done = any_client.get(f"/pub/b/{backend_id}/status-stream",
                          headers={"last-event-id": "terminated"})
    assert done.status_code == 200 and events(done.text) == []
    unknown = any_client.get(f"/pub/b/{backend_id}/status-stream",
                             headers={"last-event-id": "17"})
    assert unknown.status_code == 200 and events(unknown.text) == history


def test_eventsource_parser_follows_the_standard() -> None:
    stream = (": keep-alive\n\nid: ready\ndata: {\"a\":\r\ndata: 1}\n\n"
              "event: status\ndata: x\n\ndata: lost")
    assert [(e.type, e.data, e.last_event_id) for e in parse(stream)] == [
        ("message", '{"a":\n1}', "ready"), ("status", "x", "ready")]
    assert [e.data for e in on_message(stream)] == ['{"a":\n1}']


def test_drain_stops_scheduling(live: TestClient) -> None:
    assert live.post("/ctrl/d/d1/drain").json() == {"draining": True}
    body = error(live.post("/ctrl/connect", json=spawn_body()), 503, "no_drone_available")
    assert "draining" in body["message"]
    assert live.get("/ctrl/drones").json()[0]["draining"] is True
    error(live.post("/ctrl/d/nobody/drain"), 404, "not_found")
    add_drone(engine_of(live), "d2")
    assert connect(live, spawn_body())["drone"] == "d2"


def test_terminate_queues_once(live: TestClient) -> None:
    backend_id = connect(live, spawn_body())["backend_id"]
    assert live.post(f"/ctrl/b/{backend_id}/soft-terminate").json() == {"requested": True}
    assert live.post(f"/ctrl/b/{backend_id}/soft-terminate").json() == {"requested": False}
    assert live.post(f"/ctrl/b/{backend_id}/hard-terminate").json() == {"requested": True}
    assert live.post(f"/ctrl/b/{backend_id}/hard-terminate").json() == {"requested": False}
    kinds = [(a["type"], a.get("hard")) for a in drones.pending_actions(engine_of(live), "d1")]
    assert kinds == [("spawn", None), ("terminate", False), ("terminate", True)]


def terminations(engine: Engine) -> list[tuple[str, str]]:
    return [(a["backend_id"], a["reason"]) for a in drones.pending_actions(engine, "d1")
            if a["type"] == "terminate"]


def test_sweep_lifetime(live: TestClient) -> None:
    engine = engine_of(live)
    backend_id = connect(live, spawn_body(lifetime_limit_seconds=60))["backend_id"]
    assert sweep_once(engine, now_ms(), NEVER_LOST) == []
    assert sweep_once(engine, now_ms() + 61_000, NEVER_LOST) == ["d1"]
    assert terminations(engine) == [(backend_id, "lifetime")]
    assert sweep_once(engine, now_ms() + 61_000, NEVER_LOST) == []  # asked once


def test_sweep_idle_counts_from_ready(live: TestClient) -> None:
    engine = engine_of(live)
    backend_id = connect(live, spawn_body(max_idle_seconds=5))["backend_id"]
    assert sweep_once(engine, now_ms() + 60_000, NEVER_LOST) == []  # not ready: not idle
    record(engine, backend_id, BackendStatus.READY)
    assert sweep_once(engine, now_ms() + 1_000, NEVER_LOST) == []
    assert sweep_once(engine, now_ms() + 6_000, NEVER_LOST) == ["d1"]
    assert terminations(engine) == [(backend_id, "swept")]


def test_mark_lost_keeps_the_key_until_the_lease_ends(database_url: str) -> None:
    for client in make_client(database_url, connect_key_wait_seconds=0.3):
        engine = engine_of(client)
        add_drone(engine)
        first = connect(client, spawn_body())
        assert drones.mark_lost(engine, now_ms() - 60_000) == []
        assert drones.mark_lost(engine, now_ms() + 1_000) == [first["backend_id"]]
        status = client.get(f"/pub/b/{first['backend_id']}/status").json()
        assert (status["status"], status["reason"]) == ("terminated", "lost")
        error(client.post("/ctrl/connect", json={"key": {"name": "doc-1"}}), 404, "not_found")
        add_drone(engine)  # the drone says hello again
        # its lease still holds the key: the lost container may still run
        error(client.post("/ctrl/connect", json=spawn_body()), 503, "key_busy")
        sweep_once(engine, now_ms() + 26_000, NEVER_LOST)  # lease (20 s) + margin (5 s) later
        again = connect(client, spawn_body())
        assert again["spawned"] is True
        assert again["backend_id"] != first["backend_id"]


def test_terminated_releases_the_key(live: TestClient) -> None:
    first = connect(live, spawn_body(tag="v1"))
    record(live_engine := engine_of(live), first["backend_id"], BackendStatus.TERMINATED,
           reason=TerminationReason.EXITED, exit_code=0)
    second = connect(live, spawn_body(tag="v2"))  # the old tag no longer holds the key
    assert second["spawned"] is True
    assert len(backends.list_backends(live_engine, live_only=True)) == 1


def test_undrain_lets_scheduling_resume(live: TestClient) -> None:
    live.post("/ctrl/d/d1/drain")
    assert [d["draining"] for d in live.get("/ctrl/drones").json()] == [True]
    assert live.post("/ctrl/d/d1/undrain").json() == {"draining": False}
    assert [d["draining"] for d in live.get("/ctrl/drones").json()] == [False]
    assert connect(live, spawn_body())["drone"] == "d1"
    error(live.post("/ctrl/d/nosuch/undrain"), 404, "not_found")


def test_drain_survives_the_drones_reconnection_until_undone(live: TestClient) -> None:
    live.post("/ctrl/d/d1/drain")
    add_drone(engine_of(live))  # registers again, as a reconnecting drone does
    assert [d["draining"] for d in live.get("/ctrl/drones").json()] == [True]


def test_write_to_a_volume_every_drone_offers_read_only_is_the_callers_mistake(
    client: TestClient,
) -> None:
    add_drone(engine_of(client), "d1", volumes={"config": Access.RO})
    add_drone(engine_of(client), "d2", volumes={"config": Access.RO, "data": Access.RW})
    mounts = [{"type": "host", "volume": "data", "target": "/data", "read_only": False},
              {"type": "host", "volume": "config", "target": "/etc/app", "read_only": False}]
    body = error(client.post("/ctrl/connect", json=spawn_body(
        executable={"volume_mounts": mounts})), 400, "mount_refused")
    assert body["message"] == ("host volume 'config' is read-only on every drone; ask for "
                               "read_only: true")
    assert body["mount"] == 1
    mounts[1]["read_only"] = True
    assert connect(client, spawn_body(executable={"volume_mounts": mounts}))["drone"] == "d2"


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/nosuch", 404, "not_found"),
    ("GET", "/ctrl/nosuch", 404, "not_found"),
    ("GET", "/ctrl/connect", 405, "method_not_allowed"),
    ("GET", "/ctrl/b/b-0000000000000000", 404, "not_found"),
    ("POST", "/ctrl/d/nosuch/drain", 404, "not_found"),
])
def test_every_error_is_an_error_object(
    client: TestClient, method: str, path: str, status: int, code: str,
) -> None:
    response = client.request(method, path)
    assert set(response.json()) == {"error"}, response.text
    body = error(response, status, code)
    assert body["message"] and "detail" not in response.text


@pytest.mark.parametrize(("content", "message"), [
    (b"{not json", "the body is not valid JSON"),
    (json.dumps(spawn_body(executable={"image": "Bad Image!!"})).encode(),
     "spawn_config.executable.image: "),
    (json.dumps({"spawn_config": {"executable": {"image": "x"},
                                  "max_idle_seconds": 0}}).encode(),
     "spawn_config.max_idle_seconds: Input should be greater than 0"),
])
def test_validation_errors_are_one_plain_line(
    live: TestClient, content: bytes, message: str,
) -> None:
    response = live.post("/ctrl/connect", content=content,
                         headers={"content-type": "application/json"})
    body = error(response, 400, "invalid_request")
    assert body["message"].startswith(message)
    for noise in ("Value error, ", "JSON decode error", "0: "):
        assert noise not in body["message"]


def test_a_backend_by_id_carries_its_error_message(live: TestClient) -> None:
    backend_id = connect(live, spawn_body())["backend_id"]
    record(engine_of(live), backend_id, BackendStatus.TERMINATED,
           reason=TerminationReason.ERROR, message="image nosuch/image:2 is not on this drone")
    body = live.get(f"/ctrl/b/{backend_id}").json()
    assert (body["status"], body["reason"]) == ("terminated", "error")
    assert body["message"] == "image nosuch/image:2 is not on this drone"
    assert live.get(f"/ctrl/b/{backend_id}", headers={"authorization": ""}).status_code == 401


def test_docs_are_served_without_a_cdn(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page, headers={"authorization": ""}).text
        assert "cdn." not in html and "googleapis" not in html
        assets = [src for src in html.split('"') if src.startswith("/docs-assets/")]
        assert assets, html
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/ctrl/connect"]["post"]["security"] == [{"HTTPBearer": []}]


def test_an_operator_default_idle_limit_applies_when_a_request_gives_none(
    sqlite_url: str,
) -> None:
    for client in make_client(sqlite_url, default_max_idle_seconds=300):
        add_drone(engine_of(client))
        given = connect(client, spawn_body("a", max_idle_seconds=5))["backend_id"]
        default = connect(client, spawn_body("b"))["backend_id"]
        with engine_of(client).connect() as conn:
            rows = dict(conn.execute(select(tables.backends.c.id,
                                            tables.backends.c.max_idle_seconds)).all())
        assert (rows[given], rows[default]) == (5, 300)
