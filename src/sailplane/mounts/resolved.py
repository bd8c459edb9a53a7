"""Resolved mounts: the only mount type a runtime accepts.

A resolved mount is the output of the pipeline (policy -> validate -> resolve): a host path
that was walked without following a symlink and lies inside its host volume, a checked named
volume, or a tmpfs. Runtimes translate these into their own parameters and never see a
request's raw ``volume`` or ``sub_path``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class ResolvedHostMount(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Literal["host"] = "host"
    host_path: str
    target: str
    read_only: bool


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
    # Kept out of the plan's summary (DESIGN 4.5 shows none); the runtimes' entries carry it.
    mode: int = Field(default=0o1777, exclude=True)


ResolvedMount = Annotated[
    ResolvedHostMount | ResolvedVolumeMount | ResolvedTmpfsMount, Field(discriminator="type")
]
