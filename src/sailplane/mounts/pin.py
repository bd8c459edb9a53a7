"""Pinned staging mounts: the runtime never receives a host path that can still change.

The descriptor walk (``resolve.py``) proves that a directory was reached without a symlink
and inside its host volume, but a *path string* checked now and bound by the runtime later can
be swapped in between by anyone who can rename in a parent directory. So the drone mounts the
directory it holds open *by its descriptor* onto a staging directory of its own::

    {state_dir}/staging/            mode 0700, the drone's alone
        {backend_id}/{n}            n-th host mount of the backend's request

and gives the runtime that staging path. Two ways, chosen once per process:

* ``open_tree(fd, "", OPEN_TREE_CLONE | AT_RECURSIVE)`` + ``mount_setattr`` (recursive
  read-only for ``ro``, ``nosuid`` and ``nodev`` always, private propagation) +
  ``move_mount`` onto the staging directory (Linux 5.12+);
* otherwise a *non-recursive* bind of ``/proc/self/fd/N`` (so no submount comes along that a
  remount could miss) and a remount with ``ro``/``nosuid``/``nodev``.

A bind mount inherits its source's flags, so the runtime's own bind of the staging path keeps
them: read-only is recursive and nothing set-uid or a device node works, on every runtime.
Staging mounts are detached when the backend's container is removed (:meth:`release`), and a
starting drone removes those of backends it no longer has (:meth:`sweep`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from sailplane.errors import MountRefused
from sailplane.mounts.validate import component_problem

STAGING_DIR_MODE = 0o700

_SYS_OPEN_TREE = 428  # same number on every architecture (after the syscall unification)
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 0x1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_AT_FDCWD = -100
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOSUID = 0x2
_MOUNT_ATTR_NODEV = 0x4
_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 0x2

PinMethod = Literal["open_tree", "bind"]


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def _kernel_has_mount_api() -> bool:
    """open_tree and mount_setattr both answer (EBADF for a bad fd means they exist)."""
    for number in (_SYS_OPEN_TREE, _SYS_MOUNT_SETATTR):
        if _libc.syscall(number, -1, b"", 0, None, 0) >= 0:
            continue
        if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):
            return False
    return True


DEFAULT_PIN_METHOD: PinMethod = "open_tree" if _kernel_has_mount_api() else "bind"


def pin_directory(fd: int, staging: str, read_only: bool, method: PinMethod) -> None:
    """Mount the directory open as ``fd`` onto the existing directory ``staging``."""
    if method == "open_tree":
        tree = _check(_libc.syscall(
            _SYS_OPEN_TREE, fd, b"", _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_RECURSIVE
            | _AT_EMPTY_PATH,
        ), "open_tree")
        try:
            attr = _MountAttr(
                _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV | (_MOUNT_ATTR_RDONLY if read_only else 0),
                0, _MS_PRIVATE, 0,
            )
            _check(_libc.syscall(
                _SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH | _AT_RECURSIVE, ctypes.byref(attr),
                ctypes.sizeof(attr),
            ), "mount_setattr")
            _check(_libc.syscall(
                _SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, os.fsencode(staging),
                _MOVE_MOUNT_F_EMPTY_PATH,
            ), "move_mount")
        finally:
            os.close(tree)  # an open tree fd would keep the mount busy
        return
    target = os.fsencode(staging)
    _check(_libc.mount(f"/proc/self/fd/{fd}".encode(), target, None, _MS_BIND, None), "bind")
    flags = _MS_REMOUNT | _MS_BIND | _MS_NOSUID | _MS_NODEV | (_MS_RDONLY if read_only else 0)
    try:
        _check(_libc.mount(None, target, None, flags, None), "remount")
        _check(_libc.mount(None, target, None, _MS_PRIVATE, None), "private")
    except OSError:
        _detach(staging)
        raise


def _detach(path: str) -> bool:
    """Lazily unmount ``path``; False if nothing was mounted there."""
    if _libc.umount2(os.fsencode(path), _MNT_DETACH) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
        return False
    raise OSError(code, f"umount {path}: {os.strerror(code)}")


def staging_root(state_dir: Path) -> Path:
    """Where a drone with this state directory pins host mounts for its runtime."""
    return state_dir.resolve() / "staging"


class StagingArea:
    """The drone's staging directories; one subdirectory per backend with pinned mounts."""

    def __init__(self, root: Path, method: PinMethod = DEFAULT_PIN_METHOD) -> None:
        self.root = root
        self.method = method

    def path(self, backend_id: str, index: int) -> str:
        """Where the ``index``-th host mount of a backend is pinned (also for dry runs)."""
        return str(self.root / backend_id / str(index))

    def pin(self, fd: int, backend_id: str, index: int, read_only: bool,
            mount: int | str, field: str) -> str:
        """Pin the directory open as ``fd``; return the staging path for the runtime."""
        problem = component_problem(backend_id)
        if problem:  # it names a directory of ours: one plain component, always
            raise MountRefused(mount, f"{field}: backend id {backend_id!r}: {problem}")
        self._make_root()
        staging = Path(self.path(backend_id, index))
        try:
            staging.parent.mkdir(mode=STAGING_DIR_MODE, exist_ok=True)
            staging.mkdir(mode=STAGING_DIR_MODE, exist_ok=True)
            _detach(str(staging))  # left by an earlier attempt at this very spawn
            pin_directory(fd, str(staging), read_only, self.method)
        except OSError as exc:
            raise MountRefused(mount, f"{field}: cannot pin the directory ({exc})") from exc
        return str(staging)

    def release(self, backend_id: str) -> None:
        """Detach and remove every staging mount of a backend; nothing there is fine."""
        directory = self.root / backend_id
        try:
            entries = list(directory.iterdir())
        except FileNotFoundError:
            return
        for entry in entries:
            _detach(str(entry))
            entry.rmdir()
        directory.rmdir()

    def release_one(self, backend_id: str, index: int) -> None:
        """Detach and remove one staging mount of a backend (a hot-plugged mount taken out,
        or one whose injection failed); its directory goes too once it is empty."""
        staging = Path(self.path(backend_id, index))
        if not staging.is_dir():
            return
        _detach(str(staging))
        staging.rmdir()
        with contextlib.suppress(OSError):  # the backend's other pins are still there
            staging.parent.rmdir()

    def backends(self) -> list[str]:
        """The backends that have a staging directory."""
        try:
            return sorted(entry.name for entry in self.root.iterdir())
        except FileNotFoundError:
            return []

    def sweep(self, keep: Iterable[str]) -> list[str]:
        """Release every backend's staging mounts but those in ``keep``; return the released."""
        kept = set(keep)
        released = [backend for backend in self.backends() if backend not in kept]
        for backend in released:
            self.release(backend)
        return released

    def _make_root(self) -> None:
        self.root.mkdir(mode=STAGING_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.root, STAGING_DIR_MODE)  # whatever the umask or an older run made
