"""Pure validation of mount requests (docs/mounts.md): no I/O, so every rule is unit-tested.

Each check raises :class:`~sailplane.errors.MountRefused` with the mount's index (or the
``mount`` shorthand's field name) and a message that starts with the field path, for example
``volume_mounts[2].sub_path: '..' components are not allowed``.

Templates ``{key}``, ``{namespace}`` and ``{backend}`` are expanded *before* the path rules
run, and each value must be exactly one safe path component: a key name cannot reach into
another key's directory, it is refused instead of escaped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from sailplane.errors import MountRefused
from sailplane.spec import control_character

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
MAX_VOLUME_NAME_BYTES = 255
FORBIDDEN_TARGET_ROOTS = ("/proc", "/sys", "/dev")

_TEMPLATE = re.compile(r"\{([^{}]*)\}")
_DRIVE = re.compile(r"^[A-Za-z]:")
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class TemplateValues:
    """The values a mount template may use."""

    key: str
    namespace: str
    backend: str


def expand(template: str, values: TemplateValues, mount: int | str, field: str) -> str:
    """Expand ``{key}``, ``{namespace}``, ``{backend}``; each must give one path component.

    >>> expand("{namespace}/{key}", TemplateValues("doc-42", "editor", "b-1"), 0, "f")
    'editor/doc-42'
    """

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in ("key", "namespace", "backend"):
            raise MountRefused(
                mount, f"{field}: unknown template {{{name}}} (use {{key}}, {{namespace}}, "
                "{backend})"
            )
        value: str = getattr(values, name)
        problem = component_problem(value)
        if problem:
            raise MountRefused(
                mount, f"{field}: template {{{name}}} = {value!r} is not a single safe path "
                f"component ({problem})"
            )
        return value

    expanded = _TEMPLATE.sub(substitute, template)
    if "{" in _TEMPLATE.sub("", template) or "}" in _TEMPLATE.sub("", template):
        raise MountRefused(mount, f"{field}: unbalanced '{{' or '}}' in {template!r}")
    return expanded


def component_problem(name: str) -> str | None:
    """Why ``name`` cannot be one path component, or None if it can."""
    if name == "":
        return "empty"
    if name in (".", ".."):
        return f"{name!r} is not allowed"
    if "/" in name:
        return "contains '/'"
    if "\\" in name:
        return "contains a backslash"
    if "\x00" in name:
        return "contains a NUL byte"
    if control := control_character(name):
        return f"contains a control character ({control})"
    size = _utf8_bytes(name)
    if size is None:
        return "not valid UTF-8"
    if size > MAX_COMPONENT_BYTES:
        return f"longer than {MAX_COMPONENT_BYTES} bytes"
    return None


def check_sub_path(sub_path: str, mount: int | str, field: str) -> tuple[str, ...]:
    """Return the components of an expanded ``sub_path``; ``""`` is the volume's root."""
    _check_utf8(sub_path, mount, field)
    if len(sub_path.encode()) > MAX_PATH_BYTES:
        raise MountRefused(mount, f"{field}: longer than {MAX_PATH_BYTES} bytes")
    if "\x00" in sub_path:
        raise MountRefused(mount, f"{field}: contains a NUL byte")
    _check_no_control_character(sub_path, mount, field)
    if sub_path.startswith(("\\\\", "//")):
        raise MountRefused(mount, f"{field}: UNC paths are not allowed")
    if "\\" in sub_path:
        raise MountRefused(mount, f"{field}: backslashes are not allowed")
    if _DRIVE.match(sub_path):
        raise MountRefused(mount, f"{field}: drive letters are not allowed")
    if sub_path.startswith("/"):
        raise MountRefused(mount, f"{field}: must be relative to the volume, not absolute")
    if sub_path == "":
        return ()
    parts = tuple(sub_path.split("/"))
    for part in parts:
        if part == "":
            raise MountRefused(mount, f"{field}: empty path components are not allowed")
        if part in (".", ".."):
            raise MountRefused(mount, f"{field}: {part!r} components are not allowed")
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            raise MountRefused(
                mount, f"{field}: a component is longer than {MAX_COMPONENT_BYTES} bytes"
            )
    return parts


def check_target(target: str, mount: int | str, field: str) -> str:
    """Return ``target`` if it is a safe, normalized, absolute container path."""
    _check_utf8(target, mount, field)
    if len(target.encode()) > MAX_PATH_BYTES:
        raise MountRefused(mount, f"{field}: longer than {MAX_PATH_BYTES} bytes")
    if "\x00" in target:
        raise MountRefused(mount, f"{field}: contains a NUL byte")
    _check_no_control_character(target, mount, field)
    if "\\" in target:
        raise MountRefused(mount, f"{field}: backslashes are not allowed")
    if not target.startswith("/"):
        raise MountRefused(mount, f"{field}: must be an absolute path, got {target!r}")
    if target == "/":
        raise MountRefused(mount, f"{field}: cannot mount over the container's root '/'")
    parts = target[1:].split("/")
    if any(part in (".", "..") for part in parts):
        raise MountRefused(mount, f"{field}: '.' and '..' components are not allowed")
    if any(part == "" for part in parts):
        raise MountRefused(mount, f"{field}: empty components ('//' or a trailing '/')")
    path = PurePosixPath(target)
    for root in FORBIDDEN_TARGET_ROOTS:
        if path == PurePosixPath(root) or path.is_relative_to(root):
            raise MountRefused(mount, f"{field}: mounting under {root} is not allowed")
    return target


def check_unique_targets(targets: Iterable[tuple[int | str, str]]) -> None:
    """Refuse two mounts at the same target: which one wins would be ambiguous.

    Nested targets (``/data`` and ``/data/cache``) are allowed: runtimes mount parents first.
    """
    seen: dict[str, int | str] = {}
    for mount, target in targets:
        if target in seen:
            raise MountRefused(
                mount, f"{_name(mount)}.target: {target!r} is also the target of "
                f"{_name(seen[target])}"
            )
        seen[target] = mount


def check_volume_name(name: str, mount: int | str, field: str) -> str:
    _check_utf8(name, mount, field)
    if len(name.encode()) > MAX_VOLUME_NAME_BYTES:
        raise MountRefused(mount, f"{field}: longer than {MAX_VOLUME_NAME_BYTES} bytes")
    _check_no_control_character(name, mount, field)
    if not _VOLUME_NAME.fullmatch(name):
        raise MountRefused(
            mount, f"{field}: {name!r} is not a valid volume name "
            "(letters, digits, '_', '.', '-'; starting with a letter or digit)"
        )
    return name


def _utf8_bytes(text: str) -> int | None:
    """The length of ``text`` in UTF-8, or None if it has a lone surrogate (JSON allows one)."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        return None


def _check_utf8(text: str, mount: int | str, field: str) -> None:
    if _utf8_bytes(text) is None:
        raise MountRefused(mount, f"{field}: not valid UTF-8 (a lone surrogate)")


def _check_no_control_character(text: str, mount: int | str, field: str) -> None:
    """A newline would cut a runtime's mount argument in two; no control character is a path."""
    control = control_character(text)
    if control is not None:
        raise MountRefused(mount, f"{field}: contains a control character ({control})")


def _name(mount: int | str) -> str:
    return f"volume_mounts[{mount}]" if isinstance(mount, int) else mount
