"""A real controller and a real drone, each a ``sailplane`` subprocess, on loopback.

:class:`Cluster` starts them, restarts either (same port, database, drone id and state dir),
and offers small HTTP helpers. Teardown terminates the processes, then force-removes every
container labelled with the drone's id, whatever the test's outcome.

Credentials are on, as in production: :class:`Process` hands each ``sailplane`` part the
credential of its role through the environment, as an operator would (the controller the
test secret, a drone a credential for its ``--drone-id``, a proxy a proxy credential), unless
its arguments bring their own; ``Cluster.http`` sends an API token.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker
import httpx
import pytest

from sailplane.credentials import Role, mint, new_secret
from tests.integration.conftest import remove_drone_containers

REPO = Path(__file__).resolve().parents[2]
SAILPLANE = REPO / ".venv" / "bin" / "sailplane"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
# A drone retries with backoff up to 5 s (RECONNECT_MAX_SECONDS), so a reconnect can take that.
RECONNECT_TIMEOUT = 20.0
LIFECYCLE = ["scheduled", "loading", "starting", "waiting", "ready"]
SECRET = new_secret()  # the test session's controller secret
API_TOKEN = mint(SECRET, Role.API, "tests")


def credentials_env(args: list[str]) -> dict[str, str]:
    """The credential a ``sailplane`` command line needs in its environment, if any."""
    verb = args[1] if len(args) > 1 else ""
    if verb == "controller" and not {"--insecure", "--secret-file"} & set(args):
        return {"SAILPLANE_SECRET": SECRET}
    if verb == "drone" and "--token-file" not in args and "--drone-id" in args:
        drone_id = args[args.index("--drone-id") + 1]
        return {"SAILPLANE_DRONE_TOKEN": mint(SECRET, Role.DRONE, drone_id)}
    if verb == "proxy" and "--token-file" not in args:
        return {"SAILPLANE_PROXY_TOKEN": mint(SECRET, Role.PROXY, "tests")}
    return {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1,
) -> Any:
    """Call ``check`` until it returns something truthy (which is returned), or fail."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: "
                         f"{last_error!r})")


@dataclass
class Process:
    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)  # on top of ours and the credentials
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        assert self.popen is None or self.popen.poll() is not None, f"{self.name} is running"
        self._log = self.log_path.open("ab")
        self._log.write(f"---- start {self.name}: {' '.join(self.args)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            self.args, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.log_path.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **credentials_env(self.args),
                 **self.env},
        )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-6000:]
        return ""


