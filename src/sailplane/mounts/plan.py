"""From a spawn request to resolved mounts: parse -> authorize -> validate -> resolve.

:func:`check_mounts` is the pure part (shape, templates, policy) that a controller can run at
connect time; :func:`plan_mounts` adds the walk on disk that only a drone can do. Both raise
:class:`~sailplane.errors.MountRefused` naming the mount, and a refused plan leaves nothing
created on disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PureWindowsPath

from sailplane.errors import MountRefused
from sailplane.mounts.named import runtime_name
from sailplane.mounts.pin import StagingArea
from sailplane.mounts.policy import DEFAULT_VOLUME, Access, HostVolume, MountPolicy, Scope
from sailplane.mounts.resolve import CreatedDirectories, Method, open_beneath, resolve_beneath
from sailplane.mounts.resolved import (
    ResolvedHostMount,
    ResolvedMount,
    ResolvedTmpfsMount,
    ResolvedVolumeMount,
)
from sailplane.mounts.validate import (
    TemplateValues,
    check_sub_path,
    check_target,
    check_unique_targets,
    check_volume_name,
    expand,
)
from sailplane.spec import ExecutorConfig, HostMountSpec, TmpfsMountSpec, VolumeMountSpec

PLANE_MOUNT_TARGET = "/plane-data"
PLANE_MOUNT_FIELD = "mount"


@dataclass(frozen=True)
class HostMountPlan:
    """A host mount that passed policy and validation, before it is resolved on disk."""

    mount: int | str
    field: str
    volume_name: str
    volume: HostVolume | None  # None when checked without a drone's policy (controller)
    parts: tuple[str, ...]
    target: str
    read_only: bool


Checked = HostMountPlan | ResolvedVolumeMount | ResolvedTmpfsMount


def check_mounts(
    executor: ExecutorConfig, policy: MountPolicy | None, values: TemplateValues
) -> list[Checked]:
    """Every rule that needs no disk: templates, paths, targets, names, and the policy.

    Without a policy (the controller, before it picks a drone) host volumes are only named;
    :func:`host_volume_needs` then tells the scheduler what a drone must offer.
    """
    checked: list[Checked] = []
    targets: list[tuple[int | str, str]] = []
    if executor.mount is not None and executor.mount is not False:
        checked.append(_plane_mount(executor.mount, policy, values))
        targets.append((PLANE_MOUNT_FIELD, PLANE_MOUNT_TARGET))
    for index, spec in enumerate(executor.volume_mounts):
        where = f"volume_mounts[{index}]"
        target = check_target(spec.target, index, f"{where}.target")
        targets.append((index, target))
        checked.append(_check_one(spec, index, where, target, policy, values))
    check_unique_targets(targets)
    return checked


def plan_mounts(
    executor: ExecutorConfig,
    policy: MountPolicy,
    values: TemplateValues,
    *,
    apply: bool,
    method: Method | None = None,
    created: CreatedDirectories | None = None,
    staging: StagingArea | None = None,
    pin: bool = False,
) -> list[ResolvedMount]:
    """Check, then resolve every host mount on disk (creating directories if ``apply``).

    With ``staging``, each host mount's ``source`` is its staging path (for backend
    ``values.backend``); with ``pin`` too (the drone, in apply mode), the directory reached is
    pinned there by its descriptor. The caller then owns the pins:
    :meth:`StagingArea.release` removes them. Without ``staging`` the source is the host path
    itself (unit tests, and Windows drones, where Docker Desktop binds by path).

    A refused plan removes what it created and pinned. Pass ``created`` to keep the record of
    new directories after success, so a later failure (the container would not start) can
    :meth:`~CreatedDirectories.rollback` them; otherwise they are simply kept.

    On a Windows drone (``policy.platform``) paths are only joined, with ``PureWindowsPath``:
    the walk is Linux's, and Docker Desktop resolves Windows paths itself.
    """
    assert not pin or (apply and staging is not None), "pinning needs apply and a staging area"
    checked = check_mounts(executor, policy, values)
    owned = created is None
    if apply and created is None:
        created = CreatedDirectories()
    elif not apply:
        created = None
    resolved: list[ResolvedMount] = []
    host_index = 0
    try:
        for item in checked:
            if not isinstance(item, HostMountPlan):
                resolved.append(item)
                continue
            assert item.volume is not None  # a policy was given
            may_create = item.volume.access is Access.RW
            if policy.platform == "windows":
                host_path = _windows_path(item.volume.path, item.parts, item.mount, item.field)
                source = host_path
            elif pin:
                assert created is not None and staging is not None
                host_path, fd = open_beneath(
                    item.volume.path, item.parts, mount=item.mount, field=item.field,
                    created=created, may_create=may_create,
                    **({"method": method} if method else {}),
                )
                try:
                    source = staging.pin(fd, values.backend, host_index, item.read_only,
                                         item.mount, item.field)
                finally:
                    os.close(fd)
            else:
                host_path = resolve_beneath(
                    item.volume.path, item.parts, mount=item.mount, field=item.field,
                    created=created, may_create=may_create,
                    **({"method": method} if method else {}),
                )
                source = host_path if staging is None else staging.path(values.backend,
                                                                        host_index)
            host_index += 1
            resolved.append(ResolvedHostMount(
                host_path=host_path, target=item.target, read_only=item.read_only, source=source,
                staged=source != host_path,
            ))
    except BaseException:
        if pin and staging is not None:
            staging.release(values.backend)
        if created is not None:
            created.rollback()
        raise
    if created is not None and owned:
        created.release()
    return resolved


def _windows_path(root: str, parts: tuple[str, ...], mount: int | str, field: str) -> str:
    """Join on a Windows drone, refusing what Windows would read differently from posix.

    A ``:`` in any component is a drive (``PureWindowsPath("C:\\data", "x", "D:")`` is
    ``D:``) or an alternate data stream, and Windows drops a trailing ``.`` or space, so
    ``doc-42.`` would be key ``doc-42``'s directory.
    """
    for part in parts:
        if ":" in part or part.endswith((".", " ")):
            raise MountRefused(
                mount, f"{field}: {part!r} is not a safe path component on a Windows drone "
                "(no ':', no trailing '.' or space)"
            )
    path = PureWindowsPath(root, *parts)
    if not path.is_relative_to(root):
        raise MountRefused(mount, f"{field}: the path leaves its host volume")
    return str(path)


def _check_one(
    spec: HostMountSpec | VolumeMountSpec | TmpfsMountSpec,
    index: int,
    where: str,
    target: str,
    policy: MountPolicy | None,
    values: TemplateValues,
) -> Checked:
    if isinstance(spec, HostMountSpec):
        field = f"{where}.sub_path"
        volume = None if policy is None else policy.authorize(
            spec.volume, spec.read_only, values.namespace, index, f"{where}.volume"
        )
        parts = check_sub_path(expand(spec.sub_path, values, index, field), index, field)
        parts = _key_root(volume, values, index, field) + parts
        return HostMountPlan(index, field, spec.volume, volume, parts, target, spec.read_only)
    if isinstance(spec, VolumeMountSpec):
        field = f"{where}.name"
        if policy is not None and not policy.named_volumes:
            raise MountRefused(index, f"{field}: named volumes are disabled on this drone")
        name = check_volume_name(expand(spec.name, values, index, field), index, field)
        return ResolvedVolumeMount(
            name=runtime_name(values.namespace, name, index), target=target,
            read_only=spec.read_only, namespace=values.namespace, requested=name, mount=index,
            max_per_namespace=None if policy is None else policy.max_named_volumes_per_namespace,
        )
    cap = None if policy is None else policy.max_tmpfs_bytes
    if cap is not None and spec.size_bytes > cap:
        raise MountRefused(index, f"{where}.size_bytes: {spec.size_bytes} is above this drone's "
                           f"tmpfs cap of {cap}")
    return ResolvedTmpfsMount(target=target, size_bytes=spec.size_bytes, mode=int(spec.mode, 8))


def _plane_mount(
    mount: bool | str, policy: MountPolicy | None, values: TemplateValues
) -> HostMountPlan:
    """Plane's shorthand: ``true`` is ``{mount_base}/{key}``, a string a path under it, rw.

    On a key-scoped default volume both are taken inside the key's own directory: ``true`` is
    that directory, a string a path beneath it."""
    field = PLANE_MOUNT_FIELD
    volume = None if policy is None else policy.authorize(
        DEFAULT_VOLUME, False, values.namespace, field, field
    )
    if mount == "":
        # Plane would mount the whole mount base, i.e. every key's data, read-write.
        raise MountRefused(field, f"{field}: an empty path would mount the whole default volume")
    if volume is not None and volume.scope is Scope.KEY:
        template = mount if isinstance(mount, str) else ""
    else:
        template = mount if isinstance(mount, str) else "{key}"
    parts = check_sub_path(expand(template, values, field, field), field, field)
    parts = _key_root(volume, values, field, field) + parts
    return HostMountPlan(field, field, DEFAULT_VOLUME, volume, parts, PLANE_MOUNT_TARGET, False)


def _key_root(
    volume: HostVolume | None, values: TemplateValues, mount: int | str, field: str
) -> tuple[str, ...]:
    """The components every grant in a key-scoped volume starts with: ``{namespace}/{key}``,
    or ``{key}`` without a namespace. Nothing for other volumes (or without a policy)."""
    if volume is None or volume.scope is not Scope.KEY:
        return ()
    if not values.key:
        raise MountRefused(mount, f"{field}: host volume {volume.name!r} is key-scoped, and "
                           "this backend has no key")
    template = "{namespace}/{key}" if values.namespace else "{key}"
    return check_sub_path(expand(template, values, mount, field), mount, field)


@dataclass(frozen=True)
class HostVolumeNeed:
    """A host volume a drone must offer for a request: by name, with write access or not."""

    name: str
    write: bool
    mount: int | str = 0  # where in the request: an index in volume_mounts, or "mount"


def host_volume_needs(executor: ExecutorConfig, values: TemplateValues) -> list[HostVolumeNeed]:
    """Check a request without a policy and list the host volumes it needs, for scheduling."""
    return [
        HostVolumeNeed(item.volume_name, not item.read_only, item.mount)
        for item in check_mounts(executor, None, values)
        if isinstance(item, HostMountPlan)
    ]
