"""Pinned staging mounts on the real engines: what a backend gets cannot be changed by a race.

Each test runs on Docker and on containerd (the ``runtime`` fixture). A backend's view is
judged from inside it: through its own HTTP CGI scripts (``/cgi-bin/read``, ``/cgi-bin/write``)
or a process executed in its container.

The race: two attackers exchange ``race/x/y`` (the directory victims ask for, read-only) with
``race/x/evil``, a symlink to ``/``, using ``renameat2(RENAME_EXCHANGE)`` so the name always
exists: one is a process on the host, the other a backend container that holds ``race/x``
read-write through Sailplane itself. Hundreds of victims spawn meanwhile; each must either be
refused or see exactly the granted directory, never the host's root.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from sailplane.drone.executor import Executor
from sailplane.mounts.policy import Scope
from sailplane.protocol import SpawnBackend
from sailplane.runtime.containerd.ctr import normalize_image
from sailplane.spec import ExecutorConfig, KeyConfig, PullPolicy
from sailplane.state import BackendStatus, TerminationReason
from tests.integration.conftest import DroneHarness, SyncCtr
from tests.integration.proxy_fixtures import demo_image  # noqa: F401  (a fixture)
from tests.integration.test_drone_docker import (
    events,
    read,
    spawn_of,
    spawn_ready,
    terminated,
    write,
)

pytestmark = pytest.mark.docker

S = BackendStatus
RACE_SPAWNS = 200
RACE_CONCURRENCY = 8
ATTACK_SECONDS = 240  # a bound on both attackers; the test stops them far sooner
MARKER = "granted"
_RENAME_EXCHANGE = 2


def staging_mounts(staging_root: Path) -> list[str]:
    """Mount points under the staging root, as this process's mount table lists them."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines
            if line.split()[4].startswith(str(staging_root) + "/")]


@pytest.fixture
def staging_clean(drone: DroneHarness) -> Iterator[None]:
    """After the test: no staging mount is left, whatever happened."""
    yield
    drone.staging.sweep(keep=())
    assert staging_mounts(drone.staging.root) == []


# -- pinning itself ---------------------------------------------------------------------------


def test_the_runtime_binds_the_pinned_staging_path_removed_with_the_container(
    drone: DroneHarness, staging_clean: None
) -> None:
    (drone.roots["data"] / "editor").mkdir()

    async def scenario() -> None:
        async with drone.running() as executor:
            spawn = spawn_of(drone.image, key="doc-1", volume_mounts=[
                {"type": "host", "volume": "data", "sub_path": "{namespace}/{key}",
                 "target": "/data", "read_only": False},
                {"type": "host", "volume": "config", "target": "/config"},
            ])
            backend_id = await spawn_ready(executor, spawn)
            pinned = staging_mounts(drone.staging.root)
            assert pinned == [f"{drone.staging.root}/{backend_id}/0",
                              f"{drone.staging.root}/{backend_id}/1"]
            assert oct(stat.S_IMODE(os.stat(drone.staging.root).st_mode)) == oct(0o700)
            # What the backend writes lands in the key's directory on the host.
            assert (await write(executor, backend_id, "/data/f", "hi")).status_code == 200
            assert (drone.roots["data"] / "editor" / "doc-1" / "f").read_text() == "hi"
            await executor.terminate(backend_id, False, TerminationReason.EXTERNAL)
            await terminated(executor, backend_id)
            await wait_until(lambda: not staging_mounts(drone.staging.root))
            assert not (drone.staging.root / backend_id).exists()

    asyncio.run(scenario())


