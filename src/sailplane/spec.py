"""The public request models: what an application sends to ``POST /ctrl/connect``.

The Plane-shaped models (``KeyConfig``, ``SpawnConfig``, ``ExecutorConfig``,
``ConnectRequest``) accept Plane's JSON unchanged and, like Plane, ignore fields they do not
know, so a request written for Plane keeps working. The ``volume_mounts`` entries are
Sailplane's own and forbid unknown fields: a typo such as ``sub_paht`` must fail loudly, not
silently mount the volume's root.

Only the *shape* is checked here. Whether a mount is allowed and safe is decided by the mount
pipeline (``sailplane.mounts``): policy -> validate -> resolve.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

# Plane's models ignore unknown fields; Sailplane's own mount models reject them.
_PLANE = ConfigDict(extra="ignore")
_STRICT = ConfigDict(extra="forbid")


class KeyConfig(BaseModel):
    """Names the key a backend is held under; at most one backend runs per key."""

    model_config = _PLANE

    name: str = Field(min_length=1)
    namespace: str = ""
    tag: str = ""


class PullPolicy(StrEnum):
    IF_NOT_PRESENT = "IfNotPresent"
    ALWAYS = "Always"
    NEVER = "Never"


class RegistryCredentials(BaseModel):
    model_config = _PLANE

    username: str
    password: str


class ResourceLimits(BaseModel):
    """Plane's resource limits, plus ``pids_limit``."""

    model_config = _PLANE

    cpu_period: int | None = Field(default=None, gt=0, description="CPU period in microseconds")
    cpu_period_percent: int | None = Field(default=None, ge=1, le=100 * 1024)
    cpu_time_limit: int | None = Field(default=None, gt=0, description="CPU seconds in total")
    memory_limit_bytes: int | None = Field(default=None, gt=0)
    disk_limit_bytes: int | None = Field(default=None, gt=0)
    pids_limit: int | None = Field(default=None, gt=0)


class HostMountSpec(BaseModel):
    """A directory inside a host volume that the drone operator published."""

    model_config = _STRICT

    type: Literal["host"]
    volume: str = Field(min_length=1, description="name of an operator-defined host volume")
    sub_path: str = Field(default="", description="relative path inside the volume; templates")
    target: str
    read_only: StrictBool = True


class VolumeMountSpec(BaseModel):
    """A runtime-managed named volume, created on first use."""

    model_config = _STRICT

    type: Literal["volume"]
    name: str = Field(min_length=1, description="volume name; templates {key} etc. allowed")
    target: str
    read_only: StrictBool = True


class TmpfsMountSpec(BaseModel):
    """Scratch memory, gone when the backend exits."""

    model_config = _STRICT

    type: Literal["tmpfs"]
    target: str
    size_bytes: int = Field(gt=0)
    mode: str = Field(default="1777", pattern=r"^[0-7]{3,4}$", description="octal file mode")


VolumeMount = Annotated[
    HostMountSpec | VolumeMountSpec | TmpfsMountSpec, Field(discriminator="type")
]


class ExecutorConfig(BaseModel):
    """How to run the backend: Plane's ``executable`` object plus ``volume_mounts``."""

    model_config = _PLANE

    image: str = Field(min_length=1)
    pull_policy: PullPolicy | None = None
    credentials: RegistryCredentials | None = None
    env: dict[str, str] = Field(default_factory=dict)
    # Sailplane's extension (like Kubernetes' args): replaces the image's command.
    command: list[str] | None = Field(default=None, min_length=1)
    resource_limits: ResourceLimits = Field(default_factory=ResourceLimits)
    # Plane's shorthand: true mounts {mount_base}/{key}, a string p mounts {mount_base}/p.
    mount: StrictBool | str | None = None
    volume_mounts: list[VolumeMount] = Field(default_factory=list)


class SpawnConfig(BaseModel):
    model_config = _PLANE

    id: str | None = None
    cluster: str | None = None
    pool: str | None = None
    executable: ExecutorConfig
    lifetime_limit_seconds: int | None = Field(default=None, gt=0)
    max_idle_seconds: int | None = Field(default=None, gt=0)
    use_static_token: bool = False


class ConnectRequest(BaseModel):
    """Body of ``POST /ctrl/connect``. At least one of ``key`` and ``spawn_config``."""

    model_config = _PLANE

    key: KeyConfig | None = None
    spawn_config: SpawnConfig | None = None
    user: str | None = None
    auth: dict[str, Any] = Field(default_factory=dict)
    pool: str | None = None

    @model_validator(mode="after")
    def _key_or_spawn_config(self) -> ConnectRequest:
        if self.key is None and self.spawn_config is None:
            raise ValueError("at least one of 'key' and 'spawn_config' is required")
        return self
