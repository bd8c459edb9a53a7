"""A paused drone never lets its backends outlive their key lease (real processes, real Docker).

The lease watchdog (``sailplane.drone.watchdog``) runs outside the drone's process; these tests
pause a drone with SIGSTOP and watch ``docker ps`` from outside, every 100 ms, for the one
thing that must never happen: two live containers for one key.

Every process of a cluster here runs with ``SAILPLANE_TIME_SCALE`` so that a lease is seconds
long: lease 5 s, the drone (and its watchdog) stops its backends after 3 s without a renewal,
the controller counts a silent drone's backends lost after 7.5 s and frees their keys 1.25 s
after the lease ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import httpx
import pytest

from sailplane.drone.watchdog import LeaseRecord, WatchdogConfig, write_lease
from sailplane.runtime.base import BACKEND_LABEL, DRONE_LABEL
from sailplane.state import now_ms
from tests.integration.conftest import ContainerdEngine, Engine, remove_drone_containers
from tests.integration.controller_fixtures import (
    SAILPLANE,
    Cluster,
    Process,
    cluster,
    controller_process,
    drone_process,
    free_port,
    wait_until,
)

__all__ = ["cluster"]  # the fixture, imported for pytest

TIME_SCALE = "0.25"
SCALED = {"SAILPLANE_TIME_SCALE": TIME_SCALE}
POLL_SECONDS = 0.1


@dataclass
class Sample:
    at: float
    running: set[str]  # backend ids with a running container


@dataclass
class DockerWatch:
    """``docker ps`` for the given drones' backend containers, every 100 ms, in a thread."""

    client: docker.DockerClient
    drone_ids: list[str]
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            running = set()
            for container in self.client.api.containers(filters={"label": DRONE_LABEL}):
                labels = container.get("Labels") or {}
                if labels.get(DRONE_LABEL) in self.drone_ids and BACKEND_LABEL in labels:
                    running.add(labels[BACKEND_LABEL])
            self.samples.append(Sample(time.monotonic(), running))
            self._stop.wait(POLL_SECONDS)

    def first(self, backend_id: str) -> float | None:
        return next((s.at for s in self.samples if backend_id in s.running), None)

    def last(self, backend_id: str) -> float | None:
        return next((s.at for s in reversed(self.samples) if backend_id in s.running), None)


def connected(cluster: Cluster, drone_id: str) -> bool:
    drones = cluster.http.get("/ctrl/drones").json()
    return any(d["drone_id"] == drone_id and d["connected"] for d in drones)


@pytest.fixture
def two_drones(
    tmp_path: Path, docker_client: docker.DockerClient, backend_image: str,
) -> Iterator[tuple[Cluster, Process, str]]:
    """A controller and drone 1 (``cluster.drone``) running, drone 2 made but not started."""
    if not SAILPLANE.exists():
        pytest.fail(f"{SAILPLANE} is missing (scripts/setup makes it)")
    port = free_port()
    mount_base = tmp_path / "base"
    mount_base.mkdir()
    first, second = (f"test-{uuid.uuid4().hex[:12]}" for _ in range(2))
    controller = controller_process(tmp_path, port, env=SCALED)
    drone_1, drone_2 = (
        drone_process(tmp_path, port, drone_id, "--mount-base", str(mount_base), name=name,
                      env=SCALED)
        for drone_id, name in ((first, "drone1"), (second, "drone2")))
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    cluster = Cluster(tmp=tmp_path, port=port, drone_id=first, controller=controller,
                      drone=drone_1, http=http, image=backend_image, mount_base=mount_base)
    try:
        cluster.start_controller()
        cluster.start_drone()
        yield cluster, drone_2, second
    finally:
        if drone_1.popen is not None and drone_1.alive():
            drone_1.popen.send_signal(signal.SIGCONT)  # a stopped process ignores SIGTERM
        http.close()
        drone_1.stop()
        drone_2.stop()
        controller.stop()
        remove_drone_containers(docker_client, first)
        remove_drone_containers(docker_client, second)


