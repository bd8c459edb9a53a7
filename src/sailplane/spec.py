"""The public request models: what an application sends to ``POST /ctrl/connect``.

The Plane-shaped models (``KeyConfig``, ``SpawnConfig``, ``ExecutorConfig``,
``ConnectRequest``) accept Plane's JSON unchanged and, like Plane, ignore fields they do not
know, so a request written for Plane keeps working. The ``volume_mounts`` entries are
Sailplane's own and forbid unknown fields: a typo such as ``sub_paht`` must fail loudly, not
silently mount the volume's root.

Every number and size is bounded here too, by what the database columns and the container
engines accept (the named limits below), so a request is refused with 400 at the door instead
of failing in a database write or on a drone.

Only the *shape* is checked here, and the hygiene of every name a request carries
(docs/mounts.md): no control characters in a key, namespace, tag or host volume name, an
image reference in the OCI grammar, env names a shell could export. Whether a mount is
allowed and safe is decided by the mount pipeline (``sailplane.mounts``): policy -> validate
-> resolve; its pure rules refuse control characters in paths too, and the controller runs
them at connect time.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, model_validator

# Plane's models ignore unknown fields; Sailplane's own mount models reject them.
_PLANE = ConfigDict(extra="ignore")
_STRICT = ConfigDict(extra="forbid")

# C0 controls (newline, tab, NUL ...), DEL, and C1 controls: a newline cuts a `ctr --mount`
# argument in two, and none of them belongs in a name or a path.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# The OCI/Docker image reference grammar (distribution's reference package), written out:
#   reference := name [":" tag] ["@" digest]
#   name      := [domain "/"] path-component ("/" path-component)*
#   domain    := host [":" port], host a DNS name, or an IPv6 address in brackets
#   path-component := [a-z0-9]+ (separator [a-z0-9]+)*, separator := [_.] | "__" | "-"+
#   tag       := [\w][\w.-]{0,127}
#   digest    := algorithm ":" hex, algorithm := [A-Za-z][A-Za-z0-9]* ([+._-] the same)*
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = (rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])"
           r"(?::[0-9]+)?")
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*"
_IMAGE_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE = re.compile(
    rf"(?P<name>{_IMAGE_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?", re.ASCII
)
MAX_IMAGE_NAME_LENGTH = 255  # distribution's limit on the name part

# -- bounds: the database columns, the engines' integer types, and sane counts ---------------
MAX_NAME_LENGTH = 255  # key name, namespace, tag, user: the columns' length
MAX_POOL_LENGTH = 64  # the drones' pool column
MAX_ID_LENGTH = 255  # spawn_config.id, cluster
MAX_SECONDS = 2**31 - 1  # lifetime and idle limits (a 32-bit column; ~68 years)
INT64_MAX = 2**63 - 1  # what Docker and the OCI spec take for bytes, pids and CPU time
CPU_PERIOD_RANGE = (1_000, 1_000_000)  # microseconds: the kernel's CFS period bounds
MAX_ENV_ENTRIES = 1024
MAX_COMMAND_ARGS = 1024
MAX_VOLUME_MOUNTS = 64
MAX_PATH_LENGTH = 4096  # a mount's target or sub_path (bytes are checked by the pipeline)
MAX_AUTH_BYTES = 16 * 1024  # the connect's ``auth`` as JSON: it travels in every route
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def control_character(text: str) -> str | None:
    """The first control character in ``text``, as ``U+000A``, or None if it has none.

    >>> control_character("doc\\n42")
    'U+000A'
    """
    found = _CONTROL_CHARACTER.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"


def _no_control_characters(text: str) -> str:
    found = control_character(text)
    if found is not None:
        raise ValueError(f"contains a control character ({found})")
    return text


def _image_reference(image: str) -> str:
    found = IMAGE_REFERENCE.fullmatch(image)
    if found is None:
        raise ValueError(f"{image!r} is not a valid image reference "
                         "([registry[:port]/]path[:tag][@digest], lowercase path)")
    if len(found.group("name")) > MAX_IMAGE_NAME_LENGTH:
        raise ValueError(f"the image name is longer than {MAX_IMAGE_NAME_LENGTH} characters")
    return image


def _env_name(name: str) -> str:
    if ENV_NAME.fullmatch(name) is None:
        raise ValueError(f"env name {name!r} must match [A-Za-z_][A-Za-z0-9_]*")
    return name


def _env_value(value: str) -> str:
    # Newlines are fine in a value; a NUL cannot be passed to a process at all.
    if "\x00" in value:
        raise ValueError("an env value cannot contain a NUL byte")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("cannot contain a NUL byte")
    return value


def _auth(value: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(value, separators=(",", ":"))
    if len(text.encode()) > MAX_AUTH_BYTES:
        raise ValueError(f"is {len(text.encode())} bytes as JSON, over the limit of "
                         f"{MAX_AUTH_BYTES} (MAX_AUTH_BYTES)")
    if _holds_nul(value):
        raise ValueError("cannot contain a NUL byte")
    return value


def _holds_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


# A string no process or database can hold with a NUL in it.
NoNul = Annotated[str, AfterValidator(_no_nul)]


# A name a request carries: refused when it holds a control character.
CleanName = Annotated[str, AfterValidator(_no_control_characters)]
# ... and that fits its database column.
ColumnName = Annotated[str, Field(max_length=MAX_NAME_LENGTH),
                       AfterValidator(_no_control_characters)]
Seconds = Annotated[int, Field(gt=0, le=MAX_SECONDS)]
Int64 = Annotated[int, Field(gt=0, le=INT64_MAX)]
Path = Annotated[str, Field(max_length=MAX_PATH_LENGTH)]


class KeyConfig(BaseModel):
    """Names the key a backend is held under; at most one backend runs per key."""

    model_config = _PLANE

    name: ColumnName = Field(min_length=1)
    namespace: ColumnName = ""
    tag: ColumnName = ""


class PullPolicy(StrEnum):
    IF_NOT_PRESENT = "IfNotPresent"
    ALWAYS = "Always"
    NEVER = "Never"


class RegistryCredentials(BaseModel):
    model_config = _PLANE

    username: Annotated[NoNul, Field(max_length=MAX_PATH_LENGTH)]
    password: Annotated[NoNul, Field(max_length=MAX_PATH_LENGTH)]


class ResourceLimits(BaseModel):
    """Plane's resource limits, plus ``pids_limit``."""

    model_config = _PLANE

    cpu_period: int | None = Field(default=None, ge=CPU_PERIOD_RANGE[0],
                                   le=CPU_PERIOD_RANGE[1], description="CPU period in µs")
    cpu_period_percent: int | None = Field(default=None, ge=1, le=100 * 1024)
    cpu_time_limit: Int64 | None = Field(default=None, description="CPU seconds in total")
    memory_limit_bytes: Int64 | None = None
    disk_limit_bytes: Int64 | None = None
    pids_limit: Int64 | None = None


