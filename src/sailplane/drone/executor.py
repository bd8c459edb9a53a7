"""The executor: runs each backend through the lifecycle of docs/architecture.md on one runtime.

    spawn -> loading (image) -> starting (mounts resolved, container started)
          -> waiting (port answers HTTP) -> ready
    terminate(soft) -> terminating (SIGTERM) -> [grace] -> hard-terminating (SIGKILL)
    container exit  -> terminated (reason: exited with its code, or why it was stopped)

Every change is written to the drone's store (status + outbox) before anyone is told. Exits
come only from the runtime's exit stream, which is the single place a backend becomes
``terminated`` once it has a container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any

from sailplane.drone.limits import OperatorLimits, effective_limits
from sailplane.drone.readiness import wait_until_ready
from sailplane.drone.store import BackendRecord, DroneStore
from sailplane.drone.warm_pool import WarmPool, WarmPoolSpec
from sailplane.errors import BackendExited, LimitRefused, MountRefused, RuntimeFailure
from sailplane.mounts.pin import StagingArea
from sailplane.mounts.plan import check_mounts, plan_mounts
from sailplane.mounts.policy import MountPolicy
from sailplane.mounts.resolve import CreatedDirectories
from sailplane.mounts.validate import TemplateValues
from sailplane.protocol import SpawnBackend
from sailplane.runtime.base import (
    BackendAddress,
    BackendExit,
    BackendSpec,
    OwnedBackend,
    Runtime,
)
from sailplane.spec import PullPolicy, ResourceLimits
from sailplane.state import (
    BackendState,
    BackendStatus,
    TerminationReason,
    check_transition,
    now_ms,
)
from sailplane.timing import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_STARTUP_TIMEOUT_SECONDS,
    KILL_CONFIRM_SECONDS,
    REMOVALS_TIMEOUT_SECONDS,
)

log = logging.getLogger(__name__)

START_RETRIED = ("its start was interrupted by the drone stopping, run again, and interrupted "
                 "again; not tried a third time")
START_REVOKED = ("its start was interrupted by the drone stopping, and the controller revoked it "
                 "before it ran again")
START_ABANDONED = ("the controller revoked it while its container was being created; the "
                   "container, if the start still made one, is removed")
# How long a restarted drone waits for the engine's list of its containers before asking
# again: one restarted drone never finished its adoption (nor connected to its controller),
# and an engine restarting can lose an answer.
OWNED_LIST_SECONDS = 30.0
# How long a container removal that fails (the engine restarting drops the call) is tried
# again before the drone gives up on it (its next start removes what is left).
REMOVAL_RETRY_SECONDS = 120.0
REMOVAL_RETRY_FIRST_SECONDS = 0.2
REMOVAL_RETRY_MAX_SECONDS = 5.0


@dataclass(frozen=True)
class ExecutorSettings:
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    startup_timeout_seconds: float = DEFAULT_STARTUP_TIMEOUT_SECONDS
    keep_containers: bool = False  # for debugging: leave stopped containers in place
    limits: OperatorLimits = field(default_factory=OperatorLimits)
    warm_pools: tuple[WarmPoolSpec, ...] = ()  # --warm-pool IMAGE[=N]


@dataclass
class _Backend:
    spawn: SpawnBackend
    status: BackendStatus
    address: BackendAddress | None = None
    stop_reason: TerminationReason | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def backend_id(self) -> str:
        return self.spawn.backend_id


class Executor:
    def __init__(
        self, runtime: Runtime, policy: MountPolicy, store: DroneStore, staging: StagingArea,
        settings: ExecutorSettings | None = None,
    ) -> None:
        self.runtime = runtime
        self.policy = policy
        self.store = store
        self.staging = staging  # where host mounts are pinned for the runtime
        self.settings = settings or ExecutorSettings()
        self.warm_pool: WarmPool | None = None  # containers started ahead, if the drone has any
        self.new_events = asyncio.Event()  # set whenever the outbox grows
        self._backends: dict[str, _Backend] = {}
        # Starts a crash interrupted, run again only once the controller has answered
        # (``resume_starts``): it may have given their keys to other backends meanwhile.
        self._interrupted: dict[str, _Backend] = {}
        self._exit_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- life of the executor --------------------------------------------------------------

    async def start(self) -> None:
        """Watch exits, then adopt the backends a previous run of this drone left behind."""
        exits = self.runtime.exits()
        self._exit_task = asyncio.create_task(self._follow_exits(exits))
        await self._adopt()
        if self.settings.warm_pools:
            self.warm_pool = WarmPool(
                self.runtime, list(self.settings.warm_pools),
                effective_limits(ResourceLimits(), self.settings.limits),
            )
            self.warm_pool.start()

    async def close(self, *, remove_isolation: bool = False) -> None:
        """Stop managing; running containers are left for the next start to adopt.

        Removals of terminated backends already under way are finished first. With
        ``remove_isolation`` (``sailplane dev``, once every backend is gone) the backends'
        network and firewall rules go too, unless another drone's backends still use them."""
        tasks = [b.task for b in self._backends.values() if b.task]
        if self._exit_task:
            tasks.append(self._exit_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._background, return_exceptions=True)
        if self.warm_pool is not None:  # unclaimed warm containers are not backends: go
            await self.warm_pool.close()
        if remove_isolation:
            try:
                if not await self.runtime.remove_isolation():
                    log.info("the backends' network stays: other backends still use it")
            except RuntimeFailure as exc:
                log.warning("cannot remove the backends' network: %s", exc.message)
        await self.runtime.close()

    async def terminate_all(self, reason: TerminationReason) -> None:
        """Soft-terminate every backend this drone runs, all at once, and return when their
        containers are removed too; for ``sailplane dev``'s Ctrl-C, which must leave nothing
        behind.

        Everything is started together, and the runtime bounds how many engine calls run at
        a time (``runtime/calls.py``), so a thousand backends cost about a thousand engine
        calls divided by that bound, plus one grace period for those slow to exit."""
        live = [b.backend_id for b in self._backends.values() if b.status.is_alive]
        log.info("terminating %d backends", len(live))
        await asyncio.gather(*(self.terminate(backend_id, False, reason) for backend_id in live))
        await self.removals_done(REMOVALS_TIMEOUT_SECONDS)

    async def removals_done(self, timeout: float) -> bool:
        """Wait (at most ``timeout``) for the container removals under way; whether all
        finished."""
        pending = set(self._background)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        if pending:
            log.warning("%d container removals still under way after %.0f s", len(pending),
                        timeout)
        return not pending

    # -- commands --------------------------------------------------------------------------

    def spawn(self, spawn: SpawnBackend) -> None:
        """Start a backend's lifecycle. A spawn already known (a resend) is ignored."""
        if not self.store.add(spawn):
            return
        backend = _Backend(spawn, BackendStatus.SCHEDULED)
        self._backends[spawn.backend_id] = backend
        backend.task = asyncio.create_task(self._run(backend))

    def resume_starts(self, revoked: Collection[str]) -> None:
        """The controller's first lease renewal since this drone started has come: run again
        the starts a crash interrupted, except those it ``revoked`` (it counts them
        terminated and may have given their keys to other backends) or that were asked to
        stop: those end without a container."""
        interrupted, self._interrupted = self._interrupted, {}
        for backend in interrupted.values():
            if backend.backend_id in revoked or backend.stop_reason is not None:
                self._finish(backend, backend.stop_reason or TerminationReason.LOST,
                             message=START_REVOKED if backend.backend_id in revoked else None)
            else:
                self.store.retry_start(backend.backend_id)
                backend.task = asyncio.create_task(self._run(backend))

    async def terminate(self, backend_id: str, hard: bool, reason: TerminationReason) -> None:
        """Soft: SIGTERM, then SIGKILL after the grace period. Hard: SIGKILL at once.

        Returns once the backend is terminated (or the kill could not be confirmed). A hard
        terminate of a backend whose container is being created makes it
        ``hard-terminating`` at once and returns; the container is killed when its start
        returns, and only then is the backend terminated (its key stays held until no
        container of it can run)."""
        backend = self._backends.get(backend_id)
        if backend is None or backend.status is BackendStatus.TERMINATED:
            return
        if backend.stop_reason is None:
            backend.stop_reason = reason
            self.store.set_stop_reason(backend_id, reason)
        if backend.address is None:
            if (self._interrupted.pop(backend_id, None) is not None
                    or (backend.task and backend.status.rank < BackendStatus.STARTING.rank)):
                # No container yet: stop the lifecycle before it creates one.
                self._finish(backend, backend.stop_reason)
            elif hard and backend.status is BackendStatus.STARTING:
                # The engine may take long to create the container (a dockerd restarting):
                # say so now; _run kills the container as soon as its start returns.
                self._set(backend, BackendStatus.HARD_TERMINATING)
            return  # _run sees stop_reason once start() returns
        if not hard and backend.status.rank < BackendStatus.TERMINATING.rank:
            self._set(backend, BackendStatus.TERMINATING)
            await self.runtime.signal(backend_id, hard=False)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.grace_seconds):
                    await backend.exited.wait()
        if not backend.exited.is_set():
            await self._kill(backend)

    async def revoke(self, backend_id: str) -> None:
        """The controller revoked the backend's key lease: it counts it terminated and may
        have given its key to another backend already. Hard-terminate it; one whose container
        is still being created is reported terminated at once (waiting for a slow start would
        only keep the controller uninformed), and the container that start may still make is
        removed when it returns, with no second report."""
        backend = self._backends.get(backend_id)
        if (backend is not None and backend.address is None
                and BackendStatus.STARTING.rank <= backend.status.rank
                < BackendStatus.TERMINATED.rank
                and backend.task is not None and not backend.task.done()):
            if backend.stop_reason is None:
                backend.stop_reason = TerminationReason.LOST
                self.store.set_stop_reason(backend_id, TerminationReason.LOST)
            self._set(backend, BackendStatus.TERMINATED, reason=backend.stop_reason,
                      message=START_ABANDONED)
            return
        await self.terminate(backend_id, True, TerminationReason.LOST)

    async def wait_for(self, backend_id: str, status: BackendStatus, timeout: float) -> None:
        """Wait until the backend has reached ``status`` (or passed it)."""
        async with asyncio.timeout(timeout):
            while True:
                backend = self._backends.get(backend_id)
                if backend is None:  # finished and forgotten (or never known: KeyError)
                    if self.status(backend_id) is None:
                        raise KeyError(backend_id)
                    return
                if backend.status.rank >= status.rank:
                    return
                await backend.changed.wait()

    def status(self, backend_id: str) -> BackendStatus | None:
        backend = self._backends.get(backend_id)
        if backend is not None:
            return backend.status
        record = self.store.get(backend_id)  # a finished backend lives on in the store only
        return None if record is None else record.status

    @property
    def live_count(self) -> int:
        """Backends not yet terminated."""
        return sum(1 for b in self._backends.values() if b.status is not BackendStatus.TERMINATED)

    def address(self, backend_id: str) -> BackendAddress | None:
        backend = self._backends.get(backend_id)
        return None if backend is None else backend.address

    # -- the lifecycle ---------------------------------------------------------------------

    async def _run(self, backend: _Backend) -> None:
        spawn = backend.spawn
        values = TemplateValues(spawn.key.name, spawn.key.namespace, spawn.backend_id)
        try:
            check_mounts(spawn.executable, self.policy, values)  # fail before any work
            limits = effective_limits(spawn.executable.resource_limits, self.settings.limits)
            if backend.status.rank < BackendStatus.LOADING.rank:  # adopted later: it is
                self._set(backend, BackendStatus.LOADING)
            # A warm container of the image runs, so the image is there: no engine call
            # (unless it must be pulled anew); a claim that finds the pool empty prepares.
            prepared = not self._warm_claimable(spawn)
            if prepared:
                await self._prepare(spawn)
            if backend.status.rank < BackendStatus.STARTING.rank:
                self._set(backend, BackendStatus.STARTING)
            warm = await self._start_container(backend, values, limits, prepared)
        except BackendExited as exc:  # ran and ended at once (unless its exit came first)
            backend.exited.set()
            self._finish(backend, backend.stop_reason or TerminationReason.EXITED,
                         exit_code=exc.exit_code)
            return
        except (MountRefused, LimitRefused, RuntimeFailure) as exc:
            self._finish(backend, TerminationReason.ERROR, message=exc.message)
            return
        except Exception as exc:  # any other failure ends it too, never stuck in `starting`
            log.exception("backend %s: its start failed", backend.backend_id)
            self._finish(backend, TerminationReason.ERROR,
                         message=f"the drone failed to start it: {type(exc).__name__}: {exc}")
            return
        if backend.status is BackendStatus.TERMINATED:  # revoked while it started
            self._finish(backend, backend.stop_reason or TerminationReason.ERROR)
            return
        if backend.stop_reason is not None:  # terminated while the container was starting
            await self.terminate(backend.backend_id, True, backend.stop_reason)
            return
        await self._wait_ready(backend, answered=warm)

    def _warm_claimable(self, spawn: SpawnBackend) -> bool:
        return (self.warm_pool is not None and self.warm_pool.can_take(spawn.executable)
                and spawn.executable.pull_policy is not PullPolicy.ALWAYS)

    async def _prepare(self, spawn: SpawnBackend) -> None:
        await self.runtime.prepare(
            spawn.executable.image, spawn.executable.pull_policy or PullPolicy.IF_NOT_PRESENT
        )

    async def _start_container(
        self, backend: _Backend, values: TemplateValues, limits: ResourceLimits,
        prepared: bool,
    ) -> bool:
        """Start the backend's container, or claim a warm one; whether it was warm."""
        spawn = backend.spawn
        created = CreatedDirectories()
        mounts = plan_mounts(spawn.executable, self.policy, values, apply=True, created=created,
                             staging=self.staging, pin=True)
        spec = BackendSpec(
            backend_id=spawn.backend_id,
            image=spawn.executable.image,
            env={
                **spawn.executable.env,
                "SAILPLANE_BACKEND_ID": spawn.backend_id,
                "SAILPLANE_SECRET_TOKEN": spawn.secret_token,
                "SAILPLANE_FENCING_TOKEN": str(spawn.fencing_token),
            },
            mounts=mounts,
            resource_limits=limits,
            command=spawn.executable.command,
        )
        warm = self.warm_pool.take(spawn.executable) if self.warm_pool else None
        try:
            if warm is not None and self.warm_pool is not None:
                address = await self.warm_pool.claim(warm, spawn, mounts)
            else:
                if not prepared:
                    await self._prepare(spawn)
                address = await self.runtime.start(spec)
        except BackendExited:
            created.release()  # it ran: its directories stay, as after any exit
            raise
        except BaseException:
            # Nothing of a backend that never ran stays behind: no pin, no new directory.
            self.staging.release(spawn.backend_id)
            created.rollback()
            raise
        created.release()
        backend.address = address
        self.store.set_address(spawn.backend_id, address)
        return warm is not None

    async def _wait_ready(self, backend: _Backend, answered: bool = False) -> None:
        """Probe until the backend answers HTTP; ``answered``: it did already (a warm
        container, probed before its claim, which changed only its mounts), so it is ready."""
        assert backend.address is not None
        if backend.status is not BackendStatus.WAITING:  # an adopted backend may be there
            self._set(backend, BackendStatus.WAITING)
        if answered:
            if backend.stop_reason is None and not backend.exited.is_set():
                self._set(backend, BackendStatus.READY)
            return
        ready = asyncio.create_task(wait_until_ready(backend.address))
        exited = asyncio.create_task(backend.exited.wait())
        done, _ = await asyncio.wait(
            {ready, exited}, timeout=self.settings.startup_timeout_seconds,
            return_when=asyncio.FIRST_COMPLETED,
        )
        ready.cancel()
        exited.cancel()
        if ready in done and backend.stop_reason is None and not backend.exited.is_set():
            self._set(backend, BackendStatus.READY)
        elif not done:
            await self.terminate(backend.backend_id, True, TerminationReason.STARTUP_TIMEOUT)

    async def _kill(self, backend: _Backend) -> None:
        if backend.status is not BackendStatus.HARD_TERMINATING:
            self._set(backend, BackendStatus.HARD_TERMINATING)
        await self.runtime.signal(backend.backend_id, hard=True)
        try:
            async with asyncio.timeout(KILL_CONFIRM_SECONDS):
                await backend.exited.wait()
        except TimeoutError:
            log.error("backend %s did not exit after SIGKILL", backend.backend_id)

    async def _follow_exits(self, exits: AsyncIterator[BackendExit]) -> None:
        async for exit_ in exits:
            self._on_exit(exit_)

    def _on_exit(self, exit_: BackendExit) -> None:
        backend = self._backends.get(exit_.backend_id)
        if backend is None or backend.status is BackendStatus.TERMINATED:
            return
        backend.exited.set()
        reason = backend.stop_reason or TerminationReason.EXITED
        self._finish(backend, reason, exit_code=exit_.exit_code)

    def _finish(
        self, backend: _Backend, reason: TerminationReason, *, exit_code: int | None = None,
        message: str | None = None,
    ) -> None:
        """Mark terminated (the one way a backend ends) and remove its container.

        A backend already terminated is one revoked while its container was being created
        (``revoke``) whose start has now ended: it is not reported again, only what its start
        left is removed."""
        may_have_container = backend.status.rank >= BackendStatus.STARTING.rank
        if backend.status is not BackendStatus.TERMINATED:
            self._set(backend, BackendStatus.TERMINATED, reason=reason, exit_code=exit_code,
                      message=message)
        if backend.task and backend.task is not asyncio.current_task():
            backend.task.cancel()
        if may_have_container and not self.settings.keep_containers:
            self._in_background(self._remove(backend.backend_id, forget=True))
        else:
            self._forget(backend)

    async def _remove(self, backend_id: str, forget: bool = False) -> None:
        """Remove the container, then the staging mounts it was bound from; with ``forget``
        the executor then drops the finished backend (the store keeps its record)."""
        try:
            if await self._remove_container(backend_id):
                self.staging.release(backend_id)
        finally:
            backend = self._backends.get(backend_id)
            if forget and backend is not None:
                self._forget(backend)

    async def _remove_container(self, backend_id: str) -> bool:
        """``runtime.remove``, tried again with backoff while it fails, for at most
        ``REMOVAL_RETRY_SECONDS`` (a removal lost to an engine restart would leave the
        container of a terminated backend behind for good); whether it was removed."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + REMOVAL_RETRY_SECONDS
        delay = REMOVAL_RETRY_FIRST_SECONDS
        while True:
            try:
                await self.runtime.remove(backend_id)
                return True
            except Exception as exc:
                if loop.time() + delay > give_up_at:
                    log.error("backend %s: cannot remove its container, giving up: %s: %s",
                              backend_id, type(exc).__name__, exc)
                    return False
                log.warning("backend %s: cannot remove its container (%s: %s); again in "
                            "%.1f s", backend_id, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, REMOVAL_RETRY_MAX_SECONDS)

    def _forget(self, backend: _Backend) -> None:
        """A terminated backend leaves memory: what a drone holds grows with its live
        backends, not with every backend it ever ran."""
        if backend.status is BackendStatus.TERMINATED:
            self._backends.pop(backend.backend_id, None)

    def _set(
        self, backend: _Backend, status: BackendStatus, *,
        reason: TerminationReason | None = None, exit_code: int | None = None,
        message: str | None = None,
    ) -> None:
        check_transition(backend.status, status)
        state = BackendState(status=status, time=now_ms(), reason=reason, exit_code=exit_code,
                             message=message)
        self.store.record(backend.backend_id, state)
        backend.status = status
        backend.changed.set()
        backend.changed = asyncio.Event()
        self.new_events.set()
        log.info("backend %s: %s", backend.backend_id, status.value)

    def _in_background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- adoption after a restart ----------------------------------------------------------

    async def _adopt(self) -> None:
        """Adopt live containers we have a record of, clean up the others."""
        # Known before the engine is asked: an exit reported meanwhile finds its backend.
        backends = [self._adopted(record) for record in self.store.unfinished()]
        owned = {found.backend_id: found for found in await self._owned()}
        known = {backend.backend_id for backend in backends}  # some may be finished by now
        for backend_id in owned:
            if backend_id not in known and backend_id not in self._backends:
                # unknown, or terminated in an earlier run
                log.info("removing container of unknown or finished backend %s", backend_id)
                self._in_background(self._remove(backend_id))  # the start goes on meanwhile
        for backend in backends:
            if backend.status is BackendStatus.TERMINATED:
                continue  # its exit was reported while we looked
            found = owned.get(backend.backend_id)
            if found is not None and found.running and found.address is None:
                self._finish(backend, TerminationReason.ERROR,  # removes it
                             message="its container was found running without its port")
            elif found is not None and found.running:
                backend.address = found.address
                if backend.status.rank < BackendStatus.READY.rank:
                    backend.task = asyncio.create_task(self._wait_ready(backend))
                elif not backend.status.is_alive:  # the drone died while terminating it
                    backend.task = asyncio.create_task(self._kill(backend))
            elif found is not None:
                backend.exited.set()
                self._finish(backend, backend.stop_reason or TerminationReason.EXITED,
                             exit_code=found.exit_code)
            elif (backend.status.rank < BackendStatus.STARTING.rank
                  or (backend.status is BackendStatus.STARTING and backend.address is None)):
                # never got a container (the drone died before or while creating it): again,
                # once, after the controller's first renewal (resume_starts); a start
                # interrupted twice may be what stops the drone
                if self.store.start_retried(backend.backend_id):
                    self._finish(backend, TerminationReason.ERROR, message=START_RETRIED)
                else:
                    self._interrupted[backend.backend_id] = backend
            else:
                self._finish(backend, TerminationReason.LOST,
                             message="the container vanished while the drone was down")
        # Pins of backends this drone no longer runs (it died before removing them).
        live = [b.backend_id for b in self._backends.values()
                if b.status is not BackendStatus.TERMINATED]
        for backend_id in self.staging.sweep(keep=live):
            log.info("removed the staging mounts of finished backend %s", backend_id)

    async def _owned(self) -> list[OwnedBackend]:
        """The runtime's list of this drone's containers, asked again (saying so) whenever it
        takes longer than ``OWNED_LIST_SECONDS``: the drone's start never waits for it
        silently."""
        while True:
            try:
                async with asyncio.timeout(OWNED_LIST_SECONDS):
                    return await self.runtime.owned()
            except TimeoutError:
                log.warning("the engine has not listed this drone's containers in %.0f s; "
                            "asking again", OWNED_LIST_SECONDS)

    def _adopted(self, record: BackendRecord) -> _Backend:
        address = BackendAddress(*record.address) if record.address else None
        backend = _Backend(record.spawn, record.status, address, record.stop_reason)
        self._backends[record.backend_id] = backend
        return backend

