"""The README's walkthrough, end to end: `sailplane dev`, the CLI, and HTTP through the proxy.

Config hot reload, data kept across backends of a key, a live code mount, and Ctrl-C leaving
no container behind, with the demo backend image, on Docker and on containerd (whose drone
imports the demo image from Docker's store by itself, as a user running the walkthrough with
``--runtime containerd`` needs). Credentials are on: as in the README, the
CLI runs from another directory than the data directory's and finds the API token that
`sailplane dev` published (through its link under ``XDG_STATE_HOME``, here a temporary one).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest

from sailplane.runtime.containerd.ctr import DEFAULT_NAMESPACE, default_address
from tests.integration.conftest import remove_drone_containers
from tests.integration.controller_fixtures import (
    SAILPLANE,
    START_TIMEOUT,
    Process,
    free_port,
    wait_until,
)
from tests.integration.proxy_fixtures import DEMO_IMAGE as DEMO
from tests.integration.proxy_fixtures import demo_image  # noqa: F401 - a fixture

pytestmark = pytest.mark.docker
RUNTIMES = ["docker", pytest.param("containerd", marks=pytest.mark.containerd)]

@dataclass
class Dev:
    root: Path  # the walkthrough's /tmp/walk: the CLI runs here
    data_dir: Path  # the repository's .sailplane
    controller: str
    drone_id: str
    process: Process
    env: dict[str, str]
    runtime: str

    def containers(self) -> list[str]:
        """The drone's containers, running or not, in its runtime."""
        label = f"dev.sailplane.drone={self.drone_id}"
        if self.runtime == "docker":
            client = docker.from_env()
            try:
                return [c.id or "" for c in client.containers.list(all=True,
                                                                   filters={"label": label})]
            finally:
                client.close()
        listed = ctr("-n", DEFAULT_NAMESPACE, "containers", "ls", "-q",
                     f'labels."dev.sailplane.drone"=={json.dumps(self.drone_id)}')
        assert listed.returncode == 0, listed.stderr
        return listed.stdout.split()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(SAILPLANE), *args, "--controller", self.controller],
                              capture_output=True, text=True, timeout=60, cwd=self.root,
                              env=self.env)
        if check:
            assert done.returncode == 0, f"sailplane {args}: {done.stderr}"
        return done

    def connect(self) -> dict[str, str]:
        done = self.cli(
            "connect", "--image", DEMO, "--key", "doc-42", "--namespace", "editor",
            "--volume", "host:config:/config", "--volume", "host:data/{namespace}/{key}:/data:rw",
            "--volume", "host:code:/code", "--wait", "--json",
        )
        response: dict[str, str] = json.loads(done.stdout)
        assert response["status"] == "ready"
        return response


