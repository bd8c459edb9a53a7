"""End to end: a real controller and a real drone (subprocesses), real containers, real HTTP
and WebSocket on loopback. See ``controller_fixtures`` for the harness."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import docker.errors
import pytest

from sailplane.runtime.docker.runtime import container_name
from tests.integration.controller_fixtures import LIFECYCLE, Cluster, cluster, wait_until

__all__ = ["cluster"]  # the fixture, imported for pytest

pytestmark = pytest.mark.docker


def _container_gone(client: docker.DockerClient, backend_id: str) -> bool:
    try:
        client.api.inspect_container(container_name(backend_id))
    except docker.errors.NotFound:
        return True
    return False


def _statuses(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [data["status"] for _, data in events]


def test_lifecycle_connect_ready_http_stream_and_soft_terminate(
    cluster: Cluster, docker_client: docker.DockerClient,
) -> None:
    made = cluster.connect()
    backend_id = made["backend_id"]
    assert made["spawned"] is True
    assert made["drone"] == cluster.drone_id
    assert made["url"].startswith("http://127.0.0.1:9091/")
    cluster.wait_status(backend_id, "ready")

    answer = cluster.get_backend_http(backend_id)
    assert answer.status_code == 200

    assert cluster.soft_terminate(backend_id) == {"requested": True}
    ended = cluster.wait_status(backend_id, "terminated")
    assert ended["reason"] == "external"

    events = cluster.stream(backend_id)
    statuses = _statuses(events)
    assert statuses[:5] == LIFECYCLE
    assert statuses[-1] == "terminated"
    assert statuses[5:-1] in (["terminating"], ["terminating", "hard-terminating"])
    ids = [event_id for event_id, _ in events]
    assert len(ids) == len(set(ids))
    times = [data["time"] for _, data in events]
    assert times == sorted(times)
    assert events[-1][1]["reason"] == "external"

    # Last-Event-ID resumes after the given event.
    with cluster.http.stream("GET", f"/pub/b/{backend_id}/status-stream",
                             headers={"Last-Event-ID": str(ids[3])}) as response:
        rest = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert len(rest) == len(events) - 4

    wait_until(lambda: _container_gone(docker_client, backend_id), 10, "container removal")


def test_key_reuse_after_termination_and_join_of_a_live_key(cluster: Cluster) -> None:
    key = cluster.new_key()
    first = cluster.connect(key)
    assert first["spawned"] is True
    cluster.wait_status(first["backend_id"], "ready")

    joined = cluster.connect(key)
    assert joined["spawned"] is False
    assert joined["backend_id"] == first["backend_id"]
    assert joined["token"] != first["token"]  # each connect gets its own token

    cluster.soft_terminate(first["backend_id"])
    cluster.wait_status(first["backend_id"], "terminated")

    second = cluster.connect(key)
    assert second["spawned"] is True
    assert second["backend_id"] != first["backend_id"]
    cluster.wait_status(second["backend_id"], "ready")
    assert cluster.get_backend_http(second["backend_id"]).status_code == 200


def test_mount_true_creates_the_key_directory_under_mount_base(cluster: Cluster) -> None:
    key = cluster.new_key()
    made = cluster.connect(key, spawn_config=cluster.spawn_config(mount=True))
    cluster.wait_status(made["backend_id"], "ready")
    assert (cluster.mount_base / key).is_dir()


def test_drone_restart_adopts_the_live_backend(
    cluster: Cluster, docker_client: docker.DockerClient,
) -> None:
    made = cluster.connect()
    backend_id = made["backend_id"]
    cluster.wait_status(backend_id, "ready")

    cluster.drone.stop(signal.SIGKILL)
    cluster.start_drone()
    assert cluster.status(backend_id)["status"] == "ready"
    assert cluster.get_backend_http(backend_id).status_code == 200

    cluster.soft_terminate(backend_id)
    ended = cluster.wait_status(backend_id, "terminated")
    assert ended["reason"] == "external"
    wait_until(lambda: _container_gone(docker_client, backend_id), 10, "container removal")


def test_events_queued_while_the_controller_is_down_arrive_once_in_order(
    cluster: Cluster, docker_client: docker.DockerClient,
) -> None:
    made = cluster.connect()
    backend_id = made["backend_id"]
    cluster.wait_status(backend_id, "ready")

    cluster.controller.stop(signal.SIGTERM)
    docker_client.api.kill(container_name(backend_id))
    # The drone sees the exit and queues `terminated` while it cannot reach the controller.
    time.sleep(1.5)
    cluster.start_controller()
    cluster.wait_drone_connected()

    ended = cluster.wait_status(backend_id, "terminated")
    assert ended["reason"] == "exited"
    assert ended["exit_code"] == 137
    statuses = _statuses(cluster.stream(backend_id))
    assert statuses == [*LIFECYCLE, "terminated"]


def test_backend_exiting_by_itself_reports_its_exit_code(cluster: Cluster) -> None:
    # httpd daemonizes (no -f), so the port answers, then the shell exits with 7.
    command = ["sh", "-c", 'httpd -p "$PORT" -h /srv; sleep 2; exit 7']
    made = cluster.connect(spawn_config=cluster.spawn_config(command=command))
    backend_id = made["backend_id"]
    cluster.wait_status(backend_id, "ready")
    ended = cluster.wait_status(backend_id, "terminated")
    assert ended["reason"] == "exited"
    assert ended["exit_code"] == 7
    assert _statuses(cluster.stream(backend_id)) == [*LIFECYCLE, "terminated"]


def test_controller_restart_mid_flight(cluster: Cluster) -> None:
    made = cluster.connect()
    cluster.controller.stop(signal.SIGTERM)
    cluster.start_controller()
    cluster.wait_status(made["backend_id"], "ready", timeout=30)
    cluster.soft_terminate(made["backend_id"])
    statuses = _statuses(cluster.stream(made["backend_id"]))
    assert statuses[:5] == LIFECYCLE
    assert statuses[-1] == "terminated"


def test_lifetime_limit(cluster: Cluster) -> None:
    made = cluster.connect(lifetime_limit_seconds=2)
    started = time.monotonic()
    ended = cluster.wait_status(made["backend_id"], "terminated", timeout=15)
    assert ended["reason"] == "lifetime"
    assert time.monotonic() - started < 12


def test_idle_backend_is_swept(cluster: Cluster) -> None:
    made = cluster.connect(max_idle_seconds=2)
    cluster.wait_status(made["backend_id"], "ready")
    ended = cluster.wait_status(made["backend_id"], "terminated", timeout=15)
    assert ended["reason"] == "swept"


def test_concurrent_connects_for_different_keys(cluster: Cluster) -> None:
    keys = [cluster.new_key() for _ in range(5)]
    with ThreadPoolExecutor(len(keys)) as pool:
        made = list(pool.map(cluster.connect, keys))
    assert all(m["spawned"] for m in made)
    assert len({m["backend_id"] for m in made}) == len(keys)
    for m in made:
        cluster.wait_status(m["backend_id"], "ready", timeout=30)
    live = {b["backend_id"] for b in cluster.http.get("/ctrl/backends?live=true").json()}
    assert {m["backend_id"] for m in made} <= live
