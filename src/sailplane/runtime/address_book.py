"""The bridge's address book, read and freed in-process, the way CNI's ``host-local`` keeps it.

``host-local`` (``plugins/ipam/host-local/backend/disk``) keeps one directory per network:
one file per address held, named by the address, holding ``<container id>\\r\\n<ifname>``
(an older version wrote the id alone), plus ``last_reserved_ip.<range>`` and ``lock``, which
every reservation and release holds with ``flock``. A CNI ``DEL`` of a namespace already gone
does nothing but free the record; that is a process (the ``bridge`` plugin, which runs
``host-local``) per backend, and each one reads every record in the directory. Here one pass,
under the same lock, frees the records of any number of containers, so a thousand removals
cost a few passes instead of a thousand processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Collection, Iterator
from pathlib import Path

LOCK_FILE = "lock"


class AddressBook:
    """One network's records in ``directory``, for interface ``ifname`` in every backend."""

    def __init__(self, directory: Path, ifname: str) -> None:
        self.directory = directory
        self.ifname = ifname

    def holders(self) -> dict[str, str]:
        """Address -> container id, read without the lock (a record is written whole before
        ``host-local`` lets go of it, and one going away is skipped)."""
        return {address: owner for address, owner, _ in self._records()}

    def release(self, container_ids: Collection[str]) -> dict[str, str]:
        """Free every address held by one of ``container_ids``, under ``host-local``'s lock;
        address -> container id of those freed. Matches what ``host-local`` would free for
        the same ids and interface, nothing else."""
        wanted = set(container_ids)
        if not wanted or not self.directory.is_dir():
            return {}
        freed = {}
        with self._locked():
            for address, owner, text in self._records():
                if owner in wanted and text.strip() in (f"{owner}\r\n{self.ifname}", owner):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.directory / address)
                        freed[address] = owner
        return freed

    def _records(self) -> Iterator[tuple[str, str, str]]:
        """(address, holder, the file's text) of every record; the lock file and the last
        reserved address are not records."""
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in entries:
            try:
                ipaddress.IPv4Address(name)
                # Bytes: reading as text would turn the record's "\r\n" into "\n".
                text = (self.directory / name).read_bytes().decode()
                yield name, text.split()[0], text
            except (ValueError, IndexError, OSError):
                continue

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by the close
            yield
        finally:
            os.close(fd)
