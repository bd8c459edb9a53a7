"""The lease watchdog: a small process outside the drone that kills its backends when the
drone cannot.

The drone stops its backends itself when it hears no lease renewal for a share of the lease
(``sailplane.drone.leases``), but only while its own process runs. A drone that is paused
(SIGSTOP, a frozen VM), wedged or killed does nothing, and the controller gives its keys to
new backends once the lease plus a margin has passed. So every drone starts this watchdog:

    drone --(lease.json in the state directory: the time its lease lapses)--> watchdog
    drone --(the watchdog's stdin, held open while the drone lives)---------> watchdog
    watchdog: lease lapsed? SIGKILL every backend container labelled with the drone's id

* The drone rewrites ``lease.json`` (atomically) on every renewal, and at its start if an
  earlier run left one; it starts the watchdog once the controller has accepted it (a first
  renewal, or that file), never for a second drone refused for taking a live drone's id, whose
  containers carry the same label. The watchdog reads the file every ``LEASE_CHECK_SECONDS``;
  from the moment it has lapsed, each check SIGKILLs the drone's running backend containers
  through the engine (Docker or containerd) and removes any only created (a start in flight
  when the drone stopped), until a renewal moves the time on. Warm containers nobody claimed
  hold no key and are left alone.
* The drone's end of the stdin pipe closes when the drone exits, however it exits. The
  watchdog then stays only while it has something to guard: it exits as soon as no backend
  container of the drone runs, or when a restarted drone has taken the state directory over
  (``lease.json`` names another pid; that drone runs its own watchdog). Until then it enforces
  the last lease written: a drone that is stopped or SIGKILLed and not restarted in time has
  its backends killed before the controller can release their keys.
* A restarted drone counts its lease from the last renewal recorded here, not from its start,
  so a restart never stretches a lease the controller is already counting down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import docker
import docker.errors
from pydantic import BaseModel

from sailplane.runtime.base import BACKEND_LABEL, DRONE_LABEL, RuntimeName
from sailplane.runtime.containerd.ctr import DEFAULT_NAMESPACE, Ctr, CtrError, task_statuses
from sailplane.runtime.docker.runtime import backend_of
from sailplane.state import now_ms
from sailplane.timing import LEASE_CHECK_SECONDS

log = logging.getLogger(__name__)

LEASE_FILE = "lease.json"
# Engine states in which a container's process may run (Docker's, then containerd's tasks').
_DOCKER_LIVE = frozenset({"running", "paused", "restarting"})
_CTR_LIVE = frozenset({"RUNNING", "PAUSED", "PAUSING", "CREATED"})


class LeaseRecord(BaseModel):
    """What ``lease.json`` holds: the drone's last renewal and when its lease lapses."""

    drone_pid: int
    renewed_ms: int
    lease_ms: int
    stop_at_ms: int


class WatchdogConfig(BaseModel):
    """How the watchdog finds the lease file and the drone's containers."""

    drone_id: str
    drone_pid: int
    state_dir: Path
    runtime: RuntimeName = "docker"
    containerd_address: str = ""
    containerd_namespace: str = DEFAULT_NAMESPACE

    @property
    def lease_path(self) -> Path:
        return self.state_dir / LEASE_FILE


def read_lease(path: Path) -> LeaseRecord | None:
    """The lease last written, or None if there is none (or it cannot be read)."""
    try:
        return LeaseRecord.model_validate_json(path.read_bytes())
    except (OSError, ValueError):
        return None


def write_lease(path: Path, record: LeaseRecord) -> None:
    """Replace the file in one step, so the watchdog never reads half of it."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(record.model_dump_json())
    os.replace(partial, path)


class Watchdog:
    """The drone's side: writes the lease file and keeps the watchdog process running."""

    def __init__(self, config: WatchdogConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None

    def last_lease(self) -> LeaseRecord | None:
        return read_lease(self.config.lease_path)

    def feed(self, renewed_ms: int, lease_ms: int, stop_at_ms: int) -> None:
        write_lease(self.config.lease_path, LeaseRecord(
            drone_pid=self.config.drone_pid, renewed_ms=renewed_ms, lease_ms=lease_ms,
            stop_at_ms=stop_at_ms))

    def ensure_running(self) -> None:
        """Start the watchdog, or start it again if it died."""
        if self._process is not None:
            if self._process.poll() is None:
                return
            log.error("the lease watchdog exited (%s); starting it again",
                      self._process.returncode)
            self._close_pipe()
        # Its own session: a Ctrl-C or Ctrl-Z meant for the drone's terminal must not reach
        # it. Its stdin is the pipe whose end tells it the drone is gone.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "sailplane.drone.watchdog", self.config.model_dump_json()],
            stdin=subprocess.PIPE, start_new_session=True,
        )

    def stop(self) -> None:
        """The drone is leaving: close the pipe. The watchdog exits once nothing of the
        drone's runs, or guards what is left until a restarted drone takes over."""
        self._close_pipe()
        self._process = None

    def _close_pipe(self) -> None:
        if self._process is not None and self._process.stdin is not None:
            self._process.stdin.close()