@dataclass
class Cluster:
    """One controller and one drone. ``http`` talks to the controller."""

    tmp: Path
    port: int
    drone_id: str
    controller: Process
    drone: Process
    http: httpx.Client
    image: str
    mount_base: Path
    keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.http.headers.setdefault("authorization", f"Bearer {API_TOKEN}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- processes -------------------------------------------------------------------------

    def start_controller(self) -> None:
        self.controller.start()
        wait_until(self._healthy, START_TIMEOUT, "the controller's /health")

    def _healthy(self) -> bool:
        if not self.controller.alive():
            raise AssertionError(f"the controller exited:\n{self.controller.log()}")
        return self.http.get("/health").status_code == 200

    def start_drone(self) -> None:
        self.drone.start()
        self.wait_drone_connected()

    def wait_drone_connected(self, timeout: float = RECONNECT_TIMEOUT) -> None:
        def connected() -> bool:
            if not self.drone.alive():
                raise AssertionError(f"the drone exited:\n{self.drone.log()}")
            drones = self.http.get("/ctrl/drones").json()
            return any(d["drone_id"] == self.drone_id and d["connected"] for d in drones)

        wait_until(connected, timeout, f"drone {self.drone_id} to connect")

    # -- the API ---------------------------------------------------------------------------

    def spawn_config(self, **executable: Any) -> dict[str, Any]:
        config: dict[str, Any] = {"image": self.image, "pull_policy": "Never"}
        config.update(executable)
        return {"executable": config}

    def connect(self, key: str | None = None, **spawn: Any) -> dict[str, Any]:
        """``POST /ctrl/connect`` for ``key`` (a fresh unique one if None)."""
        key = key or self.new_key()
        spawn_config = spawn.pop("spawn_config", None) or self.spawn_config()
        spawn_config.update(spawn)
        response = self.http.post("/ctrl/connect", json={
            "key": {"name": key}, "spawn_config": spawn_config,
        })
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def new_key(self) -> str:
        key = f"k-{uuid.uuid4().hex[:10]}"
        self.keys.append(key)
        return key

    def status(self, backend_id: str) -> dict[str, Any]:
        response = self.http.get(f"/pub/b/{backend_id}/status")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_status(self, backend_id: str, status: str, timeout: float = 20.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            current = self.status(backend_id)
            if current["status"] == status:
                return current
            if current["status"] == "terminated" and status != "terminated":
                raise AssertionError(f"backend {backend_id} ended instead: {current}\n"
                                     f"{self.drone.log()}")
            return None

        found: dict[str, Any] = wait_until(reached, timeout, f"{backend_id} to be {status}")
        return found

    def backend(self, backend_id: str) -> dict[str, Any]:
        for summary in self.http.get("/ctrl/backends").json():
            if summary["backend_id"] == backend_id:
                found: dict[str, Any] = summary
                return found
        raise AssertionError(f"no backend {backend_id} in /ctrl/backends")

    def soft_terminate(self, backend_id: str) -> dict[str, Any]:
        response = self.http.post(f"/ctrl/b/{backend_id}/soft-terminate")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def stream(self, backend_id: str, timeout: float = 20.0) -> list[tuple[str, dict[str, Any]]]:
        """The status stream from the start until ``terminated``: (event id, data) pairs."""
        events: list[tuple[str, dict[str, Any]]] = []
        event_id = ""
        with self.http.stream("GET", f"/pub/b/{backend_id}/status-stream",
                              timeout=timeout) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("id: "):
                    event_id = line.removeprefix("id: ")  # the status
                elif line.startswith("data: "):
                    events.append((event_id, json.loads(line.removeprefix("data: "))))
                    if events[-1][1]["status"] == "terminated":
                        break
        return events

    def get_backend_http(self, backend_id: str) -> httpx.Response:
        address = self.backend(backend_id)["address"]
        assert address, f"backend {backend_id} has no address"
        return httpx.get(f"http://{address}/", timeout=5)


def controller_process(tmp: Path, port: int, proxy_url: str = "http://127.0.0.1:9091",
                       env: dict[str, str] | None = None) -> Process:
    """A controller on ``port`` over SQLite in ``tmp``, logging to ``tmp/controller.log``."""
    return Process("controller", [
        str(SAILPLANE), "controller", "--port", str(port),
        "--database-url", f"sqlite:///{tmp}/c.db", "--proxy-url", proxy_url,
    ], tmp / "controller.log", env=env or {})


def drone_process(tmp: Path, port: int, drone_id: str, *options: str, name: str = "drone",
                  grace: str = "2", startup_timeout: str = "10",
                  env: dict[str, str] | None = None) -> Process:
    """A Docker drone of the controller on ``port``, its state in ``tmp/NAME``; ``options``
    give it its mounts (``--mount-base``, ``--policy``, ...)."""
    return Process(name, [
        str(SAILPLANE), "drone", "--controller", f"http://127.0.0.1:{port}",
        "--drone-id", drone_id, *options, "--state-dir", str(tmp / name),
        "--grace-seconds", grace, "--startup-timeout", startup_timeout,
    ], tmp / f"{name}.log", env=env or {})


@pytest.fixture
def cluster(
    tmp_path: Path, docker_client: docker.DockerClient, backend_image: str,
) -> Iterator[Cluster]:
    if not SAILPLANE.exists():
        pytest.fail(f"{SAILPLANE} is missing (scripts/setup makes it)")
    port = free_port()
    drone_id = f"test-{uuid.uuid4().hex[:12]}"
    mount_base = tmp_path / "base"
    mount_base.mkdir()
    controller = controller_process(tmp_path, port)
    drone = drone_process(tmp_path, port, drone_id, "--mount-base", str(mount_base))
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    made = Cluster(tmp=tmp_path, port=port, drone_id=drone_id, controller=controller,
                   drone=drone, http=http, image=backend_image, mount_base=mount_base)
    try:
        made.start_controller()
        made.start_drone()
        yield made
    finally:
        http.close()
        drone.stop()
        controller.stop()
        remove_drone_containers(docker_client, drone_id)
