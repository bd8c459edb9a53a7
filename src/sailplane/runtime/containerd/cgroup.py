"""A containerd backend's pids limit, which ``ctr run`` has no flag for.

``ctr`` (1.6) writes the OCI spec itself and cannot set ``linux.resources.pids``. runc, though,
joins a cgroup that already exists, and leaves alone a ``pids.max`` the spec does not set. So
the drone makes the container's cgroup first, writes ``pids.max`` there, and names it with
``ctr run --cgroup /{namespace}/{container}`` (the path ctr would use anyway): the limit holds
from the backend's first instruction, with no window for a fork bomb. runc removes the cgroup
with the task; :func:`remove_pids_cgroup` covers a run that failed before runc got there.

The layout is runc's cgroupfs driver (ctr's default), on either cgroup version:

- v2 (``/sys/fs/cgroup/cgroup.controllers`` exists): ``/sys/fs/cgroup/{ns}/{cid}``, with the
  pids controller enabled for the children of ``{ns}``;
- v1: ``/sys/fs/cgroup/pids/{ns}/{cid}``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from sailplane.errors import RuntimeFailure

CGROUP_ROOT = Path("/sys/fs/cgroup")
# runc's own start-up (its init and the threads it runs on) happens inside the container's
# cgroup, under the limit written first: it needs 6 pids here, so a smaller limit could not
# start anything (Docker sets the limit after that start-up, which ctr cannot ask for).
MIN_PIDS_LIMIT = 16


def _namespace_directory(namespace: str, root: Path) -> tuple[Path, bool]:
    """The pids hierarchy's directory for ``namespace``, and whether it is cgroup v2."""
    unified = (root / "cgroup.controllers").exists()
    return (root if unified else root / "pids") / namespace, unified


def container_cgroup(namespace: str, container: str, root: Path = CGROUP_ROOT) -> Path:
    """The container's cgroup directory in the pids hierarchy (the unified one on v2)."""
    parent, _ = _namespace_directory(namespace, root)
    return parent / container


def prepare_pids_cgroup(
    namespace: str, container: str, limit: int, root: Path = CGROUP_ROOT
) -> str:
    """Make the container's cgroup with ``pids.max`` = ``limit``; return its ``--cgroup`` path.

    Raises RuntimeFailure, leaving nothing behind, when the cgroups cannot be written (a
    drone that is not root, or a read-only ``/sys/fs/cgroup``)."""
    parent, unified = _namespace_directory(namespace, root)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if unified:
            (parent / "cgroup.subtree_control").write_text("+pids")
        directory = parent / container
        directory.mkdir(exist_ok=True)
        (directory / "pids.max").write_text(str(limit))
    except OSError as exc:
        remove_pids_cgroup(namespace, container, root)
        raise RuntimeFailure(
            f"cannot apply pids_limit {limit}: this drone cannot write its cgroups "
            f"({exc.strerror})"
        ) from exc
    return f"/{namespace}/{container}"


def remove_pids_cgroup(namespace: str, container: str, root: Path = CGROUP_ROOT) -> None:
    """Remove the cgroup :func:`prepare_pids_cgroup` made, if runc has not already.

    A cgroup still holding a process stays (rmdir refuses it); runc removes it with its task."""
    parent, _ = _namespace_directory(namespace, root)
    with contextlib.suppress(OSError):  # gone already, or still busy
        (parent / container).rmdir()
