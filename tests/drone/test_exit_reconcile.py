"""The Docker runtime's exit watching after a break in the event stream, on a fake engine.

The real dockerd restart is ``tests/integration/test_drone_faults_dockerd.py``; a container
that vanishes while the stream is down, or one caught between create and start, needs an
engine answer at one precise moment, which only a fake can give.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, cast

import docker

from sailplane.runtime.base import BACKEND_LABEL, DRONE_LABEL, WARM_LABEL
from sailplane.runtime.docker.runtime import DockerRuntime

DRONE = "d1"


def container(name: str, state: str, status: str = "", **labels: str) -> dict[str, Any]:
    return {"Names": [f"/{name}"], "State": state, "Status": status,
            "Labels": {DRONE_LABEL: DRONE, **labels}}


def backend(backend_id: str, state: str, status: str = "") -> dict[str, Any]:
    return container(f"sailplane-{backend_id}", state, status, **{BACKEND_LABEL: backend_id})


class FakeAPI:
    def __init__(self, listings: list[list[dict[str, Any]]]) -> None:
        self.listings = listings

    def containers(self, all: bool, filters: dict[str, str]) -> list[dict[str, Any]]:
        assert all and filters == {"label": f"{DRONE_LABEL}={DRONE}"}
        return self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]


class FakeClient:
    """``events()`` answers from ``streams`` in turn: an exception is raised (the engine is
    down), a list is a stream that ends after its events (the engine went away)."""

    def __init__(self, streams: list[Exception | list[dict[str, Any]]],
                 listings: list[list[dict[str, Any]]]) -> None:
        self.streams = streams
        self.api = FakeAPI(listings)
        self.subscriptions = 0

    def events(self, **_: Any) -> Iterator[dict[str, Any]]:
        self.subscriptions += 1
        answer = self.streams.pop(0) if self.streams else []
        if isinstance(answer, Exception):
            raise answer
        return iter(answer)


def runtime_on(client: FakeClient) -> DockerRuntime:
    return DockerRuntime(DRONE, client=cast(docker.DockerClient, client))


def test_a_reconcile_reports_dead_and_vanished_backends_and_nothing_else() -> None:
    listing = [
        backend("alive", "running", "Up 3 minutes"),
        backend("dead", "exited", "Exited (3) 2 seconds ago"),
        backend("killed", "dead", "Dead"),
        backend("starting", "created", "Created"),  # a start under way: not an exit
        container("sailplane-warm-abc", "exited", "Exited (0) 1 second ago",
                  **{WARM_LABEL: "img"}),  # an unclaimed warm container: no backend
    ]
    runtime = runtime_on(FakeClient([], [listing]))
    running = {"alive", "gone"}
    reported: list[tuple[str, int]] = []
    runtime._reconcile(running, lambda b, code: reported.append((b, code)))
    assert sorted(reported) == [("dead", 3), ("gone", -1), ("killed", -1)]
    assert running == {"alive"}


def test_the_stream_is_followed_again_after_the_engine_went_away() -> None:
    die = {"Action": "die", "Actor": {"Attributes": {
        "name": "sailplane-b2", BACKEND_LABEL: "b2", DRONE_LABEL: DRONE, "exitCode": "7"}}}
    start = {"Action": "start", "Actor": {"Attributes": {
        "name": "sailplane-b3", BACKEND_LABEL: "b3", DRONE_LABEL: DRONE}}}
    client = FakeClient(
        streams=[ConnectionError("refused"), ConnectionError("refused"), [die, start]],
        listings=[[backend("b1", "running"), backend("b2", "running")],  # first subscription
                  [backend("b2", "running")],  # after the break: b1 vanished meanwhile
                  [backend("b3", "running")]])
    runtime = runtime_on(client)
    reported: list[tuple[str, int]] = []
    done = threading.Event()

    def report(backend_id: str, code: int) -> None:
        reported.append((backend_id, code))
        if len(reported) == 2:
            done.set()

    runtime._stream = iter([])  # the first subscription's stream, ending at once
    watcher = threading.Thread(target=runtime._watch, args=(report,), daemon=True)
    watcher.start()
    try:
        assert done.wait(10), reported
    finally:
        runtime._closing.set()
        watcher.join(10)
    assert reported == [("b1", -1), ("b2", 7)]
    assert client.subscriptions >= 3  # two refused, then followed again
    assert not watcher.is_alive()
