"""The whole cold-spawn path a user waits for, against raw Docker Engine API calls.

    .venv/bin/python bench/spawn_path.py [--n 15] [--image sailplane/static:latest]
                                         [--warm] [--check]

``sailplane dev`` runs in a process of its own (controller, drone on Docker, proxy), with a
host volume ``data``; this process is only the client. Each round times, from the first byte
sent to the first HTTP answer received, rotating which goes first:

- ``sailplane``: ``POST /ctrl/connect`` for a new key whose spawn mounts ``data`` read-write
  at ``/data``, then ``GET`` the returned URL through the proxy until it answers 200 (the
  controller, the drone socket, mount resolution and pinning, the engine, the readiness probe
  and the route to the proxy are all in it; the proxy holds a request for a backend still
  starting until it is ready, so that is usually one request);
- ``raw Docker``: the Engine API alone (the Docker SDK): create with the same bind mount and
  the port published on loopback, start, inspect for the port, then ``GET`` until it answers;
- ``raw Docker, bridge IP``: the same without publishing, reaching the container at its
  address on Docker's default bridge (what Sailplane does on its own bridge). Ratios are taken
  against the faster of the two raw medians.
- ``warm claim`` (``--warm``): the same connect against a second ``sailplane dev`` that keeps
  a warm pool of the image (``--warm-pool IMAGE=3``), so the spawn claims a running container
  and injects the mount. The pool refills between rounds, outside the timing.

Both clients poll every ``POLL_SECONDS``. Backends are hard-terminated, and containers removed,
between rounds, outside the timing.

Target: the ``sailplane`` median at most 1.10x raw Docker's (and the warm claim at most 0.25x
with ``--warm``). ``--check`` exits 1 when missed.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx

from connect import SAILPLANE, free_port, running, wait_healthy

IMAGE = "sailplane/static:latest"
MAX_RATIO = 1.10
MAX_WARM_RATIO = 0.25
WARM_POOL_SIZE = 3
POLL_SECONDS = 0.005
ROUND_TIMEOUT_SECONDS = 30.0
BENCH_LABEL = "dev.sailplane.bench"
PORT_KEY = "8080/tcp"
RAW_KINDS = ("raw Docker", "raw Docker, bridge IP")
LOOPBACK_PORT: dict[str, Any] = {PORT_KEY: ("127.0.0.1", None)}  # a free port on loopback


@dataclass
class Cluster:
    """One ``sailplane dev`` and an HTTP client for its API."""

    name: str
    api: httpx.Client
    data_dir: Path

    def connect(self, key: str, image: str) -> str:
        """Connect a new key; the backend's URL through the proxy."""
        response = self.api.post("/ctrl/connect", json={
            "key": {"name": key},
            "spawn_config": {"executable": {"image": image, "volume_mounts": [
                {"type": "host", "volume": "data", "target": "/data", "read_only": False},
            ]}, "max_idle_seconds": 300},
        })
        response.raise_for_status()
        body = response.json()
        self.backends.append(body["backend_id"])
        url: str = body["url"]
        return url

    def terminate_all(self) -> None:
        """Hard-terminate what this run spawned and wait until none of it is running."""
        for backend in self.backends:
            self.api.post(f"/ctrl/b/{backend}/hard-terminate")
        deadline = time.monotonic() + ROUND_TIMEOUT_SECONDS
        while self.backends and time.monotonic() < deadline:
            status = self.api.get(f"/pub/b/{self.backends[0]}/status").json()["status"]
            if status == "terminated":
                self.backends.pop(0)
            else:
                time.sleep(0.05)
        if self.backends:
            raise SystemExit(f"{self.name}: backends {self.backends} did not terminate")

    def __post_init__(self) -> None:
        self.backends: list[str] = []


@contextlib.contextmanager
def dev_cluster(tmp: Path, name: str, volume: Path, *extra: str) -> Iterator[Cluster]:
    port, proxy_port = free_port(), free_port()
    data = tmp / name
    print(f"starting sailplane dev ({name}) ...", flush=True)
    with running([str(SAILPLANE), "dev", "--controller-port", str(port), "--proxy-port",
                  str(proxy_port), "--data-dir", str(data), "--host-volume",
                  f"data={volume}:rw", *extra],
                 {"XDG_STATE_HOME": str(tmp / f"state-{name}")}, tmp / f"{name}.log") as process:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, process, f"sailplane dev ({name})")
        token = (data / "api-token").read_text().strip()
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                          timeout=ROUND_TIMEOUT_SECONDS) as api:
            cluster = Cluster(name, api, data)
            try:
                yield cluster
            finally:
                cluster.terminate_all()


def first_answer(client: httpx.Client, url: str, started: float) -> float:
    """Poll ``url`` until it answers 200; seconds since ``started``."""
    while time.perf_counter() - started < ROUND_TIMEOUT_SECONDS:
        with contextlib.suppress(httpx.TransportError):
            if client.get(url).status_code == 200:
                return time.perf_counter() - started
        time.sleep(POLL_SECONDS)
    raise SystemExit(f"{url} did not answer within {ROUND_TIMEOUT_SECONDS}s")


