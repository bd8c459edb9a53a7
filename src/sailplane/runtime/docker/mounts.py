"""Resolved mounts -> Docker Engine API ``HostConfig.Mounts`` entries.

A staged host bind's access is carried by the staging mount it is bound from
(``mounts/pin.py``: recursive read-only for ``ro``, ``nosuid`` and ``nodev`` always), which a
bind inherits. So Docker is given a plain recursive bind (``"ReadOnly": false``): for
``"ReadOnly": true`` runc remounts the bind read-only with only the flags Docker names, which
*clears* ``nosuid`` and ``nodev``. The bind is read-only all the same, and a backend has no
capability to remount it. An unstaged bind (a Windows drone) says ``ReadOnly`` itself.
"""

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
            "Type": "bind", "Source": mount.source, "Target": mount.target,
            "ReadOnly": mount.read_only and not mount.staged,
            "BindOptions": {"Propagation": "rprivate"},
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
