"""Cold spawn to ``ready`` through the drone's executor, against each runtime's raw client.

    .venv/bin/python bench/spawn.py [--n 20] [--image sailplane/static:latest]
                                    [--runtime docker|containerd|both] [--budget 300]
                                    [--path] [--warm] [--check]

For each runtime (both by default, one after the other in the same run), each round spawns one
new backend through :class:`~sailplane.drone.executor.Executor` (store writes, mount planning,
image check, create, start, readiness polling) and one raw baseline without Sailplane, each timed
from the request to the first HTTP answer:

- ``docker``: :class:`~sailplane.runtime.docker.runtime.DockerRuntime` against the Docker SDK
  alone (``containers.create`` + ``start`` + inspect for the port);
- ``containerd``: :class:`~sailplane.runtime.containerd.runtime.ContainerdRuntime` against one
  raw ``ctr run --detach --net-host`` with the same flags, on a free port, in a namespace of the
  bench's own (``sailplane-bench``) into which the image is imported from ``docker save``.

Each runtime also has a second raw baseline, the same raw call with the backend isolation the
drone now gives (an empty network namespace wired to Sailplane's own bridge by the same
in-process wiring the runtime does, and the capability cut), so one run shows what isolation
itself costs beside what Sailplane adds on top of it.

The three alternate, and which goes first rotates every round, so all see the same machine. The
baselines wait for their answer with the executor's own
:func:`~sailplane.drone.readiness.wait_until_ready`, so both poll on the same schedule
(``timing.READY_POLL_*``). Containers are removed between rounds, outside the timings.

Target: the executor's median at most 1.15x the baseline's, for each runtime. ``--check`` exits
1 when missed.

``--path`` then times, in the same run, the whole path a user waits for: a connect to a
``sailplane dev`` in a process of its own, to the first answer through its proxy, against raw
Docker Engine API calls with the same bind mount (``bench/spawn_path.py``, 15 rounds; target
1.10x). ``--warm`` (which implies ``--path``) adds warm claims through that same path
(target 0.25x raw). A runtime's run stops early, with what it has measured, once ``--budget``
seconds have passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import docker
import docker.errors

import spawn_path
from sailplane.drone.executor import Executor
from sailplane.drone.readiness import answers_http, wait_until_ready
from sailplane.drone.store import DroneStore
from sailplane.mounts.pin import StagingArea
from sailplane.mounts.policy import MountPolicy
from sailplane.protocol import SpawnBackend
from sailplane.runtime.base import (
    BACKEND_CAPABILITIES,
    BACKEND_LABEL,
    BACKEND_PORT,
    DRONE_LABEL,
    BackendAddress,
)
from sailplane.runtime.containerd.ctr import Ctr, CtrError, default_address, normalize_image
from sailplane.runtime.containerd.netns_pool import NetnsPool
from sailplane.runtime.containerd.network import NamespaceNetwork
from sailplane.runtime.containerd.runtime import ContainerdRuntime
from sailplane.runtime.docker.network import backend_network
from sailplane.runtime.docker.runtime import DockerRuntime
from sailplane.spec import ExecutorConfig, KeyConfig, PullPolicy
from sailplane.state import BackendStatus, TerminationReason

IMAGE = "sailplane/static:latest"
MAX_RATIO = 1.15
PATH_ROUNDS = 15  # --path: rounds of each kind through the whole path
SPAWN_TIMEOUT_SECONDS = 30.0
REMOVAL_TIMEOUT_SECONDS = 30.0
BENCH_LABEL = "dev.sailplane.bench"
PORT_KEY = f"{BACKEND_PORT}/tcp"
CONTAINERD_NAMESPACE = "sailplane-bench"
NAMESPACE_GC_WAIT_SECONDS = 10.0

Timed = Callable[[], Awaitable[float]]


class Bench(Protocol):
    """One runtime's pair: an executor of its own (a unique drone id) and a raw client."""

    name: str
    image: str
    baseline: str
    isolated_baseline: str
    executor: Executor
    store: DroneStore
    phases: list[dict[str, int]]

    async def executor_spawn(self) -> float: ...

    async def raw_spawn(self) -> float: ...

    async def raw_isolated_spawn(self) -> float: ...

    async def remove_everything(self) -> None: ...


