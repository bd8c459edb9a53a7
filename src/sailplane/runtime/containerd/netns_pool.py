"""A few network namespaces made and wired to the bridge ahead of time, for starts to take.

Making a backend's namespace and connecting it (``network.py``: the namespace, then its veth
pair) is most of what isolation adds to a containerd start. The pool keeps
``size`` of them ready, made in the background, so a start takes one and goes straight to
``ctr run``; taking one asks for a replacement. When the pool is empty (a burst of starts),
the start makes its own at once, as it did before.

A namespace serves exactly one backend and is deleted with it, never handed out again: a used
one may hold whatever its backend left in it (routes, sockets, interfaces). Namespaces are
named ``{prefix}{random}``, the prefix derived from the drone's id; the name is also the
holder's id in the bridge's address book. The runtime records the name a backend took as a
container label, so its removal, and a restarted drone's adoption, find it.

What a pool leaves when its drone dies (namespaces ready or half-made, taken by a start that
never labelled a container) carries the drone's prefix and no container names it:
:meth:`NetnsPool.sweep` at the drone's next start deletes them, and :meth:`NetnsPool.close`
deletes the ready ones.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from sailplane.errors import RuntimeFailure
from sailplane.runtime.containerd.network import NETNS_DIR, NamespaceNetwork

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 2  # a start takes ~15 ms of wiring: two cover starts that come together


@dataclass(frozen=True)
class Wired:
    """A namespace connected to the bridge: its name (``/run/netns/{name}``) and address."""

    name: str
    address: str


def pool_prefix(owner: str) -> str:
    """The names of ``owner``'s namespaces start with this: short, a safe file name whatever
    the drone id is, and never a container's name (those are ``sailplane-...``)."""
    return f"spnet-{hashlib.sha256(owner.encode()).hexdigest()[:10]}-"


class NetnsPool:
    """``size`` namespaces of ``owner`` (a drone id) kept ready on ``network``'s bridge; each
    making holds one of ``slot``'s engine-call slots."""

    def __init__(self, network: NamespaceNetwork, owner: str, size: int = DEFAULT_POOL_SIZE,
                 slot: Callable[[], AbstractAsyncContextManager[None]] | None = None) -> None:
        if size < 0:
            raise ValueError(f"a pool of {size} namespaces")
        self.network = network
        self.prefix = pool_prefix(owner)
        self.size = size
        self._slot = slot or contextlib.nullcontext
        self._ready: collections.deque[Wired] = collections.deque()
        self._mine: set[str] = set()  # made by this pool and not deleted: never stale
        self._failed: set[str] = set()  # a making that failed may have left its address
        self._making: set[str] = set()  # by the filler, for the pool
        self._wanted = asyncio.Event()
        self._filler: asyncio.Task[None] | None = None
        self._orphans: set[asyncio.Task[Wired]] = set()  # makings for cancelled takes
        self._closed = False

    def start(self) -> None:
        """Begin filling, in the background; again is nothing."""
        if self._filler is None and self.size and not self._closed:
            self._filler = asyncio.create_task(self._fill())
            self._wanted.set()

    async def take(self) -> Wired:
        """A ready namespace, else one made now. It is the caller's until :meth:`release`."""
        if self._closed:
            raise RuntimeFailure("the network namespace pool is closed")
        self.start()
        self._wanted.set()
        if self._ready:
            return self._ready.popleft()
        # A start cancelled meanwhile leaves the making to end (a wiring stopped half-way
        # would leave an interface or an address behind); what it made joins the ready ones.
        making = asyncio.create_task(self._make())
        try:
            return await asyncio.shield(making)
        except asyncio.CancelledError:
            self._orphans.add(making)
            making.add_done_callback(self._adopt)
            raise

    def _adopt(self, making: asyncio.Task[Wired]) -> None:
        self._orphans.discard(making)
        if not making.cancelled() and making.exception() is None:
            self._ready.append(making.result())

    async def release(self, name: str) -> None:
        """Free the address and delete the namespace ``name`` (taken from this pool, or left
        by an earlier run); nothing there is fine."""
        async with self._slot():
            await self.network.detach(name)
        self._mine.discard(name)
        self._failed.discard(name)

    def ours(self, name: str) -> bool:
        return name.startswith(self.prefix)

    def ready(self) -> set[str]:
        """The names of the namespaces ready to be taken."""
        return {wired.name for wired in self._ready}

    def unused(self) -> set[str]:
        """The names of the namespaces ready to be taken or being made for that."""
        return self.ready() | self._making

    async def sweep(self, in_use: set[str]) -> int:
        """Delete the namespaces and addresses of this owner that no backend uses (``in_use``:
        the names the owner's containers hold) and this pool did not make: what an earlier
        run of the drone left. How many."""
        try:
            names = set(await asyncio.to_thread(os.listdir, NETNS_DIR))
        except FileNotFoundError:
            names = set()
        names |= set(self.network.bridge.holders().values())
        stale = {n for n in names if self.ours(n)} - in_use - self._mine
        for name in stale:
            await self.release(name)
        if stale:
            log.info("deleted %d network namespace(s) an earlier run left unused", len(stale))
        return len(stale)

    async def close(self) -> None:
        """Stop filling (makings under way end first) and delete the ready namespaces and
        what failed makings left; the taken ones stay with their backends."""
        self._closed = True
        self._wanted.set()
        await asyncio.gather(*filter(None, [self._filler]), *self._orphans,
                             return_exceptions=True)
        await asyncio.sleep(0)  # the orphans' callbacks: what they made is ready now
        while self._ready:
            await self.release(self._ready.popleft().name)
        for name in list(self._failed):
            await self.release(name)

    async def _fill(self) -> None:
        while not self._closed:
            await self._wanted.wait()
            self._wanted.clear()
            while not self._closed and len(self._ready) < self.size:
                try:
                    self._ready.append(await self._make(self._making))
                except Exception as exc:  # the next take makes its own, and asks again
                    log.warning("cannot prepare a network namespace: %s", exc)
                    break

    async def _make(self, making: set[str] | None = None) -> Wired:
        name = f"{self.prefix}{uuid.uuid4().hex[:12]}"
        self._mine.add(name)
        if making is not None:
            making.add(name)
        try:
            async with self._slot():
                return Wired(name, await self.network.attach(name))
        except BaseException:
            self._failed.add(name)  # its namespace is gone; a cancelled ADD may hold an address
            raise
        finally:
            if making is not None:
                making.discard(name)
