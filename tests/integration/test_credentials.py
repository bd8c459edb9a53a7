"""Credentials end to end: `sailplane dev`'s private files and API token (as the README's
curl uses it), and a drone process without a credential receiving nothing from a real
controller process."""

from __future__ import annotations

import signal
import stat
import subprocess
import time

import httpx
import pytest

from tests.integration.controller_fixtures import SAILPLANE, Cluster, Process, cluster
from tests.integration.proxy_fixtures import demo_image
from tests.integration.test_walkthrough import Dev, dev

__all__ = ["cluster", "demo_image", "dev"]  # the fixtures, imported for pytest

pytestmark = pytest.mark.docker


def test_dev_keeps_its_token_and_state_files_private(dev: Dev) -> None:
    dev.connect()  # the store and database hold a spawn's env and tokens now
    private = [dev.data_dir / "api-token", dev.data_dir / "controller.db",
               dev.data_dir / "controller.db-wal",
               dev.data_dir / "drone" / f"drone-{dev.drone_id}.db"]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((dev.data_dir / "drone").stat().st_mode) == 0o700


def test_the_api_needs_the_dev_token_and_curl_sends_it(dev: Dev) -> None:
    assert httpx.get(f"{dev.controller}/ctrl/drones").status_code == 401
    assert httpx.get(f"{dev.controller}/metrics").status_code == 401
    assert httpx.get(f"{dev.controller}/health").status_code == 200
    # The README's way, from the repository (the data directory's parent).
    done = subprocess.run(
        ["sh", "-c", f'curl -s -H "Authorization: Bearer $(cat .sailplane/api-token)" '
                     f"{dev.controller}/ctrl/drones"],
        cwd=dev.data_dir.parent, capture_output=True, text=True, timeout=30, check=True)
    assert dev.drone_id in done.stdout
    assert dev.cli("drones").returncode == 0  # the CLI finds it by itself


def test_a_drone_without_a_credential_receives_nothing(cluster: Cluster) -> None:
    # The real drone is frozen: its spawn waits, unread, while an impostor tries its id.
    assert cluster.drone.popen is not None
    cluster.drone.popen.send_signal(signal.SIGSTOP)
    try:
        made = cluster.connect()
        impostor = Process("impostor", [
            str(SAILPLANE), "drone", "--controller", cluster.url, "--drone-id",
            cluster.drone_id, "--mount-base", str(cluster.mount_base),
            "--state-dir", str(cluster.tmp / "impostor"),
        ], cluster.tmp / "impostor.log", env={"SAILPLANE_DRONE_TOKEN": ""})
        impostor.start()
        try:
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline and "HTTP 401" not in impostor.log():
                time.sleep(0.2)
            assert "refused this credential (HTTP 401)" in impostor.log(), impostor.log()
            assert cluster.status(made["backend_id"])["status"] == "scheduled"
        finally:
            impostor.stop()
        assert "refused /ctrl/drone-socket" in cluster.controller.log()
    finally:
        cluster.drone.popen.send_signal(signal.SIGCONT)
    cluster.wait_status(made["backend_id"], "ready")  # the real one, with its credential
