"""Density: N live backends on one drone, spawn latency at that load against an idle drone,
memory per backend, and the time to stop them all.

    .venv/bin/python bench/density.py [--n 1000] [--runtime docker|containerd|both]
        [--in-flight 16] [--probes 15] [--checkpoints 5] [--budget 1500]
        [--plot bench/density.png] [--samples FILE] [--check]

For each runtime, in one run, with one drone (an :class:`~sailplane.drone.executor.Executor`
in this process, with a drone id of its own) and ``sailplane/static`` (busybox httpd, exits at
once on SIGTERM):

1. **idle**: ``--probes`` spawns one at a time on an empty drone, each timed from the spawn to
   ``ready`` (its port answers HTTP) and stopped before the next;
2. **fill** to N with at most ``--in-flight`` spawns under way; at ``--checkpoints`` points on
   the way, and at N, the same probes as in 1 (one at a time, the fill paused), so a latency
   is always measured the same way, only the number of live backends differs;
3. **memory** at N against the idle drone: this process (the drone) and, summed by PSS, the
   engine's processes (dockerd, containerd, the shims, docker-proxy), and the machine's
   ``MemAvailable``; divided by N;
4. **stop all**: ``Executor.terminate_all`` (what Ctrl-C of ``sailplane dev`` runs), timed to
   the last container removed; then what is left: containers of this drone, staging
   directories, and on containerd anything of any backend the run spawned (task, snapshot,
   network namespace, address, cgroup, log: ``runtime/containerd/leftovers.py``);
5. **idle again**: the probes of 1 once more; the idle figure is both sets together;
6. **the raw engine's floor** for stopping N: N containers made straight through the engine
   (Docker's Engine API through the SDK; ``ctr`` for containerd), equally made (same image,
   an empty network namespace, Docker: the same capabilities), at most ``--in-flight`` made
   at once, then all stopped and removed with the drone's parallelism (``MAX_ENGINE_CALLS``
   calls in flight) in the fewest engine calls: Docker, one forced removal per container (the
   engine kills and removes); containerd, ``ctr tasks delete --force`` then ``ctr containers
   delete``, ``MAX_BATCH`` ids a process, as the drone batches them. The report prints
   Sailplane's stop-all against it.

Every probe point (1, 2, 5) also measures the **raw engine's spawn**, interleaved with the
drone's probes one for one: a container created and started straight through the engine on
the host network (its own port, no CNI), timed to its first HTTP answer, then removed; so the
report shows whether the engine itself slows down with N live, apart from Sailplane.

Targets: the p50 at N at most 1.5x the idle p50; stop all in at most 15 s. ``--check`` exits 1
when one is missed. Everything the bench starts is removed at the end, whatever happens; the
fill stops early (and says so) once ``--budget`` seconds have passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from sailplane.drone.executor import Executor, ExecutorSettings
from sailplane.drone.readiness import wait_until_ready
from sailplane.drone.store import DroneStore
from sailplane.mounts.pin import StagingArea
from sailplane.mounts.policy import MountPolicy
from sailplane.protocol import SpawnBackend
from sailplane.runtime.base import BACKEND_CAPABILITIES, DRONE_LABEL, BackendAddress, Runtime
from sailplane.runtime.calls import MAX_ENGINE_CALLS
from sailplane.runtime.containerd.batch import MAX_BATCH
from sailplane.runtime.containerd.ctr import Ctr, CtrError, default_address, normalize_image
from sailplane.runtime.containerd.leftovers import traces
from sailplane.runtime.containerd.netns_pool import NetnsPool
from sailplane.runtime.containerd.network import NamespaceNetwork
from sailplane.runtime.containerd.runtime import ContainerdRuntime, container_id
from sailplane.runtime.docker.runtime import DockerRuntime
from sailplane.spec import ExecutorConfig, KeyConfig, PullPolicy
from sailplane.state import BackendStatus, TerminationReason

IMAGE = "sailplane/static:latest"
MAX_LOAD_RATIO = 1.5
MAX_STOP_SECONDS = 15.0
SPAWN_TIMEOUT_SECONDS = 120.0
PROBE_STOP_TIMEOUT_SECONDS = 30.0
STOP_WAIT_SECONDS = 900.0  # a bound on the wait for the last removal, not a target
CONTAINERD_NAMESPACE = "sailplane-bench-density"
NAMESPACE_GC_WAIT_SECONDS = 10.0
PLOT = Path(__file__).resolve().parent / "density.png"
RAW_LABEL = "dev.sailplane.bench-raw"  # the raw engine's containers, by run
ENGINE_PROCESSES = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2",
                    "docker-proxy")


@dataclass
class Result:
    runtime: str
    n: int
    idle_before: list[float] = field(default_factory=list)  # ms
    idle_after: list[float] = field(default_factory=list)
    probes: dict[int, list[float]] = field(default_factory=dict)  # live count -> ms
    fill: list[tuple[int, float]] = field(default_factory=list)  # (live when started, ms)
    fill_seconds: float = 0.0
    fill_cpu_seconds: float = 0.0  # this process's (the drone's) CPU time while filling
    filled: int = 0
    memory_idle: dict[str, int] = field(default_factory=dict)
    memory_full: dict[str, int] = field(default_factory=dict)
    stop_seconds: float = 0.0  # to the last container removed
    returned_seconds: float = 0.0  # until terminate_all returned
    left: dict[str, int] = field(default_factory=dict)
    spawned: list[str] = field(default_factory=list)  # every backend id, probes included
    failures: list[str] = field(default_factory=list)
    probe_cpu: dict[str, float] = field(default_factory=dict)  # point -> drone CPU ms a probe
    raw_idle: list[float] = field(default_factory=list)  # ms, the raw engine's spawn
    raw_probes: dict[int, list[float]] = field(default_factory=dict)  # live count -> ms
    raw_made: int = 0  # containers made for the raw stop
    raw_fill_seconds: float = 0.0
    raw_stop_seconds: float = 0.0
    raw_left: int = 0

    @property
    def idle(self) -> list[float]:
        return self.idle_before + self.idle_after

    @property
    def loaded(self) -> list[float]:
        return self.probes.get(self.filled, [])


def spawn_of(image: str) -> SpawnBackend:
    backend_id = f"b-{uuid.uuid4().hex[:16]}"
    return SpawnBackend(
        backend_id=backend_id, key=KeyConfig(name=f"k-{backend_id}"),
        executable=ExecutorConfig(image=image, pull_policy=PullPolicy.IF_NOT_PRESENT),
        secret_token="bench",
    )


async def spawn_ready(executor: Executor, image: str, spawned: list[str]) -> tuple[str, float]:
    """Spawn one backend (its id noted in ``spawned``); its id and seconds to ``ready``.
    Raises if it does not get there."""
    spawn = spawn_of(image)
    spawned.append(spawn.backend_id)
    started = time.perf_counter()
    executor.spawn(spawn)
    await executor.wait_for(spawn.backend_id, BackendStatus.READY, SPAWN_TIMEOUT_SECONDS)
    elapsed = time.perf_counter() - started
    status = executor.status(spawn.backend_id)
    if status is not BackendStatus.READY:
        raise RuntimeError(f"backend {spawn.backend_id} ended {status}")
    return spawn.backend_id, elapsed


async def probes(executor: Executor, image: str, count: int, spawned: list[str],
                 engine: Engine | None = None, raw: list[float] | None = None,
                 cpu: list[float] | None = None) -> list[float]:
    """``count`` spawns one at a time, each stopped (and removed) before the next; in ms.
    With ``engine``, each is followed by one raw engine spawn, its time added to ``raw``;
    with ``cpu``, this process's CPU ms for each spawn to ready is added to it (the drone's
    share: does it grow with the backends live?)."""
    times = []
    for _ in range(count):
        cpu_started = time.process_time()
        backend_id, elapsed = await spawn_ready(executor, image, spawned)
        if cpu is not None:
            cpu.append((time.process_time() - cpu_started) * 1000)
        times.append(elapsed * 1000)
        await executor.terminate(backend_id, True, TerminationReason.EXTERNAL)
        await executor.removals_done(PROBE_STOP_TIMEOUT_SECONDS)
        if engine is not None and raw is not None:
            raw.append(await engine.raw_probe() * 1000)
    return times


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def raw_stop_floor(engine: Engine, n: int, in_flight: int, result: Result) -> None:
    """Make ``n`` containers straight through the engine (``in_flight`` at once), then time
    stopping and removing them all with the drone's parallelism."""
    names = [f"sp-raw-{uuid.uuid4().hex[:12]}" for _ in range(n)]
    slots = asyncio.Semaphore(in_flight)

    async def make(name: str) -> bool:
        async with slots:
            try:
                await engine.raw_start(name, None)
            except Exception as exc:  # noted and left out: the floor is of those made
                result.failures.append(f"raw start: {type(exc).__name__}: {exc}")
                return False
            return True

    started = time.monotonic()
    made = [name for name, ok in zip(names, await asyncio.gather(*(make(n) for n in names)),
                                     strict=True) if ok]
    result.raw_made = len(made)
    result.raw_fill_seconds = time.monotonic() - started
    started = time.monotonic()
    await engine.raw_stop(made)
    result.raw_stop_seconds = time.monotonic() - started
    result.raw_left = await engine.raw_left()


