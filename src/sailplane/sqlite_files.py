"""SQLite database files kept private (0600) without breaking SQLite's own locking.

Both the controller's database and the drone's store hold secrets (backends' env and
tokens), so their files must be 0600 from the start. Making a file so with ``open`` is not
harmless once the process has the database open: closing *any* descriptor of a file drops
every POSIX lock this process holds on it, SQLite's included. Another process that then
closes its own connection finds no other holder, believes it was the last one, checkpoints
and deletes the write-ahead log, and this process's connections go on writing into the
deleted log (their commits are lost) or fail with "disk I/O error". So a descriptor is only
ever opened for a file that did not exist yet; an existing one is only ``chmod``-ed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def make_private(path: Path) -> None:
    """Create ``path`` empty and 0600 if missing, or make it and its ``-wal``, ``-shm`` and
    ``-journal`` files 0600 (SQLite gives those the database file's mode when it makes
    them)."""
    # O_EXCL: a file this call did not create is never opened (see the module).
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    os.chmod(path, 0o600)
    for suffix in ("-wal", "-shm", "-journal"):
        sibling = path.with_name(path.name + suffix)
        if sibling.exists():
            os.chmod(sibling, 0o600)
