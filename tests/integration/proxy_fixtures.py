"""A controller, a drone and a proxy, each a ``sailplane`` subprocess, on loopback, with
backends of ``sailplane/demo:latest`` (images/demo).

The cluster is :class:`~tests.integration.controller_fixtures.Cluster` (same processes, same
teardown) with the controller's ``--proxy-url`` pointing at the proxy started here, so a
connect response's ``url`` is used as it is. One cluster serves a whole test module: backends
are cheap, processes are not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from tests.integration.conftest import (
    IMAGE_BUILD_TIMEOUT_SECONDS,
    REPO,
    has_image,
    remove_drone_containers,
)
from tests.integration.controller_fixtures import (
    SAILPLANE,
    START_TIMEOUT,
    Cluster,
    Process,
    controller_process,
    drone_process,
    free_port,
    wait_until,
)

DEMO_IMAGE = "sailplane/demo:latest"
USER = "alice"
AUTH = {"role": "editor", "teams": ["blue", "green"]}


@pytest.fixture(scope="session")
def demo_image(docker_client: docker.DockerClient) -> str:
    """``sailplane/demo:latest`` as ``images/build demo`` makes it (a second when up to date;
    the first build runs debootstrap against the configured Debian mirror). Never pulled."""
    build = REPO / "images" / "build"
    if not (os.access(build, os.X_OK) and shutil.which("docker")):
        pytest.fail("images/build or the docker CLI is missing (scripts/setup installs it)")
    if not shutil.which("debootstrap") and not has_image(docker_client, DEMO_IMAGE):
        pytest.fail("debootstrap is missing (scripts/setup installs it)")
    done = subprocess.run([str(build), "demo"], capture_output=True, text=True,
                          timeout=IMAGE_BUILD_TIMEOUT_SECONDS, check=False)
    if done.returncode != 0:
        pytest.fail(f"images/build demo failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return DEMO_IMAGE




@dataclass
class ProxyCluster:
    """A :class:`Cluster` plus a proxy; ``proxy_http`` talks to the proxy."""

    cluster: Cluster
    proxy: Process
    proxy_port: int
    proxy_http: httpx.Client

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def start_proxy(self) -> None:
        self.proxy.start()

        def listening() -> bool:
            if not self.proxy.alive():
                raise AssertionError(f"the proxy exited:\n{self.proxy.log()}")
            # Any answer will do: an unknown token is the proxy's own 404.
            return self.proxy_http.get("/-/").status_code == 404

        wait_until(listening, START_TIMEOUT, "the proxy to listen")

    def proxy_pid(self) -> int:
        assert self.proxy.popen is not None
        return self.proxy.popen.pid

    def connect(self, **spawn: Any) -> dict[str, Any]:
        """Spawn a demo backend for a fresh key as ``alice`` with ``AUTH``; wait until ready."""
        spawn_config = self.cluster.spawn_config()
        spawn_config.update(spawn)
        response = self.cluster.http.post("/ctrl/connect", json={
            "key": {"name": self.cluster.new_key()}, "spawn_config": spawn_config,
            "user": USER, "auth": AUTH,
        })
        assert response.status_code == 200, response.text
        made: dict[str, Any] = response.json()
        self.cluster.wait_status(made["backend_id"], "ready")
        return made


@pytest.fixture(scope="module")
def proxy_cluster(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
    demo_image: str,
) -> Iterator[ProxyCluster]:
    if not SAILPLANE.exists():
        pytest.fail(f"{SAILPLANE} is missing (scripts/setup makes it)")
    tmp = tmp_path_factory.mktemp("proxy-cluster")
    port, proxy_port = free_port(), free_port()
    drone_id = f"test-{uuid.uuid4().hex[:12]}"
    mount_base = tmp / "base"
    mount_base.mkdir()
    controller = controller_process(tmp, port, proxy_url=f"http://127.0.0.1:{proxy_port}")
    drone = drone_process(tmp, port, drone_id, "--mount-base", str(mount_base),
                          startup_timeout="15")
    proxy = Process("proxy", [
        str(SAILPLANE), "proxy", "--controller", f"http://127.0.0.1:{port}",
        "--port", str(proxy_port),
    ], tmp / "proxy.log")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    proxy_http = httpx.Client(base_url=f"http://127.0.0.1:{proxy_port}", timeout=10)
    cluster = Cluster(tmp=tmp, port=port, drone_id=drone_id, controller=controller,
                      drone=drone, http=http, image=demo_image, mount_base=mount_base)
    made = ProxyCluster(cluster=cluster, proxy=proxy, proxy_port=proxy_port,
                        proxy_http=proxy_http)
    try:
        cluster.start_controller()
        cluster.start_drone()
        made.start_proxy()
        yield made
    finally:
        proxy_http.close()
        http.close()
        proxy.stop()
        drone.stop()
        controller.stop()
        remove_drone_containers(docker_client, drone_id)
