"""Hot-plug on the drone: add a mount to a running backend, or take one out.

The controller forwards ``POST/DELETE /ctrl/b/{id}/mounts`` as an ``add_mount`` or
``remove_mount`` message; this module answers each with a ``mount_result``. Adding runs the
spawn's pipeline for the one entry (authorize with this drone's policy and the backend's key,
validate, walk the host volume without following a symlink, pin the directory on a staging
path of the backend) and then injects the pinned tree into the running container at its
target (``mounts/inject.py``, as a warm pool's claim does). Removing ejects it inside the
container and releases its pin.

A refused change changes nothing: a check fails before anything is made, and a failure after
the pin (the container's target is a symlink, say) releases the pin and removes the
directories the walk created. Every change is recorded in the drone's store
(:meth:`DroneStore.set_mounts`), so after a drone restart the adopted backend's mounts, and
which staging pins they hold, are still known. Changes to one backend run one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

from websockets.exceptions import ConnectionClosed

from sailplane.drone.executor import Executor
from sailplane.errors import MountRefused, SailplaneError
from sailplane.mounts.hot_plug import (
    HotPlugUnsupported,
    LiveMount,
    NotRunning,
    check_added,
    check_removed,
    next_pin,
    spawn_mounts,
)
from sailplane.mounts.inject import eject, inject
from sailplane.mounts.policy import Access
from sailplane.mounts.resolve import CreatedDirectories, open_beneath
from sailplane.mounts.validate import TemplateValues
from sailplane.protocol import AddMount, MountChangeError, MountResult, RemoveMount, SpawnBackend
from sailplane.spec import VolumeMount
from sailplane.state import BackendStatus

log = logging.getLogger(__name__)

Send = Callable[[str], Awaitable[None]]
# A backend's container exists and has its address from ``waiting`` on.
_RUNNING = frozenset({BackendStatus.WAITING, BackendStatus.READY})


class HotPlug:
    """The hot-plug changes of one executor's backends."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # with how many use it
        self._answers: set[asyncio.Task[None]] = set()

    def receive(self, message: AddMount | RemoveMount, send: Send) -> None:
        """Make the change in the background (the socket keeps reading) and ``send`` the
        answer."""
        task = asyncio.create_task(self._answer(message, send))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _answer(self, message: AddMount | RemoveMount, send: Send) -> None:
        try:
            if isinstance(message, AddMount):
                mounts = await self.add(message.backend_id, message.mount)
            else:
                mounts = await self.remove(message.backend_id, message.target)
            result = MountResult(request_id=message.request_id, mounts=list(mounts))
        except SailplaneError as exc:
            field = exc.mount if isinstance(exc, MountRefused) else None
            log.info("backend %s: %s refused: %s", message.backend_id, message.type,
                     exc.message)
            result = MountResult(request_id=message.request_id, error=MountChangeError(
                code=exc.code, message=exc.message, field=None if field is None else str(field)))
        except Exception as exc:  # never leave the caller waiting for its timeout
            log.exception("backend %s: %s failed", message.backend_id, message.type)
            result = MountResult(request_id=message.request_id, error=MountChangeError(
                code="drone_error", message=f"the drone failed: {type(exc).__name__}: {exc}"))
        with suppress(ConnectionClosed):  # the caller's controller is gone: no one to tell
            await send(result.model_dump_json())

    async def add(self, backend_id: str, spec: VolumeMount) -> list[LiveMount]:
        """Authorize, pin and inject ``spec``; the backend's mounts after it."""
        async with self._lock(backend_id):
            spawn, current = self._running(backend_id)
            values = _values(spawn)
            plan = check_added(spec, self.executor.policy, values, current)
            if self.executor.policy.platform != "posix":
                raise HotPlugUnsupported("hot-plug needs a Linux drone")
            pid = await self._pid(backend_id)
            assert plan.volume is not None  # checked with the drone's policy
            pin = next_pin(current)
            staging = self.executor.staging
            created = CreatedDirectories()
            try:
                _, fd = open_beneath(plan.volume.path, plan.parts, mount=plan.mount,
                                     field=plan.field, created=created,
                                     may_create=plan.volume.access is Access.RW)
                try:
                    source = staging.pin(fd, backend_id, pin, plan.read_only, plan.mount,
                                         plan.field)
                finally:
                    os.close(fd)
                await asyncio.to_thread(inject, pid, source, plan.target, mount="target",
                                        field="target")
                if self.executor.status(backend_id) not in _RUNNING:  # it ended meanwhile
                    raise NotRunning(f"backend {backend_id} ended while the mount was added")
            except BaseException:
                staging.release_one(backend_id, pin)
                created.rollback()
                raise
            created.release()
            mounts = [*current, LiveMount(target=plan.target, type="host",
                                          read_only=plan.read_only, hot_plugged=True, pin=pin)]
            self.executor.store.set_mounts(backend_id, mounts)
            log.info("backend %s: hot-plugged a mount at %s (%s)", backend_id, plan.target,
                     "ro" if plan.read_only else "rw")
            return mounts

    async def remove(self, backend_id: str, target: str) -> list[LiveMount]:
        """Eject the mount at ``target`` and release its pin; the backend's mounts after."""
        async with self._lock(backend_id):
            _, current = self._running(backend_id)
            found = check_removed(target, current)
            pid = await self._pid(backend_id)
            await asyncio.to_thread(eject, pid, found.target, mount="target", field="target")
            if found.pin is not None:
                self.executor.staging.release_one(backend_id, found.pin)
            mounts = [m for m in current if m is not found]
            self.executor.store.set_mounts(backend_id, mounts)
            log.info("backend %s: removed its mount at %s", backend_id, target)
            return mounts

    def _running(self, backend_id: str) -> tuple[SpawnBackend, list[LiveMount]]:
        """The backend's spawn and its mounts now; NotRunning without a running container."""
        status = self.executor.status(backend_id)
        record = self.executor.store.get(backend_id)
        if record is None or status not in _RUNNING:
            state = "is not known to this drone" if record is None else f"is {status}"
            raise NotRunning(f"backend {backend_id} {state}; only a running backend's mounts "
                             "can change")
        current = self.executor.store.mounts(backend_id)
        if current is None:
            current = spawn_mounts(record.spawn.executable, _values(record.spawn))
        return record.spawn, current

    async def _pid(self, backend_id: str) -> int:
        pid = await self.executor.runtime.init_pid(backend_id)
        if pid is None:
            raise HotPlugUnsupported(f"the {type(self.executor.runtime).__name__} of this drone "
                                     "cannot change a running container's mounts")
        return pid

    @asynccontextmanager
    async def _lock(self, backend_id: str) -> AsyncIterator[None]:
        """One change of the backend at a time; the lock lives only while changes wait."""
        lock, users = self._locks.get(backend_id, (asyncio.Lock(), 0))
        self._locks[backend_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[backend_id]
            if users == 1:
                del self._locks[backend_id]
            else:
                self._locks[backend_id] = (lock, users - 1)


def _values(spawn: SpawnBackend) -> TemplateValues:
    return TemplateValues(spawn.key.name, spawn.key.namespace, spawn.backend_id)
