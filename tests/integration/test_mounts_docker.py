"""The mount translation against the real Docker engine: the ``HostConfig.Mounts`` entries that
``to_docker_mounts`` makes from a plan do what the resolved mounts say inside a container."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from sailplane.mounts.resolved import ResolvedHostMount, ResolvedMount, ResolvedVolumeMount
from sailplane.runtime.docker.mounts import to_docker_mounts
from tests.integration.conftest import mount_line

pytestmark = pytest.mark.docker

# The fixtures of conftest.py, by shape (a conftest is not imported from).
Plan = Callable[..., list[ResolvedMount]]
Run = Callable[[str, list[dict[str, Any]]], subprocess.CompletedProcess[str]]

READ_ONLY_ERROR = "Read-only file system"



def test_read_only_host_mount_refuses_writes(
    roots: dict[str, Path], plan: Plan, run_in_docker: Run
) -> None:
    # The operator made the key's directory: nothing is created in a read-only volume.
    (roots["config"] / "editor" / "doc-42").mkdir(parents=True)
    resolved = plan([
        {"type": "host", "volume": "config", "sub_path": "{namespace}/{key}", "target": "/etc/app"},
    ])
    [host] = resolved
    assert isinstance(host, ResolvedHostMount)
    assert host.read_only
    assert host.host_path == str(roots["config"] / "editor" / "doc-42")
    (roots["config"] / "editor" / "doc-42" / "app.conf").write_text("greeting=hello\n")

    ran = run_in_docker(
        "cat /etc/app/app.conf && grep ' /etc/app ' /proc/mounts && touch /etc/app/new",
        to_docker_mounts(resolved),
    )

    assert ran.returncode != 0
    assert "greeting=hello" in ran.stdout
    assert mount_line(ran.stdout, "/etc/app").split(" ")[3].split(",")[0] == "ro"
    assert READ_ONLY_ERROR in ran.stderr
    assert sorted(p.name for p in (roots["config"] / "editor" / "doc-42").iterdir()) == [
        "app.conf"
    ]


def test_read_write_host_mount_write_is_visible_on_the_host(
    roots: dict[str, Path], plan: Plan, run_in_docker: Run
) -> None:
    token = uuid.uuid4().hex
    resolved = plan([{
        "type": "host", "volume": "data", "sub_path": "{namespace}/{key}",
        "target": "/var/lib/app", "read_only": False,
    }])
    [host] = resolved
    assert isinstance(host, ResolvedHostMount)
    assert not host.read_only

    ran = run_in_docker(
        f"mkdir /var/lib/app/sub && printf '%s\\n' {token} > /var/lib/app/sub/out.txt",
        to_docker_mounts(resolved),
    )

    assert ran.returncode == 0, ran.stderr
    written = roots["data"] / "editor" / "doc-42" / "sub" / "out.txt"
    assert written.read_text() == f"{token}\n"
    # Only the resolved directory was mounted: nothing appeared beside it at the root.
    assert sorted(p.name for p in roots["data"].iterdir()) == ["editor"]


@pytest.mark.parametrize(("mode", "shown"), [("1777", "1777"), ("0750", "750")])
def test_tmpfs_gets_its_size_and_mode(
    roots: dict[str, Path], plan: Plan, run_in_docker: Run, mode: str, shown: str
) -> None:
    size = 8 * 1024 * 1024
    resolved = plan(
        [{"type": "tmpfs", "target": "/scratch", "size_bytes": size, "mode": mode}]
    )

    ran = run_in_docker(
        "grep ' /scratch ' /proc/mounts; stat -c 'mode %a' /scratch; "
        "dd if=/dev/zero of=/scratch/fill bs=1048576 count=9 2>&1; echo dd=$?",
        to_docker_mounts(resolved),
    )

    assert ran.returncode == 0, ran.stderr
    line = mount_line(ran.stdout, "/scratch")
    options = line.split(" ")[3].split(",")
    assert line.split(" ")[2] == "tmpfs"
    assert f"size={size // 1024}k" in options
    assert f"mode {shown}" in ran.stdout.splitlines()
    # The kernel lists mode= only when it is not tmpfs's default 1777.
    assert (f"mode={shown}" in options) == (shown != "1777")
    # The limit is enforced, not just reported: 9 MiB do not fit in 8.
    assert "No space left on device" in ran.stdout
    assert "dd=1" in ran.stdout.splitlines()


@pytest.fixture
def namespaced_volume(docker_client: docker.DockerClient) -> Iterator[str]:
    """A key whose volume ``cache-{key}`` in namespace ``editor`` (the ``plan`` fixture's)
    is unique; that volume and the containers holding it are removed afterwards."""
    key = f"t{uuid.uuid4().hex[:12]}"
    yield key
    name = f"sailplane.editor.cache-{key}"
    holders = docker_client.api.containers(
        all=True, quiet=True, filters={"volume": name, "label": "dev.sailplane.test=1"}
    )
    for holder in holders:
        docker_client.api.remove_container(holder["Id"], force=True)
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.api.remove_volume(name, force=True)


def test_named_volume_is_created_on_first_use_and_persists(
    docker_client: docker.DockerClient,
    plan: Plan,
    run_in_docker: Run,
    namespaced_volume: str,
) -> None:
    key = namespaced_volume
    name = f"sailplane.editor.cache-{key}"  # the runtime's name is namespaced
    token = uuid.uuid4().hex
    writable: list[dict[str, Any]] = [
        {"type": "volume", "name": "cache-{key}", "target": "/cache", "read_only": False}
    ]
    resolved = plan(writable, key=key)
    assert resolved == [ResolvedVolumeMount(
        name=name, target="/cache", read_only=False, namespace="editor",
        requested=f"cache-{key}", mount=0,
    )]
    assert name not in {volume.name for volume in docker_client.volumes.list()}

    first = run_in_docker(f"echo {token} > /cache/token", to_docker_mounts(resolved))
    assert first.returncode == 0, first.stderr
    assert docker_client.volumes.get(name).name == name

    # A second container, read-only this time (the default): the data is there, writes fail.
    again = plan([{"type": "volume", "name": "cache-{key}", "target": "/data"}],
                              key=key)
    second = run_in_docker("cat /data/token && touch /data/other", to_docker_mounts(again))
    assert second.stdout.strip() == token
    assert second.returncode != 0
    assert READ_ONLY_ERROR in second.stderr
