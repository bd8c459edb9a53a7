"""Resolved mounts -> OCI runtime spec ``mounts`` entries (docs/mounts.md).

containerd has no named volumes of its own: the runtime provisions each one as a directory
``{volume_root}/{name}`` and binds it like a host directory.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from typing import Any

from sailplane.mounts.resolved import ResolvedHostMount, ResolvedMount, ResolvedVolumeMount

DEFAULT_VOLUME_ROOT = "/var/lib/sailplane/volumes"


def to_oci_mount(mount: ResolvedMount, volume_root: str = DEFAULT_VOLUME_ROOT) -> dict[str, Any]:
    if isinstance(mount, ResolvedHostMount | ResolvedVolumeMount):
        source = (mount.source if isinstance(mount, ResolvedHostMount)
                  else posixpath.join(volume_root, mount.name))
        access = "ro" if mount.read_only else "rw"
        return {
            "destination": mount.target, "type": "bind", "source": source,
            "options": ["rbind", "rprivate", access, "nosuid", "nodev"],
        }
    return {
        "destination": mount.target, "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "nodev", f"size={mount.size_bytes}", f"mode={mount.mode:o}"],
    }


def to_oci_mounts(
    mounts: Iterable[ResolvedMount], volume_root: str = DEFAULT_VOLUME_ROOT
) -> list[dict[str, Any]]:
    """Parents before nested targets: runc mounts in list order (Docker's daemon sorts)."""
    ordered = sorted(mounts, key=lambda mount: mount.target.count("/"))
    return [to_oci_mount(mount, volume_root) for mount in ordered]


def to_ctr_mount_flag(mount: dict[str, Any]) -> str:
    """An OCI mount as ``ctr run --mount`` takes it; ValueError for what the flag cannot carry
    (its fields are split at ``,`` and its options at ``:``).

    >>> to_ctr_mount_flag({"destination": "/d", "type": "bind", "source": "/s",
    ...                    "options": ["rbind", "ro"]})
    'type=bind,src=/s,dst=/d,options=rbind:ro'
    """
    for value in (mount["type"], mount["source"], mount["destination"]):
        if "," in value:
            raise ValueError(f"a path with ',' cannot be given to ctr --mount: {value!r}")
    for option in mount["options"]:
        if ":" in option or "," in option:
            raise ValueError(f"ctr --mount cannot carry the option {option!r}")
    return (f"type={mount['type']},src={mount['source']},dst={mount['destination']},"
            f"options={':'.join(mount['options'])}")
