"""The bridge's address book, kept in-process the way CNI's ``host-local`` keeps it.

``host-local`` (``plugins/ipam/host-local/backend/disk``) keeps one directory per network:
one file per address held, named by the address, holding ``<container id>\\r\\n<ifname>``
(an older version wrote the id alone), plus ``last_reserved_ip.<range>`` and ``lock``, which
every reservation and release holds with ``flock``. A CNI ``DEL`` of a namespace already gone
does nothing but free the record; that is a process (the ``bridge`` plugin, which runs
``host-local``) per backend, and each one reads every record in the directory. Here one pass,
under the same lock, frees the records of any number of containers, so a thousand removals
cost a few passes instead of a thousand processes. Reserving follows ``host-local`` too, so a
drone still running the plugin and one reserving here share the book.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Collection, Iterator
from pathlib import Path

from sailplane.errors import RuntimeFailure

LOCK_FILE = "lock"
LAST_RESERVED = "last_reserved_ip.0"  # the plugin's name for its first (here: only) range


class AddressBook:
    """One network's records in ``directory``, for interface ``ifname`` in every backend."""

    def __init__(self, directory: Path, ifname: str) -> None:
        self.directory = directory
        self.ifname = ifname

    def holders(self) -> dict[str, str]:
        """Address -> container id, read without the lock (a record is written whole before
        ``host-local`` lets go of it, and one going away is skipped)."""
        return {address: owner for address, owner, _ in self._records()}

    def reserve(self, container_id: str, subnet: ipaddress.IPv4Network, *,
                again: bool = True) -> ipaddress.IPv4Address:
        """An address of ``subnet`` for ``container_id``, recorded under the lock: the next
        free one after the last reserved, wrapping around, never the network's, the gateway's
        (the first) or the broadcast address; RuntimeFailure if every one is taken.

        ``again``: the id may hold an address already (a retry), and then gets that one. That
        takes reading every record (28 ms with 1,000 held, here), so a caller that knows the
        id is new says ``again=False``; an id reserved twice that way holds two addresses,
        both freed by its release."""
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        with self._locked():
            if again:
                for address, owner, text in self._records():
                    if owner == container_id and self._is_ours(owner, text):
                        return ipaddress.IPv4Address(address)
            for candidate in self._candidates(subnet):
                try:
                    fd = os.open(self.directory / str(candidate),
                                 os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    continue
                with os.fdopen(fd, "wb") as record:
                    record.write(f"{container_id}\r\n{self.ifname}".encode())
                (self.directory / LAST_RESERVED).write_text(str(candidate))
                return candidate
        raise RuntimeFailure(f"no address left in {subnet} ({self.directory})")

    def _candidates(self, subnet: ipaddress.IPv4Network) -> Iterator[ipaddress.IPv4Address]:
        """``host-local``'s order: from the one after the last reserved, round to it."""
        first, last = subnet.network_address + 2, subnet.broadcast_address - 1
        try:
            start = ipaddress.IPv4Address((self.directory / LAST_RESERVED).read_text().strip())
        except (OSError, ValueError):
            start = last  # none yet (or not ours): begin at the first
        if not first <= start <= last:
            start = last
        span = int(last) - int(first) + 1
        offset = int(start) - int(first)
        for step in range(1, span + 1):
            yield first + (offset + step) % span

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
                if owner in wanted and self._is_ours(owner, text):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.directory / address)
                        freed[address] = owner
        return freed

    def _is_ours(self, owner: str, text: str) -> bool:
        """Whether the record is of this book's interface (or of an old plugin: no name)."""
        return text.strip() in (f"{owner}\r\n{self.ifname}", owner)

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
