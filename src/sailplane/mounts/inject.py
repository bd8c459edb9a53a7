"""Late-bound mounts: put a pinned directory into a container that is already running.

A warm container (started before its request arrived) and a running backend that gets a new
mount both need a mount placed inside their mount namespace after the fact. The drone:

1. clones the pinned staging mount (``pin.py``: already read-only if granted so, ``nosuid``,
   ``nodev``) into a detached tree with ``open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)``;
2. opens the container's root and mount namespace through ``/proc/PID``;
3. forks a child of this process (single-threaded, as ``setns`` requires, and a copy of this
   one, so no interpreter has to start: a warm claim is on a user's path), which enters the
   namespace, ``chroot``\\s into the container's root, walks the target one component at a
   time without following a symlink (creating what is missing, mode 0755) and attaches the
   tree there with ``move_mount``. The child only makes system calls through what was loaded
   before the fork (it imports nothing, takes no lock another thread may hold) and ends with
   ``os._exit``, reporting a failure on a pipe.

Because the walk happens inside the container's own root and never follows a symlink, a
backend that planted ``/data -> /`` cannot make the mount land anywhere but inside itself.
:func:`eject` takes a mount out again. :func:`claim` does what a warm container needs in one
child process: every mount attached, then ``/run/sailplane/identity.json`` written on a tmpfs
of its own, so the backend learns who it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

from sailplane.errors import MountRefused

IDENTITY_DIR = "/run/sailplane"
IDENTITY_FILE = "identity.json"
HELPER_TIMEOUT_SECONDS = 10

_SYS_OPEN_TREE = 428
_OPEN_TREE_CLONE = 0x1
_AT_RECURSIVE = 0x8000
_AT_FDCWD = -100


def _check_target(target: str, mount: int | str, field: str) -> str:
    parts = target.split("/")
    if not target.startswith("/") or any(part in (".", "..", "") for part in parts[1:]):
        raise MountRefused(mount, f"{field}: {target!r} is not a normalized absolute path")
    return target


_SYS_MOVE_MOUNT = 429
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOVE_MOUNT_T_EMPTY_PATH = 0x40
_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x2, 0x4, 0x8
_MNT_DETACH, _UMOUNT_NOFOLLOW = 0x2, 0x8
_libc = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: the child loads nothing
_libc.syscall.restype = ctypes.c_long


class _Failed(Exception):
    """Raised in the child with what it reports."""


def _check(result: int, what: str) -> None:
    if result < 0:
        raise _Failed(f"{what}: {os.strerror(ctypes.get_errno())}")


def _walk(path: str, create: bool) -> int:
    """An ``O_PATH`` descriptor of ``path`` from the root, no component a symlink."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    for part in [p for p in path.split("/") if p]:
        try:
            try:
                child = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, flags, dir_fd=fd)
        except OSError as exc:
            raise _Failed(f"{path}: a component is a symlink or not a directory "
                          f"({exc.strerror})") from exc
        finally:
            os.close(fd)
        fd = child
    return fd


def _attach(tree: int, target: str) -> None:
    fd = _walk(target, True)
    try:
        _check(_libc.syscall(_SYS_MOVE_MOUNT, tree, b"", fd, b"",
                             _MOVE_MOUNT_F_EMPTY_PATH | _MOVE_MOUNT_T_EMPTY_PATH), "move_mount")
    finally:
        os.close(fd)


def _write_identity(data: bytes) -> None:
    os.close(_walk(IDENTITY_DIR, True))
    _check(_libc.mount(b"tmpfs", IDENTITY_DIR.encode(), b"tmpfs",
                       _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, b"size=65536,mode=0755"),
           "mount tmpfs")
    fd = _walk(IDENTITY_DIR, False)
    try:
        out = os.open(IDENTITY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                      0o644, dir_fd=fd)
        try:
            os.write(out, data)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _detach(target: str) -> None:
    # The container's /proc does not know the child, so umount takes the path, checked by the
    # walk first; inside the chroot it can only ever name the container's own files.
    os.close(_walk(target, False))
    _check(_libc.umount2(target.encode(), _MNT_DETACH | _UMOUNT_NOFOLLOW), "umount")