def test_a_paused_drones_backend_is_killed_before_its_key_goes_to_another_drone(
    two_drones: tuple[Cluster, Process, str], docker_client: docker.DockerClient,
) -> None:
    cluster, drone_2, second = two_drones
    key = cluster.new_key()
    old = cluster.connect(key)
    assert old["drone"] == cluster.drone_id
    cluster.wait_status(old["backend_id"], "ready")
    drone_2.start()
    wait_until(lambda: connected(cluster, second), 20, "drone 2 to connect")

    watch = DockerWatch(docker_client, [cluster.drone_id, second])
    watch.start()
    try:
        assert cluster.drone.popen is not None
        cluster.drone.popen.send_signal(signal.SIGSTOP)
        paused_at = time.monotonic()
        lost = wait_until(
            lambda: (s := cluster.status(old["backend_id"]))["status"] == "terminated" and s,
            30, "the controller to count the paused drone's backend lost")
        assert lost["reason"] == "lost", lost

        new = cluster.connect(key)  # waits for the key, then spawns on the live drone
        assert new["spawned"] is True and new["drone"] == second, new
        cluster.wait_status(new["backend_id"], "ready")
        time.sleep(1)  # a few more samples with the new backend running
    finally:
        watch.stop()

    both = [s for s in watch.samples if {old["backend_id"], new["backend_id"]} <= s.running]
    assert both == [], f"two live containers for key {key} at {len(both)} samples"
    old_last, new_first = watch.last(old["backend_id"]), watch.first(new["backend_id"])
    assert old_last is not None and new_first is not None
    assert old_last < new_first, "the paused drone's container outlived the new one's start"
    # The watchdog, not the paused drone, killed it: within the self-stop share of the lease.
    assert old_last - paused_at < 5.0, f"killed {old_last - paused_at:.1f} s after the pause"
    assert f"killed sailplane-{old['backend_id']}" in cluster.drone.log()

    # The paused drone resumes: it reconciles and resurrects nothing.
    cluster.drone.popen.send_signal(signal.SIGCONT)
    cluster.wait_drone_connected()
    time.sleep(3)  # several heartbeats and lease checks
    mine = docker_client.api.containers(filters={"label": f"{DRONE_LABEL}={cluster.drone_id}"})
    assert mine == [], f"the resumed drone runs {[c['Names'] for c in mine]}"
    assert cluster.status(old["backend_id"])["status"] == "terminated"
    assert cluster.status(new["backend_id"])["status"] == "ready"

    response = cluster.http.post(f"/ctrl/b/{new['backend_id']}/hard-terminate")
    assert response.status_code == 200 and response.json() == {"requested": True}, response.text
    cluster.wait_status(new["backend_id"], "terminated")


# -- a store error on the controller's end of the link ----------------------------------------


def test_a_store_error_closes_the_drone_link_and_the_drone_comes_back(cluster: Cluster) -> None:
    """A real database error while the controller handles a heartbeat: the controller closes
    that socket (it does not die, nor leave the link dead), the drone reconnects, and
    everything flows again: spawns, events, terminates."""
    first = cluster.connect()
    cluster.wait_status(first["backend_id"], "ready")
    connections = cluster.controller.log().count(f"drone {cluster.drone_id} connected")
    database = sqlite3.connect(cluster.tmp / "c.db", timeout=30, isolation_level=None)
    try:
        database.execute("CREATE TRIGGER injected_store_error BEFORE UPDATE ON drones "
                         "BEGIN SELECT RAISE(ABORT, 'injected store error'); END")
        wait_until(lambda: "database error; closing its socket" in cluster.controller.log(),
                   20, "the heartbeat to hit the store error")
    finally:
        database.execute("DROP TRIGGER IF EXISTS injected_store_error")
        database.close()
    wait_until(lambda: cluster.controller.log().count(f"drone {cluster.drone_id} connected")
               > connections, 30, "the drone to connect again")
    assert cluster.controller.alive() and cluster.drone.alive()

    second = cluster.connect()
    cluster.wait_status(second["backend_id"], "ready")
    assert cluster.status(first["backend_id"])["status"] == "ready"
    cluster.soft_terminate(first["backend_id"])
    cluster.wait_status(first["backend_id"], "terminated")


# -- the watchdog process on its own, on both runtimes ---------------------------------------


@dataclass
class Guarded:
    """A drone id whose containers a test makes by hand, and a watchdog config for it."""

    engine: Engine
    image: str
    config: WatchdogConfig

    def backend(self, backend_id: str) -> str:
        """A running container labelled as one of the drone's backends."""
        self.engine.run_stray(self.image, backend_id, self.config.drone_id)
        return backend_id

    def running(self, backend_id: str) -> bool:
        return any(found.running for found in self.engine.containers(backend_id))


