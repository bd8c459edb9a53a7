"""Backends are isolated from each other and from the host, on both runtimes.

Judged from inside a backend, with busybox's ``nc`` (a TCP connect with a timeout) and the
backend's own view of its capabilities: another backend's address and port, and every address
of the host (where the controller, the proxy and PostgreSQL listen) are unreachable; the
backend's own port is reachable from the host, as the proxy needs; no raw socket can be opened;
a fork storm stops at the pids limit while the drone goes on serving.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from sailplane.runtime.base import BACKEND_CAPABILITIES
from sailplane.state import BackendStatus, TerminationReason
from tests.integration.conftest import DroneHarness
from tests.integration.test_drone_docker import get, spawn_of, spawn_ready, terminated

pytestmark = pytest.mark.docker

S = BackendStatus
CONNECT_TIMEOUT_SECONDS = 2
POSTGRES_PORT = 55432  # the tests' private cluster (scripts/setup)
# Linux capability numbers (include/uapi/linux/capability.h) of the ones a backend keeps.
CAPABILITY_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "KILL": 5, "SETGID": 6,
                   "SETUID": 7, "NET_BIND_SERVICE": 10, "NET_RAW": 13}


def host_addresses() -> list[str]:
    """Every IPv4 address of this host, loopback included."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout
    return sorted({line.split()[3].split("/")[0] for line in out.splitlines()})


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP service on every host address (like a controller on 0.0.0.0); its port."""
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        server.close()


def can_connect(drone: DroneHarness, backend_id: str, address: str, port: int) -> bool:
    code, _ = drone.engine.exec(backend_id, [
        "sh", "-c", f"echo | nc -w {CONNECT_TIMEOUT_SECONDS} {address} {port}"])
    return code == 0


def test_a_backend_reaches_no_other_backend_and_no_host_service(
    drone: DroneHarness, host_listener: int
) -> None:
    addresses = host_addresses()
    for address in addresses:  # the service really answers on each, seen from the host
        with socket.create_connection((address, host_listener), timeout=2):
            pass

    async def scenario() -> None:
        async with drone.running() as executor:
            a = await spawn_ready(executor, spawn_of(drone.image))
            b = await spawn_ready(executor, spawn_of(drone.image))
            # The drone (and a proxy beside it) reaches each backend at its address.
            assert (await get(executor, b, "/")).status_code == 200
            # The check itself works: a backend reaches its own port on its own address.
            assert can_connect(drone, b, drone.engine.ip(b), 8080)
            assert not can_connect(drone, a, drone.engine.ip(b), 8080)
            for address in addresses:
                for port in (host_listener, POSTGRES_PORT):
                    assert not can_connect(drone, a, address, port), (address, port)
            for backend_id in (a, b):
                await executor.terminate(backend_id, True, TerminationReason.EXTERNAL)
                await terminated(executor, backend_id)

    asyncio.run(scenario())


def test_a_backend_keeps_only_the_capabilities_it_needs_and_opens_no_raw_socket(
    drone: DroneHarness
) -> None:
    async def scenario() -> None:
        async with drone.running() as executor:
            backend_id = await spawn_ready(executor, spawn_of(drone.image))
            code, status = drone.engine.exec(backend_id, ["cat", "/proc/self/status"])
            assert code == 0, status
            [effective] = [line.split()[1] for line in status.splitlines()
                           if line.startswith("CapEff:")]
            expected = sum(1 << CAPABILITY_BITS[name] for name in BACKEND_CAPABILITIES)
            assert int(effective, 16) == expected
            [no_new_privs] = [line.split()[1] for line in status.splitlines()
                              if line.startswith("NoNewPrivs:")]
            assert no_new_privs == "1"
            # busybox arping needs a raw packet socket: refused without NET_RAW.
            code, out = drone.engine.exec(backend_id, ["arping", "-c", "1", "-w", "1",
                                                       "-I", "eth0", "127.0.0.1"])
            assert code != 0 and "Operation not permitted" in out, out
            await executor.terminate(backend_id, True, TerminationReason.EXTERNAL)
            await terminated(executor, backend_id)

    asyncio.run(scenario())


def test_a_fork_storm_stops_at_the_pids_limit_and_the_drone_keeps_serving(
    drone: DroneHarness
) -> None:
    async def scenario() -> None:
        async with drone.running() as executor:
            bomb = await spawn_ready(executor, spawn_of(drone.image, resource_limits={
                "pids_limit": 64}))
            storm = asyncio.create_task(asyncio.to_thread(drone.engine.exec, bomb, [
                "sh", "-c", "i=0; while [ $i -lt 1000 ]; do sleep 20 & i=$((i+1)); done; "
                "echo started $i"]))
            # Meanwhile the drone starts another backend and it answers.
            other = await spawn_ready(executor, spawn_of(drone.image))
            assert (await get(executor, other, "/")).status_code == 200
            code, out = await storm
            assert code != 0 or "started 1000" not in out, out
            assert "fork" in out.lower() or "resource temporarily unavailable" in out.lower(), out
            for backend_id in (bomb, other):
                await executor.terminate(backend_id, True, TerminationReason.EXTERNAL)
                await terminated(executor, backend_id)

    asyncio.run(scenario())
