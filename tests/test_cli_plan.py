"""``sailplane mounts plan`` (docs/mounts.md), run as the real console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sailplane.mounts.resolved import (
    ResolvedHostMount,
    ResolvedMount,
    ResolvedTmpfsMount,
    ResolvedVolumeMount,
)
from sailplane.runtime.containerd.mounts import to_oci_mounts
from sailplane.runtime.docker.mounts import to_docker_mounts

from .mounts.conftest import mode_of, snapshot
from .mounts.examples import EXAMPLE_REQUEST, example_plan_mounts

SAILPLANE = Path(sys.executable).parent / "sailplane"


def run(*args: str, stdin: str | None = None) -> tuple[int, dict[str, Any]]:
    """Run ``sailplane mounts plan ARGS``; return the exit status and the JSON it printed."""
    assert SAILPLANE.exists(), f"console script missing at {SAILPLANE}"
    done = subprocess.run(
        [str(SAILPLANE), "mounts", "plan", *args], input=stdin, capture_output=True, text=True,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout)


@pytest.fixture
def drone(tmp_path: Path) -> Path:
    """Host volume roots: default (the mount base), data (rw) and config (ro)."""
    top = tmp_path.resolve() / "drone"
    for name in ("default", "data", "config"):
        (top / name).mkdir(parents=True)
    return top


def policy_flags(top: Path) -> list[str]:
    return ["--mount-base", f"{top}/default", "--host-volume", f"data={top}/data:rw",
            "--host-volume", f"config={top}/config:ro", "--state-dir", f"{top}/state"]


def staged(top: Path, index: int) -> str:
    """Where a drone with ``--state-dir {top}/state`` pins the index-th host mount."""
    return f"{top}/state/staging/BACKEND/{index}"


def request_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "request.json"
    path.write_text(text)
    return str(path)


def test_design_3_request_prints_the_example_plan_document(drone, tmp_path):
    status, document = run(*policy_flags(drone), request_file(tmp_path, EXAMPLE_REQUEST))
    assert status == 0
    assert list(document) == ["mounts", "docker", "oci"]
    shown = example_plan_mounts(f"{drone}/data")
    assert [mount for mount in document["mounts"] if mount in shown] == shown
    assert document["mounts"] == [
        {"type": "host", "host_path": f"{drone}/default/doc-42", "target": "/plane-data",
         "read_only": False},
        shown[0],
        {"type": "host", "host_path": f"{drone}/config", "target": "/etc/app",
         "read_only": True},
        shown[1],
        shown[2],
    ]
    resolved: list[ResolvedMount] = [
        ResolvedHostMount(host_path=f"{drone}/default/doc-42", target="/plane-data",
                          read_only=False, source=staged(drone, 0), staged=True),
        ResolvedHostMount(host_path=f"{drone}/data/editor/doc-42", target="/var/lib/app",
                          read_only=False, source=staged(drone, 1), staged=True),
        ResolvedHostMount(host_path=f"{drone}/config", target="/etc/app", read_only=True,
                          source=staged(drone, 2), staged=True),
        ResolvedVolumeMount(name="sailplane.editor.cache-doc-42", target="/cache",
                            read_only=False, namespace="editor", requested="cache-doc-42",
                            mount=2),
        ResolvedTmpfsMount(target="/tmp", size_bytes=67108864),
    ]
    assert document["docker"] == to_docker_mounts(resolved)
    # Named volumes where a containerd drone with that state directory keeps them.
    assert document["oci"] == to_oci_mounts(resolved, f"{drone}/state/volumes")
    assert document["docker"][4] == {
        "Type": "tmpfs", "Target": "/tmp", "TmpfsOptions": {"SizeBytes": 67108864, "Mode": 1023},
    }


def test_without_apply_nothing_is_created(drone, tmp_path):
    before = snapshot(drone)
    status, _ = run(*policy_flags(drone), request_file(tmp_path, EXAMPLE_REQUEST))
    assert status == 0
    assert snapshot(drone) == before
    assert not (drone / "data" / "editor").exists()


def test_with_apply_the_directories_appear_with_mode_0750(drone, tmp_path):
    status, _ = run(*policy_flags(drone), "--apply", request_file(tmp_path, EXAMPLE_REQUEST))
    assert status == 0
    for made in ("data/editor", "data/editor/doc-42", "default/doc-42"):
        assert (drone / made).is_dir()
        assert mode_of(drone / made) == 0o750, made


def test_the_request_can_come_from_stdin(drone):
    status, document = run(*policy_flags(drone), "-", stdin=EXAMPLE_REQUEST)
    assert status == 0
    assert document["mounts"][1]["host_path"] == f"{drone}/data/editor/doc-42"


def test_an_executable_alone_uses_the_key_and_namespace_flags(drone):
    executable = {"image": "i", "volume_mounts": [
        {"type": "host", "volume": "data", "sub_path": "{namespace}/{key}/{backend}",
         "target": "/d", "read_only": False}]}
    status, document = run(*policy_flags(drone), "--key", "room-1", "--namespace", "games",
                           "--backend", "b-7", "-", stdin=json.dumps(executable))
    assert status == 0
    assert document["mounts"] == [{"type": "host", "host_path": f"{drone}/data/games/room-1/b-7",
                                   "target": "/d", "read_only": False}]


def test_a_refused_mount_prints_its_index_and_exits_2(drone):
    request = json.loads(EXAMPLE_REQUEST)
    request["spawn_config"]["executable"]["volume_mounts"][1]["sub_path"] = "../data"
    status, document = run(*policy_flags(drone), "-", stdin=json.dumps(request))
    assert status == 2
    assert document == {"error": {
        "code": "mount_refused", "mount": 1,
        "message": "volume_mounts[1].sub_path: '..' components are not allowed",
    }}


def test_a_refused_mount_leaves_nothing_created_even_with_apply(drone):
    os.symlink("/etc", drone / "data" / "planted")
    request = json.loads(EXAMPLE_REQUEST)
    request["spawn_config"]["executable"]["volume_mounts"][1] = {
        "type": "host", "volume": "data", "sub_path": "planted/x", "target": "/etc/app"}
    before = snapshot(drone)
    status, document = run(*policy_flags(drone), "--apply", "-", stdin=json.dumps(request))
    assert status == 2
    assert document["error"]["code"] == "mount_refused"
    assert document["error"]["mount"] == 1
    assert "symlink" in document["error"]["message"]
    assert snapshot(drone) == before


def test_a_refused_plane_mount_names_the_mount_field(drone):
    request = json.loads(EXAMPLE_REQUEST)
    request["key"]["name"] = "../escape"
    status, document = run(*policy_flags(drone), "-", stdin=json.dumps(request))
    assert status == 2
    assert document["error"]["mount"] == "mount"
    assert document["error"]["message"].startswith("mount: template {key} = '../escape'")


def test_an_unknown_field_in_a_volume_mount_is_refused_naming_the_mount(drone):
    request = json.loads(EXAMPLE_REQUEST)
    request["spawn_config"]["executable"]["volume_mounts"][2]["sub_paht"] = "x"
    status, document = run(*policy_flags(drone), "-", stdin=json.dumps(request))
    assert status == 2
    assert document["error"]["code"] == "mount_refused"
    assert document["error"]["mount"] == 2
    assert "sub_paht" in document["error"]["message"]


@pytest.mark.parametrize("root", ["/etc", "/var/run", "/"])
def test_a_forbidden_policy_root_exits_2_with_bad_policy(drone, root):
    status, document = run("--host-volume", f"data={root}", "-", stdin=EXAMPLE_REQUEST)
    assert status == 2
    assert document["error"]["code"] == "bad_policy"
    assert f"root {root!r}" in document["error"]["message"]


def test_a_malformed_host_volume_flag_exits_2_with_bad_policy():
    status, document = run("--host-volume", "data", "-", stdin=EXAMPLE_REQUEST)
    assert status == 2
    assert document["error"]["code"] == "bad_policy"


def test_a_toml_policy_file_is_used(drone, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(f'mount_base = "{drone}/default"\n'
                      f'[host_volumes.data]\npath = "{drone}/data"\nnamespaces = ["games"]\n'
                      f'[host_volumes.config]\npath = "{drone}/config"\naccess = "ro"\n')
    status, document = run("--policy", str(policy), "-", stdin=EXAMPLE_REQUEST)
    assert status == 2  # the data volume is for namespace "games" only
    assert document["error"] == {
        "code": "mount_refused", "mount": 0,
        "message": "volume_mounts[0].volume: host volume 'data' is not available to "
                   "namespace 'editor'",
    }


def test_invalid_json_exits_2_with_invalid_request(drone):
    status, document = run(*policy_flags(drone), "-", stdin="{not json")
    assert status == 2
    assert document["error"]["code"] == "invalid_request"


def test_a_missing_request_file_exits_2_with_invalid_request(drone, tmp_path):
    status, document = run(*policy_flags(drone), str(tmp_path / "absent.json"))
    assert status == 2
    assert document["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("apply", [[], ["--apply"]])
def test_a_missing_directory_in_a_read_only_volume_is_refused_and_never_created(
    drone, apply
):
    executable = {"image": "i", "volume_mounts": [
        {"type": "host", "volume": "config", "sub_path": "nothere", "target": "/c"}]}
    before = snapshot(drone)
    status, document = run(*policy_flags(drone), *apply, "-", stdin=json.dumps(executable))
    assert status == 2
    assert document["error"]["code"] == "mount_refused"
    assert document["error"]["mount"] == 0
    assert "nothing is created in a read-only host volume" in document["error"]["message"]
    assert snapshot(drone) == before


def test_a_key_scoped_volume_flag_roots_the_plan_at_the_key(drone):
    executable = {"image": "i", "volume_mounts": [
        {"type": "host", "volume": "data", "target": "/d", "read_only": False}]}
    flags = ["--host-volume", f"data={drone}/data:rw:key", "--state-dir", f"{drone}/state"]
    status, document = run(*flags, "--key", "doc-42", "--namespace", "editor", "--backend",
                           "b-7", "-", stdin=json.dumps(executable))
    assert status == 0, document
    assert document["mounts"][0]["host_path"] == f"{drone}/data/editor/doc-42"
    assert document["docker"][0]["Source"] == f"{drone}/state/staging/b-7/0"
    assert document["oci"][0]["source"] == f"{drone}/state/staging/b-7/0"
