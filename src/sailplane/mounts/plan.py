"""From a spawn request to resolved mounts: parse -> authorize -> validate -> resolve.

:func:`check_mounts` is the pure part (shape, templates, policy) that a controller can run at
connect time; :func:`plan_mounts` adds the walk on disk that only a drone can do. Both raise
:class:`~sailplane.errors.MountRefused` naming the mount, and a refused plan leaves nothing
created on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PureWindowsPath

from sailplane.mounts.policy import DEFAULT_VOLUME, HostVolume, MountPolicy
from sailplane.mounts.resolve import CreatedDirectories, Method, resolve_beneath
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
    component_problem,
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
    volume: HostVolume
    parts: tuple[str, ...]
    target: str
    read_only: bool


Checked = HostMountPlan | ResolvedVolumeMount | ResolvedTmpfsMount


def check_mounts(
    executor: ExecutorConfig, policy: MountPolicy, values: TemplateValues
) -> list[Checked]:
    """Every rule that needs no disk: templates, paths, targets, names, policy."""
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
) -> list[ResolvedMount]:
    """Check, then resolve every host mount on disk (creating directories if ``apply``).

    On a Windows drone (``policy.platform``) paths are only joined, with ``PureWindowsPath``:
    the walk is Linux's, and Docker Desktop resolves Windows paths itself.
    """
    checked = check_mounts(executor, policy, values)
    created = CreatedDirectories() if apply else None
    resolved: list[ResolvedMount] = []
    try:
        for item in checked:
            if not isinstance(item, HostMountPlan):
                resolved.append(item)
                continue
            if policy.platform == "windows":
                host_path = str(PureWindowsPath(item.volume.path, *item.parts))
            else:
                host_path = resolve_beneath(
                    item.volume.path, item.parts, mount=item.mount, field=item.field,
                    created=created, **({"method": method} if method else {}),
                )
            resolved.append(ResolvedHostMount(
                host_path=host_path, target=item.target, read_only=item.read_only,
            ))
    except BaseException:
        if created is not None:
            created.rollback()
        raise
    if created is not None:
        created.release()
    return resolved


def _check_one(
    spec: HostMountSpec | VolumeMountSpec | TmpfsMountSpec,
    index: int,
    where: str,
    target: str,
    policy: MountPolicy,
    values: TemplateValues,
) -> Checked:
    if isinstance(spec, HostMountSpec):
        field = f"{where}.sub_path"
        volume = policy.authorize(spec.volume, spec.read_only, values.namespace, index,
                                  f"{where}.volume")
        parts = check_sub_path(expand(spec.sub_path, values, index, field), index, field)
        return HostMountPlan(index, field, volume, parts, target, spec.read_only)
    if isinstance(spec, VolumeMountSpec):
        field = f"{where}.name"
        name = check_volume_name(expand(spec.name, values, index, field), index, field)
        return ResolvedVolumeMount(name=name, target=target, read_only=spec.read_only)
    return ResolvedTmpfsMount(target=target, size_bytes=spec.size_bytes, mode=int(spec.mode, 8))


def _plane_mount(mount: bool | str, policy: MountPolicy, values: TemplateValues) -> HostMountPlan:
    """Plane's shorthand: ``true`` is ``{mount_base}/{key}``, a string a path under it, rw."""
    field = PLANE_MOUNT_FIELD
    volume = policy.authorize(DEFAULT_VOLUME, False, values.namespace, field, field)
    template = mount if isinstance(mount, str) else "{key}"
    parts = check_sub_path(expand(template, values, field, field), field, field)
    return HostMountPlan(field, field, volume, parts, PLANE_MOUNT_TARGET, False)
