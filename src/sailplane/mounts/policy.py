"""The drone operator's mount policy: which host directories backends may use at all.

A spawn request can only *name* a host volume; the operator decides what each name means::

    sailplane drone --mount-base /srv/plane --host-volume data=/srv/data:rw:key \\
                    --host-volume config=/srv/config:ro

A volume without ``:ro``/``:rw`` is read-only. ``:key`` makes it key-scoped: every grant in it
is rooted at the key's own directory, so no ``sub_path`` reaches another key's data.

or, with allowed namespaces, in a TOML file::

    mount_base = "/srv/plane"            # the host volume named "default"

    [host_volumes.data]
    path = "/srv/data"
    access = "rw"                        # the highest access allowed; "ro" (the default) or "rw"
    namespaces = ["editor"]              # omit to allow every namespace
    scope = "key"                        # each key gets only {namespace}/{key} inside it

A policy whose root is a system directory (``/``, ``/etc``, ``/proc``, ``/run`` ...), the
Docker socket, or any ancestor of one is refused with :class:`PolicyError`: no request could
then mount, say, ``/var/run/docker.sock`` through a ``sub_path``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sailplane.errors import MountRefused, PolicyError

DEFAULT_VOLUME = "default"
DOCKER_SOCKET = "/var/run/docker.sock"
# Never a root, nor an ancestor of a root's ...
SYSTEM_DIRS = ("/", "/etc", "/proc", "/sys", "/dev", "/run", "/var/run", DOCKER_SOCKET,
               "/run/docker.sock", "/var/lib/docker", "/boot")
# ... and nothing beneath these either: kernel interfaces and runtime sockets live there.
SYSTEM_TREES = ("/proc", "/sys", "/dev", "/run", "/var/run", "/var/lib/docker")
WINDOWS_SYSTEM_DIRS = ("C:\\Windows", "C:\\Program Files", "C:\\ProgramData")

_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Platform = Literal["posix", "windows"]


class Access(StrEnum):
    RO = "ro"
    RW = "rw"


class Scope(StrEnum):
    """How much of a host volume one grant may reach."""

    VOLUME = "volume"  # anything in it, by sub_path
    KEY = "key"  # only ``{namespace}/{key}`` (or ``{key}``) inside it, whatever the sub_path


class HostVolume(BaseModel):
    """One operator-published directory, by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: str = Field(description="the root; on a posix drone its real path, symlinks resolved")
    access: Access = Access.RO
    namespaces: tuple[str, ...] | None = None
    scope: Scope = Scope.VOLUME


class MountPolicy(BaseModel):
    """All host volumes of one drone, and the platform its host paths belong to."""

    model_config = ConfigDict(frozen=True)

    host_volumes: dict[str, HostVolume] = Field(default_factory=dict)
    platform: Platform = "posix"
    # Named volumes (runtime-managed, scoped to the key's namespace): allowed at all, and how
    # many one namespace may hold on this drone (None: no cap).
    named_volumes: bool = True
    max_named_volumes_per_namespace: int | None = Field(default=None, ge=0)
    # The largest tmpfs one mount may ask for (None: no cap); the drone sets it from its
    # operator limits (sailplane.drone.limits), and the plan refuses a larger size_bytes.
    max_tmpfs_bytes: int | None = Field(default=None, gt=0)

    @classmethod
    def build(cls, volumes: Iterable[HostVolume], platform: Platform = "posix") -> MountPolicy:
        """Check every root and return the policy, or raise :class:`PolicyError`."""
        checked: dict[str, HostVolume] = {}
        for volume in volumes:
            if not _VOLUME_NAME.match(volume.name):
                raise PolicyError(f"host volume name {volume.name!r} is not valid "
                                  "(letters, digits, '_', '.', '-'; at most 64)")
            if volume.name in checked:
                raise PolicyError(f"host volume {volume.name!r} is defined twice")
            root = check_root(volume.path, platform, volume.name)
            checked[volume.name] = volume.model_copy(update={"path": root})
        return cls(host_volumes=checked, platform=platform)

    @classmethod
    def from_flags(
        cls, mount_base: str | None = None, host_volumes: Iterable[str] = (),
        platform: Platform = "posix",
    ) -> MountPolicy:
        """From ``--mount-base PATH`` and repeated ``--host-volume NAME=PATH[:ro|:rw][:key]``.

        The mount base is read-write, as Plane's ``mount`` needs."""
        volumes = [parse_host_volume_flag(flag) for flag in host_volumes]
        if mount_base is not None:
            volumes.insert(0, HostVolume(name=DEFAULT_VOLUME, path=mount_base, access=Access.RW))
        return cls.build(volumes, platform)

    @classmethod
    def from_toml(cls, path: str | Path) -> MountPolicy:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise PolicyError(f"cannot read policy file {path}: {exc}") from exc
        volumes: list[HostVolume] = []
        try:
            if "mount_base" in data:
                volumes.append(HostVolume(name=DEFAULT_VOLUME, path=data.pop("mount_base"),
                                          access=Access.RW))
            entries = data.pop("host_volumes", {})
            if not isinstance(entries, dict):
                raise TypeError("host_volumes must be a table of [host_volumes.NAME] tables")
            for name, entry in entries.items():
                volumes.append(HostVolume(name=name, **entry))
        except (TypeError, ValidationError) as exc:
            raise PolicyError(f"policy file {path}: {exc}") from exc
        if data:
            raise PolicyError(f"policy file {path}: unknown keys {sorted(data)}")
        return cls.build(volumes)

    def authorize(
        self, volume: str, read_only: bool, namespace: str, mount: int | str, field: str
    ) -> HostVolume:
        """The host volume a mount may use, or :class:`MountRefused` saying why not.

        Never downgrades: asking for write access to a read-only volume is refused.
        """
        found = self.host_volumes.get(volume)
        if found is None:
            raise MountRefused(mount, f"{field}: this drone offers no host volume {volume!r}")
        if found.namespaces is not None and namespace not in found.namespaces:
            raise MountRefused(
                mount, f"{field}: host volume {volume!r} is not available to namespace "
                f"{namespace!r}"
            )
        if not read_only and found.access is Access.RO:
            raise MountRefused(
                mount, f"{field}: host volume {volume!r} is read-only on this drone; "
                "read_only: false is refused"
            )
        return found


