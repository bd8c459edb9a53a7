"""Late-bound mounts (``sailplane.mounts.inject``) into running Docker containers.

A container is started with no mounts (as a warm one is); a directory pinned by the drone is
then injected at a target, seen from inside through ``docker exec``, taken out again; a planted
symlink at the target cannot redirect the mount; the identity file lands on a tmpfs.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

from sailplane.errors import MountRefused
from sailplane.mounts.inject import claim, eject, inject
from sailplane.mounts.pin import StagingArea

pytestmark = pytest.mark.docker

LABELS = {"dev.sailplane.test": "1"}


@pytest.fixture
def container(docker_client: docker.DockerClient, image: str) -> Iterator[Container]:
    """A running container with no mounts, removed afterwards."""
    made = docker_client.containers.run(
        image, ["sleep", "300"], detach=True, labels=LABELS,
        name=f"sp-inject-{uuid.uuid4().hex[:8]}",
    )
    try:
        made.reload()
        yield made
    finally:
        made.remove(force=True)


@pytest.fixture
def staging(tmp_path: Path) -> Iterator[StagingArea]:
    area = StagingArea(tmp_path.resolve() / "staging")
    try:
        yield area
    finally:
        area.sweep(keep=())


def pinned(staging: StagingArea, directory: Path, read_only: bool, index: int = 0) -> str:
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        return staging.pin(fd, "b-warm", index, read_only, index, "test")
    finally:
        os.close(fd)


def run(container: Container, script: str) -> tuple[int, str]:
    code, out = container.exec_run(["sh", "-c", script])
    assert isinstance(code, int) and isinstance(out, bytes)
    return code, out.decode()


def pid_of(container: Container) -> int:
    pid: int = container.attrs["State"]["Pid"]
    return pid


def test_an_injected_read_only_directory_is_seen_and_cannot_be_written(
    container: Container, staging: StagingArea, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello").write_text("from the host")
    inject(pid_of(container), pinned(staging, data, True), "/srv/data", mount=0, field="m")
    assert run(container, "cat /srv/data/hello") == (0, "from the host")
    code, out = run(container, "touch /srv/data/new")
    assert code != 0 and "Read-only file system" in out
    code, out = run(container, "grep ' /srv/data ' /proc/mounts")
    assert code == 0 and {"ro", "nosuid", "nodev"} <= set(out.split()[3].split(","))
    eject(pid_of(container), "/srv/data", mount=0, field="m")
    assert run(container, "ls -A /srv/data") == (0, "")


def test_an_injected_read_write_directory_is_shared_with_the_host(
    container: Container, staging: StagingArea, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    inject(pid_of(container), pinned(staging, data, False), "/var/lib/app/data", mount=1,
           field="m")
    assert run(container, "echo written > /var/lib/app/data/x")[0] == 0
    assert (data / "x").read_text() == "written\n"


def test_a_symlink_planted_at_the_target_cannot_redirect_the_mount(
    container: Container, staging: StagingArea, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    assert run(container, "ln -s / /escape")[0] == 0
    with pytest.raises(MountRefused, match="symlink or not a directory"):
        inject(pid_of(container), pinned(staging, data, True), "/escape/etc", mount=0,
               field="volume_mounts[0].target")
    # Nothing was mounted over the container's own /etc either.
    code, out = run(container, "grep ' /etc ' /proc/mounts")
    assert code != 0, out


@pytest.mark.parametrize("target", ["relative", "/a/../b", "/a/./b"])
def test_a_target_that_is_not_a_normalized_absolute_path_is_refused(
    container: Container, staging: StagingArea, tmp_path: Path, target: str
) -> None:
    with pytest.raises(MountRefused, match="not a normalized absolute path"):
        inject(pid_of(container), str(tmp_path), target, mount=0, field="m")


def test_the_identity_file_is_written_on_a_tmpfs_of_its_own(container: Container) -> None:
    identity = {"backend_id": "b-1", "key": "doc-42", "secret_token": "s3cret"}
    claim(pid_of(container), [], identity)
    code, out = run(container, "cat /run/sailplane/identity.json")
    assert code == 0 and json.loads(out) == identity
    code, out = run(container, "grep ' /run/sailplane ' /proc/mounts")
    assert code == 0 and out.split()[2] == "tmpfs"
