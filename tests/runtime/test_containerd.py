"""The containerd runtime's pure parts: names, ctr's output, flags; no containerd needed.

Against a real containerd: tests/integration/test_drone_docker.py (the ``containerd`` ids).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sailplane.cli import app
from sailplane.dev import DevConfig, dev_parts
from sailplane.drone.config import DroneConfig, make_runtime
from sailplane.errors import RuntimeFailure
from sailplane.mounts.named import NAME_LABEL, NAMESPACE_LABEL, runtime_name
from sailplane.mounts.policy import MountPolicy
from sailplane.mounts.resolved import ResolvedVolumeMount
from sailplane.runtime.containerd.ctr import explanation, normalize_image
from sailplane.runtime.containerd.mounts import to_ctr_mount_flag
from sailplane.runtime.containerd.runtime import (
    ContainerdRuntime,
    _metrics,
    _parse_event,
    container_id,
)
from sailplane.runtime.docker.runtime import DockerRuntime
from sailplane.spec import ResourceLimits


@pytest.mark.parametrize(("image", "ref"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("sailplane/static:latest", "docker.io/sailplane/static:latest"),
    ("docker.io/sailplane/static:1", "docker.io/sailplane/static:1"),
    ("localhost/x", "localhost/x:latest"),
    ("127.0.0.1:1/sailplane/missing", "127.0.0.1:1/sailplane/missing:latest"),
    ("registry.example/a/b@sha256:00", "registry.example/a/b@sha256:00"),
])
def test_image_names_are_normalized_as_docker_does(image: str, ref: str) -> None:
    assert normalize_image(image) == ref


def test_exit_events_are_parsed_from_ctr_events_lines() -> None:
    line = ('2026-11-26 15:48:49.84 +0000 UTC sailplane /tasks/exit {"container_id":"c",'
            '"id":"c","pid":8272,"exit_status":137,"exited_at":"2026-11-26T15:48:49Z"}\n')
    assert _parse_event(line) == ("/tasks/exit", {
        "container_id": "c", "id": "c", "pid": 8272, "exit_status": 137,
        "exited_at": "2026-11-26T15:48:49Z",
    })
    assert _parse_event("garbage\n") is None
    assert _parse_event("t ns /tasks/exit {not json}\n") is None


def test_ctr_errors_keep_ctr_s_own_line() -> None:
    stderr = ('time="..." level=error msg="failed"\n'
              'ctr: container "x" in namespace "n": not found\n')
    assert explanation(stderr) == 'container "x" in namespace "n": not found'
    assert explanation("") == "no message"


def test_metrics_of_cgroup_v1_and_v2() -> None:
    v1 = {"memory": {"usage": {"usage": 4096}}, "cpu": {"usage": {"total": 2_000_000_000}}}
    v2 = {"memory": {"usage": 8192}, "cpu": {"usage_usec": 500_000}}
    assert (_metrics(v1).memory_bytes, _metrics(v1).cpu_seconds) == (4096, 2.0)
    assert (_metrics(v2).memory_bytes, _metrics(v2).cpu_seconds) == (8192, 0.5)


def test_mount_flags_refuse_what_ctr_would_split() -> None:
    flag = to_ctr_mount_flag({"destination": "/d", "type": "tmpfs", "source": "tmpfs",
                              "options": ["nosuid", "nodev", "size=1024", "mode=1777"]})
    assert flag == "type=tmpfs,src=tmpfs,dst=/d,options=nosuid:nodev:size=1024:mode=1777"
    with pytest.raises(ValueError, match="','"):
        to_ctr_mount_flag({"destination": "/d", "type": "bind", "source": "/a,b",
                           "options": ["rbind"]})


def runtime(tmp_path: Path) -> ContainerdRuntime:
    return ContainerdRuntime("d1", tmp_path, "/nonexistent.sock", "ns")


def test_limits_become_ctr_flags(tmp_path: Path) -> None:
    flags = runtime(tmp_path)._limit_flags(ResourceLimits(
        memory_limit_bytes=64 << 20, cpu_period_percent=50, cpu_period=200_000,
    ))
    assert flags == ["--memory-limit", str(64 << 20),
                     "--cpu-period", "200000", "--cpu-quota", "100000"]


@pytest.mark.parametrize(("limits", "message"), [
    (ResourceLimits(memory_limit_bytes=1 << 20), "6MB"),
    (ResourceLimits(pids_limit=10), "pids_limit 10: the containerd runtime needs at least 16"),
    (ResourceLimits(cpu_time_limit=10), "cpu_time_limit"),
])
def test_limits_ctr_cannot_apply_are_refused_not_dropped(
    tmp_path: Path, limits: ResourceLimits, message: str
) -> None:
    with pytest.raises(RuntimeFailure, match=message):
        runtime(tmp_path)._limit_flags(limits)


def volume(name: str, namespace: str = "editor") -> ResolvedVolumeMount:
    return ResolvedVolumeMount(name=runtime_name(namespace, name, 0), target="/v",
                               read_only=False, namespace=namespace, requested=name, mount=0)


def test_named_volumes_are_directories_recorded_with_a_label(tmp_path: Path) -> None:
    made, cache = runtime(tmp_path), volume("cache-1")
    assert made.volume_labels(cache.name) is None
    made._ensure_volumes([cache])
    path = tmp_path / "volumes" / "sailplane.editor.cache-1"
    (path / "kept").write_text("x")
    made._ensure_volumes([cache])  # second use: the same directory, untouched
    assert (path.stat().st_mode & 0o777, (path / "kept").read_text()) == (0o750, "x")
    labels = made.volume_labels(cache.name)
    assert labels is not None and labels["dev.sailplane.volume"] == "true"
    assert (labels[NAMESPACE_LABEL], labels[NAME_LABEL]) == ("editor", "cache-1")
    assert labels["dev.sailplane.drone"] == "d1"


def test_a_volume_path_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    made, cache = runtime(tmp_path), volume("v")
    made._ensure_volumes([cache])
    path = tmp_path / "volumes" / cache.name
    path.rmdir()
    path.symlink_to(tmp_path)
    with pytest.raises(RuntimeFailure, match="not a directory"):
        made._ensure_volumes([cache])


def test_drone_config_chooses_the_runtime(tmp_path: Path) -> None:
    base = {"drone_id": "d1", "controller_url": "http://127.0.0.1:1",
            "policy": MountPolicy(), "state_dir": tmp_path}
    assert isinstance(make_runtime(DroneConfig(**base)), DockerRuntime)
    made = make_runtime(DroneConfig(**base, runtime="containerd",
                                    containerd_address="/x.sock", containerd_namespace="n"))
    assert isinstance(made, ContainerdRuntime)
    assert (made.ctr.address, made.ctr.namespace) == ("/x.sock", "n")
    assert made.volume_root == tmp_path / "volumes"
    assert container_id("b-1") == "sailplane-b-1"


def test_an_unknown_runtime_is_refused_by_the_cli() -> None:
    result = CliRunner().invoke(app, ["drone", "--runtime", "podman"])
    assert result.exit_code == 2
    assert "docker or containerd" in result.output


def test_dev_passes_the_runtime_choice_to_its_drone(tmp_path: Path) -> None:
    config = DevConfig(data_dir=tmp_path, runtime="containerd", containerd_address="/x.sock")
    _, drone, _ = dev_parts(config)
    assert (drone.runtime, drone.containerd_address) == ("containerd", "/x.sock")
