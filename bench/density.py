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
5. **idle again**: the probes of 1 once more; the idle figure is both sets together.

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
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from sailplane.drone.executor import Executor, ExecutorSettings
from sailplane.drone.store import DroneStore
from sailplane.mounts.pin import StagingArea
from sailplane.mounts.policy import MountPolicy
from sailplane.protocol import SpawnBackend
from sailplane.runtime.base import DRONE_LABEL, Runtime
from sailplane.runtime.containerd.ctr import Ctr, CtrError, default_address, normalize_image
from sailplane.runtime.containerd.leftovers import traces
from sailplane.runtime.containerd.network import CniNetwork
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


async def probes(executor: Executor, image: str, count: int, spawned: list[str]) -> list[float]:
    """``count`` spawns one at a time, each stopped (and removed) before the next; in ms."""
    times = []
    for _ in range(count):
        backend_id, elapsed = await spawn_ready(executor, image, spawned)
        times.append(elapsed * 1000)
        await executor.terminate(backend_id, True, TerminationReason.EXTERNAL)
        await executor.removals_done(PROBE_STOP_TIMEOUT_SECONDS)
    return times


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


class DockerEngine(Engine):
    name = "docker"

    def __init__(self) -> None:
        self.client = docker.from_env()

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
        for container in await asyncio.to_thread(self._ours, drone_id):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                await asyncio.to_thread(self.client.api.remove_container, container, force=True)
        self.client.close()


class ContainerdEngine(Engine):
    """containerd in a namespace of the bench's own; the image gets there by the runtime's
    own import from the local Docker engine (the first idle probe pays for it, and is not
    counted)."""

    name = "containerd"

    def __init__(self, address: str, image: str) -> None:
        self.ctr = Ctr(address, CONTAINERD_NAMESPACE)
        self.image = image

    def state(self, state_dir: Path) -> Path:
        return state_dir / "containerd"

    def runtime(self, drone_id: str, state_dir: Path) -> Runtime:
        return ContainerdRuntime(drone_id, self.state(state_dir), self.ctr.address,
                                 CONTAINERD_NAMESPACE)

    async def _ours(self, drone_id: str) -> list[str]:
        value = json.dumps(drone_id)
        return (await self.ctr("containers", "ls", "-q",
                               f'labels."{DRONE_LABEL}"=={value}')).split()

    async def left_behind(self, drone_id: str, backend_ids: list[str],
                          state_dir: Path) -> dict[str, int]:
        """Containers, tasks, snapshots, network namespaces, addresses, cgroups, logs."""
        found = await traces(self.ctr, self.state(state_dir) / "logs",
                             [container_id(backend_id) for backend_id in backend_ids])
        counts = {kind: len(items) for kind, items in found.items()}
        return {"containers": len(await self._ours(drone_id)), **counts}

    async def remove_everything(self, drone_id: str, state_dir: Path) -> None:
        network = CniNetwork()
        for cid in await self._ours(drone_id):
            for args in (("tasks", "delete", "--force", cid), ("containers", "delete", cid)):
                with contextlib.suppress(CtrError):
                    await self.ctr(*args)
            with contextlib.suppress(Exception):
                await network.detach(cid)
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
        result.idle_before = await probes(executor, args.image, args.probes, result.spawned)
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
            result.probes[result.filled] = await probes(executor, args.image, args.probes,
                                                        result.spawned)
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
        result.idle_after = await probes(executor, args.image, args.probes, result.spawned)
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
        engine: Engine = (DockerEngine() if name == "docker" else
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
