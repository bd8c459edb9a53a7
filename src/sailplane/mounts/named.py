"""Sailplane's named volumes: the runtime's name for a request's volume, and its labels.

A request names a volume (``cache-{key}``, expanded and checked by ``validate``); the runtime
holds it under a name derived from the key's namespace too, so two namespaces asking for
``cache`` get two volumes::

    >>> runtime_name("editor", "cache", 0)
    'sailplane.editor.cache'
    >>> runtime_name("", "cache", 0)
    'sailplane.-.cache'

The mapping is one-to-one: a namespace holds no ``.`` and never is ``-`` (it starts with a
letter or digit), so the first ``.`` after the prefix ends it. Every volume Sailplane creates
carries :func:`volume_labels`, and an existing runtime volume is mounted only when its labels
say Sailplane made it for that same namespace and name (:func:`check_mountable`). No I/O here:
the runtimes read and write the volumes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sailplane.errors import MountRefused
from sailplane.mounts.resolved import ResolvedVolumeMount
from sailplane.mounts.validate import check_volume_name

PREFIX = "sailplane."
NO_NAMESPACE = "-"  # how the empty namespace is written in a runtime name
VOLUME_LABEL = "dev.sailplane.volume"
NAMESPACE_LABEL = "dev.sailplane.volume.namespace"
NAME_LABEL = "dev.sailplane.volume.name"
# Namespaces that may own named volumes: one Docker-safe word, at most 63 characters.
NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
# The requested name's own limit, so the runtime name (with the containerd runtime's
# ``.json`` label record beside it) stays one path component of at most 255 bytes.
MAX_NAME_BYTES = 128


@dataclass(frozen=True)
class Owner:
    """Whom a Sailplane volume was created for: a namespace and the name it asked for."""

    namespace: str
    name: str


def runtime_name(namespace: str, name: str, mount: int | str) -> str:
    """The runtime's volume name for ``name`` (already expanded and checked) in ``namespace``.

    A namespace that cannot be written unambiguously is refused, not escaped."""
    field = _field(mount)
    if namespace and not NAMESPACE_PATTERN.fullmatch(namespace):
        raise MountRefused(
            mount, f"{field}: namespace {namespace!r} cannot own named volumes (letters, "
            "digits, '_', '-', starting with a letter or digit; at most 63)"
        )
    if len(name.encode()) > MAX_NAME_BYTES:
        raise MountRefused(mount, f"{field}: a named volume's name is at most {MAX_NAME_BYTES} "
                                  "bytes")
    return f"{PREFIX}{namespace or NO_NAMESPACE}.{name}"


def volume_labels(namespace: str, name: str) -> dict[str, str]:
    """The labels every volume Sailplane creates carries."""
    return {VOLUME_LABEL: "true", NAMESPACE_LABEL: namespace, NAME_LABEL: name}


def owner_of(runtime: str, labels: Mapping[str, object] | None) -> Owner | None:
    """Whom the runtime volume ``runtime`` belongs to, or None if it is not one of ours.

    Ours means: Sailplane's labels, naming a namespace and name whose runtime name is
    ``runtime`` itself, so a label copied onto another volume does not make it ours."""
    if not labels or labels.get(VOLUME_LABEL) != "true":
        return None
    namespace, name = labels.get(NAMESPACE_LABEL), labels.get(NAME_LABEL)
    if not isinstance(namespace, str) or not isinstance(name, str):
        return None
    try:
        expected = runtime_name(namespace, check_volume_name(name, 0, NAME_LABEL), 0)
    except MountRefused:
        return None
    return Owner(namespace, name) if expected == runtime else None


def check_mountable(
    runtime: str, labels: Mapping[str, object] | None, namespace: str, mount: int | str
) -> None:
    """Refuse an existing runtime volume unless Sailplane created it for ``namespace``.

    A volume without our labels (made by hand, by another tool, or by an older Sailplane) is
    never mounted: it may hold anyone's data."""
    owner = owner_of(runtime, labels)
    if owner is None or owner.namespace != namespace:
        raise MountRefused(
            mount, f"{_field(mount)}: runtime volume {runtime!r} exists but was not created by "
            f"Sailplane for namespace {namespace!r}; refused"
        )


def _field(mount: int | str) -> str:
    return f"volume_mounts[{mount}].name" if isinstance(mount, int) else mount


def provision(
    missing: Sequence[ResolvedVolumeMount], held: Callable[[], Counter[str]],
    create: Callable[[ResolvedVolumeMount], None], delete: Callable[[str], None],
) -> None:
    """Create the volumes a start needs that do not exist yet, each runtime its own way.

    Every namespace's cap is checked first (``held`` counts the volumes each namespace holds,
    asked only when a cap applies), so a refused start creates nothing; if one create fails,
    the ones made before it are deleted again (``delete`` must not raise)."""
    if any(mount.max_per_namespace is not None for mount in missing):
        counts = held()
        for mount in missing:
            check_room(counts[mount.namespace], mount.max_per_namespace, mount.name,
                       mount.namespace, mount.mount)
            counts[mount.namespace] += 1
    created: list[str] = []
    try:
        for mount in missing:
            create(mount)
            created.append(mount.name)
    except BaseException:
        for name in created:
            delete(name)
        raise


def check_room(held: int, cap: int | None, runtime: str, namespace: str, mount: int | str) -> None:
    """Refuse to create ``runtime`` when ``namespace`` already holds ``cap`` volumes."""
    if cap is not None and held >= cap:
        raise MountRefused(
            mount, f"{_field(mount)}: namespace {namespace!r} already holds {held} named "
            f"volumes, the most this drone allows; {runtime!r} is not created"
        )