def test_read_only_is_recursive_and_binds_are_nosuid_nodev(
    drone: DroneHarness, staging_clean: None
) -> None:
    """A submount inside a read-only grant is read-only too; a set-uid binary or a device node
    planted through a read-write grant does not work in the next backend."""
    config = drone.roots["config"]
    (config / "inner").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "sailplane-test",
                    str(config / "inner")], check=True)
    data = drone.roots["data"] / "planted"
    data.mkdir()
    try:
        async def scenario() -> None:
            async with drone.running() as executor:
                # A backend with write access plants a set-uid-root binary, as root ...
                planter = await spawn_ready(executor, spawn_of(drone.image, volume_mounts=[
                    {"type": "host", "volume": "data", "sub_path": "planted", "target": "/p",
                     "read_only": False}]))
                code, out = drone.engine.exec(
                    planter, ["sh", "-c", "cp /bin/busybox /p/id && chmod 4755 /p/id"]
                )
                assert code == 0, out
                # ... and a device node appears there (made on the host: a backend should
                # not be able to mknod at all).
                os.mknod(data / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
                os.chmod(data / "null", 0o666)
                victim = await spawn_ready(executor, spawn_of(drone.image, volume_mounts=[
                    {"type": "host", "volume": "config", "target": "/c"},
                    {"type": "host", "volume": "data", "sub_path": "planted", "target": "/p",
                     "read_only": False}]))
                denied = await write(executor, victim, "/c/inner/x", "no")
                assert denied.status_code == 500
                assert "Read-only file system" in denied.text
                # The device node is refused by nodev (the device cgroup allows 1:3).
                code, out = drone.engine.exec(victim, ["sh", "-c", "echo x > /p/null"])
                assert code != 0 and "Permission denied" in out, out
                # Run as nobody, the set-uid copy stays nobody.
                code, out = drone.engine.exec(victim, ["/p/id", "-u"], user="65534")
                assert (code, out.strip()) == (0, "65534")
                mounts = (await read(executor, victim, "/proc/self/mountinfo")).text
                for target, access in (("/c", "ro"), ("/c/inner", "ro"), ("/p", "rw")):
                    [line] = [line for line in mounts.splitlines()
                              if line.split()[4] == target]
                    options = line.split()[5].split(",")
                    assert access in options, line
                    assert {"nosuid", "nodev"} <= set(options), line

        asyncio.run(scenario())
    finally:
        subprocess.run(["umount", "-l", str(config / "inner")], check=False)


def test_a_key_scoped_volume_only_ever_shows_the_key_its_own_tree(
    drone: DroneHarness, staging_clean: None
) -> None:
    data = drone.roots["data"]
    (data / "editor" / "victim").mkdir(parents=True)
    (data / "editor" / "victim" / "secret").write_text("victim's")
    drone.policy = drone.policy.model_copy(update={"host_volumes": {
        **drone.policy.host_volumes,
        "data": drone.policy.host_volumes["data"].model_copy(update={"scope": Scope.KEY}),
    }})

    async def scenario() -> None:
        async with drone.running() as executor:
            backend_id = await spawn_ready(executor, spawn_of(drone.image, key="mine",
                volume_mounts=[{"type": "host", "volume": "data", "target": "/d",
                                "read_only": False}]))
            assert (await write(executor, backend_id, "/d/mine", "1")).status_code == 200
            assert (data / "editor" / "mine" / "mine").read_text() == "1"
            assert (await read(executor, backend_id, "/d/victim/secret")).status_code == 500
            assert (await read(executor, backend_id, "/d/editor/victim/secret")).status_code == 500
            escape = spawn_of(drone.image, key="mine", volume_mounts=[
                {"type": "host", "volume": "data", "sub_path": "../victim", "target": "/d"}])
            executor.spawn(escape)
            last = await terminated(executor, escape.backend_id)
            assert last.reason is TerminationReason.ERROR
            assert "'..' components are not allowed" in (last.message or "")

    asyncio.run(scenario())


# -- refusals leave nothing -------------------------------------------------------------------


@pytest.mark.parametrize(("mounts", "message"), [
    ([{"type": "host", "volume": "config", "sub_path": "nothere", "target": "/c"}],
     "nothing is created in a read-only host volume"),
    ([{"type": "host", "volume": "data", "sub_path": "new/link/deeper", "target": "/d",
       "read_only": False}], "symlink"),
    ([{"type": "host", "volume": "data", "sub_path": "new/fresh", "target": "/d"},
      {"type": "host", "volume": "config", "sub_path": "missing", "target": "/c"}],
     "nothing is created in a read-only host volume"),
])
def test_a_refused_spawn_leaves_no_directory_container_or_staging_mount(
    drone: DroneHarness, staging_clean: None, mounts: list[dict[str, object]], message: str
) -> None:
    data = drone.roots["data"]
    (data / "new").mkdir()
    (data / "new" / "link").symlink_to("/")
    before = sorted(str(p) for root in drone.roots.values() for p in root.rglob("*"))

    async def scenario() -> None:
        async with drone.running() as executor:
            spawn = spawn_of(drone.image, volume_mounts=mounts)
            executor.spawn(spawn)
            last = await terminated(executor, spawn.backend_id)
            assert last.reason is TerminationReason.ERROR
            assert message in (last.message or ""), last.message
            assert drone.engine.containers(spawn.backend_id) == []
            assert staging_mounts(drone.staging.root) == []
            assert not (drone.staging.root / spawn.backend_id).exists()

    asyncio.run(scenario())
    after = sorted(str(p) for root in drone.roots.values() for p in root.rglob("*"))
    assert after == before


def test_a_restarted_drone_keeps_pins_of_adopted_backends_and_sweeps_the_rest(
    drone: DroneHarness, staging_clean: None
) -> None:
    async def scenario() -> None:
        async with drone.running() as executor:
            live = await spawn_ready(executor, spawn_of(drone.image, volume_mounts=[
                {"type": "host", "volume": "config", "target": "/c"}]))
        # A pin left by a backend the drone no longer has (it died before removing it).
        fd = os.open(drone.roots["config"], os.O_PATH | os.O_DIRECTORY)
        try:
            drone.staging.pin(fd, "b-gone", 0, True, 0, "test")
        finally:
            os.close(fd)
        assert len(staging_mounts(drone.staging.root)) == 2
        async with drone.running() as executor:
            assert executor.status(live) is S.READY
            assert staging_mounts(drone.staging.root) == [f"{drone.staging.root}/{live}/0"]
            await executor.terminate(live, True, TerminationReason.EXTERNAL)
            await terminated(executor, live)
            await wait_until(lambda: not staging_mounts(drone.staging.root))

    asyncio.run(scenario())


# -- the race ---------------------------------------------------------------------------------

HOST_ATTACKER = textwrap.dedent("""
    import ctypes, os, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    os.chdir(sys.argv[1])
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        libc.renameat2(-100, b"y", -100, b"evil", 2)
""")

# The attacker backend: answers HTTP (so it becomes ready) and exchanges y and evil in the
# directory it was granted read-write, until the bound.
CONTAINER_ATTACKER = textwrap.dedent("""
    import ctypes, http.server, os, threading, time
    server = http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])),
                                             http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    libc = ctypes.CDLL(None, use_errno=True)
    os.chdir("/x")
    deadline = time.monotonic() + {seconds}
    while time.monotonic() < deadline:
        libc.renameat2(-100, b"y", -100, b"evil", 2)
""")


@pytest.fixture
def attacker_image(runtime: str, demo_image: str, request: pytest.FixtureRequest,  # noqa: F811
                   docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[str]:
    """The demo image (it has Python for renameat2), in the runtime's image store; removed
    from containerd's afterwards."""
    if runtime != "containerd":
        yield demo_image
        return
    ctr: SyncCtr = request.getfixturevalue("drone_ctr")
    archive = tmp_path / "demo.tar"
    with archive.open("wb") as out:
        for chunk in docker_client.images.get(demo_image).save(named=True):
            out.write(chunk)
    ctr("images", "import", str(archive))
    archive.unlink()
    try:
        yield demo_image
    finally:
        ctr("images", "rm", "--sync", normalize_image(demo_image), check=False)


def test_no_spawn_ever_sees_outside_its_grant_while_attackers_swap_a_component(
    drone: DroneHarness, staging_clean: None, attacker_image: str
) -> None:
    x = drone.roots["data"] / "race" / "x"
    (x / "y").mkdir(parents=True)
    (x / "y" / MARKER).write_text("ok")
    (x / "evil").symlink_to("/")
    host_attacker = subprocess.Popen(
        [sys.executable, "-c", HOST_ATTACKER, str(x), str(ATTACK_SECONDS)]
    )
    outcomes: dict[str, int] = {"ready": 0, "refused": 0}
    escapes: list[str] = []

    async def victim(executor: Executor) -> None:
        spawn = spawn_of(drone.image, volume_mounts=[
            {"type": "host", "volume": "data", "sub_path": "race/x/y", "target": "/m"}])
        executor.spawn(spawn)
        await executor.wait_for(spawn.backend_id, S.READY, 30)
        if executor.status(spawn.backend_id) is S.READY:
            marker = await read(executor, spawn.backend_id, f"/m/{MARKER}")
            host_file = await read(executor, spawn.backend_id, "/m/etc/hostname")
            if marker.text != "ok" or host_file.status_code != 500:
                escapes.append(f"{spawn.backend_id}: marker {marker.text!r}, "
                               f"/m/etc/hostname {host_file.status_code}")
            outcomes["ready"] += 1
            await executor.terminate(spawn.backend_id, True, TerminationReason.EXTERNAL)
        else:
            last = events(executor.store, spawn.backend_id)[-1]
            assert last.reason is TerminationReason.ERROR, last
            outcomes["refused"] += 1

    async def scenario() -> None:
        async with drone.running() as executor:
            attacker = SpawnBackend(
                backend_id=f"b-{uuid.uuid4().hex[:16]}",
                key=KeyConfig(name="attacker", namespace="editor"),
                executable=ExecutorConfig.model_validate({
                    "image": attacker_image, "pull_policy": PullPolicy.NEVER,
                    "command": ["python3", "-c",
                                CONTAINER_ATTACKER.format(seconds=ATTACK_SECONDS)],
                    "volume_mounts": [{"type": "host", "volume": "data", "sub_path": "race/x",
                                       "target": "/x", "read_only": False}],
                }),
                secret_token="not-a-secret",
            )
            await spawn_ready(executor, attacker)
            limit = asyncio.Semaphore(RACE_CONCURRENCY)

            async def bounded() -> None:
                async with limit:
                    await victim(executor)

            await asyncio.gather(*(bounded() for _ in range(RACE_SPAWNS)))
            await executor.terminate(attacker.backend_id, True, TerminationReason.EXTERNAL)
            await terminated(executor, attacker.backend_id)

    try:
        asyncio.run(scenario())
    finally:
        host_attacker.kill()
        host_attacker.wait()
    print(f"\nrace on {drone.engine.name}: of {RACE_SPAWNS} spawns {outcomes['ready']} were "
          f"ready, {outcomes['refused']} refused; {len(escapes)} of the ready saw outside "
          "their grant")
    assert escapes == []
    assert outcomes["ready"] + outcomes["refused"] == RACE_SPAWNS
    assert outcomes["ready"] > 0


async def wait_until(condition: object, within: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
