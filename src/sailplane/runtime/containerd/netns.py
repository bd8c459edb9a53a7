"""Deleting a named network namespace in the drone's own process.

A named namespace is a bind mount of the namespace onto ``/run/netns/NAME``; deleting it is
detaching that mount and unlinking the file, which is all ``ip netns delete`` does. Done here
it costs two system calls instead of a process per backend (the kernel frees the namespace,
and the interfaces still in it, once nothing else holds it).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os

log = logging.getLogger(__name__)

_MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


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