@pytest.fixture
def guarded(engine: Engine, backend_image: str, tmp_path: Path) -> Iterator[Guarded]:
    drone_id = f"test-{uuid.uuid4().hex[:12]}"
    config = WatchdogConfig(drone_id=drone_id, drone_pid=os.getpid(), state_dir=tmp_path,
                            runtime="docker")
    if isinstance(engine, ContainerdEngine):
        config = config.model_copy(update={
            "runtime": "containerd", "containerd_address": engine.ctr.ctr.address,
            "containerd_namespace": engine.ctr.ctr.namespace})
    try:
        yield Guarded(engine, backend_image, config)
    finally:
        engine.cleanup(drone_id, [])


@contextlib.contextmanager
def watchdog(config: WatchdogConfig, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The watchdog process, its stdin standing for the drone's end of the pipe; killed at
    the end if it is still there."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sailplane.drone.watchdog", config.model_dump_json()],
            stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def lease_until(config: WatchdogConfig, stop_at_ms: int, pid: int | None = None) -> LeaseRecord:
    record = LeaseRecord(drone_pid=pid or config.drone_pid, renewed_ms=stop_at_ms - 3000,
                         lease_ms=5000, stop_at_ms=stop_at_ms)
    write_lease(config.lease_path, record)
    return record


def test_the_watchdog_kills_when_the_lease_lapses_and_not_before(
    guarded: Guarded, tmp_path: Path,
) -> None:
    backend = guarded.backend(f"b-lapse-{uuid.uuid4().hex[:6]}")
    lease_until(guarded.config, now_ms() + 2500)
    with watchdog(guarded.config, tmp_path / "watchdog.log") as process:
        time.sleep(1.5)
        assert guarded.running(backend), "killed before the lease lapsed"
        wait_until(lambda: not guarded.running(backend), 5, "the watchdog to kill the backend")
        assert process.poll() is None, "the watchdog left while its drone lives"
        assert process.stdin is not None
        process.stdin.close()  # the drone leaves; nothing of it runs: so does the watchdog
        process.wait(10)
    log = (tmp_path / "watchdog.log").read_text()
    assert process.returncode == 0 and f"killed sailplane-{backend}" in log, log


def test_after_its_drone_dies_the_watchdog_enforces_the_lease_then_leaves(
    guarded: Guarded, tmp_path: Path,
) -> None:
    backend = guarded.backend(f"b-orphan-{uuid.uuid4().hex[:6]}")
    lease_until(guarded.config, now_ms() + 2500)
    with watchdog(guarded.config, tmp_path / "watchdog.log") as process:
        assert process.stdin is not None
        process.stdin.close()  # as if the drone were SIGKILLed: its end of the pipe closes
        time.sleep(1.5)
        assert process.poll() is None, "left while a backend of its drone still runs"
        assert guarded.running(backend)
        wait_until(lambda: not guarded.running(backend), 5,
                   "the watchdog to kill the orphaned backend")
        process.wait(5)
    assert process.returncode == 0, (tmp_path / "watchdog.log").read_text()


def test_a_restarted_drone_takes_over_from_the_old_watchdog(
    guarded: Guarded, tmp_path: Path,
) -> None:
    backend = guarded.backend(f"b-adopted-{uuid.uuid4().hex[:6]}")
    lease_until(guarded.config, now_ms() + 2500)
    with watchdog(guarded.config, tmp_path / "watchdog.log") as process:
        assert process.stdin is not None
        process.stdin.close()
        time.sleep(1)
        lease_until(guarded.config, now_ms() + 60_000, pid=os.getpid() + 1)  # a new drone
        process.wait(5)
        time.sleep(2)  # past the old lease: the adopted backend lives on
        assert guarded.running(backend)
    log = (tmp_path / "watchdog.log").read_text()
    assert process.returncode == 0 and "restarted" in log, log


def test_the_lease_file_is_replaced_whole(tmp_path: Path) -> None:
    config = WatchdogConfig(drone_id="d", drone_pid=1, state_dir=tmp_path)
    record = lease_until(config, 123_456)
    assert json.loads(config.lease_path.read_text()) == record.model_dump()
    assert config.lease_path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["lease.json"]
