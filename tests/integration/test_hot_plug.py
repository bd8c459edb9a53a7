"""Hot-plug: mounts added to and taken from running backends, end to end.

A real controller and a real Docker drone (``sailplane`` subprocesses), real HTTP: a backend
is connected, then ``POST /ctrl/b/{id}/mounts`` and ``DELETE /ctrl/b/{id}/mounts?target=T``
change its mounts, and what the container sees is read with ``docker exec``. The drone's
policy (a TOML file) publishes ``data`` (rw), ``config`` (ro), ``team`` (rw, namespace
``other`` only) and ``keyed`` (rw, key-scoped). The last test drives the drone's side
(``drone/hot_plug.py``) directly, on Docker and on containerd.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from docker.models.containers import Container
from pydantic import TypeAdapter

from sailplane.drone.hot_plug import HotPlug
from sailplane.spec import VolumeMount
from sailplane.state import TerminationReason
from tests.integration.conftest import DroneHarness, remove_drone_containers
from tests.integration.controller_fixtures import (
    API_TOKEN,
    SAILPLANE,
    Cluster,
    controller_process,
    drone_process,
    free_port,
)
from tests.integration.test_drone_docker import spawn_of, spawn_ready, terminated

pytestmark = pytest.mark.docker

NAMESPACE = "editor"


@pytest.fixture
def cluster(
    tmp_path: Path, docker_client: docker.DockerClient, backend_image: str,
) -> Iterator[Cluster]:
    """A controller and a Docker drone with four host volumes (see the module's docstring)."""
    if not SAILPLANE.exists():
        pytest.fail(f"{SAILPLANE} is missing (scripts/setup makes it)")
    roots = {name: tmp_path / name for name in ("base", "data", "config", "team", "keyed")}
    for root in roots.values():
        root.mkdir()
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'mount_base = "{roots["base"]}"\n'
        f'[host_volumes.data]\npath = "{roots["data"]}"\naccess = "rw"\n'
        f'[host_volumes.config]\npath = "{roots["config"]}"\n'
        f'[host_volumes.team]\npath = "{roots["team"]}"\naccess = "rw"\n'
        'namespaces = ["other"]\n'
        f'[host_volumes.keyed]\npath = "{roots["keyed"]}"\naccess = "rw"\nscope = "key"\n'
    )
    port = free_port()
    drone_id = f"test-{uuid.uuid4().hex[:12]}"
    controller = controller_process(tmp_path, port)
    drone = drone_process(tmp_path, port, drone_id, "--policy", str(policy), grace="1")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    made = Cluster(tmp=tmp_path, port=port, drone_id=drone_id, controller=controller,
                   drone=drone, http=http, image=backend_image, mount_base=roots["base"])
    try:
        made.start_controller()
        made.start_drone()
        yield made
    finally:
        http.close()
        drone.stop()
        controller.stop()
        remove_drone_containers(docker_client, drone_id)
        # Whatever a failed test left pinned under the drone's state directory goes too.
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            point = line.split()[4]
            if point.startswith(str(tmp_path / "drone")):
                subprocess.run(["umount", "-l", point], check=False)


def root(cluster: Cluster, name: str) -> Path:
    return cluster.tmp / name


def ready_backend(cluster: Cluster, **executable: Any) -> tuple[str, str]:
    """Connect a new key in namespace ``editor`` and wait until ready: (backend id, key)."""
    key = cluster.new_key()
    response = cluster.http.post("/ctrl/connect", json={
        "key": {"name": key, "namespace": NAMESPACE},
        "spawn_config": cluster.spawn_config(**executable),
    })
    assert response.status_code == 200, response.text
    backend_id: str = response.json()["backend_id"]
    cluster.wait_status(backend_id, "ready")
    return backend_id, key


def container(docker_client: docker.DockerClient, backend_id: str) -> Container:
    return docker_client.containers.get(f"sailplane-{backend_id}")


def inside(box: Container, script: str) -> tuple[int, str]:
    code, out = box.exec_run(["sh", "-c", script])
    assert isinstance(code, int) and isinstance(out, bytes)
    return code, out.decode()


