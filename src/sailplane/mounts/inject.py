"""Late-bound mounts: put a pinned directory into a container that is already running.

A warm container (started before its request arrived) and a running backend that gets a new
mount both need a mount placed inside their mount namespace after the fact. The drone:

1. clones the pinned staging mount (``pin.py``: already read-only if granted so, ``nosuid``,
   ``nodev``) into a detached tree with ``open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)``;
2. opens the container's root and mount namespace through ``/proc/PID``;
3. hands those descriptors to a short-lived single-threaded helper process (``setns`` refuses a
   multi-threaded caller), which enters the namespace, ``chroot``\\s into the container's root,
   walks the target one component at a time without following a symlink (creating what is
   missing, mode 0755) and attaches the tree there with ``move_mount``.

Because the walk happens inside the container's own root and never follows a symlink, a
backend that planted ``/data -> /`` cannot make the mount land anywhere but inside itself.
:func:`eject` takes a mount out again. :func:`claim` does what a warm container needs in one
helper process: every mount attached, then ``/run/sailplane/identity.json`` written on a tmpfs
of its own, so the backend learns who it is.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from typing import Any

from sailplane.errors import MountRefused

IDENTITY_DIR = "/run/sailplane"
IDENTITY_FILE = "identity.json"
HELPER_TIMEOUT_SECONDS = 10

_SYS_OPEN_TREE = 428
_OPEN_TREE_CLONE = 0x1
_AT_RECURSIVE = 0x8000
_AT_FDCWD = -100

# Run with ``python -S -c``: only ctypes and os, so it starts in milliseconds. argv: the
# namespace's and the root's fds (passed), the operation, the target path, then the tree's fd
# ("attach") or the identity file's name ("claim"), which reads a JSON plan on stdin instead:
# {"attach": [[tree fd, target], ...], "identity": {...}}, all in one process.
_HELPER = r'''
import ctypes, json, os, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def check(result, what):
    if result < 0:
        code = ctypes.get_errno()
        sys.stderr.write(f"{what}: {os.strerror(code)}\n")
        sys.exit(3)
ns_fd, root_fd, op, target = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
check(libc.setns(ns_fd, 0x00020000), "setns")  # CLONE_NEWNS
os.fchdir(root_fd)
os.chroot(".")
os.chdir("/")
def walk(path, create):
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    for part in [p for p in path.split("/") if p]:
        try:
            child = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            child = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            sys.stderr.write(f"{path}: a component is a symlink or not a directory "
                             f"({exc.strerror})\n")
            sys.exit(4)
        os.close(fd)
        fd = child
    return fd
def attach(tree, target):
    fd = walk(target, True)
    check(libc.syscall(429, tree, b"", fd, b"", 0x4 | 0x40), "move_mount")  # F_/T_EMPTY_PATH
    os.close(fd)
def identity(directory, name, data):
    os.close(walk(directory, True))
    check(libc.mount(b"tmpfs", directory.encode(), b"tmpfs", 0x2 | 0x4 | 0x8,
                     b"size=65536,mode=0755"), "mount tmpfs")  # nosuid, nodev, noexec
    fd = walk(directory, False)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    out = os.open(name, flags, 0o644, dir_fd=fd)
    os.write(out, data)
    os.close(out)
if op == "attach":
    attach(int(sys.argv[5]), target)
elif op == "claim":
    plan = json.loads(sys.stdin.buffer.read())
    for tree, where in plan["attach"]:
        attach(tree, where)
    identity(target, sys.argv[5], json.dumps(plan["identity"]).encode())
# The container's /proc does not know this process, so the mount calls below take the path,
# checked by the walk first; inside the chroot it can only ever name the container's own files.
elif op == "detach":
    os.close(walk(target, False))
    check(libc.umount2(target.encode(), 0x2 | 0x8), "umount")  # MNT_DETACH, UMOUNT_NOFOLLOW
'''


def _check_target(target: str, mount: int | str, field: str) -> str:
    parts = target.split("/")
    if not target.startswith("/") or any(part in (".", "..", "") for part in parts[1:]):
        raise MountRefused(mount, f"{field}: {target!r} is not a normalized absolute path")
    return target


def _run_helper(pid: int, args: list[str], extra_fds: tuple[int, ...] = (),
                stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the helper in the mount namespace and root of process ``pid``."""
    ns_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        root_fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except BaseException:
        os.close(ns_fd)
        raise
    try:
        return subprocess.run(
            [sys.executable, "-S", "-c", _HELPER, str(ns_fd), str(root_fd), *args],
            input=stdin, capture_output=True, pass_fds=(ns_fd, root_fd, *extra_fds),
            timeout=HELPER_TIMEOUT_SECONDS, check=False,
        )
    finally:
        os.close(ns_fd)
        os.close(root_fd)


def _clone(staging: str, mount: int | str, field: str) -> int:
    """A detached copy of the pinned mount at ``staging`` (its flags kept); caller closes."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    tree = int(libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(staging),
                            _OPEN_TREE_CLONE | _AT_RECURSIVE | os.O_CLOEXEC))
    if tree < 0:
        code = ctypes.get_errno()
        raise MountRefused(mount, f"{field}: cannot clone the pinned mount ({os.strerror(code)})")
    return tree


def claim(pid: int, mounts: list[tuple[str, str]], identity: dict[str, Any]) -> None:
    """What a warm container needs to become a backend, in one helper process: each pinned
    mount ``(staging, target)`` attached, then the identity file written."""
    for _, target in mounts:
        _check_target(target, target, f"mount at {target}")
    trees: list[int] = []
    try:
        for staging, target in mounts:
            trees.append(_clone(staging, target, f"mount at {target}"))
        plan = {"attach": [[tree, target] for tree, (_, target) in zip(trees, mounts,
                                                                       strict=True)],
                "identity": identity}
        done = _run_helper(pid, ["claim", IDENTITY_DIR, IDENTITY_FILE], tuple(trees),
                           json.dumps(plan).encode())
    finally:
        for tree in trees:
            os.close(tree)
    if done.returncode != 0:
        raise MountRefused("mounts", "cannot give the warm container its mounts: "
                                     f"{done.stderr.decode(errors='replace').strip()}")


def inject(pid: int, staging: str, target: str, *, mount: int | str, field: str) -> None:
    """Attach a copy of the pinned mount at ``staging`` at ``target`` inside the container
    whose init process is ``pid``; raise MountRefused naming the mount if it cannot be."""
    target = _check_target(target, mount, field)
    tree = _clone(staging, mount, field)
    try:
        done = _run_helper(pid, ["attach", target, str(tree)], (tree,))
    finally:
        os.close(tree)
    if done.returncode != 0:
        raise MountRefused(mount, f"{field}: cannot mount at {target!r} inside the backend: "
                                  f"{done.stderr.decode(errors='replace').strip()}")


def eject(pid: int, target: str, *, mount: int | str, field: str) -> None:
    """Detach the mount at ``target`` inside the container (lazily, like ``umount -l``)."""
    target = _check_target(target, mount, field)
    done = _run_helper(pid, ["detach", target])
    if done.returncode != 0:
        raise MountRefused(mount, f"{field}: cannot unmount {target!r} inside the backend: "
                                  f"{done.stderr.decode(errors='replace').strip()}")
