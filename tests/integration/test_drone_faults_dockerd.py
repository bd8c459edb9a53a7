"""Docker's exit-event stream survives a dockerd restart (real dockerd, restarted once).

The drone learns of exits only from the engine's event stream. A dockerd restart ends that
stream; the Docker runtime follows it again with backoff and then lists the drone's
containers, so a backend that died while the stream was down (here: stopped by dockerd's own
shutdown, live-restore being off) is reported, and one that exits after the restart is
reported through the new stream.

dockerd runs here without an init system; it is stopped with SIGTERM and started again as
``scripts/setup`` starts it (``setsid nohup dockerd``, its log appended to the same file), and
the test makes sure it answers again at the end, whatever happened. Other tests share this
dockerd, so there is one restart in this file, and the test waits for a moment when no
container runs on the engine (bounded) before it restarts it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from sailplane.runtime.docker.runtime import DockerRuntime
from sailplane.state import TerminationReason
from tests.integration.conftest import REPO, DroneHarness
from tests.integration.test_drone_docker import (
    NAMESPACE,
    SERVE_SRV,
    shell,
    spawn_of,
    spawn_ready,
    terminated,
)

pytestmark = pytest.mark.docker

PID_FILE = Path("/var/run/docker.pid")
STOP_TIMEOUT_SECONDS = 60.0
START_TIMEOUT_SECONDS = 60.0
QUIET_WAIT_SECONDS = 60.0  # for a moment when no other test's container runs
REPORTED_WITHIN = 30.0


def dockerd_answers() -> bool:
    try:
        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (docker.errors.DockerException, OSError):
        return False


def start_dockerd() -> None:
    """As scripts/setup does: in its own session, outliving us, its log appended."""
    args = []
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        args += ["--host", host]
    args += os.environ.get("SAILPLANE_DOCKERD_ARGS", "").split()
    log = Path(os.environ.get("SAILPLANE_DOCKERD_LOG") or REPO / ".sailplane" / "dockerd.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        subprocess.Popen(["setsid", "nohup", "dockerd", *args], stdout=out,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not dockerd_answers():
        assert time.monotonic() < deadline, f"dockerd did not answer again (log: {log})"
        time.sleep(0.5)


def stop_dockerd() -> None:
    pid = int(PID_FILE.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"dockerd (pid {pid}) did not stop"
        time.sleep(0.2)


def others_running(client: docker.DockerClient, drone_id: str) -> list[Any]:
    return [c for c in client.api.containers()
            if (c.get("Labels") or {}).get("dev.sailplane.drone") != drone_id]


@pytest.fixture
def restartable(docker_client: docker.DockerClient) -> Iterator[None]:
    if os.geteuid() != 0 or not PID_FILE.exists():
        pytest.fail("restarting dockerd needs root and a dockerd started by scripts/setup")
    try:
        yield
    finally:
        if not dockerd_answers():
            start_dockerd()


@pytest.mark.parametrize("runtime", ["docker"])
def test_exits_while_dockerd_is_down_and_after_its_restart_are_reported(
    drone: DroneHarness, docker_client: docker.DockerClient, restartable: None,
) -> None:
    data = drone.roots["data"]
    # Serves until /data/stop exists on the host, then exits 7; ignores SIGTERM (PID 1).
    serving = shell(f"{SERVE_SRV} & until [ -e /data/stop ]; do sleep 0.05; done; exit 7")
    mount = [{"type": "host", "volume": "data", "sub_path": "{namespace}/{key}",
              "target": "/data", "read_only": False}]
    before = spawn_of(drone.image, command=serving, volume_mounts=mount)
    after = spawn_of(drone.image, command=serving, volume_mounts=mount)

    async def scenario() -> None:
        async with drone.running() as executor:
            runtime = executor.runtime
            assert isinstance(runtime, DockerRuntime)
            await spawn_ready(executor, before)

            deadline = time.monotonic() + QUIET_WAIT_SECONDS
            while others_running(docker_client, drone.drone_id) and \
                    time.monotonic() < deadline:
                await asyncio.sleep(1)
            await asyncio.to_thread(stop_dockerd)  # its shutdown stops `before` too
            await asyncio.to_thread(start_dockerd)

            last = await terminated(executor, before.backend_id)
            assert last.reason is TerminationReason.EXITED, last
            assert runtime._watcher is not None and runtime._watcher.is_alive()

            await spawn_ready(executor, after)
            (data / NAMESPACE / after.key.name).mkdir(parents=True, exist_ok=True)
            (data / NAMESPACE / after.key.name / "stop").touch()
            last = await terminated(executor, after.backend_id)
            assert (last.reason, last.exit_code) == (TerminationReason.EXITED, 7), last

    asyncio.run(scenario())