def add(cluster: Cluster, backend_id: str, mount: dict[str, Any]) -> httpx.Response:
    return cluster.http.post(f"/ctrl/b/{backend_id}/mounts", json=mount)


def remove(cluster: Cluster, backend_id: str, target: str) -> httpx.Response:
    return cluster.http.delete(f"/ctrl/b/{backend_id}/mounts", params={"target": target})


def pins(cluster: Cluster, backend_id: str) -> list[str]:
    """The backend's staging mounts on the host (mount points under the drone's staging)."""
    prefix = str((cluster.tmp / "drone").resolve() / "staging" / backend_id) + "/"
    return sorted(line.split()[4] for line in Path("/proc/self/mountinfo").read_text()
                  .splitlines() if line.split()[4].startswith(prefix))


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_a_hot_plugged_mount_is_seen_inside_read_only_by_default_and_goes_when_removed(
    cluster: Cluster, docker_client: docker.DockerClient,
) -> None:
    backend_id, key = ready_backend(cluster)
    box = container(docker_client, backend_id)
    mine = root(cluster, "data") / NAMESPACE / key
    mine.mkdir(parents=True)
    (mine / "note").write_text("written on the host just now")

    response = add(cluster, backend_id, {"type": "host", "volume": "data",
                                         "sub_path": "{namespace}/{key}", "target": "/srv/data"})
    assert response.status_code == 200, response.text
    assert response.json() == {"backend_id": backend_id, "mounts": [
        {"target": "/srv/data", "type": "host", "read_only": True, "hot_plugged": True}]}
    assert inside(box, "cat /srv/data/note") == (0, "written on the host just now")
    code, out = inside(box, "touch /srv/data/new")
    assert code != 0 and "Read-only file system" in out
    code, out = inside(box, "grep ' /srv/data ' /proc/mounts")
    assert code == 0 and {"ro", "nosuid", "nodev"} <= set(out.split()[3].split(","))
    assert len(pins(cluster, backend_id)) == 1

    response = add(cluster, backend_id, {"type": "host", "volume": "keyed", "sub_path": "work",
                                         "target": "/srv/work", "read_only": False})
    assert response.status_code == 200, response.text
    assert inside(box, "echo from-inside > /srv/work/out")[0] == 0
    # Key-scoped: the grant is the key's own directory in the volume.
    assert (root(cluster, "keyed") / NAMESPACE / key / "work" / "out").read_text() == \
        "from-inside\n"
    assert len(pins(cluster, backend_id)) == 2

    response = remove(cluster, backend_id, "/srv/data")
    assert response.status_code == 200, response.text
    assert [m["target"] for m in response.json()["mounts"]] == ["/srv/work"]
    assert inside(box, "ls -A /srv/data") == (0, "")
    assert inside(box, "grep ' /srv/data ' /proc/mounts")[0] != 0
    assert len(pins(cluster, backend_id)) == 1  # its pin was released
    assert (mine / "note").exists()  # the host's data stays, of course

    missing = remove(cluster, backend_id, "/srv/data")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "mount_not_found"