async def fill(executor: Executor, image: str, target: int, in_flight: int, result: Result,
               deadline: float) -> None:
    """Spawn until ``target`` backends are live, at most ``in_flight`` under way."""
    slots = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with slots:
            if time.monotonic() > deadline:
                return
            live = executor.live_count
            try:
                _, elapsed = await spawn_ready(executor, image, result.spawned)
            except (RuntimeError, TimeoutError) as exc:
                result.failures.append(f"{type(exc).__name__}: {exc}")
                return
            result.fill.append((live, elapsed * 1000))

    missing = target - executor.live_count
    await asyncio.gather(*(one() for _ in range(max(0, missing))))


def pss_kb(pid: int) -> int:
    """Proportional set size (shared pages divided among their users), in KiB; 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def memory() -> dict[str, int]:
    """KiB: this process (the drone), each engine process kind summed, the machine's used."""
    found: dict[str, int] = {"drone": pss_kb(os.getpid())}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if name in ENGINE_PROCESSES:
            kind = "containerd-shim" if name.startswith("containerd-shim") else name
            found[kind] = found.get(kind, 0) + pss_kb(int(entry.name))
    info = {line.split(":")[0]: int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()}
    found["machine"] = info["MemTotal"] - info["MemAvailable"]
    return found


class Engine:
    """One runtime under test: makes the runtime, and finds what a drone left behind."""

    name: str

    def runtime(self, drone_id: str, state_dir: Path) -> Runtime:
        raise NotImplementedError

    async def left_behind(self, drone_id: str, backend_ids: list[str],
                          state_dir: Path) -> dict[str, int]:
        """What is left of the drone's containers, or of any backend it spawned, by kind."""
        raise NotImplementedError

    async def remove_everything(self, drone_id: str, state_dir: Path) -> None:
        raise NotImplementedError

    async def raw_start(self, name: str, port: int | None) -> None:
        """Create and start a container straight through the engine: on the host network
        serving ``port``, or with an empty network namespace (``None``)."""
        raise NotImplementedError

    async def raw_remove(self, name: str) -> None:
        raise NotImplementedError

    async def raw_stop(self, names: list[str]) -> None:
        """Stop and remove these raw containers, ``MAX_ENGINE_CALLS`` engine calls at once."""
        raise NotImplementedError

    async def raw_left(self) -> int:
        """Raw containers of this run still there."""
        raise NotImplementedError

    async def raw_probe(self) -> float:
        """Seconds from a raw container's create to its first HTTP answer; it is removed."""
        name, port = f"sp-raw-{uuid.uuid4().hex[:12]}", free_port()
        started = time.perf_counter()
        try:
            await self.raw_start(name, port)
            async with asyncio.timeout(SPAWN_TIMEOUT_SECONDS):
                await wait_until_ready(BackendAddress("127.0.0.1", port))
            return time.perf_counter() - started
        finally:
            await self.raw_remove(name)


