"""A warm claim against a cold spawn and against raw Docker, each with one bind mount.

    .venv/bin/python bench/warm.py [--n 15] [--image sailplane/static:latest] [--check]

Three kinds of spawn, rotating which goes first every round, each timed from the request to
the backend's first HTTP answer, each giving the backend its key's directory read-write at
``/data``:

- ``warm claim``: an executor with a warm pool (``--warm-pool IMAGE=3``): the key's directory
  is resolved, pinned and injected into a container that was already running, and its
  identity file written (the pool is refilled between rounds, outside the timing);
- ``cold spawn``: the same request through an executor without a pool (create + start);
- ``raw Docker``: the Docker SDK alone, ``containers.create`` with the same bind mount,
  ``start``, then the same readiness polling.

Target: the warm claim's median at most 0.25x raw Docker's. ``--check`` exits 1 when missed.

The pool's cost is printed after the timings: the memory each idle warm container holds, as
``docker stats`` counts it (its cgroup's usage less the inactive file cache), and its
``containerd-shim`` process's proportional set size, which every running container has.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import docker

from density import pss_kb
from sailplane.drone.executor import Executor, ExecutorSettings
from sailplane.drone.readiness import wait_until_ready
from sailplane.drone.store import DroneStore
from sailplane.drone.warm_pool import WarmPoolSpec
from sailplane.mounts.pin import StagingArea
from sailplane.mounts.policy import Access, HostVolume, MountPolicy
from sailplane.protocol import SpawnBackend
from sailplane.runtime.base import BACKEND_PORT, DRONE_LABEL, WARM_LABEL, BackendAddress
from sailplane.runtime.docker.runtime import DockerRuntime
from sailplane.spec import ExecutorConfig, KeyConfig
from sailplane.state import BackendStatus, TerminationReason

IMAGE = "sailplane/static:latest"
MAX_RATIO = 0.25
POOL_SIZE = 3
TIMEOUT_SECONDS = 30.0
BENCH_LABEL = "dev.sailplane.bench"
PORT_KEY = f"{BACKEND_PORT}/tcp"


class WarmBench:
    def __init__(self, image: str, state: Path) -> None:
        self.image = image
        self.run_id = uuid.uuid4().hex[:10]
        self.volume = state / "data"
        self.volume.mkdir()
        policy = MountPolicy.build([HostVolume(name="data", path=str(self.volume),
                                               access=Access.RW)])
        self.client = docker.from_env()
        self.stores = [DroneStore(state / f"{kind}.sqlite3") for kind in ("warm", "cold")]
        self.warm = Executor(
            DockerRuntime(f"bench-warm-{self.run_id}"), policy, self.stores[0],
            StagingArea(state.resolve() / "staging-warm"),
            ExecutorSettings(warm_pools=(WarmPoolSpec(image, POOL_SIZE),)),
        )
        self.pool_memory: list[tuple[int, int]] = []
        self.cold = Executor(DockerRuntime(f"bench-cold-{self.run_id}"), policy, self.stores[1],
                             StagingArea(state.resolve() / "staging-cold"))

    async def spawn(self, executor: Executor) -> float:
        if executor.warm_pool is not None:  # a full pool, as a drone that is not overrun has
            await executor.warm_pool.wait_full(TIMEOUT_SECONDS)
        key = f"k-{uuid.uuid4().hex[:10]}"
        spawn = SpawnBackend(
            backend_id=f"b-{uuid.uuid4().hex[:16]}", key=KeyConfig(name=key),
            executable=ExecutorConfig.model_validate({"image": self.image, "volume_mounts": [
                {"type": "host", "volume": "data", "sub_path": "{key}", "target": "/data",
                 "read_only": False}]}),
            secret_token="bench",
        )
        started = time.perf_counter()
        executor.spawn(spawn)
        await executor.wait_for(spawn.backend_id, BackendStatus.READY, TIMEOUT_SECONDS)
        elapsed = time.perf_counter() - started
        if executor.status(spawn.backend_id) is not BackendStatus.READY:
            raise RuntimeError(f"{spawn.backend_id} ended {executor.status(spawn.backend_id)}")
        await executor.terminate(spawn.backend_id, True, TerminationReason.EXTERNAL)
        return elapsed

    async def warm_spawn(self) -> float:
        return await self.spawn(self.warm)

    async def cold_spawn(self) -> float:
        return await self.spawn(self.cold)

    async def raw_spawn(self) -> float:
        directory = self.volume / f"raw-{uuid.uuid4().hex[:10]}"
        started = time.perf_counter()
        directory.mkdir()
        options: dict[str, Any] = {
            "detach": True, "environment": {"PORT": str(BACKEND_PORT)},
            "labels": {BENCH_LABEL: self.run_id}, "ports": {PORT_KEY: ("127.0.0.1", None)},
            "mounts": [docker.types.Mount("/data", str(directory), type="bind")],
        }
        container = await asyncio.to_thread(self.client.containers.create, self.image,
                                            **options)
        await asyncio.to_thread(container.start)
        await asyncio.to_thread(container.reload)
        port = int(container.attrs["NetworkSettings"]["Ports"][PORT_KEY][0]["HostPort"])
        await asyncio.wait_for(wait_until_ready(BackendAddress("127.0.0.1", port)),
                               TIMEOUT_SECONDS)
        elapsed = time.perf_counter() - started
        await asyncio.to_thread(container.remove, force=True)
        return elapsed

    async def run(self, n: int) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {"warm claim": [], "cold spawn": [], "raw Docker": []}
        kinds: list[tuple[str, Callable[[], Awaitable[float]]]] = [
            ("warm claim", self.warm_spawn), ("cold spawn", self.cold_spawn),
            ("raw Docker", self.raw_spawn)]
        await self.warm.start()
        await self.cold.start()
        try:
            for _, kind in kinds:  # warm-up, not counted
                await kind()
            for round_ in range(n):
                shift = round_ % len(kinds)
                for name, kind in kinds[shift:] + kinds[:shift]:
                    times[name].append(await kind())
            assert self.warm.warm_pool is not None
            await self.warm.warm_pool.wait_full(TIMEOUT_SECONDS)
            self.pool_memory = await asyncio.to_thread(self.idle_pool_memory)
        finally:
            await self.warm.close()
            await self.cold.close(remove_isolation=True)  # leave the machine as found
            for store in self.stores:
                store.close()
            for found in self.client.api.containers(
                    all=True, quiet=True, filters={"label": f"{BENCH_LABEL}={self.run_id}"}):
                self.client.api.remove_container(found["Id"], force=True)
            self.client.close()
        return times


    def idle_pool_memory(self) -> list[tuple[int, int]]:
        """(cgroup bytes, shim PSS bytes) of each idle container of the warm pool."""
        found = self.client.api.containers(filters={"label": [
            f"{DRONE_LABEL}=bench-warm-{self.run_id}", WARM_LABEL]})
        sizes = []
        for container in found:
            stats = self.client.api.stats(container["Id"], stream=False, one_shot=True)
            memory = stats["memory_stats"]
            inactive = memory["stats"].get("total_inactive_file",
                                           memory["stats"].get("inactive_file", 0))
            pid = self.client.api.inspect_container(container["Id"])["State"]["Pid"]
            sizes.append((memory["usage"] - inactive, pss_kb(_parent(pid)) * 1024))
        return sizes


def _parent(pid: int) -> int:
    """The parent of process ``pid`` (a container's init: its shim)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def report_pool(sizes: list[tuple[int, int]]) -> None:
    if not sizes:
        print("the pool's cost: no idle warm container found to measure")
        return
    cgroup = statistics.median(size for size, _ in sizes) / 2**20
    shim = statistics.median(pss for _, pss in sizes) / 2**20
    print(f"the pool's cost, per idle warm container (median of {len(sizes)}): "
          f"{cgroup:.2f} MiB in its cgroup + {shim:.2f} MiB its shim (PSS) = "
          f"{cgroup + shim:.2f} MiB")


def report(times: dict[str, list[float]]) -> float:
    raw = statistics.median(times["raw Docker"])
    print(f"spawn to first HTTP answer with one bind mount, {len(times['raw Docker'])} of "
          "each kind, rotating")
    print(f"{'':12} {'median':>9} {'min':>9} {'max':>9} {'vs raw':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:12} {median * 1000:8.1f}ms {min(values) * 1000:7.1f}ms "
              f"{max(values) * 1000:7.1f}ms {median / raw:7.2f}x")
    ratio = statistics.median(times["warm claim"]) / raw
    print(f"target: warm claim <= {MAX_RATIO:.2f}x raw Docker: "
          f"{'met' if ratio <= MAX_RATIO else 'MISSED'} ({ratio:.2f}x)")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=15, help="spawns of each kind")
    parser.add_argument("--image", default=IMAGE)
    parser.add_argument("--check", action="store_true", help=f"exit 1 above {MAX_RATIO}x")
    args = parser.parse_args()
    if args.n < 1:
        parser.error("--n must be at least 1")
    with tempfile.TemporaryDirectory(prefix="sailplane-bench-") as tmp:
        bench = WarmBench(args.image, Path(tmp))
        times = asyncio.run(bench.run(args.n))
    ratio = report(times)
    report_pool(bench.pool_memory)
    return 1 if args.check and ratio > MAX_RATIO else 0


if __name__ == "__main__":
    sys.exit(main())