def test_a_refused_hot_plug_changes_nothing(
    cluster: Cluster, docker_client: docker.DockerClient,
) -> None:
    backend_id, _ = ready_backend(cluster, volume_mounts=[
        {"type": "host", "volume": "data", "sub_path": "spawned-{key}", "target": "/srv/spawned",
         "read_only": False}])
    box = container(docker_client, backend_id)
    (root(cluster, "data") / "escape").symlink_to(root(cluster, "config"))
    (root(cluster, "config") / "secret").write_text("not for this key")
    before_mounts = inside(box, "cat /proc/mounts")
    before_tree = {name: tree(root(cluster, name)) for name in ("data", "config", "team",
                                                                 "keyed")}
    before_pins = pins(cluster, backend_id)
    assert len(before_pins) == 1

    refusals: list[tuple[dict[str, Any], int, str, str]] = [
        # (entry, HTTP status, field, words of the reason)
        ({"volume": "data", "sub_path": "../config", "target": "/srv/x"}, 400, "sub_path",
         "'..'"),
        ({"volume": "data", "sub_path": "escape/x", "target": "/srv/x"}, 400, "sub_path",
         "symlink"),
        ({"volume": "data", "sub_path": "new-dir/deeper", "target": "/bin/sh/x",
          "read_only": False}, 400, "target", "symlink or not a directory"),
        ({"volume": "data", "sub_path": "other", "target": "/srv/spawned"}, 400, "target",
         "overlaps"),
        ({"volume": "data", "sub_path": "other", "target": "/srv/spawned/inner"}, 400, "target",
         "overlaps"),
        ({"volume": "data", "sub_path": "other", "target": "/srv"}, 400, "target", "overlaps"),
        ({"volume": "nope", "target": "/srv/x"}, 400, "volume", "no host volume 'nope'"),
        ({"volume": "team", "target": "/srv/x"}, 400, "volume",
         "not available to namespace 'editor'"),
        ({"volume": "config", "target": "/srv/x", "read_only": False}, 400, "volume",
         "read-only on this drone"),
        ({"volume": "data", "target": "/proc/x"}, 400, "target", "/proc"),
    ]
    for entry, status, field, words in refusals:
        response = add(cluster, backend_id, {"type": "host", **entry})
        assert response.status_code == status, (entry, response.text)
        error = response.json()["error"]
        assert error["code"] == "mount_refused", (entry, error)
        assert error["mount"] == field, (entry, error)
        assert error["message"].startswith(f"{field}: ") and words in error["message"], \
            (entry, error)
    tmpfs = add(cluster, backend_id, {"type": "tmpfs", "target": "/srv/t", "size_bytes": 4096})
    assert tmpfs.status_code == 400 and tmpfs.json()["error"]["mount"] == "type"
    shapeless = add(cluster, backend_id, {"type": "host", "volume": "data"})
    assert shapeless.status_code == 400, shapeless.text  # no target: the body does not parse

    assert inside(box, "cat /proc/mounts") == before_mounts
    assert inside(box, "test -e /srv/x || test -e /srv/spawned/inner")[0] != 0
    assert {name: tree(root(cluster, name)) for name in before_tree} == before_tree
    assert pins(cluster, backend_id) == before_pins

    anonymous = httpx.post(f"{cluster.url}/ctrl/b/{backend_id}/mounts", timeout=10,
                           json={"type": "host", "volume": "data", "target": "/srv/x"})
    assert anonymous.status_code == 401  # an API credential, as for every /ctrl route
    assert inside(box, "cat /proc/mounts") == before_mounts

    unknown = add(cluster, "b-0000000000000000", {"type": "host", "volume": "data",
                                                   "target": "/srv/x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"

    cluster.http.post(f"/ctrl/b/{backend_id}/hard-terminate")
    cluster.wait_status(backend_id, "terminated")
    gone = add(cluster, backend_id, {"type": "host", "volume": "data", "target": "/srv/x"})
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "not_running"
    assert remove(cluster, backend_id, "/srv/spawned").status_code == 409


def test_spawn_mounts_can_be_removed_and_a_restarted_drone_still_knows_the_pins(
    cluster: Cluster, docker_client: docker.DockerClient,
) -> None:
    backend_id, _ = ready_backend(cluster, volume_mounts=[
        {"type": "host", "volume": "config", "target": "/etc/app"},
        {"type": "tmpfs", "target": "/scratch", "size_bytes": 1 << 20}])
    (root(cluster, "config") / "app.toml").write_text("greeting = 'hi'")
    box = container(docker_client, backend_id)
    added = add(cluster, backend_id, {"type": "host", "volume": "data", "sub_path": "{key}",
                                      "target": "/srv/data", "read_only": False})
    assert added.status_code == 200, added.text
    assert [(m["target"], m["hot_plugged"]) for m in added.json()["mounts"]] == [
        ("/etc/app", False), ("/scratch", False), ("/srv/data", True)]
    assert len(pins(cluster, backend_id)) == 2

    cluster.drone.stop()  # the backend runs on; the restarted drone adopts it
    cluster.start_drone()
    cluster.wait_status(backend_id, "ready")
    assert len(pins(cluster, backend_id)) == 2  # adoption kept both pins

    response = remove(cluster, backend_id, "/srv/data")
    assert response.status_code == 200, response.text
    assert len(pins(cluster, backend_id)) == 1
    response = remove(cluster, backend_id, "/etc/app")  # a spawn-time mount
    assert response.status_code == 200, response.text
    assert [m["target"] for m in response.json()["mounts"]] == ["/scratch"]
    assert inside(box, "test -e /etc/app/app.toml")[0] != 0
    assert pins(cluster, backend_id) == []
    assert remove(cluster, backend_id, "/scratch").status_code == 200
    assert inside(box, "grep ' /scratch ' /proc/mounts")[0] != 0
    assert inside(box, "echo alive")[0] == 0


def test_the_cli_adds_and_removes_a_mount(
    cluster: Cluster, docker_client: docker.DockerClient,
) -> None:
    backend_id, key = ready_backend(cluster)
    box = container(docker_client, backend_id)
    (root(cluster, "data") / key).mkdir()
    (root(cluster, "data") / key / "hello").write_text("hi from the host")
    env = {**os.environ, "SAILPLANE_TOKEN": API_TOKEN}

    def sailplane(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SAILPLANE), *args, "--controller", cluster.url], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    done = sailplane("mounts", "add", backend_id, "host:data/{key}:/srv/cli")
    assert done.returncode == 0, done.stderr
    assert "/srv/cli" in done.stdout and "hot-plug" in done.stdout and "ro" in done.stdout
    assert inside(box, "cat /srv/cli/hello") == (0, "hi from the host")

    refused = sailplane("mounts", "add", backend_id, '{"type": "host", "volume": "nope", '
                                                     '"target": "/srv/nope"}')
    assert refused.returncode == 2
    assert "volume: this drone offers no host volume 'nope'" in refused.stderr
    assert "400 mount_refused" in refused.stderr

    done = sailplane("mounts", "rm", backend_id, "--target", "/srv/cli", "--json")
    assert done.returncode == 0, done.stderr
    assert '"mounts": []' in done.stdout
    assert inside(box, "ls -A /srv/cli") == (0, "")


def test_the_drone_hot_plugs_on_either_runtime(drone: DroneHarness) -> None:
    key = f"k-{uuid.uuid4().hex[:8]}"
    mine = drone.roots["data"] / key
    entry = TypeAdapter(VolumeMount).validate_python(
        {"type": "host", "volume": "data", "sub_path": "{key}", "target": "/srv/hot",
         "read_only": False})

    async def scenario() -> None:
        async with drone.running() as executor:
            backend_id = await spawn_ready(executor, spawn_of(drone.image, key=key))
            hot_plug = HotPlug(executor)
            mounts = await hot_plug.add(backend_id, entry)
            assert [(m.target, m.read_only, m.pin) for m in mounts] == [("/srv/hot", False, 0)]
            assert drone.engine.exec(backend_id, ["sh", "-c", "echo x > /srv/hot/f"])[0] == 0
            assert (mine / "f").read_text() == "x\n"
            assert executor.store.mounts(backend_id) == mounts
            assert await hot_plug.remove(backend_id, "/srv/hot") == []
            assert drone.engine.exec(backend_id, ["ls", "-A", "/srv/hot"]) == (0, "")
            assert drone.staging.backends() == []  # the pin and its directory are gone
            (drone.roots["config"] / "app.toml").write_text("greeting = 'hi'")
            config = TypeAdapter(VolumeMount).validate_python(
                {"type": "host", "volume": "config", "target": "/srv/conf"})
            assert [m.read_only for m in await hot_plug.add(backend_id, config)] == [True]
            assert drone.engine.exec(backend_id, ["cat", "/srv/conf/app.toml"]) == \
                (0, "greeting = 'hi'")
            code, out = drone.engine.exec(backend_id, ["touch", "/srv/conf/new"])
            assert code != 0 and "Read-only file system" in out
            await executor.terminate(backend_id, True, TerminationReason.EXTERNAL)
            await terminated(executor, backend_id)

    asyncio.run(scenario())