class DockerBench:
    """One run: an executor of its own (a unique drone id) and a raw client beside it."""

    name = "docker"
    baseline = "raw Docker SDK"
    isolated_baseline = "raw, isolated"

    def __init__(self, image: str, state_dir: Path) -> None:
        self.image = image
        self.run_id = uuid.uuid4().hex[:10]
        self.drone_id = f"bench-{self.run_id}"
        self.client = docker.from_env()
        self.network = backend_network()
        self.store = DroneStore(state_dir / "drone.sqlite3")
        self.executor = Executor(DockerRuntime(self.drone_id), MountPolicy(), self.store,
                                 StagingArea(state_dir.resolve() / "staging"))
        self.phases: list[dict[str, int]] = []  # ms spent in each executor state, per spawn

    async def executor_spawn(self) -> float:
        return await executor_spawn(self, self._until_removed)

    async def raw_spawn(self) -> float:
        return await self._raw(isolated=False)

    async def raw_isolated_spawn(self) -> float:
        return await self._raw(isolated=True)

    async def _raw(self, isolated: bool) -> float:
        """What the executor does for a backend, with nothing of Sailplane but the polling;
        ``isolated``: as the runtime does it, an empty network namespace wired to the
        backends' bridge, with the capability cut; otherwise Docker's default bridge and a
        port published on loopback."""
        name = f"sailplane-bench-raw-{uuid.uuid4().hex[:12]}"
        started = time.perf_counter()
        options: dict[str, Any] = {
            "name": name, "detach": True, "environment": {"PORT": str(BACKEND_PORT)},
            "labels": {BENCH_LABEL: self.run_id}, "security_opt": ["no-new-privileges"],
        }
        if isolated:
            options.update(network_mode="none", cap_drop=["ALL"],
                           cap_add=list(BACKEND_CAPABILITIES))
        else:
            options.update(ports={PORT_KEY: ("127.0.0.1", None)})
        container = self.client.containers.create(self.image, **options)
        container.start()
        container.reload()
        if isolated:
            netns = container.attrs["NetworkSettings"]["SandboxKey"]
            address = BackendAddress(await self.network.attach(str(container.id), netns),
                                     BACKEND_PORT)
        else:
            binding = container.attrs["NetworkSettings"]["Ports"][PORT_KEY][0]
            address = BackendAddress("127.0.0.1", int(binding["HostPort"]))
        await asyncio.wait_for(wait_until_ready(address), SPAWN_TIMEOUT_SECONDS)
        elapsed = time.perf_counter() - started
        if not await answers_http(address):
            raise RuntimeError(f"raw container {name} stopped answering")
        self.client.api.remove_container(name, force=True)
        if isolated:
            await self.network.detach(str(container.id))
        return elapsed

    async def _until_removed(self, label: str) -> None:
        deadline = time.monotonic() + REMOVAL_TIMEOUT_SECONDS
        while self.client.api.containers(all=True, quiet=True, filters={"label": label}):
            if time.monotonic() > deadline:
                raise RuntimeError(f"containers labelled {label} were not removed")
            await asyncio.sleep(0.02)

    async def remove_everything(self) -> None:
        for label in (f"{DRONE_LABEL}={self.drone_id}", f"{BENCH_LABEL}={self.run_id}"):
            for found in self.client.api.containers(all=True, quiet=True,
                                                    filters={"label": label}):
                try:
                    self.client.api.remove_container(found["Id"], force=True)
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:  # 409: a removal is already under way
                        raise
        self.client.close()


