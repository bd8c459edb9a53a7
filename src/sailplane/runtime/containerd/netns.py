"""Making and deleting named network namespaces in the drone's own process.

A named namespace is a bind mount of the namespace onto ``/run/netns/NAME``, which is all
``ip netns add`` and ``ip netns delete`` make and undo. Done here it costs a few system calls
instead of a process (two with ``ip -n NAME link set lo up``) per backend.

Making one: network namespaces belong to threads, so a thread of its own ``unshare``\\s
``CLONE_NEWNET``, binds ``/proc/thread-self/ns/net`` onto the file, brings ``lo`` up through a
socket it opens there, and ends; no thread of the drone ever runs anything else in it, and
the drone's other threads never leave the host's namespace. ``/run/netns`` is made a shared
mount point first, as ``ip`` does, so the namespaces ``ip`` and containerd see are these.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
import threading

log = logging.getLogger(__name__)

_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_SHARED = 1 << 20
_MNT_DETACH = 0x2
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: the name, then ifr_flags in the union

_libc = ctypes.CDLL(None, use_errno=True)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p)


def _mount(source: str, target: str, flags: int) -> None:
    if _libc.mount(source.encode(), target.encode(), b"none", flags, None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mount {source} on {target}: {os.strerror(code)}")


def _share(directory: str) -> None:
    """``directory`` a mount point with shared propagation (``ip netns add`` does the same):
    a namespace bound in it is then seen by mount namespaces made from this one later."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    try:
        _mount("", directory, _MS_SHARED | _MS_REC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: not a mount point yet
            raise
        _mount(directory, directory, _MS_BIND | _MS_REC)
        _mount("", directory, _MS_SHARED | _MS_REC)


def _make_in_this_thread(path: str) -> None:
    """Runs in a thread of its own that ends right after (it is left in the new namespace)."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)  # an existing one is kept
    os.close(fd)
    try:
        if _libc.unshare(_CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"unshare(CLONE_NEWNET): {os.strerror(code)}")
        _mount("/proc/thread-self/ns/net", path, _MS_BIND)
    except BaseException:
        os.unlink(path)
        raise
    try:
        # A backend talking to itself (its own address or localhost) goes through lo.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # in the new namespace
            request = _IFREQ.pack(b"lo", 0)
            _, flags = _IFREQ.unpack(fcntl.ioctl(sock, _SIOCGIFFLAGS, request))
            fcntl.ioctl(sock, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))
    except BaseException:
        delete_netns(path)
        raise


def create_netns(path: str) -> None:
    """Make the named network namespace ``path`` (``/run/netns/NAME``) with ``lo`` up; blocks
    for the few system calls it takes. OSError if it cannot (FileExistsError if a file is
    there already, which is left alone); nothing is left behind then."""
    _share(os.path.dirname(path))
    done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def target() -> None:
        try:
            _make_in_this_thread(path)
        except BaseException as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)

    thread = threading.Thread(target=target, name=f"netns {os.path.basename(path)}")
    thread.start()
    thread.join()
    done.result()


def delete_netns(path: str) -> None:
    """Detach and unlink the namespace at ``path``; nothing there is fine. A failure is
    logged, as ``ip netns delete`` would report it, and otherwise ignored like before."""
    if _libc.umount2(path.encode(), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):  # not a mount (any more), or no file
            log.warning("cannot unmount network namespace %s: %s", path, os.strerror(code))
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove network namespace %s: %s", path, exc.strerror)
