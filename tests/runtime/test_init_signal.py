"""A soft terminate reaches a Docker backend's init from the drone itself, not through the
engine, and only the init of the container it names (real Docker, ``sailplane/static``)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from sailplane.runtime.docker.runtime import DockerRuntime, container_name
from sailplane.runtime.init_signal import is_init, signal_init

IMAGE = "sailplane/static:latest"


@pytest.fixture
def client() -> Iterator[docker.DockerClient]:
    engine = docker.from_env()
    try:
        engine.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"no image {IMAGE}: run images/build (scripts/setup)")
    yield engine
    engine.close()


@pytest.fixture
def backend(client: docker.DockerClient) -> Iterator[tuple[str, str, int]]:
    """A running container of the image with an empty network namespace, as a backend is
    made: (its backend id, its container id, its init's pid); removed whatever happens."""
    backend_id = f"b-{uuid.uuid4().hex[:12]}"
    created = client.api.create_container(IMAGE, name=container_name(backend_id), detach=True,
                                          host_config=client.api.create_host_config(
                                              network_mode="none"))
    container_id = str(created["Id"])
    try:
        client.api.start(container_id)
        pid = int(client.api.inspect_container(container_id)["State"]["Pid"])
        yield backend_id, container_id, pid
    finally:
        client.api.remove_container(container_id, force=True)


def kill_events(client: docker.DockerClient, container_id: str, since: float) -> list[Any]:
    return list(client.events(since=int(since), until=int(time.time()) + 2, decode=True,
                              filters={"container": container_id, "event": "kill"}))


def test_only_the_init_of_the_container_named_is_signalled(
        client: docker.DockerClient, backend: tuple[str, str, int]) -> None:
    _, container_id, pid = backend
    assert not signal_init(pid, lambda cgroup: "not-this-container" in cgroup, signal.SIGTERM)
    assert not signal_init(os.getpid(), lambda cgroup: True, signal.SIGTERM)  # not an init
    assert client.api.inspect_container(container_id)["State"]["Running"]

    assert is_init(pid, lambda cgroup: container_id in cgroup)
    assert signal_init(pid, lambda cgroup: container_id in cgroup, signal.SIGTERM)
    assert client.api.wait(container_id, timeout=30)["StatusCode"] == 0  # its trap: exit 0


def test_a_soft_terminate_is_sent_by_the_drone_and_a_hard_one_by_the_engine(
        client: docker.DockerClient, backend: tuple[str, str, int]) -> None:
    backend_id, container_id, pid = backend
    runtime = DockerRuntime("d-test", client=client)
    name = container_name(backend_id)
    runtime._ids[name], runtime._pids[name] = container_id, pid  # as its start records them
    since = time.time() - 1

    asyncio.run(runtime.signal(backend_id, hard=False))

    assert client.api.wait(container_id, timeout=30)["StatusCode"] == 0
    assert kill_events(client, container_id, since) == []  # the engine was not asked

    client.api.restart(container_id, timeout=0)  # a new init: the recorded pid is stale
    runtime._pids[name] = pid
    since = time.time() - 1
    asyncio.run(runtime.signal(backend_id, hard=True))  # through the engine, as ever
    assert client.api.wait(container_id, timeout=30)["StatusCode"] == 137
    assert [event["Actor"]["Attributes"]["signal"]
            for event in kill_events(client, container_id, since)] == ["9"]
    runtime.calls.close()