class ContainerdBench:
    """The same for containerd: ContainerdRuntime against raw ``ctr run``, in the bench's own
    namespace, with the image imported from ``docker save`` (nothing is pulled)."""

    name = "containerd"
    baseline = "raw ctr run"
    isolated_baseline = "raw, isolated"

    def __init__(self, image: str, state_dir: Path, address: str) -> None:
        self.image = image
        self.ref = normalize_image(image)
        self.run_id = uuid.uuid4().hex[:10]
        self.drone_id = f"bench-{self.run_id}"
        self.ctr = Ctr(address, CONTAINERD_NAMESPACE)
        self.state_dir = state_dir
        self.store = DroneStore(state_dir / "drone.sqlite3")
        runtime = ContainerdRuntime(self.drone_id, state_dir / "containerd", address,
                                    CONTAINERD_NAMESPACE)
        self.executor = Executor(runtime, MountPolicy(), self.store,
                                 StagingArea(state_dir.resolve() / "staging"))
        self.phases: list[dict[str, int]] = []
        self.raw_logs = state_dir / "raw-logs"
        self.raw_logs.mkdir()
        self.network = NamespaceNetwork()

    def import_image(self) -> None:
        saved = subprocess.run(["docker", "save", self.image], capture_output=True, check=True)
        subprocess.run(self.ctr.argv("images", "import", "-"), input=saved.stdout,
                       capture_output=True, check=True)

    async def executor_spawn(self) -> float:
        return await executor_spawn(self, self._until_removed)

    async def raw_spawn(self) -> float:
        return await self._raw(isolated=False)

    async def raw_isolated_spawn(self) -> float:
        return await self._raw(isolated=True)

    async def _raw(self, isolated: bool) -> float:
        """One ``ctr run`` and the first answer: on the host's network with a free port (as
        the runtime did before isolation), or ``isolated`` in a namespace of its own wired as
        the runtime wires it."""
        name = f"sailplane-bench-raw-{uuid.uuid4().hex[:12]}"
        started = time.perf_counter()
        if isolated:
            ip = await self.network.attach(name)
            network = ["--with-ns", f"network:{self.network.netns_path(name)}"]
            address, port = BackendAddress(ip, BACKEND_PORT), BACKEND_PORT
        else:
            with socket.socket() as probe:
                probe.bind(("0.0.0.0", 0))
                port = probe.getsockname()[1]
            network, address = ["--net-host"], BackendAddress("127.0.0.1", port)
        await self.ctr(
            "run", "--detach", "--seccomp", *network,
            "--log-uri", f"file://{self.raw_logs / name}.log",
            "--label", f"{BENCH_LABEL}={self.run_id}", "--env", f"PORT={port}",
            self.ref, name,
        )
        await asyncio.wait_for(wait_until_ready(address), SPAWN_TIMEOUT_SECONDS)
        elapsed = time.perf_counter() - started
        if not await answers_http(address):
            raise RuntimeError(f"raw container {name} stopped answering")
        await self.ctr("tasks", "delete", "--force", name)
        await self.ctr("containers", "delete", name)
        if isolated:
            await self.network.detach(name)
        return elapsed

    async def _listed(self, label: str) -> list[str]:
        key, _, value = label.partition("=")
        return (await self.ctr("containers", "ls", "-q",
                               f'labels."{key}"=={json.dumps(value)}')).split()

    async def _until_removed(self, label: str) -> None:
        deadline = time.monotonic() + REMOVAL_TIMEOUT_SECONDS
        while await self._listed(label):
            if time.monotonic() > deadline:
                raise RuntimeError(f"containers labelled {label} were not removed")
            await asyncio.sleep(0.02)

    async def remove_everything(self) -> None:
        for label in (f"{DRONE_LABEL}={self.drone_id}", f"{BENCH_LABEL}={self.run_id}"):
            for cid in await self._listed(label):
                for args in (("tasks", "delete", "--force", cid), ("containers", "delete", cid)):
                    try:
                        await self.ctr(*args)
                    except CtrError as exc:
                        if not exc.not_found:
                            raise
        # The namespaces of backends the executor left running (a spawn that failed).
        await NetnsPool(self.network, self.drone_id, size=0).sweep(set())
        try:
            await self.ctr("images", "rm", "--sync", self.ref)
        except CtrError as exc:
            if not exc.not_found:
                raise
        deadline = time.monotonic() + NAMESPACE_GC_WAIT_SECONDS
        while time.monotonic() < deadline:  # refused until containerd has collected
            try:
                await self.ctr("namespaces", "rm", CONTAINERD_NAMESPACE)
                break
            except CtrError:
                await asyncio.sleep(0.2)


