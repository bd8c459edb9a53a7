"""Warm pools: containers started ahead of their request, given their mounts when claimed.

``--warm-pool IMAGE[=N]`` keeps N containers of IMAGE running with no mount of any request
yet, answering HTTP. A spawn whose ``executable`` names that image, with no ``command``, no
``env``, no resource limits of its own and only host mounts (``volume_mounts`` of type
``host``, or Plane's ``mount``), *claims* one instead of starting a container: the executor
pins the request's mounts as for a cold spawn, injects each pinned tree at its target inside
the running container (``mounts/inject.py``), writes the backend's identity file, and the
backend is ready as soon as it answers. The pool refills in the background. A container that
took part in a failed claim is destroyed, never returned to the pool.

No peer can do this: Plane, Nomad and Kubernetes fix a container's mounts when it is created,
so a pre-started container could not serve a key whose data it must see.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from sailplane.drone.readiness import wait_until_ready
from sailplane.errors import RuntimeFailure
from sailplane.mounts.inject import claim
from sailplane.mounts.resolved import ResolvedHostMount, ResolvedMount
from sailplane.protocol import SpawnBackend
from sailplane.runtime.base import BackendAddress, Runtime, WarmContainer
from sailplane.spec import ExecutorConfig, HostMountSpec, ResourceLimits

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 2
WARM_READY_SECONDS = 30.0
REFILL_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class WarmPoolSpec:
    """One ``--warm-pool IMAGE[=N]``."""

    image: str
    size: int = DEFAULT_POOL_SIZE

    @classmethod
    def parse(cls, flag: str) -> WarmPoolSpec:
        """``IMAGE`` or ``IMAGE=N``; ValueError naming the flag otherwise.

        >>> WarmPoolSpec.parse("sailplane/static:latest=3")
        WarmPoolSpec(image='sailplane/static:latest', size=3)
        """
        image, sep, count = flag.rpartition("=")
        if not sep:
            image, count = flag, str(DEFAULT_POOL_SIZE)
        if not image or not count.isdigit() or int(count) < 1:
            raise ValueError(f"--warm-pool {flag!r}: expected IMAGE or IMAGE=N with N >= 1")
        return cls(image, int(count))


def claimable(executable: ExecutorConfig) -> bool:
    """Whether a warm container of ``executable.image`` can serve this request as it is."""
    return (executable.command is None and not executable.env
            and executable.resource_limits == ResourceLimits()
            and all(isinstance(m, HostMountSpec) for m in executable.volume_mounts))


class WarmPool:
    """The warm containers of one drone, per image, kept at their size in the background."""

    def __init__(self, runtime: Runtime, specs: list[WarmPoolSpec],
                 limits: ResourceLimits) -> None:
        self.runtime = runtime
        self.limits = limits  # the operator's defaults: what a request without limits gets
        self._sizes = {spec.image: spec.size for spec in specs}
        self._ready: dict[str, list[WarmContainer]] = {image: [] for image in self._sizes}
        self._wanted = asyncio.Event()
        self._filler: asyncio.Task[None] | None = None
        # The start under way, shielded: a start cancelled half-way would leave its container.
        self._starting: asyncio.Future[WarmContainer] | None = None

    def start(self) -> None:
        self._filler = asyncio.create_task(self._fill())
        self._wanted.set()

    def can_take(self, executable: ExecutorConfig) -> bool:
        """Whether :meth:`take` would give this request a warm container now."""
        return bool(self._ready.get(executable.image)) and claimable(executable)

    def take(self, executable: ExecutorConfig) -> WarmContainer | None:
        """A ready warm container for this request, now, or None (then spawn cold)."""
        if not self.can_take(executable):
            return None
        return self._ready[executable.image].pop()  # refilled once it is claimed

    async def claim(self, warm: WarmContainer, spawn: SpawnBackend,
                    mounts: list[ResolvedMount]) -> BackendAddress:
        """Make ``warm`` the backend of ``spawn``: inject its pinned host mounts, write its
        identity, hand it to the runtime under the backend's id. On any failure the container
        is destroyed and RuntimeFailure (or the mount's MountRefused) raised.

        The pool is refilled after the claim, not at the take: a new container's create and
        start are the engine's heaviest work, and done at once they slowed the claim's own
        engine call and injection by half (measured through the whole connect path)."""
        identity = {"backend_id": spawn.backend_id, "key": spawn.key.model_dump(),
                    "secret_token": spawn.secret_token}
        try:
            hosts = [(m.source, m.target) for m in mounts if isinstance(m, ResolvedHostMount)]
            if len(hosts) != len(mounts):  # claimable() lets only host mounts in
                raise RuntimeFailure("a warm container can only take host mounts")
            await asyncio.to_thread(claim, warm.pid, hosts, identity)
            return await self.runtime.claim_warm(warm, spawn.backend_id)
        except BaseException:
            await self._discard(warm)
            raise
        finally:
            self._wanted.set()

    def available(self, image: str) -> int:
        return len(self._ready.get(image, []))

    async def wait_full(self, timeout: float) -> None:
        """Until every pool holds its size (for tests and benchmarks)."""
        async with asyncio.timeout(timeout):
            while any(len(self._ready[image]) < size for image, size in self._sizes.items()):
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Stop refilling and destroy the containers no request claimed."""
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filler
        if self._starting is not None:
            with contextlib.suppress(RuntimeFailure):
                await self._discard(await self._starting)
        for ready in self._ready.values():
            while ready:
                await self._discard(ready.pop())

    async def _fill(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            for image, size in self._sizes.items():
                while len(self._ready[image]) < size:
                    warm = await self._started(image)
                    if warm is None:
                        await asyncio.sleep(REFILL_RETRY_SECONDS)
                        self._wanted.set()
                        break
                    self._ready[image].append(warm)
                    log.info("warm pool %s: %d of %d ready", image, len(self._ready[image]),
                             size)

    async def _started(self, image: str) -> WarmContainer | None:
        """A new warm container that answers HTTP, or None (logged) if none could be had.

        If the pool closes meanwhile, the container is still removed: during the start by
        :meth:`close` (which waits for it), during the readiness wait here."""
        self._starting = asyncio.ensure_future(self.runtime.start_warm(image, self.limits))
        try:
            warm = await asyncio.shield(self._starting)
        except RuntimeFailure as exc:
            self._starting = None
            log.warning("warm pool %s: cannot start a container: %s", image, exc.message)
            return None
        self._starting = None
        try:
            await asyncio.wait_for(wait_until_ready(warm.address), WARM_READY_SECONDS)
        except BaseException as exc:
            await asyncio.shield(self._discard(warm))
            if not isinstance(exc, TimeoutError):
                raise
            log.warning("warm pool %s: a container did not answer in %.0f s", image,
                        WARM_READY_SECONDS)
            return None
        return warm

    async def _discard(self, warm: WarmContainer) -> None:
        with contextlib.suppress(RuntimeFailure):
            await self.runtime.discard_warm(warm)