def ctr(*args: str) -> subprocess.CompletedProcess[str]:
    """``ctr`` on the containerd the dev drone uses, in its namespace."""
    return subprocess.run(["ctr", "--address", default_address(), *args], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture(params=RUNTIMES)
def dev(request: pytest.FixtureRequest, tmp_path: Path,
        demo_image: str) -> Iterator[Dev]:  # noqa: F811 - the fixture
    runtime: str = request.param
    client = docker.from_env()
    # The containerd drone imports the demo image into its namespace: removed at the end
    # unless it (and the namespace) were there before.
    had_namespace = runtime == "containerd" and DEFAULT_NAMESPACE in ctr(
        "namespaces", "ls", "-q").stdout.split()
    for name in ("config", "data", "code"):
        (tmp_path / name).mkdir()
    (tmp_path / "config" / "app.toml").write_text('greeting = "hello"\n')
    (tmp_path / "code" / "index.html").write_text("<h1>version 1</h1>\n")
    port, proxy_port = free_port(), free_port()
    drone_id = f"walk-{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "repo" / ".sailplane"
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    for name in ("SAILPLANE_TOKEN", "SAILPLANE_TOKEN_FILE"):
        env.pop(name, None)
    process = Process("dev", [
        str(SAILPLANE), "dev", "--controller-port", str(port), "--proxy-port", str(proxy_port),
        "--data-dir", str(data_dir), "--drone-id", drone_id, "--runtime", runtime,
        "--host-volume", f"config={tmp_path / 'config'}:ro",
        "--host-volume", f"data={tmp_path / 'data'}:rw",
        "--host-volume", f"code={tmp_path / 'code'}:ro",
    ], tmp_path / "dev.log", env={"XDG_STATE_HOME": env["XDG_STATE_HOME"]})
    process.start()
    controller = f"http://127.0.0.1:{port}"

    def drone_connected() -> bool:
        token = (data_dir / "api-token").read_text().strip()
        answer = httpx.get(f"{controller}/ctrl/drones",
                           headers={"authorization": f"Bearer {token}"})
        return answer.status_code == 200 and bool(answer.json())

    try:
        wait_until(drone_connected, START_TIMEOUT, "the dev drone to connect")
        yield Dev(tmp_path, data_dir, controller, drone_id, process, env, runtime)
    finally:
        process.stop(signal.SIGINT)
        remove_drone_containers(client, drone_id)
        client.close()
        assert not (runtime == "containerd" and Dev(
            tmp_path, data_dir, controller, drone_id, process, env, runtime).containers()), \
            "containerd backends left behind"
        if runtime == "containerd" and not had_namespace:
            for image in ctr("-n", DEFAULT_NAMESPACE, "images", "ls", "-q").stdout.split():
                ctr("-n", DEFAULT_NAMESPACE, "images", "rm", "--sync", image)
            ctr("namespaces", "rm", DEFAULT_NAMESPACE)


def test_a_config_file_replaced_on_the_host_is_served_at_once(dev: Dev):
    url = dev.connect()["url"]
    assert httpx.get(f"{url}file/app.toml").text == 'greeting = "hello"\n'
    # As editors do: write a temporary file, rename it over the old one.
    (dev.root / "config" / "app.toml.new").write_text('greeting = "bonjour"\n')
    (dev.root / "config" / "app.toml.new").replace(dev.root / "config" / "app.toml")
    assert httpx.get(f"{url}file/app.toml").text == 'greeting = "bonjour"\n'
    page = httpx.get(url).text
    assert "app.toml" in page and "index.html" in page


def test_a_keys_data_outlives_its_backend(dev: Dev):
    first = dev.connect()
    assert httpx.get(f"{first['url']}counter").text == "1\n"
    assert httpx.get(f"{first['url']}counter").text == "2\n"
    dev.cli("terminate", first["backend_id"])
    states = dev.cli("status", first["backend_id"], "--follow").stdout
    assert states.splitlines()[-1].startswith("terminated (external")
    gone = dev.cli("connect", "--key", "doc-42", "--namespace", "editor", check=False)
    assert gone.returncode == 2 and "no live backend" in gone.stderr
    second = dev.connect()
    assert second["backend_id"] != first["backend_id"]
    assert httpx.get(f"{second['url']}counter").text == "3\n"
    assert (dev.root / "data" / "editor" / "doc-42" / "counter").read_text() == "3"


def test_an_edit_to_mounted_code_is_served_at_once(dev: Dev):
    url = dev.connect()["url"]
    assert httpx.get(f"{url}file/index.html").text == "<h1>version 1</h1>\n"
    (dev.root / "code" / "index.html").write_text("<h1>version 2</h1>\n")
    assert httpx.get(f"{url}file/index.html").text == "<h1>version 2</h1>\n"


def test_ctrl_c_terminates_every_backend_and_leaves_no_container(dev: Dev):
    dev.connect()
    assert dev.containers()
    dev.process.stop(signal.SIGINT)
    assert dev.process.popen is not None and dev.process.popen.returncode == 0, dev.process.log()
    assert dev.containers() == []
    assert "every backend terminated" in dev.process.log()
