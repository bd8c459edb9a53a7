"""Mounts through containerd: the OCI mounts that ``to_oci_mounts`` makes from a plan,
given to ``ctr run --mount``, do what the resolved mounts say inside a container.

This uses the containerd that Docker's package runs (dockerd starts its own when no system
containerd runs), in a namespace of its own. The image comes from ``docker save``, imported
with ``ctr images import``; nothing is pulled. Everything made in the namespace is removed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from sailplane.mounts.resolved import ResolvedHostMount, ResolvedMount
from sailplane.runtime.containerd.mounts import to_oci_mounts
from tests.integration.conftest import mount_line

pytestmark = [pytest.mark.docker, pytest.mark.containerd]

# The fixtures of conftest.py, by shape (a conftest is not imported from).
Plan = Callable[..., list[ResolvedMount]]
RunInCtr = Callable[[str, list[dict[str, Any]]], subprocess.CompletedProcess[str]]

NAMESPACE = "sailplane-test"
SOCKETS = (
    "/run/docker/containerd/containerd.sock",  # dockerd's own containerd
    "/run/containerd/containerd.sock",  # a system containerd
)
TEST_LABEL = "dev.sailplane.test=1"
CTR_TIMEOUT_SECONDS = 60
NAMESPACE_GC_WAIT_SECONDS = 10
READ_ONLY_ERROR = "Read-only file system"


@dataclass(frozen=True)
class Ctr:
    """``ctr`` bound to one containerd socket and one namespace."""

    binary: str
    address: str
    namespace: str = NAMESPACE

    def __call__(
        self, *args: str, check: bool = True, timeout: float = CTR_TIMEOUT_SECONDS
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.binary, "--address", self.address, "--namespace", self.namespace, *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({done.returncode}): "
                                 f"{done.stderr.strip()}")
        return done


def ctr_mount_flag(mount: dict[str, Any]) -> str:
    """An OCI runtime spec mount as ``ctr run --mount`` takes it.

    >>> ctr_mount_flag({"destination": "/d", "type": "bind", "source": "/s",
    ...                 "options": ["rbind", "ro"]})
    'type=bind,src=/s,dst=/d,options=rbind:ro'
    """
    for value in (mount["type"], mount["source"], mount["destination"]):
        if "," in value or '"' in value:
            raise ValueError(f"ctr --mount cannot carry {value!r}")
    for option in mount["options"]:
        if ":" in option or "," in option:
            raise ValueError(f"ctr --mount cannot carry the option {option!r}")
    return (f"type={mount['type']},src={mount['source']},dst={mount['destination']},"
            f"options={':'.join(mount['options'])}")


@pytest.fixture(scope="session")
def ctr() -> Ctr:
    binary = shutil.which("ctr")
    if binary is None:
        pytest.fail("no ctr binary (it comes with Debian's containerd, a dependency of docker.io)")
    address = os.environ.get("SAILPLANE_CONTAINERD_SOCKET") or next(
        (path for path in SOCKETS if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode)),
        None,
    )
    if address is None:
        pytest.fail(f"no containerd socket at {' or '.join(SOCKETS)} (is dockerd running?)")
    client = Ctr(binary, address)
    version = client("version", check=False)
    if version.returncode != 0:
        pytest.fail(f"containerd at {address} does not answer: {version.stderr.strip()}")
    return client


@pytest.fixture(scope="session")
def ctr_image(
    ctr: Ctr, docker_client: docker.DockerClient, image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The test image, imported into the test namespace from ``docker save``; removed after."""
    archive = tmp_path_factory.mktemp("ctr-image") / "image.tar"
    with archive.open("wb") as out:
        for chunk in docker_client.images.get(image).save(named=True):
            out.write(chunk)
    ctr("images", "import", str(archive), timeout=120)
    archive.unlink()
    wanted = {image, f"docker.io/{image}", f"docker.io/library/{image}"}
    refs = [ref for ref in ctr("images", "ls", "-q").stdout.split() if ref in wanted]
    assert refs, f"{image} not found in namespace {ctr.namespace} after import"
    yield refs[0]
    ctr("images", "rm", "--sync", refs[0], check=False)
    # Refused while anything is left; snapshots a container held go at containerd's next GC.
    deadline = time.monotonic() + NAMESPACE_GC_WAIT_SECONDS
    while ctr("namespaces", "rm", ctr.namespace, check=False).returncode != 0:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)


