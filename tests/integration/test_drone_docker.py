"""The drone's executor against the real Docker engine and containerd (docs/architecture.md;
issues #3 and #7).

Every test runs once per runtime (the ``runtime`` fixture: ids ``docker`` and ``containerd``),
with the same assertions; looks at the engine go through ``drone.engine``, which answers in the
same terms for both.

Every backend is ``sailplane/static`` (busybox, built offline by ``images/build``) and every
check goes through the backend's published port with HTTP: ``/cgi-bin/read?path=P`` and
``/cgi-bin/write?path=P&text=T`` read and write files inside the container, so a mount is
judged by what the backend itself can do with it. Each test has a drone id of its own; the
``drone`` fixture removes whatever carries that id afterwards.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from sailplane.drone.executor import Executor, ExecutorSettings
from sailplane.drone.store import DroneStore
from sailplane.protocol import SpawnBackend
from sailplane.runtime.base import DRONE_LABEL, VOLUME_LABEL
from sailplane.spec import ExecutorConfig, KeyConfig, PullPolicy
from sailplane.state import BackendState, BackendStatus, TerminationReason
from tests.integration.conftest import Engine

pytestmark = pytest.mark.docker

NAMESPACE = "editor"
# Generous bounds: a healthy run needs a fraction of them; they only stop a broken one.
READY_WITHIN = 20.0
TERMINATED_WITHIN = 20.0
CONTAINER_GONE_SECONDS = 20.0
# Serve /srv (with its /cgi-bin) on $PORT, as the image's own command does, minus its trap.
SERVE_SRV = "httpd -f -p \"$PORT\" -h /srv"

S = BackendStatus


def spawn_of(
    image: str, *, key: str | None = None, command: Sequence[str] | None = None,
    volume_mounts: Sequence[dict[str, Any]] = (), **executable: Any,
) -> SpawnBackend:
    return SpawnBackend(
        backend_id=f"b-{uuid.uuid4().hex[:16]}",
        key=KeyConfig(name=key or f"k-{uuid.uuid4().hex[:8]}", namespace=NAMESPACE),
        executable=ExecutorConfig.model_validate({
            "image": image,
            "command": list(command) if command is not None else None,
            "volume_mounts": list(volume_mounts),
            **executable,
        }),
        secret_token="not-a-secret",
    )


def shell(script: str) -> list[str]:
    return ["sh", "-c", script]


def url(executor: Executor, backend_id: str, path: str) -> str:
    address = executor.address(backend_id)
    assert address is not None, f"backend {backend_id} has no address"
    # Docker publishes on loopback; a containerd backend is on its own bridge address.
    assert ipaddress.ip_address(address.host).is_private
    return f"http://{address.host}:{address.port}{path}"


async def get(
    executor: Executor, backend_id: str, path: str, params: dict[str, str] | None = None
) -> httpx.Response:
    # trust_env=False: no proxy from the environment; this traffic stays on loopback.
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        return await client.get(url(executor, backend_id, path), params=params)


async def read(executor: Executor, backend_id: str, path: str) -> httpx.Response:
    return await get(executor, backend_id, "/cgi-bin/read", {"path": path})


async def write(executor: Executor, backend_id: str, path: str, text: str) -> httpx.Response:
    return await get(executor, backend_id, "/cgi-bin/write", {"path": path, "text": text})


async def spawn_ready(executor: Executor, spawn: SpawnBackend) -> str:
    executor.spawn(spawn)
    await executor.wait_for(spawn.backend_id, S.READY, READY_WITHIN)
    assert executor.status(spawn.backend_id) is S.READY, events(executor.store, spawn.backend_id)
    return spawn.backend_id


async def terminated(executor: Executor, backend_id: str) -> BackendState:
    """Wait for ``terminated`` and return that last event."""
    await executor.wait_for(backend_id, S.TERMINATED, TERMINATED_WITHIN)
    return events(executor.store, backend_id)[-1]


def events(store: DroneStore, backend_id: str) -> list[BackendState]:
    return [event.state for event in store.pending() if event.backend_id == backend_id]


def history(store: DroneStore, backend_id: str) -> list[BackendStatus]:
    return [state.status for state in events(store, backend_id)]


async def until_removed(engine: Engine, backend_id: str) -> None:
    """The container is removed in the background after ``terminated``; wait for it."""
    deadline = time.monotonic() + 10
    while engine.containers(backend_id):
        assert time.monotonic() < deadline, f"the container of {backend_id} was not removed"
        await asyncio.sleep(0.05)


def tree(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


# -- the lifecycle ---------------------------------------------------------------------------


def test_lifecycle_serves_a_host_file_and_reports_every_state_in_order(drone):
    site = drone.roots["config"] / "site"
    site.mkdir()
    (site / "hello.txt").write_text("hello from the host\n")
    spawn = spawn_of(
        drone.image,
        command=shell("trap 'exit 0' TERM; httpd -f -p \"$PORT\" -h /site & wait"),
        volume_mounts=[{"type": "host", "volume": "config", "sub_path": "site",
                        "target": "/site"}],
    )

    async def scenario() -> None:
        async with drone.running() as executor:
            backend_id = await spawn_ready(executor, spawn)
            response = await get(executor, backend_id, "/hello.txt")
            assert response.status_code == 200
            assert response.text == "hello from the host\n"
            [container] = drone.engine.containers(backend_id)
            assert container.labels[DRONE_LABEL] == drone.drone_id

            started = time.monotonic()
            await executor.terminate(backend_id, hard=False, reason=TerminationReason.EXTERNAL)
            last = await terminated(executor, backend_id)
            assert time.monotonic() - started < drone.settings.grace_seconds  # SIGTERM honoured
            assert (last.reason, last.exit_code) == (TerminationReason.EXTERNAL, 0)
            await until_removed(drone.engine, backend_id)

            outbox = executor.store.pending()
            assert [event.state.status for event in outbox] == [
                S.LOADING, S.STARTING, S.WAITING, S.READY, S.TERMINATING, S.TERMINATED,
            ]
            assert {event.backend_id for event in outbox} == {backend_id}
            seqs = [event.seq for event in outbox]
            times = [event.state.time for event in outbox]
            assert seqs == sorted(set(seqs)) and times == sorted(times)

            executor.store.ack(outbox[2].seq)  # the controller stored the first three
            assert [event.seq for event in executor.store.pending()] == seqs[3:]
            executor.store.ack(outbox[-1].seq)
            assert executor.store.pending() == []

    asyncio.run(scenario())


def test_a_backend_that_exits_by_itself_is_terminated_with_its_exit_code(drone):
    at_once = spawn_of(drone.image, command=shell("exit 3"))
    # Serves until the test creates /data/stop on the host, then exits with 7.
    later = spawn_of(
        drone.image,
        command=shell(f"{SERVE_SRV} & until [ -e /data/stop ]; do sleep 0.05; done; exit 7"),
        volume_mounts=[{"type": "host", "volume": "data", "sub_path": "{namespace}/{key}",
                        "target": "/data", "read_only": False}],
    )

    async def scenario() -> None:
        async with drone.running() as executor:
            executor.spawn(at_once)
            last = await terminated(executor, at_once.backend_id)
            assert (last.reason, last.exit_code) == (TerminationReason.EXITED, 3)
            assert S.READY not in history(executor.store, at_once.backend_id)

            await spawn_ready(executor, later)
            (drone.roots["data"] / NAMESPACE / later.key.name / "stop").touch()
            last = await terminated(executor, later.backend_id)
            assert (last.reason, last.exit_code) == (TerminationReason.EXITED, 7)
            assert history(executor.store, later.backend_id)[-2:] == [S.READY, S.TERMINATED]
            await until_removed(drone.engine, at_once.backend_id)
            await until_removed(drone.engine, later.backend_id)

    asyncio.run(scenario())


def test_startup_timeout_kills_a_backend_that_never_answers(drone):
    spawn = spawn_of(drone.image, command=["sleep", "60"])  # never listens
    settings = ExecutorSettings(grace_seconds=1.0, startup_timeout_seconds=1.0)

    async def scenario() -> None:
        async with drone.running(settings) as executor:
            executor.spawn(spawn)
            await executor.wait_for(spawn.backend_id, S.WAITING, READY_WITHIN)
            waiting_since = time.monotonic()
            last = await terminated(executor, spawn.backend_id)
            assert time.monotonic() - waiting_since >= 0.9
            assert last.reason is TerminationReason.STARTUP_TIMEOUT
            assert last.exit_code == 137  # SIGKILL
            assert history(executor.store, spawn.backend_id)[-3:] == [
                S.WAITING, S.HARD_TERMINATING, S.TERMINATED,
            ]
            await until_removed(drone.engine, spawn.backend_id)

    asyncio.run(scenario())


def test_sigterm_ignored_gets_sigkill_after_the_grace_period(drone):
    # The shell ignores TERM and so does httpd, which inherits the ignored disposition.
    spawn = spawn_of(drone.image, command=shell(f"trap '' TERM; {SERVE_SRV} & wait"))
    grace = 1.0

    async def scenario() -> None:
        settings = ExecutorSettings(grace_seconds=grace, startup_timeout_seconds=15.0)
        async with drone.running(settings) as executor:
            backend_id = await spawn_ready(executor, spawn)
            started = time.monotonic()
            await executor.terminate(backend_id, hard=False, reason=TerminationReason.SWEPT)
            last = await terminated(executor, backend_id)
            assert time.monotonic() - started >= grace
            assert (last.reason, last.exit_code) == (TerminationReason.SWEPT, 137)
            assert history(executor.store, backend_id)[-4:] == [
                S.READY, S.TERMINATING, S.HARD_TERMINATING, S.TERMINATED,
            ]

    asyncio.run(scenario())


def test_hard_termination_kills_at_once(drone):
    spawn = spawn_of(drone.image, command=shell(f"trap '' TERM; {SERVE_SRV} & wait"))

    async def scenario() -> None:
        settings = ExecutorSettings(grace_seconds=30.0, startup_timeout_seconds=15.0)
        async with drone.running(settings) as executor:
            backend_id = await spawn_ready(executor, spawn)
            started = time.monotonic()
            await executor.terminate(backend_id, hard=True, reason=TerminationReason.LIFETIME)
            last = await terminated(executor, backend_id)
            assert time.monotonic() - started < 5
            assert (last.reason, last.exit_code) == (TerminationReason.LIFETIME, 137)
            assert history(executor.store, backend_id)[-3:] == [
                S.READY, S.HARD_TERMINATING, S.TERMINATED,
            ]
            await until_removed(drone.engine, backend_id)

    asyncio.run(scenario())


def test_keep_containers_leaves_the_stopped_container(drone):
    spawn = spawn_of(drone.image, command=shell("exit 4"))

    async def scenario() -> None:
        settings = ExecutorSettings(keep_containers=True)
        async with drone.running(settings) as executor:
            executor.spawn(spawn)
            last = await terminated(executor, spawn.backend_id)
            assert last.exit_code == 4
        # The container is still there. (The engine reports `die` a moment before its state
        # says `exited`, hence the wait.)
        deadline = time.monotonic() + 5
        while True:
            [container] = drone.engine.containers(spawn.backend_id)
            if not container.running or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert not container.running

    asyncio.run(scenario())


# -- mounts, through the backend's port ------------------------------------------------------


def test_read_only_mount_refuses_writes_and_writes_persist_for_the_next_backend(drone):
    (drone.roots["config"] / "app.conf").write_text("mode=prod\n")
    key = f"doc-{uuid.uuid4().hex[:8]}"
    mounts: list[dict[str, Any]] = [
        {"type": "host", "volume": "config", "target": "/etc/app"},  # read_only by default
        {"type": "host", "volume": "data", "sub_path": "{namespace}/{key}",
         "target": "/var/lib/app", "read_only": False},
    ]
    first = spawn_of(drone.image, key=key, volume_mounts=mounts)
    second = spawn_of(drone.image, key=key, volume_mounts=mounts)
    host_dir = drone.roots["data"] / NAMESPACE / key

    async def scenario() -> None:
        async with drone.running() as executor:
            backend_id = await spawn_ready(executor, first)
            response = await read(executor, backend_id, "/etc/app/app.conf")
            assert (response.status_code, response.text) == (200, "mode=prod\n")

            refused = await write(executor, backend_id, "/etc/app/app.conf", "mode=evil")
            assert refused.status_code == 500
            assert "Read-only file system" in refused.text
            assert (drone.roots["config"] / "app.conf").read_text() == "mode=prod\n"

            written = await write(executor, backend_id, "/var/lib/app/notes.txt", "draft 1")
            assert (written.status_code, written.text) == (200, "status=0\n")
            assert (host_dir / "notes.txt").read_text() == "draft 1"

            await executor.terminate(backend_id, hard=True, reason=TerminationReason.EXTERNAL)
            await terminated(executor, backend_id)

            backend_id = await spawn_ready(executor, second)
            response = await read(executor, backend_id, "/var/lib/app/notes.txt")
            assert (response.status_code, response.text) == (200, "draft 1")

    asyncio.run(scenario())


def test_config_replaced_on_the_host_is_seen_without_a_restart(drone):
    config = drone.roots["config"]
    (config / "app.conf").write_text("version=1\n")
    spawn = spawn_of(drone.image, volume_mounts=[
        {"type": "host", "volume": "config", "target": "/etc/app"},
    ])

    async def scenario() -> None:
        async with drone.running() as executor:
            backend_id = await spawn_ready(executor, spawn)
            identity = drone.engine.identity(backend_id)
            response = await read(executor, backend_id, "/etc/app/app.conf")
            assert response.text == "version=1\n"

            # As editors save: write a temporary file beside it, then rename over it. A
            # single-file bind mount would keep showing the old inode; a directory shows this.
            temporary = config / ".app.conf.swp"
            temporary.write_text("version=2\n")
            os.replace(temporary, config / "app.conf")

            response = await read(executor, backend_id, "/etc/app/app.conf")
            assert response.text == "version=2\n"
            assert executor.status(backend_id) is S.READY
            assert drone.engine.identity(backend_id) == identity  # the same process, running

    asyncio.run(scenario())


def test_named_volume_is_created_labelled_and_tmpfs_is_mounted(drone):
    key = f"doc-{uuid.uuid4().hex[:8]}"
    volume = f"sailplane.{NAMESPACE}.cache-{key}"  # the runtime name is namespaced
    drone.volumes.append(volume)
    spawn = spawn_of(drone.image, key=key, volume_mounts=[
        {"type": "volume", "name": "cache-{key}", "target": "/cache", "read_only": False},
        {"type": "tmpfs", "target": "/scratch", "size_bytes": 1 << 20},
    ])

    async def scenario() -> None:
        assert drone.engine.volume_labels(volume) is None
        async with drone.running() as executor:
            backend_id = await spawn_ready(executor, spawn)
            labels = drone.engine.volume_labels(volume)
            assert labels is not None and labels[VOLUME_LABEL] == "true"

            assert (await write(executor, backend_id, "/cache/x", "cached")).status_code == 200
            assert (await read(executor, backend_id, "/cache/x")).text == "cached"
            assert (await write(executor, backend_id, "/scratch/y", "scratch")).status_code == 200
            mounts = (await read(executor, backend_id, "/proc/mounts")).text.splitlines()
            [scratch] = [line for line in mounts if line.split()[1] == "/scratch"]
            assert scratch.split()[0] == "tmpfs" and "size=1024k" in scratch

    asyncio.run(scenario())


def test_a_refused_mount_leaves_no_container_and_no_directory(drone):
    data, config = drone.roots["data"], drone.roots["config"]
    outside = data.parent / "outside"
    outside.mkdir()
    (data / "trap").symlink_to(outside)  # a link a previous backend could have planted
    # Refused by the policy, before any work: write access to a read-only host volume.
    by_policy = spawn_of(drone.image, volume_mounts=[
        {"type": "host", "volume": "config", "sub_path": "{namespace}/{key}",
         "target": "/etc/app", "read_only": False},
    ])
    # Refused on disk: the first mount's directories are made, then the second meets the link.
    on_disk = spawn_of(drone.image, volume_mounts=[
        {"type": "host", "volume": "data", "sub_path": "{namespace}/{key}/deep",
         "target": "/a", "read_only": False},
        {"type": "host", "volume": "data", "sub_path": "trap/{key}", "target": "/b"},
    ])
    # Mounts resolved, then the runtime refuses the container (under the 6 MB minimum).
    by_runtime = spawn_of(
        drone.image,
        volume_mounts=[{"type": "host", "volume": "data", "sub_path": "{namespace}/{key}",
                        "target": "/a", "read_only": False}],
        resource_limits={"memory_limit_bytes": 1 << 20},
    )

    async def scenario() -> None:
        async with drone.running() as executor:
            executor.spawn(by_policy)
            last = await terminated(executor, by_policy.backend_id)
            assert last.reason is TerminationReason.ERROR
            assert last.message is not None and "volume_mounts[0].volume" in last.message
            assert "read-only" in last.message
            assert history(executor.store, by_policy.backend_id) == [S.TERMINATED]

            executor.spawn(on_disk)
            last = await terminated(executor, on_disk.backend_id)
            assert last.reason is TerminationReason.ERROR
            assert last.message is not None and "volume_mounts[1].sub_path" in last.message
            assert "symlink" in last.message

            executor.spawn(by_runtime)
            last = await terminated(executor, by_runtime.backend_id)
            assert last.reason is TerminationReason.ERROR
            assert last.message is not None and "6MB" in last.message

            for spawn in (by_policy, on_disk, by_runtime):
                assert drone.engine.containers(spawn.backend_id) == []
        assert tree(config) == []
        assert tree(data) == ["trap"]
        assert list(outside.iterdir()) == []

    asyncio.run(scenario())


# -- images without a registry ---------------------------------------------------------------


def test_missing_image_ends_the_backend_with_an_error_naming_it(drone):
    missing = f"sailplane/missing-{uuid.uuid4().hex[:8]}:latest"
    # IfNotPresent pulls a missing image; this name points the pull at a port on loopback
    # where nothing listens, so it fails at once and no traffic leaves the machine.
    unreachable = f"127.0.0.1:1/sailplane/missing-{uuid.uuid4().hex[:8]}:latest"
    spawns = [
        spawn_of(missing, pull_policy=PullPolicy.NEVER),
        spawn_of(unreachable, pull_policy=PullPolicy.IF_NOT_PRESENT),
        spawn_of(unreachable),  # no pull_policy: IfNotPresent, like Plane
    ]

    async def scenario() -> None:
        async with drone.running() as executor:
            started = time.monotonic()
            for spawn in spawns:
                executor.spawn(spawn)
            for spawn in spawns:
                last = await terminated(executor, spawn.backend_id)
                assert last.reason is TerminationReason.ERROR
                assert last.message is not None and spawn.executable.image in last.message
                assert history(executor.store, spawn.backend_id) == [S.LOADING, S.TERMINATED]
                assert drone.engine.containers(spawn.backend_id) == []
            assert time.monotonic() - started < 10

    asyncio.run(scenario())


def test_twenty_spawns_at_once_all_become_ready(drone):
    # A present image starts under every pull policy that does not force a pull.
    policies = [PullPolicy.NEVER, PullPolicy.IF_NOT_PRESENT, None]
    spawns = [spawn_of(drone.image, pull_policy=policies[i % 3]) for i in range(20)]

    async def scenario() -> None:
        async with drone.running() as executor:
            for spawn in spawns:
                executor.spawn(spawn)
            await asyncio.gather(*(
                executor.wait_for(spawn.backend_id, S.READY, 60) for spawn in spawns
            ))
            ids = [spawn.backend_id for spawn in spawns]
            assert all(executor.status(backend_id) is S.READY for backend_id in ids), [
                events(executor.store, backend_id)[-1] for backend_id in ids
                if executor.status(backend_id) is not S.READY]
            ports = {executor.address(backend_id) for backend_id in ids}
            assert len(ports) == 20
            answers = await asyncio.gather(*(get(executor, backend_id, "/") for backend_id in ids))
            assert all("sailplane/static is serving" in answer.text for answer in answers)

            await asyncio.gather(*(
                executor.terminate(backend_id, hard=True, reason=TerminationReason.EXTERNAL)
                for backend_id in ids
            ))
            assert all(executor.status(backend_id) is S.TERMINATED for backend_id in ids)
        # close() waited for the removals
        assert drone.engine.drone_containers(drone.drone_id) == []

    asyncio.run(scenario())


# -- a drone restart -------------------------------------------------------------------------


def test_drone_restart_adopts_live_backends_and_cleans_up_the_rest(drone):
    live = spawn_of(drone.image, command=shell(f"trap '' TERM; {SERVE_SRV} & wait"))
    killed = spawn_of(drone.image)  # its container is killed while the drone is down
    vanished = spawn_of(drone.image)  # its container is removed while the drone is down
    stray_id = f"b-stray-{uuid.uuid4().hex[:8]}"

    async def before() -> None:
        async with drone.running() as executor:
            for spawn in (live, killed, vanished):
                await spawn_ready(executor, spawn)

    async def after() -> None:
        async with drone.running(ExecutorSettings(grace_seconds=1.0)) as executor:
            # Removed by start(), in the background: it must not hold the drone's start up.
            deadline = asyncio.get_running_loop().time() + CONTAINER_GONE_SECONDS
            while drone.engine.containers(stray_id):
                assert asyncio.get_running_loop().time() < deadline, "stray container kept"
                await asyncio.sleep(0.1)
            assert executor.status(live.backend_id) is S.READY
            assert (await get(executor, live.backend_id, "/")).status_code == 200

            last = await terminated(executor, killed.backend_id)
            assert (last.reason, last.exit_code) == (TerminationReason.EXITED, 137)
            last = await terminated(executor, vanished.backend_id)
            assert last.reason is TerminationReason.LOST

            await executor.terminate(live.backend_id, hard=False,
                                     reason=TerminationReason.EXTERNAL)
            last = await terminated(executor, live.backend_id)
            assert (last.reason, last.exit_code) == (TerminationReason.EXTERNAL, 137)
            # One history across both runs of the drone, in order, nothing repeated.
            assert history(executor.store, live.backend_id) == [
                S.LOADING, S.STARTING, S.WAITING, S.READY,
                S.TERMINATING, S.HARD_TERMINATING, S.TERMINATED,
            ]
            for spawn in (live, killed, vanished):
                await until_removed(drone.engine, spawn.backend_id)

    asyncio.run(before())
    # While the drone is down: one backend dies, one disappears, and a container appears that
    # carries this drone's label but that its store has never heard of.
    drone.engine.kill(killed.backend_id)
    drone.engine.delete(vanished.backend_id)
    drone.engine.run_stray(drone.image, stray_id, drone.drone_id)
    asyncio.run(after())