def sailplane_spawn(cluster: Cluster, image: str, poller: httpx.Client) -> float:
    started = time.perf_counter()
    url = cluster.connect(f"bench-{uuid.uuid4().hex[:12]}", image)
    elapsed = first_answer(poller, url, started)
    cluster.terminate_all()
    return elapsed


def raw_spawn(engine: docker.DockerClient, image: str, volume: Path, run_id: str,
              poller: httpx.Client, publish: bool) -> float:
    started = time.perf_counter()
    container = engine.containers.create(
        image, detach=True, environment={"PORT": "8080"}, labels={BENCH_LABEL: run_id},
        ports=LOOPBACK_PORT if publish else {},
        mounts=[docker.types.Mount("/data", str(volume), type="bind", read_only=False)],
    )
    try:
        container.start()
        container.reload()
        settings = container.attrs["NetworkSettings"]
        if publish:
            url = f"http://127.0.0.1:{settings['Ports'][PORT_KEY][0]['HostPort']}/"
        else:
            url = f"http://{settings['Networks']['bridge']['IPAddress']}:8080/"
        return first_answer(poller, url, started)
    finally:
        container.remove(force=True)


def report(times: dict[str, list[float]]) -> dict[str, float]:
    raw = min(statistics.median(times[kind]) for kind in RAW_KINDS)
    print(f"\n{'':26} {'median':>9} {'p90':>9} {'min':>9} {'max':>9} {'vs raw':>8}"
          "   (raw: the faster raw median)")
    ratios = {}
    for kind, values in times.items():
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        ratios[kind] = statistics.median(values) / raw
        print(f"{kind:26} {statistics.median(values) * 1000:7.1f}ms {p90 * 1000:7.1f}ms "
              f"{ordered[0] * 1000:7.1f}ms {ordered[-1] * 1000:7.1f}ms {ratios[kind]:7.2f}x")
    return ratios


def measure(n: int, image: str, warm: bool) -> tuple[dict[str, list[float]], bool]:
    """Run the rounds and print the table; every series' times (s) and whether a target was
    missed. ``bench/spawn.py --path`` runs this after its executor-only rounds."""
    run_id = uuid.uuid4().hex[:10]
    engine = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="sailplane-bench-path-") as tmp_name, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        volume = tmp / "volume"
        volume.mkdir()
        (volume / "hello.txt").write_text("hello\n")
        cold = stack.enter_context(dev_cluster(tmp, "cold", volume))
        kinds: dict[str, Callable[[], float]] = {}
        poller = stack.enter_context(httpx.Client(timeout=1.0))
        kinds["sailplane"] = lambda: sailplane_spawn(cold, image, poller)
        kinds["raw Docker"] = lambda: raw_spawn(engine, image, volume, run_id, poller,
                                                publish=True)
        kinds["raw Docker, bridge IP"] = lambda: raw_spawn(engine, image, volume, run_id,
                                                           poller, publish=False)
        if warm:
            pooled = stack.enter_context(dev_cluster(
                tmp, "warm", volume, "--warm-pool", f"{image}={WARM_POOL_SIZE}"))
            kinds["warm claim"] = lambda: sailplane_spawn(pooled, image, poller)
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        for spawn in kinds.values():  # one unmeasured spawn each: images, caches, pools
            spawn()
        order = list(kinds)
        for round_ in range(n):
            turn = order[round_ % len(order):] + order[:round_ % len(order)]
            for kind in turn:
                times[kind].append(spawn_and_settle(kinds[kind]))
            print(f"  round {round_ + 1}/{n}: " + ", ".join(
                f"{kind} {times[kind][-1] * 1000:.0f} ms" for kind in turn), flush=True)
    engine.close()
    print(f"\ncold spawn to the first HTTP answer, {image}, one bind mount, "
          f"{n} rounds of each, rotating")
    ratios = report(times)
    missed = ratios["sailplane"] > MAX_RATIO or ratios.get("warm claim", 0) > MAX_WARM_RATIO
    print(f"target: sailplane/raw <= {MAX_RATIO}x"
          + (f", warm claim/raw <= {MAX_WARM_RATIO}x" if warm else "")
          + (": missed" if missed else ": met"))
    return times, missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--image", default=IMAGE)
    parser.add_argument("--warm", action="store_true", help="also time warm claims")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    _, missed = measure(args.n, args.image, args.warm)
    return 1 if args.check and missed else 0


def spawn_and_settle(spawn: Callable[[], float]) -> float:
    """One timed spawn, then a pause so removals and pool refills finish outside timings."""
    elapsed = spawn()
    time.sleep(0.5)
    return elapsed


if __name__ == "__main__":
    sys.exit(main())
