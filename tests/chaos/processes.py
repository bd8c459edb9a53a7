"""The cluster under attack: controllers, two drones and a proxy, each a ``sailplane``
subprocess on loopback, with credentials on.

With PostgreSQL there are two controllers on one database; drone ``a`` and the proxy talk to
controller 0, drone ``b`` to controller 1 (a drone and a proxy follow one controller URL each).
With SQLite there is one controller. Every part can be SIGKILLed and started again with the
same arguments (same port, database, drone id and state directory), as a crashed process
supervised by an init system would be.
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker
import httpx

from tests.integration.conftest import remove_drone_containers
from tests.integration.controller_fixtures import (
    API_TOKEN,
    SAILPLANE,
    START_TIMEOUT,
    Process,
    free_port,
    wait_until,
)

DRONES = ("a", "b")
# A part started again may be slow on a busy machine (a controller imports its whole stack and
# migrates): its start counts as failed only after this.
RESTART_TIMEOUT = 60.0


@dataclass
class Part:
    """One process of the cluster and how to tell it is up again."""

    name: str
    process: Process
    port: int | None = None  # a controller's or the proxy's port
    follows: str = ""  # a drone's or the proxy's controller (its part name)
    kills: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        popen = self.process.popen
        if popen is not None and popen.poll() is None:
            popen.send_signal(signal.SIGKILL)
            popen.wait(10)
        self.process.stop()  # closes its log
        self.kills += 1

    def alive(self) -> bool:
        return self.process.alive()


@dataclass
class ChaosCluster:
    workdir: Path
    database_url: str
    controllers: list[Part] = field(default_factory=list)
    drones: dict[str, Part] = field(default_factory=dict)
    drone_ids: dict[str, str] = field(default_factory=dict)
    proxy: Part | None = None

    @classmethod
    def build(cls, workdir: Path, database_url: str, controllers: int,
              time_scale: float) -> ChaosCluster:
        """``time_scale`` (``SAILPLANE_TIME_SCALE`` of every part) shortens heartbeats, leases
        and the lost-drone deadline alike, so that a drone's lease runs out within the run."""
        made = cls(workdir, database_url)
        env = {"SAILPLANE_TIME_SCALE": str(time_scale)}
        proxy_port = free_port()
        for index in range(controllers):
            port = free_port()
            made.controllers.append(Part(f"controller-{index}", Process(
                f"controller-{index}", [
                    str(SAILPLANE), "controller", "--port", str(port),
                    "--database-url", database_url,
                    "--proxy-url", f"http://127.0.0.1:{proxy_port}",
                ], workdir / f"controller-{index}.log", env), port))
        run = uuid.uuid4().hex[:8]
        for index, name in enumerate(DRONES):
            drone_id = f"chaos-{run}-{name}"
            controller = made.controllers[index % controllers]
            mount_base = workdir / f"base-{name}"
            mount_base.mkdir(parents=True, exist_ok=True)
            made.drone_ids[name] = drone_id
            made.drones[name] = Part(f"drone-{name}", Process(f"drone-{name}", [
                str(SAILPLANE), "drone", "--controller", controller.url,
                "--drone-id", drone_id, "--mount-base", str(mount_base),
                "--state-dir", str(workdir / f"drone-{name}"), "--grace-seconds", "2",
                "--startup-timeout", "15",
            ], workdir / f"drone-{name}.log", env), follows=controller.name)
        made.proxy = Part("proxy", Process("proxy", [
            str(SAILPLANE), "proxy", "--controller", made.controllers[0].url,
            "--port", str(proxy_port),
        ], workdir / "proxy.log", env), proxy_port, follows=made.controllers[0].name)
        return made

    @property
    def controller_urls(self) -> list[str]:
        return [part.url for part in self.controllers]

    @property
    def proxy_part(self) -> Part:
        assert self.proxy is not None
        return self.proxy

    def proxy_controller(self) -> Part:
        """The controller the proxy follows."""
        return next(part for part in self.controllers if part.name == self.proxy_part.follows)

    def follows(self) -> dict[str, str]:
        """drone id -> the name of the controller it follows."""
        return {self.drone_ids[name]: part.follows for name, part in self.drones.items()}

    def parts(self) -> list[Part]:
        return [*self.controllers, *self.drones.values(), self.proxy_part]

    # -- starting ----------------------------------------------------------------------------

    def start(self) -> None:
        # One at a time: the first migrates the database, the second finds it done.
        for part in self.controllers:
            self.start_part(part)
        for part in self.drones.values():
            self.start_part(part)
        self.start_part(self.proxy_part)
        wait_until(self._drones_connected, START_TIMEOUT, "both drones to connect")

    def start_part(self, part: Part, timeout: float = RESTART_TIMEOUT) -> None:
        """Start ``part`` and wait until it serves (a drone: until its process runs)."""
        part.process.start()
        if part in self.controllers:
            wait_until(lambda: self._answers(part, "/health", 200), timeout,
                       f"{part.name}'s /health")
        elif part is self.proxy:
            # Any answer of its own will do (an unknown token is 404 or 503).
            wait_until(lambda: self._answers(part, "/-/", None), timeout,
                       "the proxy to listen")

    @staticmethod
    def _answers(part: Part, path: str, status: int | None) -> bool:
        if not part.alive():
            raise AssertionError(f"{part.name} exited:\n{part.process.log()}")
        answer = httpx.get(part.url + path, timeout=2)
        return status is None or answer.status_code == status

    def _drones_connected(self) -> bool:
        answer = httpx.get(self.controllers[0].url + "/ctrl/drones", timeout=5,
                           headers={"authorization": f"Bearer {API_TOKEN}"})
        connected = {d["drone_id"] for d in answer.json() if d["connected"]}
        return set(self.drone_ids.values()) <= connected

    # -- stopping ----------------------------------------------------------------------------

    def stop_processes(self) -> None:
        """Stop every process (nothing here needs the engine)."""
        for part in reversed(self.parts()):
            with contextlib.suppress(Exception):
                part.process.stop()

    def remove_containers(self, client: docker.DockerClient) -> None:
        """Remove every container of the drones, whatever is left (their watchdogs then
        leave too: they stay only while a container of their drone runs)."""
        deadline = time.monotonic() + 30
        for drone_id in self.drone_ids.values():
            while True:
                try:
                    remove_drone_containers(client, drone_id)
                    break
                except docker.errors.DockerException:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)  # the engine may be starting again
