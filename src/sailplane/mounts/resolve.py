"""Safe resolution of a host mount on disk: the descriptor walk of docs/mounts.md.

The walk starts from an open descriptor of the host volume's root and opens one component at
a time, never following a symlink:

* with ``openat2(2)`` and ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS``
  when the kernel has it (Linux 5.6+). The whole existing part of the path is opened in one
  call; the kernel refuses any symlink or escape atomically.
* otherwise with ``openat(dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW)`` per component.
  Each name is a single validated component (never ``..``), so no lookup can leave the
  directory held open.

Missing directories are created (mode 0750) only in apply mode, and only where the caller
allows it (never inside a read-only host volume). After the walk the path the kernel reports
for the final descriptor (``/proc/self/fd/N``) must equal the lexical path we return; if a
concurrent rename moved anything, the mount is refused. A refused request removes every
directory it created.

:func:`open_beneath` hands the final descriptor to the caller instead of closing it: the drone
pins *that* directory (``sailplane.mounts.pin``), so no rename after the walk can change what
the backend gets.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from typing import Literal

from sailplane.errors import MountRefused

NEW_DIRECTORY_MODE = 0o750

_SYS_OPENAT2 = 437  # the same number on every architecture (added after the syscall unification)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
_O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Method = Literal["openat2", "openat"]


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags, 0, resolve)
    fd = _libc.syscall(
        _SYS_OPENAT2, ctypes.c_int(dirfd), path.encode(), ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return int(fd)


def _kernel_has_openat2() -> bool:
    try:
        os.close(_openat2(-100, "/", _O_PATH_DIR, 0))  # AT_FDCWD
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter refusing it
            return False
        raise
    return True


HAVE_OPENAT2 = _kernel_has_openat2()
DEFAULT_METHOD: Method = "openat2" if HAVE_OPENAT2 else "openat"


@dataclass
class CreatedDirectories:
    """Directories made in apply mode, so a refused request can remove them again."""

    _made: list[tuple[int, str]] = field(default_factory=list)  # (parent fd, name)

    def add(self, parent_fd: int, name: str) -> None:
        self._made.append((os.dup(parent_fd), name))

    def __len__(self) -> int:
        return len(self._made)

    def rollback(self) -> None:
        """Remove what was made, deepest first; a directory someone filled meanwhile stays."""
        for parent_fd, name in reversed(self._made):
            with suppress(OSError):
                os.rmdir(name, dir_fd=parent_fd)
        self.release()

    def release(self) -> None:
        for parent_fd, _ in self._made:
            os.close(parent_fd)
        self._made.clear()


def resolve_beneath(
    root: str,
    parts: Sequence[str],
    *,
    mount: int | str,
    field: str,
    created: CreatedDirectories | None = None,
    may_create: bool = True,
    method: Method = DEFAULT_METHOD,
) -> str:
    """Return ``root/parts...`` after walking it safely; create what is missing if asked.

    ``root`` must be canonical (the policy makes it so) and ``parts`` validated components.
    With ``created`` set (apply mode) missing directories are made and recorded there;
    without it, a missing tail is fine and reported as the path that would be created. With
    ``may_create`` false a missing directory is refused either way.
    """
    host_path, fd = _walk(root, parts, mount, field, created, may_create, method, keep=False)
    assert fd is None
    return host_path


def open_beneath(
    root: str,
    parts: Sequence[str],
    *,
    mount: int | str,
    field: str,
    created: CreatedDirectories,
    may_create: bool = True,
    method: Method = DEFAULT_METHOD,
) -> tuple[str, int]:
    """Like :func:`resolve_beneath` in apply mode, but also return an ``O_PATH`` descriptor
    of the directory reached; the caller closes it."""
    host_path, fd = _walk(root, parts, mount, field, created, may_create, method, keep=True)
    assert fd is not None
    return host_path, fd


def _walk(
    root: str, parts: Sequence[str], mount: int | str, field: str,
    created: CreatedDirectories | None, may_create: bool, method: Method, *, keep: bool,
) -> tuple[str, int | None]:
    host_path = os.path.join(root, *parts) if parts else root
    with ExitStack() as stack:
        try:
            fd = os.open(root, _O_PATH_DIR)
        except OSError as exc:
            raise MountRefused(mount, f"{field}: host volume root is not usable") from exc
        stack.callback(os.close, fd)
        _verify(fd, root, mount, field)  # before creating anything under it
        depth = 0
        if method == "openat2" and parts:
            try:
                whole = _openat2(fd, "/".join(parts), _O_PATH_DIR, _RESOLVE)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise _refusal(exc, mount, field) from exc
            else:
                stack.callback(os.close, whole)
                fd, depth = whole, len(parts)
        for index in range(depth, len(parts)):
            name = parts[index]
            try:
                child = _open_child(fd, name, method)
            except FileNotFoundError:
                if not may_create:
                    raise MountRefused(
                        mount, f"{field}: {'/'.join(parts[:index + 1])!r} does not exist, and "
                        "nothing is created in a read-only host volume"
                    ) from None
                if created is None:
                    break  # dry run: the rest would be created
                child = _make_child(fd, name, method, created, mount, field)
            except OSError as exc:
                raise _refusal(exc, mount, field) from exc
            stack.callback(os.close, child)
            fd, depth = child, index + 1
        _verify(fd, os.path.join(root, *parts[:depth]) if depth else root, mount, field)
        return host_path, (os.dup(fd) if keep else None)


def _open_child(dirfd: int, name: str, method: Method) -> int:
    if method == "openat2":
        return _openat2(dirfd, name, _O_PATH_DIR, _RESOLVE)
    return os.open(name, _O_PATH_DIR, dir_fd=dirfd)


def _make_child(
    dirfd: int, name: str, method: Method, created: CreatedDirectories, mount: int | str,
    field: str,
) -> int:
    """Create ``name`` (0750 whatever the umask) and open it; only what we made is recorded.

    The name may be raced (made, removed or replaced by a symlink meanwhile): the open that
    follows refuses anything but a directory, as a :class:`MountRefused`.
    """
    made = _mkdir(dirfd, name, mount, field)
    if made:
        created.add(dirfd, name)
    try:
        child = _open_child(dirfd, name, method)
    except OSError as exc:
        raise _refusal(exc, mount, field) from exc
    if made:
        try:
            os.chmod(f"/proc/self/fd/{child}", NEW_DIRECTORY_MODE)  # umask-proof 0750
        except OSError as exc:
            os.close(child)
            raise _refusal(exc, mount, field) from exc
    return child


def _mkdir(dirfd: int, name: str, mount: int | str, field: str) -> bool:
    """Make ``name``; False if it already exists (made concurrently, so not ours)."""
    try:
        os.mkdir(name, NEW_DIRECTORY_MODE, dir_fd=dirfd)
    except FileExistsError:
        return False
    except OSError as exc:
        raise MountRefused(mount, f"{field}: cannot create a directory ({exc.strerror})") from exc
    return True


def _refusal(exc: OSError, mount: int | str, field: str) -> MountRefused:
    if exc.errno in (errno.ELOOP, errno.EXDEV):
        return MountRefused(mount, f"{field}: a symlink or an escape on the way is refused")
    if exc.errno == errno.ENOTDIR:
        return MountRefused(mount, f"{field}: a component is a symlink or not a directory")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return MountRefused(mount, f"{field}: permission denied on the way")
    return MountRefused(mount, f"{field}: cannot resolve ({exc.strerror})")


def _verify(fd: int, expected: str, mount: int | str, field: str) -> None:
    """Refuse unless the kernel's path for ``fd`` is ``expected`` and it is a directory.

    Catches a rename or a root swapped for a symlink while the walk ran.
    """
    actual = os.readlink(f"/proc/self/fd/{fd}")
    if actual != expected or not stat.S_ISDIR(os.stat(fd).st_mode):
        raise MountRefused(mount, f"{field}: the directory moved while it was being resolved")