@pytest.fixture
def run_in_ctr(ctr: Ctr, ctr_image: str) -> Iterator[RunInCtr]:
    """Run ``sh -c SCRIPT`` with the given OCI mounts under ``ctr run --rm``, to completion."""
    started: list[str] = []

    def run(script: str, mounts: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
        container_id = f"sailplane-test-{uuid.uuid4().hex[:12]}"
        started.append(container_id)
        flags = [arg for mount in mounts for arg in ("--mount", ctr_mount_flag(mount))]
        return ctr("run", "--rm", "--label", TEST_LABEL, *flags, ctr_image, container_id,
                   "sh", "-c", script, check=False)

    yield run
    # --rm removed the ones that ended; one that timed out or failed to start is still there.
    left = set(ctr("containers", "ls", "-q", check=False).stdout.split())
    for container_id in started:
        if container_id in left:
            ctr("tasks", "kill", "--signal", "SIGKILL", container_id, check=False)
            ctr("tasks", "delete", "--force", container_id, check=False)
            ctr("containers", "delete", container_id, check=False)  # and its snapshot



def test_read_only_host_mount_refuses_writes(
    roots: dict[str, Path], plan: Plan, run_in_ctr: RunInCtr
) -> None:
    # The operator made the key's directory: nothing is created in a read-only volume.
    (roots["config"] / "editor" / "doc-42").mkdir(parents=True)
    resolved = plan([
        {"type": "host", "volume": "config", "sub_path": "{namespace}/{key}", "target": "/etc/app"},
    ])
    [host] = resolved
    assert isinstance(host, ResolvedHostMount)
    assert host.read_only
    directory = roots["config"] / "editor" / "doc-42"
    (directory / "app.conf").write_text("greeting=hello\n")

    ran = run_in_ctr(
        "cat /etc/app/app.conf && grep ' /etc/app ' /proc/mounts && touch /etc/app/new",
        to_oci_mounts(resolved),
    )

    assert ran.returncode != 0
    assert "greeting=hello" in ran.stdout
    options = mount_line(ran.stdout, "/etc/app").split(" ")[3].split(",")
    assert options[0] == "ro"
    assert {"nosuid", "nodev"} <= set(options)
    assert READ_ONLY_ERROR in ran.stderr
    assert sorted(p.name for p in directory.iterdir()) == ["app.conf"]


def test_read_write_host_mount_write_is_visible_on_the_host(
    roots: dict[str, Path], plan: Plan, run_in_ctr: RunInCtr
) -> None:
    token = uuid.uuid4().hex
    resolved = plan([{
        "type": "host", "volume": "data", "sub_path": "{namespace}/{key}",
        "target": "/var/lib/app", "read_only": False,
    }])

    ran = run_in_ctr(
        f"mkdir /var/lib/app/sub && printf '%s\\n' {token} > /var/lib/app/sub/out.txt && "
        "grep ' /var/lib/app ' /proc/mounts",
        to_oci_mounts(resolved),
    )

    assert ran.returncode == 0, ran.stderr
    options = mount_line(ran.stdout, "/var/lib/app").split(" ")[3].split(",")
    assert options[0] == "rw"
    assert {"nosuid", "nodev"} <= set(options)
    written = roots["data"] / "editor" / "doc-42" / "sub" / "out.txt"
    assert written.read_text() == f"{token}\n"
    assert sorted(p.name for p in roots["data"].iterdir()) == ["editor"]


@pytest.mark.parametrize(("mode", "shown"), [("1777", "1777"), ("0750", "750")])
def test_tmpfs_gets_its_size_and_mode(
    plan: Plan, run_in_ctr: RunInCtr, mode: str, shown: str
) -> None:
    size = 8 * 1024 * 1024
    resolved = plan([{"type": "tmpfs", "target": "/scratch", "size_bytes": size, "mode": mode}])

    ran = run_in_ctr(
        "grep ' /scratch ' /proc/mounts; stat -c 'mode %a' /scratch; "
        "dd if=/dev/zero of=/scratch/fill bs=1048576 count=9 2>&1; echo dd=$?",
        to_oci_mounts(resolved),
    )

    assert ran.returncode == 0, ran.stderr
    line = mount_line(ran.stdout, "/scratch")
    options = line.split(" ")[3].split(",")
    assert line.split(" ")[2] == "tmpfs"
    assert f"size={size // 1024}k" in options
    assert {"nosuid", "nodev"} <= set(options)
    assert f"mode {shown}" in ran.stdout.splitlines()
    assert (f"mode={shown}" in options) == (shown != "1777")
    assert "No space left on device" in ran.stdout
    assert "dd=1" in ran.stdout.splitlines()


def test_named_volume_directory_persists_across_containers(
    tmp_path: Path, plan: Plan, run_in_ctr: RunInCtr
) -> None:
    volume_root = tmp_path / "volumes"
    token = uuid.uuid4().hex
    writable = plan(
        [{"type": "volume", "name": "cache-{key}", "target": "/cache", "read_only": False}]
    )
    mounts = to_oci_mounts(writable, str(volume_root))
    # The runtime's name is namespaced (the ``plan`` fixture's namespace is ``editor``).
    assert mounts[0]["source"] == str(volume_root / "sailplane.editor.cache-doc-42")
    (volume_root / "sailplane.editor.cache-doc-42").mkdir(parents=True)  # as provisioned

    first = run_in_ctr(f"echo {token} > /cache/token", mounts)
    assert first.returncode == 0, first.stderr

    again = plan([{"type": "volume", "name": "cache-{key}", "target": "/data"}])
    second = run_in_ctr("cat /data/token && touch /data/other",
                        to_oci_mounts(again, str(volume_root)))
    assert second.stdout.strip() == token
    assert second.returncode != 0
    assert READ_ONLY_ERROR in second.stderr
