"""Resolved mounts -> Docker ``HostConfig.Mounts`` and OCI ``mounts``, per docs/runtimes.md."""

from __future__ import annotations

import pytest

from sailplane.mounts.plan import plan_mounts
from sailplane.mounts.policy import Access, HostVolume, MountPolicy
from sailplane.mounts.resolved import (
    ResolvedHostMount,
    ResolvedMount,
    ResolvedTmpfsMount,
    ResolvedVolumeMount,
)
from sailplane.runtime.containerd.mounts import DEFAULT_VOLUME_ROOT, to_oci_mount, to_oci_mounts
from sailplane.runtime.docker.mounts import to_docker_mount, to_docker_mounts

from ..mounts.conftest import VALUES, executor, host

# Runtimes bind the staging path where the drone pinned the directory, never the host path.
STAGING = "/var/lib/sailplane/staging/b-1"
HOST_RO = ResolvedHostMount(host_path="/srv/config", target="/etc/app", read_only=True,
                            source=f"{STAGING}/0", staged=True)
HOST_RW = ResolvedHostMount(host_path="/srv/data/editor/doc-42", target="/var/lib/app",
                            read_only=False, source=f"{STAGING}/1", staged=True)
# A named volume's runtime name is namespaced (``sailplane.mounts.named``).
VOLUME = ResolvedVolumeMount(name="sailplane.editor.cache-doc-42", target="/cache",
                             read_only=False, namespace="editor", requested="cache-doc-42",
                             mount=0)
VOLUME_RO = ResolvedVolumeMount(name="sailplane.-.v", target="/v", read_only=True,
                                namespace="", requested="v", mount=1)
TMPFS = ResolvedTmpfsMount(target="/tmp", size_bytes=67108864)


@pytest.mark.parametrize(
    ("mount", "docker"),
    [
        # The staging mount is read-only, nosuid, nodev; a Docker "ReadOnly" would clear the
        # last two (docker/mounts.py), so the bind is plain.
        (HOST_RO, {"Type": "bind", "Source": f"{STAGING}/0", "Target": "/etc/app",
                   "ReadOnly": False, "BindOptions": {"Propagation": "rprivate"}}),
        (HOST_RW, {"Type": "bind", "Source": f"{STAGING}/1",
                   "Target": "/var/lib/app", "ReadOnly": False,
                   "BindOptions": {"Propagation": "rprivate"}}),
        (VOLUME, {"Type": "volume", "Source": "sailplane.editor.cache-doc-42",
                  "Target": "/cache", "ReadOnly": False}),
        (VOLUME_RO,
         {"Type": "volume", "Source": "sailplane.-.v", "Target": "/v", "ReadOnly": True}),
        (TMPFS, {"Type": "tmpfs", "Target": "/tmp",
                 "TmpfsOptions": {"SizeBytes": 67108864, "Mode": 0o1777}}),
        (ResolvedTmpfsMount(target="/s", size_bytes=1, mode=0o700),
         {"Type": "tmpfs", "Target": "/s", "TmpfsOptions": {"SizeBytes": 1, "Mode": 0o700}}),
    ],
    ids=["host-ro", "host-rw", "volume-rw", "volume-ro", "tmpfs", "tmpfs-mode"],
)
def test_docker_translation_matches_the_design_table(mount, docker):
    assert to_docker_mount(mount) == docker


def test_docker_tmpfs_mode_is_the_integer_1777_octal():
    mode = to_docker_mount(TMPFS)["TmpfsOptions"]["Mode"]
    assert isinstance(mode, int) and mode == 1023 == 0o1777


@pytest.mark.parametrize(
    ("mount", "oci"),
    [
        (HOST_RO, {"destination": "/etc/app", "type": "bind", "source": f"{STAGING}/0",
                   "options": ["rbind", "rprivate", "ro", "nosuid", "nodev"]}),
        (HOST_RW, {"destination": "/var/lib/app", "type": "bind",
                   "source": f"{STAGING}/1",
                   "options": ["rbind", "rprivate", "rw", "nosuid", "nodev"]}),
        (VOLUME, {"destination": "/cache", "type": "bind",
                  "source": f"{DEFAULT_VOLUME_ROOT}/sailplane.editor.cache-doc-42",
                  "options": ["rbind", "rprivate", "rw", "nosuid", "nodev"]}),
        (TMPFS, {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "nodev", "size=67108864", "mode=1777"]}),
        (ResolvedTmpfsMount(target="/s", size_bytes=1, mode=0o700),
         {"destination": "/s", "type": "tmpfs", "source": "tmpfs",
          "options": ["nosuid", "nodev", "size=1", "mode=700"]}),
    ],
    ids=["host-ro", "host-rw", "volume", "tmpfs", "tmpfs-mode"],
)
def test_oci_translation_matches_the_design_table(mount, oci):
    assert to_oci_mount(mount) == oci


def test_oci_named_volume_is_a_directory_under_the_given_volume_root():
    assert (to_oci_mount(VOLUME, "/var/lib/other")["source"]
            == "/var/lib/other/sailplane.editor.cache-doc-42")
    assert to_oci_mount(VOLUME_RO)["options"] == ["rbind", "rprivate", "ro", "nosuid", "nodev"]


def test_lists_translate_in_order_and_oci_puts_shallower_targets_first():
    mounts: list[ResolvedMount] = [HOST_RO, VOLUME, TMPFS]
    assert to_docker_mounts(mounts) == [to_docker_mount(m) for m in mounts]
    by_depth = sorted(mounts, key=lambda m: m.target.count("/"))  # stable: ties keep order
    assert to_oci_mounts(mounts, "/v") == [to_oci_mount(m, "/v") for m in by_depth]


def test_a_windows_drone_plans_and_translates_windows_host_paths():
    policy = MountPolicy.build([HostVolume(name="data", path="C:\\data", access=Access.RW)],
                               platform="windows")
    [mount] = plan_mounts(executor(host("data", "editor/doc-42", "/var/lib/app")), policy,
                          VALUES, apply=False)
    assert mount == ResolvedHostMount(host_path="C:\\data\\editor\\doc-42",
                                      target="/var/lib/app", read_only=False,
                                      source="C:\\data\\editor\\doc-42")
    assert to_docker_mount(mount) == {
        "Type": "bind", "Source": "C:\\data\\editor\\doc-42", "Target": "/var/lib/app",
        "ReadOnly": False, "BindOptions": {"Propagation": "rprivate"},
    }


def test_oci_mounts_list_a_parent_target_before_a_nested_one():
    nested = ResolvedTmpfsMount(target="/data/cache", size_bytes=1)
    parent = ResolvedHostMount(host_path="/srv/d", target="/data", read_only=False,
                               source="/s/0")
    targets = [entry["destination"] for entry in to_oci_mounts([nested, parent])]
    assert targets.index("/data") < targets.index("/data/cache")