class HostMountSpec(BaseModel):
    """A directory inside a host volume that the drone operator published."""

    model_config = _STRICT

    type: Literal["host"]
    volume: Annotated[str, Field(max_length=MAX_NAME_LENGTH),
                      AfterValidator(_no_control_characters)] = Field(
        min_length=1, description="name of an operator-defined host volume")
    sub_path: Path = Field(default="", description="relative path inside the volume; templates")
    target: Path
    read_only: StrictBool = True


class VolumeMountSpec(BaseModel):
    """A runtime-managed named volume, created on first use."""

    model_config = _STRICT

    type: Literal["volume"]
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH,
                      description="volume name; templates {key} etc. allowed")
    target: Path
    read_only: StrictBool = True


class TmpfsMountSpec(BaseModel):
    """Scratch memory, gone when the backend exits."""

    model_config = _STRICT

    type: Literal["tmpfs"]
    target: Path
    size_bytes: Int64
    mode: str = Field(default="1777", pattern=r"^[0-7]{3,4}$", description="octal file mode")


VolumeMount = Annotated[
    HostMountSpec | VolumeMountSpec | TmpfsMountSpec, Field(discriminator="type")
]


class ExecutorConfig(BaseModel):
    """How to run the backend: Plane's ``executable`` object plus ``volume_mounts``."""

    model_config = _PLANE

    image: Annotated[str, AfterValidator(_image_reference)]
    pull_policy: PullPolicy | None = None
    credentials: RegistryCredentials | None = None
    env: dict[
        Annotated[str, AfterValidator(_env_name)], Annotated[str, AfterValidator(_env_value)]
    ] = Field(default_factory=dict, max_length=MAX_ENV_ENTRIES)
    # Sailplane's extension (like Kubernetes' args): replaces the image's command.
    command: list[NoNul] | None = Field(default=None, min_length=1, max_length=MAX_COMMAND_ARGS)
    resource_limits: ResourceLimits = Field(default_factory=ResourceLimits)
    # Plane's shorthand: true mounts {mount_base}/{key}, a string p mounts {mount_base}/p.
    mount: StrictBool | str | None = None
    volume_mounts: list[VolumeMount] = Field(default_factory=list, max_length=MAX_VOLUME_MOUNTS)


class SpawnConfig(BaseModel):
    model_config = _PLANE

    id: Annotated[str, Field(max_length=MAX_ID_LENGTH),
                  AfterValidator(_no_control_characters)] | None = None
    cluster: Annotated[str, Field(max_length=MAX_ID_LENGTH),
                       AfterValidator(_no_control_characters)] | None = None
    pool: Annotated[str, Field(max_length=MAX_POOL_LENGTH),
                    AfterValidator(_no_control_characters)] | None = None
    executable: ExecutorConfig
    lifetime_limit_seconds: Seconds | None = None
    max_idle_seconds: Seconds | None = None
    use_static_token: bool = False


class ConnectRequest(BaseModel):
    """Body of ``POST /ctrl/connect``. At least one of ``key`` and ``spawn_config``."""

    model_config = _PLANE

    key: KeyConfig | None = None
    spawn_config: SpawnConfig | None = None
    user: ColumnName | None = None
    auth: Annotated[dict[str, Any], AfterValidator(_auth)] = Field(default_factory=dict)
    pool: Annotated[str, Field(max_length=MAX_POOL_LENGTH),
                    AfterValidator(_no_control_characters)] | None = None

    @model_validator(mode="after")
    def _key_or_spawn_config(self) -> ConnectRequest:
        if self.key is None and self.spawn_config is None:
            raise ValueError("at least one of 'key' and 'spawn_config' is required")
        return self