async def executor_spawn(
    bench: Bench, until_removed: Callable[[str], Awaitable[None]]
) -> float:
    backend_id = f"b-{uuid.uuid4().hex[:16]}"
    spawn = SpawnBackend(
        backend_id=backend_id,
        key=KeyConfig(name=f"k-{backend_id}"),
        executable=ExecutorConfig(image=bench.image, pull_policy=PullPolicy.IF_NOT_PRESENT),
        secret_token="bench",
    )
    started = time.perf_counter()
    bench.executor.spawn(spawn)
    await bench.executor.wait_for(backend_id, BackendStatus.READY, SPAWN_TIMEOUT_SECONDS)
    elapsed = time.perf_counter() - started
    if bench.executor.status(backend_id) is not BackendStatus.READY:
        raise RuntimeError(f"backend {backend_id} ended {bench.executor.status(backend_id)}")
    note_phases(bench, backend_id)
    await bench.executor.terminate(backend_id, hard=True, reason=TerminationReason.EXTERNAL)
    await until_removed(f"{BACKEND_LABEL}={backend_id}")
    return elapsed


def note_phases(bench: Bench, backend_id: str) -> None:
    times = {event.state.status: event.state.time for event in bench.store.pending()
             if event.backend_id == backend_id}
    order = [BackendStatus.LOADING, BackendStatus.STARTING, BackendStatus.WAITING,
             BackendStatus.READY]
    bench.phases.append({
        order[i].value: times[order[i + 1]] - times[order[i]] for i in range(len(order) - 1)
    })
    bench.store.ack(bench.store.pending()[-1].seq)


async def run(
    bench: Bench, n: int, budget: float
) -> tuple[list[float], list[float], list[float]]:
    deadline = time.monotonic() + budget
    executor_times: list[float] = []
    raw_times: list[float] = []
    isolated_times: list[float] = []
    try:
        await bench.executor.start()
        await bench.executor_spawn()  # warm-up of every path, not counted
        await bench.raw_spawn()
        await bench.raw_isolated_spawn()
        bench.phases.clear()
        for round_ in range(n):
            kinds: list[tuple[Timed, list[float]]] = [
                (bench.executor_spawn, executor_times), (bench.raw_spawn, raw_times),
                (bench.raw_isolated_spawn, isolated_times),
            ]
            shift = round_ % len(kinds)
            for spawn, times in kinds[shift:] + kinds[:shift]:
                times.append(await spawn())
            if time.monotonic() > deadline:
                print(f"{bench.name}: budget of {budget:.0f} s spent after {round_ + 1} rounds",
                      file=sys.stderr)
                break
    finally:
        await bench.executor.close(remove_isolation=True)  # leave the machine as found
        bench.store.close()
        await bench.remove_everything()
    return executor_times, raw_times, isolated_times