def _in_container(pid: int, work: Callable[[], None]) -> str | None:
    """Run ``work`` in a child forked from this process, inside the mount namespace and
    root of process ``pid``; None if it succeeded, else what went wrong."""
    ns_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        root_fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except BaseException:
        os.close(ns_fd)
        raise
    try:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:  # the child: whatever happens, it reports and ends here
            report = b""
            try:
                _check(_libc.setns(ns_fd, _CLONE_NEWNS), "setns")
                os.fchdir(root_fd)
                os.chroot(".")
                os.chdir("/")
                work()
            except BaseException as exc:
                report = (str(exc) or type(exc).__name__).encode(errors="replace")
            finally:
                with contextlib.suppress(BaseException):
                    os.write(write_end, report)
                os._exit(3 if report else 0)
        os.close(write_end)
    finally:
        os.close(ns_fd)
        os.close(root_fd)
    try:
        return _outcome(child, read_end)
    finally:
        os.close(read_end)


def _outcome(child: int, read_end: int) -> str | None:
    """The child's report once it has exited (killed if it takes longer than the bound)."""
    report = b""
    deadline = time.monotonic() + HELPER_TIMEOUT_SECONDS
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(child, signal.SIGKILL)
                return f"no answer within {HELPER_TIMEOUT_SECONDS} s"
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            report += chunk
    finally:
        _, status = os.waitpid(child, 0)
    if report or os.waitstatus_to_exitcode(status) != 0:
        return report.decode(errors="replace").strip() or f"wait status {status}"
    return None


def _clone(staging: str, mount: int | str, field: str) -> int:
    """A detached copy of the pinned mount at ``staging`` (its flags kept); caller closes."""
    tree = int(_libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(staging),
                             _OPEN_TREE_CLONE | _AT_RECURSIVE | os.O_CLOEXEC))
    if tree < 0:
        code = ctypes.get_errno()
        raise MountRefused(mount, f"{field}: cannot clone the pinned mount ({os.strerror(code)})")
    return tree


def claim(pid: int, mounts: list[tuple[str, str]], identity: dict[str, Any]) -> None:
    """What a warm container needs to become a backend, in one child process: each pinned
    mount ``(staging, target)`` attached, then the identity file written."""
    for _, target in mounts:
        _check_target(target, target, f"mount at {target}")
    data = json.dumps(identity).encode()  # here: the child only makes system calls
    trees: list[int] = []
    try:
        for staging, target in mounts:
            trees.append(_clone(staging, target, f"mount at {target}"))

        def work() -> None:
            for tree, (_, target) in zip(trees, mounts, strict=True):
                _attach(tree, target)
            _write_identity(data)

        failed = _in_container(pid, work)
    finally:
        for tree in trees:
            os.close(tree)
    if failed is not None:
        raise MountRefused("mounts", f"cannot give the warm container its mounts: {failed}")


def inject(pid: int, staging: str, target: str, *, mount: int | str, field: str) -> None:
    """Attach a copy of the pinned mount at ``staging`` at ``target`` inside the container
    whose init process is ``pid``; raise MountRefused naming the mount if it cannot be."""
    target = _check_target(target, mount, field)
    tree = _clone(staging, mount, field)
    try:
        failed = _in_container(pid, lambda: _attach(tree, target))
    finally:
        os.close(tree)
    if failed is not None:
        raise MountRefused(mount, f"{field}: cannot mount at {target!r} inside the backend: "
                                  f"{failed}")


def eject(pid: int, target: str, *, mount: int | str, field: str) -> None:
    """Detach the mount at ``target`` inside the container (lazily, like ``umount -l``)."""
    target = _check_target(target, mount, field)
    failed = _in_container(pid, lambda: _detach(target))
    if failed is not None:
        raise MountRefused(mount, f"{field}: cannot unmount {target!r} inside the backend: "
                                  f"{failed}")