def parse_host_volume_flag(flag: str) -> HostVolume:
    """Parse ``NAME=PATH[:ro|:rw][:key]``; access defaults to ``ro``, scope to the volume.

    >>> parse_host_volume_flag("data=/srv/data:rw:key").scope
    <Scope.KEY: 'key'>
    """
    name, sep, rest = flag.partition("=")
    if not sep or not name or not rest:
        raise PolicyError(f"--host-volume {flag!r}: expected NAME=PATH[:ro|:rw][:key]")
    scope = Scope.VOLUME
    path, _, suffix = rest.rpartition(":")
    if path and suffix == Scope.KEY:
        scope, rest = Scope.KEY, path
    access = Access.RO
    path, _, suffix = rest.rpartition(":")
    if path and suffix in ("ro", "rw"):
        access = Access(suffix)
    elif path and not os.path.isdir(rest) and (os.path.isdir(path) or (
            0 < len(suffix) <= 3 and set(suffix.lower()) <= set("rwox"))):
        # "data=/srv/data:rx": a typo of the access, not a directory named "data:rx".
        raise PolicyError(f"--host-volume {flag!r}: {suffix!r} is not an access; after the path "
                          "give :ro or :rw, then :key for a key-scoped volume")
    else:
        path = rest
    return HostVolume(name=name, path=path, access=access, scope=scope)


def check_root(path: str, platform: Platform, name: str) -> str:
    """Return the canonical root for a host volume, or raise :class:`PolicyError`."""
    if platform == "windows":
        return _check_windows_root(path, name)
    if not path.startswith("/"):
        raise PolicyError(f"host volume {name!r}: root {path!r} must be an absolute path")
    real = os.path.realpath(path)
    for candidate in {path, real}:
        root = PurePosixPath(candidate)
        for system in SYSTEM_DIRS:
            if root == PurePosixPath(system) or PurePosixPath(system).is_relative_to(root):
                raise PolicyError(
                    f"host volume {name!r}: root {path!r} is or contains {system}, "
                    "which can never be published to backends"
                )
        for tree in SYSTEM_TREES:
            if root.is_relative_to(tree):
                raise PolicyError(f"host volume {name!r}: root {path!r} lies under {tree}")
    if not os.path.isdir(real):
        raise PolicyError(f"host volume {name!r}: root {path!r} is not an existing directory")
    return real


def _check_windows_root(path: str, name: str) -> str:
    root = PureWindowsPath(path)
    if not root.drive or not root.root:
        raise PolicyError(f"host volume {name!r}: root {path!r} must be an absolute path")
    if root == PureWindowsPath(root.anchor):
        raise PolicyError(f"host volume {name!r}: root {path!r} is a whole drive")
    # Windows reads C:\x\..\Windows and C:\Windows. as C:\Windows; pathlib compares them as is.
    if any(part == ".." or part.endswith((".", " ")) for part in root.parts[1:]):
        raise PolicyError(
            f"host volume {name!r}: root {path!r} has a '..' or a trailing '.' or space"
        )
    for system in WINDOWS_SYSTEM_DIRS:
        forbidden = PureWindowsPath(system)
        if root == forbidden or root.is_relative_to(forbidden):
            raise PolicyError(f"host volume {name!r}: root {path!r} lies under {system}")
    return str(root)
