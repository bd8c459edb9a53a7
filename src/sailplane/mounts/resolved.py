"""Resolved mounts: the only mount type a runtime accepts.

A resolved mount is the output of the pipeline (policy -> validate -> resolve -> pin): a host
directory that was walked without following a symlink, lies inside its host volume and is pinned
at a staging path, a checked named volume, or a tmpfs. Runtimes translate these into their own
parameters and never see a request's raw ``volume`` or ``sub_path``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class ResolvedHostMount(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Literal["host"] = "host"
    host_path: str  # the directory the walk reached, for people to read
    target: str
    read_only: bool
    # What the runtime binds: the drone's staging path where the directory is pinned
    # (``sailplane.mounts.pin``), which no backend can change. Kept out of the plan's summary;
    # the runtimes' entries show it.
    source: str = Field(exclude=True)
    # True when ``source`` is a staging mount that already carries the access (read-only,
    # nosuid, nodev); False where the runtime binds the host path itself (Windows drones).
    staged: bool = Field(default=False, exclude=True)


class ResolvedVolumeMount(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Literal["volume"] = "volume"
    name: str  # the runtime's name, from the namespace and the requested name (mounts.named)
    target: str
    read_only: bool
    # What the runtime labels the volume with and checks an existing one against, the entry
    # to name in a refusal, and the operator's cap; kept out of the plan's summary.
    namespace: str = Field(exclude=True)
    requested: str = Field(exclude=True)
    mount: int = Field(exclude=True)
    max_per_namespace: int | None = Field(default=None, exclude=True)


class ResolvedTmpfsMount(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Literal["tmpfs"] = "tmpfs"
    target: str
    size_bytes: int
    # Kept out of the plan's summary (docs/mounts.md shows none); the runtimes' entries carry it.
    mode: int = Field(default=0o1777, exclude=True)


ResolvedMount = Annotated[
    ResolvedHostMount | ResolvedVolumeMount | ResolvedTmpfsMount, Field(discriminator="type")
]
