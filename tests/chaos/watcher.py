"""``docker ps`` from outside, every 100 ms: which backend containers of the run's drones are
running, as a list of intervals during which that set did not change.

It reads only the engine (by Sailplane's labels), never the controller or a drone, so what it
sees is what ran, whatever the cluster believes. While the engine is down (dockerd is being
restarted) the samples fail and are counted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import docker
import docker.errors
import requests

from sailplane.runtime.base import BACKEND_LABEL, DRONE_LABEL

SAMPLE_SECONDS = 0.1


@dataclass
class Span:
    """From ``start`` to ``end`` (wall clock), exactly these backends' containers ran."""

    start: float
    end: float
    running: frozenset[str]
    samples: int = 1


def running_backends(client: docker.DockerClient, drone_ids: set[str]) -> dict[str, str]:
    """backend id -> drone id of every running container of ``drone_ids``."""
    listed = client.api.containers(filters={"label": DRONE_LABEL, "status": "running"})
    return {c["Labels"][BACKEND_LABEL]: c["Labels"][DRONE_LABEL] for c in listed
            if c["Labels"].get(DRONE_LABEL) in drone_ids and BACKEND_LABEL in c["Labels"]}


def all_backends(client: docker.DockerClient, drone_ids: set[str]) -> dict[str, str]:
    """backend id -> state of every container of ``drone_ids``, running or not."""
    listed = client.api.containers(all=True, filters={"label": DRONE_LABEL})
    return {c["Labels"][BACKEND_LABEL]: str(c["State"]) for c in listed
            if c["Labels"].get(DRONE_LABEL) in drone_ids and BACKEND_LABEL in c["Labels"]}


class Watcher:
    def __init__(self, drone_ids: set[str]) -> None:
        self.drone_ids = drone_ids
        self.spans: list[Span] = []
        self.failed_samples = 0
        self.drone_of: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-watcher", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def _run(self) -> None:
        client = docker.DockerClient.from_env(timeout=5)
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    running = running_backends(client, self.drone_ids)
                except (docker.errors.DockerException, requests.RequestException):
                    self.failed_samples += 1
                else:
                    self._record(time.time(), running)
                self._stop.wait(max(0.0, SAMPLE_SECONDS - (time.monotonic() - began)))
        finally:
            client.close()

    def _record(self, at: float, running: dict[str, str]) -> None:
        now = frozenset(running)
        with self._lock:
            self.drone_of.update(running)
            last = self.spans[-1] if self.spans else None
            if last is not None and last.running == now:
                last.end = at
                last.samples += 1
            else:
                self.spans.append(Span(at, at, now))
