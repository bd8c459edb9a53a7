"""The public request models: what an application sends to ``POST /ctrl/connect``.

The Plane-shaped models (``KeyConfig``, ``SpawnConfig``, ``ExecutorConfig``,
``ConnectRequest``) accept Plane's JSON unchanged and, like Plane, ignore fields they do not
know, so a request written for Plane keeps working. The ``volume_mounts`` entries are
Sailplane's own and forbid unknown fields: a typo such as ``sub_paht`` must fail loudly, not
silently mount the volume's root.

Only the *shape* is checked here, and the hygiene of every name a request carries (DESIGN
4.2): no control characters in a key, namespace, tag or host volume name, an image reference
in the OCI grammar, env names a shell could export. Whether a mount is allowed and safe is
decided by the mount pipeline (``sailplane.mounts``): policy -> validate -> resolve; its pure
rules refuse control characters in paths too, and the controller runs them at connect time.
"""

from __future__ import annotations

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


# A name a request carries: refused when it holds a control character.
CleanName = Annotated[str, AfterValidator(_no_control_characters)]


class KeyConfig(BaseModel):
    """Names the key a backend is held under; at most one backend runs per key."""

    model_config = _PLANE

    name: CleanName = Field(min_length=1)
    namespace: CleanName = ""
    tag: CleanName = ""


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
    volume: CleanName = Field(min_length=1, description="name of an operator-defined host volume")
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

    image: Annotated[str, AfterValidator(_image_reference)]
    pull_policy: PullPolicy | None = None
    credentials: RegistryCredentials | None = None
    env: dict[
        Annotated[str, AfterValidator(_env_name)], Annotated[str, AfterValidator(_env_value)]
    ] = Field(default_factory=dict)
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
