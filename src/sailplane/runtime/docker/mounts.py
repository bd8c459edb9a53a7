"""Resolved mounts -> Docker Engine API ``HostConfig.Mounts`` entries (DESIGN 4.4)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sailplane.mounts.resolved import (
    ResolvedHostMount,
    ResolvedMount,
    ResolvedVolumeMount,
)


def to_docker_mount(mount: ResolvedMount) -> dict[str, Any]:
    if isinstance(mount, ResolvedHostMount):
        return {
            "Type": "bind", "Source": mount.host_path, "Target": mount.target,
            "ReadOnly": mount.read_only, "BindOptions": {"Propagation": "rprivate"},
        }
    if isinstance(mount, ResolvedVolumeMount):
        return {
            "Type": "volume", "Source": mount.name, "Target": mount.target,
            "ReadOnly": mount.read_only,
        }
    return {
        "Type": "tmpfs", "Target": mount.target,
        "TmpfsOptions": {"SizeBytes": mount.size_bytes, "Mode": mount.mode},
    }


def to_docker_mounts(mounts: Iterable[ResolvedMount]) -> list[dict[str, Any]]:
    return [to_docker_mount(mount) for mount in mounts]