# -- the watchdog process ---------------------------------------------------------------------


class _DockerBackends:
    def __init__(self, drone_id: str) -> None:
        self.drone_id = drone_id
        self.client = docker.from_env()

    async def stop_all(self, kill: bool) -> int:
        return await asyncio.to_thread(self._stop_all, kill)

    def _stop_all(self, kill: bool) -> int:
        """The drone's live backend containers (before the kills, with ``kill``)."""
        listed = self.client.api.containers(
            all=True, filters={"label": f"{DRONE_LABEL}={self.drone_id}"})
        live = 0
        for container in listed:
            names = container.get("Names") or [""]
            if backend_of(container.get("Labels") or {}, names[0]) is None:
                continue  # an unclaimed warm container holds no key
            state = container.get("State", "")
            if state not in _DOCKER_LIVE and state != "created":
                continue
            live += 1
            if kill:
                self._stop(container["Id"], names[0].lstrip("/"), state)
        return live

    def _stop(self, container_id: str, name: str, state: str) -> None:
        try:
            if state == "created":  # a start in flight: it must never run
                self.client.api.remove_container(container_id, force=True)
            else:
                self.client.api.kill(container_id, signal="SIGKILL")
            log.warning("killed %s: the drone's key lease lapsed", name)
        except docker.errors.APIError as exc:
            if exc.status_code not in (404, 409):  # gone, or not running: fine
                log.error("cannot kill %s: %s", name, exc)


class _ContainerdBackends:
    def __init__(self, drone_id: str, address: str, namespace: str) -> None:
        self.drone_id = drone_id
        self.ctr = Ctr(address, namespace)

    async def stop_all(self, kill: bool) -> int:
        """The drone's live backend containers (before the kills, with ``kill``)."""
        value = json.dumps(self.drone_id)
        # One filter, its clauses joined by commas: ctr ORs separate filters.
        listed = await self.ctr("containers", "ls", "-q",
                                f'labels."{DRONE_LABEL}"=={value},labels."{BACKEND_LABEL}"')
        tasks = task_statuses(await self.ctr("tasks", "ls"))
        live = [cid for cid in listed.split() if tasks.get(cid) in _CTR_LIVE]
        if kill:
            for cid in live:
                try:
                    await self.ctr("tasks", "kill", "--signal", "SIGKILL", cid)
                    log.warning("killed %s: the drone's key lease lapsed", cid)
                except CtrError as exc:
                    if not (exc.not_found or "already finished" in exc.message):
                        log.error("cannot kill %s: %s", cid, exc.message)
        return len(live)


async def guard(config: WatchdogConfig, interval: float = LEASE_CHECK_SECONDS) -> None:
    """Enforce the drone's lease until the drone is gone and nothing is left to guard."""
    backends = (_ContainerdBackends(config.drone_id, config.containerd_address,
                                    config.containerd_namespace)
                if config.runtime == "containerd" else _DockerBackends(config.drone_id))
    drone_gone = asyncio.create_task(_end_of_stdin())
    lease = read_lease(config.lease_path)
    log.info("lease watchdog of drone %s (pid %d) started", config.drone_id, config.drone_pid)
    while True:
        written = read_lease(config.lease_path)
        lease = written or lease
        if drone_gone.done() and written is not None and written.drone_pid != config.drone_pid:
            log.info("drone %s restarted (pid %d) with its own watchdog; leaving",
                     config.drone_id, written.drone_pid)
            return
        lapsed = lease is not None and now_ms() >= lease.stop_at_ms
        if lapsed or drone_gone.done():
            try:
                live = await backends.stop_all(kill=lapsed)
            except (docker.errors.DockerException, CtrError, OSError) as exc:
                log.error("cannot reach the container engine: %s", exc)
                live = -1  # unknown: keep guarding
            if drone_gone.done() and live == 0:
                log.info("drone %s is gone and none of its backends runs; leaving",
                         config.drone_id)
                return
        await asyncio.sleep(interval)


async def _end_of_stdin() -> None:
    """Returns when the drone's end of the pipe closes (it exited, however it did)."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


def main() -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s watchdog: %(message)s")
    asyncio.run(guard(WatchdogConfig.model_validate_json(sys.argv[1])))


if __name__ == "__main__":
    main()
