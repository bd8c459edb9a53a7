"""The rules of hot-plug: one mount added to, or taken from, a running backend (no I/O).

A hot-plugged mount is a ``volume_mounts`` entry of the ``host`` type, checked by exactly the
pipeline of a spawn (:func:`~sailplane.mounts.plan.check_mounts`: templates, ``sub_path``,
``target``, the operator's policy, key scope, read-only by default), plus what a running
container adds:

* its target may not be, contain or lie inside the target of a mount the backend has now
  (a spawn-time or an earlier hot-plugged one): mounting over a mount would hide it, and a
  target inside a host mount would make a directory in that host directory;
* ``/run/sailplane`` (a warm backend's identity) is no target either;
* only a target the backend has a mount at can be removed, and not one with another mount
  beneath it (take that one out first).

The controller runs :func:`check_added` without a policy before it asks the drone (a bad
shape is a 400 at once); the drone runs it again with its policy and the backend's mounts.
Refusals name the field of the one entry the request carries (``sub_path``, ``target`` ...).
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel

from sailplane.errors import MountRefused, SailplaneError
from sailplane.mounts.inject import IDENTITY_DIR
from sailplane.mounts.plan import HostMountPlan, check_mounts
from sailplane.mounts.policy import MountPolicy
from sailplane.mounts.resolved import ResolvedTmpfsMount, ResolvedVolumeMount
from sailplane.mounts.validate import TemplateValues, check_target
from sailplane.spec import ExecutorConfig, HostMountSpec, VolumeMount

# How check_mounts names the one entry of the request it is handed here.
_ENTRY = "volume_mounts[0]."


class NotRunning(SailplaneError):
    """Raised when a backend has no running container to change (HTTP 409)."""

    code = "not_running"


class MountNotFound(SailplaneError):
    """Raised when a removal names a target the backend has no mount at (HTTP 404)."""

    code = "mount_not_found"


class HotPlugUnsupported(SailplaneError):
    """Raised when the backend's drone cannot change a running container's mounts (501)."""

    code = "hot_plug_unsupported"


class MountInfo(BaseModel):
    """One mount a running backend has now, as the API shows it."""

    target: str
    type: Literal["host", "volume", "tmpfs"]
    read_only: bool
    hot_plugged: bool = False


class LiveMount(MountInfo):
    """What the drone records of it: also the staging index its host directory is pinned at
    (``sailplane.mounts.pin``), None for a mount with no pin (a named volume, a tmpfs)."""

    pin: int | None = None


def spawn_mounts(executable: ExecutorConfig, values: TemplateValues) -> list[LiveMount]:
    """The mounts a backend got at its spawn, each host mount with its staging index: the
    plan pins them in this order, 0, 1, ... (``plan_mounts``)."""
    mounts: list[LiveMount] = []
    pins = 0
    for item in check_mounts(executable, None, values):
        if isinstance(item, HostMountPlan):
            mounts.append(LiveMount(target=item.target, type="host", read_only=item.read_only,
                                    pin=pins))
            pins += 1
        elif isinstance(item, ResolvedVolumeMount):
            mounts.append(LiveMount(target=item.target, type="volume",
                                    read_only=item.read_only))
        else:
            assert isinstance(item, ResolvedTmpfsMount)
            mounts.append(LiveMount(target=item.target, type="tmpfs", read_only=False))
    return mounts


def check_added(
    spec: VolumeMount, policy: MountPolicy | None, values: TemplateValues,
    current: list[LiveMount],
) -> HostMountPlan:
    """The plan for a mount to add (its ``mount`` and ``field`` name the entry's fields), or
    :class:`MountRefused` naming the field and the reason."""
    if not isinstance(spec, HostMountSpec):
        raise MountRefused("type", f"type: only host mounts can be added to a running backend, "
                                   f"not {spec.type!r}")
    try:
        # The one entry as a request's only mount (no image: the checks read mounts only).
        alone = ExecutorConfig.model_construct(image="", volume_mounts=[spec])
        [checked] = check_mounts(alone, policy, values)
    except MountRefused as exc:
        message = exc.message.removeprefix(_ENTRY)
        raise MountRefused(message.partition(":")[0], message) from None
    assert isinstance(checked, HostMountPlan)
    target = PurePosixPath(checked.target)
    for taken in [*(m.target for m in current), IDENTITY_DIR]:
        if _nested(target, PurePosixPath(taken)):
            raise MountRefused("target", f"target: {checked.target!r} overlaps the backend's "
                                         f"mount at {taken!r}; mounts may not be hot-plugged "
                                         "over, into or around another")
    return dataclasses.replace(checked, mount="sub_path", field="sub_path")


def check_removed(target: str, current: list[LiveMount]) -> LiveMount:
    """The mount at ``target`` to take out; MountRefused or MountNotFound otherwise."""
    check_target(target, "target", "target")
    found = next((m for m in current if m.target == target), None)
    if found is None:
        raise MountNotFound(f"target: the backend has no mount at {target!r}")
    beneath = [m.target for m in current
               if m is not found and PurePosixPath(m.target).is_relative_to(target)]
    if beneath:
        raise MountRefused("target", f"target: {target!r} has the mount at {beneath[0]!r} "
                                     "beneath it; remove that one first")
    return found


def next_pin(current: list[LiveMount]) -> int:
    """A staging index no mount the backend has now is pinned at (a removed mount's pin is
    gone with it, so its index may serve again)."""
    used = [m.pin for m in current if m.pin is not None]
    return max(used, default=-1) + 1


def _nested(a: PurePosixPath, b: PurePosixPath) -> bool:
    return a.is_relative_to(b) or b.is_relative_to(a)