class DockerEngine(Engine):
    name = "docker"

    def __init__(self, image: str) -> None:
        self.image = image
        self.client = docker.from_env(max_pool_size=MAX_ENGINE_CALLS + 1)
        self.pool = ThreadPoolExecutor(MAX_ENGINE_CALLS, thread_name_prefix="raw-docker")
        self.run_id = uuid.uuid4().hex[:10]

    async def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, lambda: function(*args, **kwargs))

    def _raw_create(self, name: str, port: int | None) -> None:
        """As the drone makes a backend (``DockerRuntime._create``), less what a spawn
        does not need here: limits (none in this bench) and mounts."""
        api = self.client.api
        host_config = api.create_host_config(
            security_opt=["no-new-privileges"], cap_drop=["ALL"],
            cap_add=list(BACKEND_CAPABILITIES), network_mode="none" if port is None else "host")
        created = api.create_container(
            self.image, name=name, detach=True, host_config=host_config,
            environment={"PORT": str(port or 8080)}, labels={RAW_LABEL: self.run_id})
        api.start(created["Id"])

    async def raw_start(self, name: str, port: int | None) -> None:
        await self._call(self._raw_create, name, port)

    async def raw_remove(self, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            await self._call(self.client.api.remove_container, name, force=True)

    async def raw_stop(self, names: list[str]) -> None:
        """One call each: a forced removal kills (SIGKILL; the image's init ends at once on
        SIGTERM too) and removes."""
        await asyncio.gather(*(self._call(self.client.api.remove_container, name, force=True)
                               for name in names))

    def _raw_listed(self) -> list[str]:
        listed = self.client.api.containers(all=True, quiet=True,
                                            filters={"label": f"{RAW_LABEL}={self.run_id}"})
        return [found["Id"] for found in listed]

    async def raw_left(self) -> int:
        return len(await self._call(self._raw_listed))

    def runtime(self, drone_id: str, state_dir: Path) -> Runtime:
        return DockerRuntime(drone_id)

    def _ours(self, drone_id: str) -> list[str]:
        listed = self.client.api.containers(all=True, quiet=True,
                                            filters={"label": f"{DRONE_LABEL}={drone_id}"})
        return [found["Id"] for found in listed]

    async def left_behind(self, drone_id: str, backend_ids: list[str],
                          state_dir: Path) -> dict[str, int]:
        return {"containers": len(await asyncio.to_thread(self._ours, drone_id))}

    async def remove_everything(self, drone_id: str, state_dir: Path) -> None:
        ours = await asyncio.to_thread(self._ours, drone_id)
        for container in ours + await self._call(self._raw_listed):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                await asyncio.to_thread(self.client.api.remove_container, container, force=True)
        self.pool.shutdown()
        self.client.close()


class ContainerdEngine(Engine):
    """containerd in a namespace of the bench's own; the image gets there by the runtime's
    own import from the local Docker engine (the first idle probe pays for it, and is not
    counted)."""

    name = "containerd"

    def __init__(self, address: str, image: str) -> None:
        self.ctr = Ctr(address, CONTAINERD_NAMESPACE)
        self.image = image
        self.run_id = uuid.uuid4().hex[:10]
        self.calls = asyncio.Semaphore(MAX_ENGINE_CALLS)  # made in the bench's loop

    async def raw_start(self, name: str, port: int | None) -> None:
        network = ["--net-host", "--env", f"PORT={port}"] if port is not None else []
        async with self.calls:
            await self.ctr("run", "--detach", "--label", f"{RAW_LABEL}={self.run_id}",
                           *network, normalize_image(self.image), name)

    async def raw_remove(self, name: str) -> None:
        with contextlib.suppress(CtrError):
            await self.ctr("tasks", "delete", "--force", name)
        with contextlib.suppress(CtrError):
            await self.ctr("containers", "delete", name)

    async def raw_stop(self, names: list[str]) -> None:
        """``MAX_BATCH`` ids a ``ctr``, ``MAX_ENGINE_CALLS`` ``ctr`` at once. ``--force``
        kills with SIGKILL; the image's init ends at once on SIGTERM too."""

        async def batch(ids: list[str]) -> None:
            async with self.calls:
                await self.ctr.each("tasks", "delete", "--force", ids=ids)
                await self.ctr.each("containers", "delete", ids=ids)

        await asyncio.gather(*(batch(names[i:i + MAX_BATCH])
                               for i in range(0, len(names), MAX_BATCH)))

    async def _raw_listed(self) -> list[str]:
        return (await self.ctr("containers", "ls", "-q",
                               f'labels."{RAW_LABEL}"=={json.dumps(self.run_id)}')).split()

    async def raw_left(self) -> int:
        return len(await self._raw_listed())
        self.made: ContainerdRuntime | None = None

    def state(self, state_dir: Path) -> Path:
        return state_dir / "containerd"

    def runtime(self, drone_id: str, state_dir: Path) -> Runtime:
        self.made = ContainerdRuntime(drone_id, self.state(state_dir), self.ctr.address,
                                      CONTAINERD_NAMESPACE)
        return self.made

    async def _ours(self, drone_id: str) -> list[str]:
        value = json.dumps(drone_id)
        return (await self.ctr("containers", "ls", "-q",
                               f'labels."{DRONE_LABEL}"=={value}')).split()

    async def left_behind(self, drone_id: str, backend_ids: list[str],
                          state_dir: Path) -> dict[str, int]:
        """Containers, tasks, snapshots, network namespaces, addresses, cgroups, logs."""
        spare = self.made.netns.unused() if self.made else set()  # the drone's pool's
        found = await traces(self.ctr, self.state(state_dir) / "logs",
                             [container_id(backend_id) for backend_id in backend_ids],
                             drone_id, spare)
        counts = {kind: len(items) for kind, items in found.items()}
        return {"containers": len(await self._ours(drone_id)), **counts}

    async def remove_everything(self, drone_id: str, state_dir: Path) -> None:
        for cid in await self._raw_listed():
            await self.raw_remove(cid)
        network = NamespaceNetwork()
        for cid in await self._ours(drone_id):
            for args in (("tasks", "delete", "--force", cid), ("containers", "delete", cid)):
                with contextlib.suppress(CtrError):
                    await self.ctr(*args)
            with contextlib.suppress(Exception):
                await network.detach(cid)
        await NetnsPool(network, drone_id, size=0).sweep(set())  # the namespaces it held
        with contextlib.suppress(CtrError):
            await self.ctr("images", "rm", "--sync", normalize_image(self.image))
        deadline = time.monotonic() + NAMESPACE_GC_WAIT_SECONDS
        while time.monotonic() < deadline:  # refused until containerd has collected
            try:
                await self.ctr("namespaces", "rm", CONTAINERD_NAMESPACE)
                break
            except CtrError:
                await asyncio.sleep(0.2)


async def run(engine: Engine, args: argparse.Namespace, state_dir: Path) -> Result:
    result = Result(engine.name, args.n)
    drone_id = f"bench-{uuid.uuid4().hex[:10]}"
    store = DroneStore(state_dir / "drone.sqlite3")
    staging = StagingArea(state_dir.resolve() / "staging")
    executor = Executor(engine.runtime(drone_id, state_dir), MountPolicy(), store, staging,
                        ExecutorSettings())
    deadline = time.monotonic() + args.budget
    try:
        await executor.start()
        await probes(executor, args.image, 1, result.spawned)  # warm-up (containerd: import)
        await engine.raw_probe()
        idle_cpu: list[float] = []
        result.idle_before = await probes(executor, args.image, args.probes, result.spawned,
                                          engine, result.raw_idle, idle_cpu)
        result.probe_cpu["idle"] = statistics.median(idle_cpu)
        result.memory_idle = memory()
        points = sorted({max(1, args.n * i // args.checkpoints)
                         for i in range(1, args.checkpoints + 1)})
        started, cpu = time.monotonic(), time.process_time()
        for point in points:
            await fill(executor, args.image, point, args.in_flight, result, deadline)
            result.filled = executor.live_count
            if time.monotonic() > deadline:
                print(f"{engine.name}: budget of {args.budget:.0f} s spent with "
                      f"{result.filled} live", file=sys.stderr)
            if result.filled < point or point == points[-1]:
                result.fill_seconds = time.monotonic() - started
                result.fill_cpu_seconds = time.process_time() - cpu  # probes included
                result.memory_full = memory()
            raw = result.raw_probes.setdefault(result.filled, [])
            loaded_cpu: list[float] = []
            result.probes[result.filled] = await probes(executor, args.image, args.probes,
                                                        result.spawned, engine, raw, loaded_cpu)
            result.probe_cpu[f"at {result.filled} live"] = statistics.median(loaded_cpu)
            if result.filled < point:
                break
        stop_started = time.monotonic()
        await executor.terminate_all(TerminationReason.EXTERNAL)
        result.returned_seconds = time.monotonic() - stop_started
        # terminate_all gives up waiting for removals after REMOVALS_TIMEOUT_SECONDS; the
        # figure is the time to the last removal, however long that takes.
        await executor.removals_done(STOP_WAIT_SECONDS)
        result.stop_seconds = time.monotonic() - stop_started
        result.left = await engine.left_behind(drone_id, result.spawned, state_dir)
        result.left["staging"] = len(staging.backends())
        result.idle_after = await probes(executor, args.image, args.probes, result.spawned,
                                         engine, result.raw_idle)
        await raw_stop_floor(engine, result.filled, args.in_flight, result)
    finally:
        with contextlib.suppress(Exception):
            await executor.terminate_all(TerminationReason.EXTERNAL)
        await executor.close(remove_isolation=True)  # leave the machine as found
        store.close()
        await engine.remove_everything(drone_id, state_dir)
        staging.sweep(keep=())
    return result


def p(values: Iterable[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else float("nan")


def report(result: Result, args: argparse.Namespace) -> bool:
    """Print the table; whether both targets were met."""
    print(f"{result.runtime}: {result.filled} live backends of {args.image} on one drone "
          f"(target {result.n}), fill {args.in_flight} in flight, {args.probes} probes a point")
    print(f"{'spawn to ready, one at a time':34} {'p50':>8} {'p90':>8} {'max':>8}")
    rows = [("idle drone (before + after)", result.idle)]
    rows += [(f"at {live} live", times) for live, times in sorted(result.probes.items())]
    for name, times in rows:
        print(f"{name:34} {p(times, .5):6.0f}ms {p(times, .9):6.0f}ms {max(times):6.0f}ms")
    idle = statistics.median(result.idle)
    ratio = statistics.median(result.loaded) / idle if result.loaded else float("inf")
    load_met = ratio <= MAX_LOAD_RATIO and result.filled >= result.n
    print(f"{'ratio at ' + str(result.filled) + ' live / idle, p50':34} {ratio:7.2f}x"
          f"   (target <= {MAX_LOAD_RATIO}x at {result.n}: {'met' if load_met else 'MISSED'})")
    if result.raw_idle:
        print("raw engine spawn (create, start, first answer; host network), interleaved:")
        raw_rows = [("  idle (before + after)", result.raw_idle)]
        raw_rows += [(f"  at {live} live", times)
                     for live, times in sorted(result.raw_probes.items()) if times]
        for name, times in raw_rows:
            print(f"{name:34} {p(times, .5):6.0f}ms {p(times, .9):6.0f}ms {max(times):6.0f}ms")
        raw_loaded = result.raw_probes.get(result.filled)
        if raw_loaded:
            raw_ratio = statistics.median(raw_loaded) / statistics.median(result.raw_idle)
            print(f"{'  raw ratio at ' + str(result.filled) + ' live / idle':34} "
                  f"{raw_ratio:7.2f}x   (Sailplane's: {ratio:.2f}x)")
    if result.probe_cpu:
        print("drone CPU a probe spawn, p50: " + ", ".join(
            f"{point} {ms:.1f} ms" for point, ms in result.probe_cpu.items()))
    fills = [ms for _, ms in result.fill]
    if fills:
        print(f"fill: {len(fills)} spawns in {result.fill_seconds:.0f} s "
              f"({len(fills) / max(result.fill_seconds, 1e-9):.1f}/s), each to ready "
              f"p50 {p(fills, .5):.0f} ms, p90 {p(fills, .9):.0f} ms "
              f"({args.in_flight} in flight); drone CPU "
              f"{result.fill_cpu_seconds * 1000 / len(fills):.1f} ms a spawn")
    if result.failures:
        print(f"failed spawns: {len(result.failures)} (first: {result.failures[0]})")
    if result.filled:
        print(f"memory per live backend (PSS, at {result.filled} live against idle):")
        for kind in sorted(set(result.memory_full) | set(result.memory_idle)):
            delta = result.memory_full.get(kind, 0) - result.memory_idle.get(kind, 0)
            print(f"  {kind:18} {delta / result.filled:8.0f} KiB   "
                  f"({result.memory_idle.get(kind, 0) / 1024:.0f} -> "
                  f"{result.memory_full.get(kind, 0) / 1024:.0f} MiB)")
    stop_met = result.stop_seconds <= MAX_STOP_SECONDS
    left = ", ".join(f"{count} {what}" for what, count in result.left.items())
    print(f"stop all {result.filled}: {result.stop_seconds:.1f} s to the last removal "
          f"(target <= {MAX_STOP_SECONDS:.0f} s: {'met' if stop_met else 'MISSED'}; "
          f"terminate_all returned after {result.returned_seconds:.1f} s); "
          f"left behind: {left}")
    if result.raw_made:
        print(f"raw engine stop all {result.raw_made} (made in {result.raw_fill_seconds:.0f} s, "
              f"empty network namespaces): {result.raw_stop_seconds:.1f} s, "
              f"{MAX_ENGINE_CALLS} calls in flight; left behind: {result.raw_left}")
        print(f"sailplane stop-all / raw engine stop-all: "
              f"{result.stop_seconds / max(result.raw_stop_seconds, 1e-9):.2f}x")
    return load_met and stop_met and not any(result.left.values())


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for axis, result in zip(axes[0], results, strict=True):
        if result.fill:
            live, ms = zip(*result.fill, strict=True)
            axis.scatter(live, ms, s=3, alpha=0.3, color="grey",
                         label="fill spawns (with others under way)")
        points = sorted(result.probes.items())
        axis.errorbar([live for live, _ in points], [p(t, .5) for _, t in points],
                      yerr=[[p(t, .5) - min(t) for _, t in points],
                            [p(t, .9) - p(t, .5) for _, t in points]],
                      fmt="o-", capsize=3, label="probe p50 (min to p90), one at a time")
        raw_points = sorted((live, t) for live, t in result.raw_probes.items() if t)
        if raw_points:
            axis.plot([live for live, _ in raw_points], [p(t, .5) for _, t in raw_points],
                      "s--", color="purple",
                      label="raw engine spawn p50 (create, start, first answer)")
        idle = statistics.median(result.idle)
        axis.axhline(idle, color="green", linestyle="--", label=f"idle p50 {idle:.0f} ms")
        axis.axhline(idle * MAX_LOAD_RATIO, color="red", linestyle=":",
                     label=f"target {MAX_LOAD_RATIO}x idle")
        axis.set_xlabel("live backends on the drone")
        axis.set_ylabel("spawn to ready (ms)")
        axis.set_title(f"{result.runtime}: spawn latency against live backends")
        axis.set_ylim(bottom=0, top=max(idle * 3, p([ms for _, ms in result.fill] or [idle],
                                                    .99) * 1.1))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="live backends (default 1000)")
    parser.add_argument("--runtime", choices=["docker", "containerd", "both"], default="both")
    parser.add_argument("--image", default=IMAGE, help=f"a local image (default {IMAGE})")
    parser.add_argument("--in-flight", type=int, default=16,
                        help="spawns under way at once while filling (default 16)")
    parser.add_argument("--probes", type=int, default=15,
                        help="one-at-a-time spawns measured at each point (default 15)")
    parser.add_argument("--checkpoints", type=int, default=5,
                        help="points on the way to N where probes are measured (default 5)")
    parser.add_argument("--budget", type=float, default=1500.0,
                        help="stop filling after this many seconds per runtime (default 1500)")
    parser.add_argument("--containerd-address", default=None)
    parser.add_argument("--plot", type=Path, default=PLOT, help=f"PNG (default {PLOT})")
    parser.add_argument("--samples", type=Path, default=None, help="every sample as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    if args.n < 1 or args.in_flight < 1 or args.probes < 1 or args.checkpoints < 1:
        parser.error("--n, --in-flight, --probes and --checkpoints must be at least 1")
    client = docker.from_env()
    try:
        client.images.get(args.image)
    except docker.errors.ImageNotFound:
        print(f"no image {args.image}: build it with images/build (nothing is pulled)",
              file=sys.stderr)
        return 2
    finally:
        client.close()
    names = ["docker", "containerd"] if args.runtime == "both" else [args.runtime]
    results = []
    met = True
    for index, name in enumerate(names):
        if index:
            print()
        engine: Engine = (DockerEngine(args.image) if name == "docker" else
                          ContainerdEngine(args.containerd_address or default_address(),
                                           args.image))
        with tempfile.TemporaryDirectory(prefix="sailplane-density-") as tmp:
            result = asyncio.run(run(engine, args, Path(tmp)))
        met = report(result, args) and met
        results.append(result)
    plot(results, args.plot)
    print(f"\nplot: {args.plot}")
    if args.samples is not None:
        args.samples.write_text(json.dumps([result.__dict__ for result in results],
                                           default=str))
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