def p90(values: list[float]) -> float:
    """Nearest rank: the smallest value at or above 90% of the samples."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def report(bench: Bench, executor_times: list[float], raw_times: list[float],
           isolated_times: list[float]) -> float:
    rows = [(f"executor ({bench.name})", executor_times), (bench.baseline, raw_times),
            (bench.isolated_baseline, isolated_times)]
    print(f"{bench.name}: cold spawn to first HTTP answer, {bench.image}, "
          f"{len(executor_times)} of each kind, rotating")
    print(f"{'':22} {'median':>9} {'p90':>9} {'min':>9} {'max':>9}")
    for name, times in rows:
        ms = [t * 1000 for t in times]
        print(f"{name:22} {statistics.median(ms):8.1f}ms {p90(ms):7.1f}ms "
              f"{min(ms):7.1f}ms {max(ms):7.1f}ms")
    ratio = statistics.median(executor_times) / statistics.median(raw_times)
    p90_ratio = p90(executor_times) / p90(raw_times)
    verdict = "met" if ratio <= MAX_RATIO else "MISSED"
    print(f"{'ratio executor/raw':22} {ratio:8.2f}x {p90_ratio:8.2f}x"
          f"   (target: median <= {MAX_RATIO:.2f}x, {verdict})")
    isolation = statistics.median(isolated_times) / statistics.median(raw_times)
    print(f"{'isolation raw/raw':22} {isolation:8.2f}x "
          "  (what the backend network and capability cut cost a raw spawn)")
    on_top = statistics.median(executor_times) / statistics.median(isolated_times)
    print(f"{'executor/raw isolated':22} {on_top:8.2f}x   (what Sailplane adds beyond that)")
    if bench.phases:
        medians = {phase: statistics.median(p[phase] for p in bench.phases)
                   for phase in bench.phases[0]}
        spent = ", ".join(f"{phase} {ms:.0f}" for phase, ms in medians.items())
        print(f"executor, median ms spent in: {spent}")
    return ratio


def measure(
    runtime: str, image: str, n: int, budget: float, address: str,
    samples: dict[str, list[float]],
) -> float:
    """Run one runtime's pair; its spawn times in ms go into ``samples`` by series name."""
    with tempfile.TemporaryDirectory(prefix="sailplane-bench-") as tmp:
        bench: Bench
        if runtime == "docker":
            bench = DockerBench(image, Path(tmp))
        else:
            containerd = ContainerdBench(image, Path(tmp), address)
            containerd.import_image()
            bench = containerd
        executor_times, raw_times, isolated_times = asyncio.run(run(bench, n, budget))
        samples[f"executor ({bench.name})"] = [t * 1000 for t in executor_times]
        samples[bench.baseline] = [t * 1000 for t in raw_times]
        samples[f"{bench.baseline}, isolated"] = [t * 1000 for t in isolated_times]
        return report(bench, executor_times, raw_times, isolated_times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="spawns of each kind (default 20)")
    parser.add_argument("--image", default=IMAGE, help=f"a local image (default {IMAGE})")
    parser.add_argument("--runtime", choices=["docker", "containerd", "both"], default="both",
                        help="which runtime to measure (default both, one after the other)")
    parser.add_argument("--containerd-address", default=None,
                        help="containerd socket (default: Docker's, else the system one)")
    parser.add_argument("--budget", type=float, default=300.0,
                        help="stop each runtime after this many seconds (default 300)")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 if a median ratio is above {MAX_RATIO}")
    parser.add_argument("--path", action="store_true",
                        help="then time the whole connect -> proxy path (spawn_path.py)")
    parser.add_argument("--warm", action="store_true",
                        help="with --path, warm claims through that path too")
    parser.add_argument("--samples", type=Path, default=None,
                        help="write every spawn time (ms) as JSON here, for plots")
    args = parser.parse_args()
    if args.n < 1:
        parser.error("--n must be at least 1")
    client = docker.from_env()
    try:
        client.images.get(args.image)
    except docker.errors.ImageNotFound:
        print(f"no image {args.image}: build it with images/build (nothing is pulled)",
              file=sys.stderr)
        return 2
    finally:
        client.close()
    runtimes = ["docker", "containerd"] if args.runtime == "both" else [args.runtime]
    address = args.containerd_address or default_address()
    missed = False
    samples: dict[str, list[float]] = {}
    for index, runtime in enumerate(runtimes):
        if index:
            print()
        ratio = measure(runtime, args.image, args.n, args.budget, address, samples)
        missed = missed or ratio > MAX_RATIO
    if args.path or args.warm:
        print("\nthe whole path, connect -> first answer through the proxy:", flush=True)
        times, path_missed = spawn_path.measure(PATH_ROUNDS, args.image, args.warm)
        missed = missed or path_missed
        for kind, values in times.items():
            samples[f"{kind} (whole path)"] = [t * 1000 for t in values]
    if args.samples is not None:
        args.samples.write_text(json.dumps(samples))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
