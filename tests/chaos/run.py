"""One chaos run: a cluster of real processes, a connect storm, the fault driver, the outside
observers; then the engine restart, the settling, the final terminate-all and the verdicts.

``tests/chaos/test_chaos.py`` runs it with numbers that fit CI; ``bench/chaos.py`` with
bigger ones. The seed decides every random choice (requests, fault times, samples).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from sailplane import timing
from tests.chaos import dockerd
from tests.chaos.api import Api
from tests.chaos.database import Database, chaos_database
from tests.chaos.faults import Fault, FaultCounts, FaultDriver, plan_faults
from tests.chaos.followers import Followers, replay
from tests.chaos.invariants import Evidence, judge
from tests.chaos.poller import Poller
from tests.chaos.prober import Prober
from tests.chaos.processes import ChaosCluster
from tests.chaos.report import ChaosReport
from tests.chaos.storm import Storm
from tests.chaos.watcher import Watcher, all_backends
from tests.integration.controller_fixtures import API_TOKEN

SEED_ENV = "SAILPLANE_CHAOS_SEED"
# Bounds of the run's end: every backend's state settles, then every backend is terminated
# and every container removed within these.
TERMINATE_ALL_SECONDS = 30.0
CONTAINERS_GONE_SECONDS = 20.0
DOCKERD_DOWN_SECONDS = 2.0
ANCHORS_READY_SECONDS = 30.0


def seed_from_env() -> int:
    """The seed to replay (``SAILPLANE_CHAOS_SEED``), else a new one."""
    given = os.environ.get(SEED_ENV)
    return int(given) if given else random.SystemRandom().randrange(2**32)


@dataclass(frozen=True)
class ChaosPlan:
    seed: int
    database: Database = "postgresql"
    connects: int = 300
    keys: int = 30
    clients: int = 6
    storm_seconds: float = 60.0
    bad_share: float = 0.12  # requests oversized or malformed
    terminate_share: float = 0.1  # good connects followed by a soft or hard terminate
    faults: FaultCounts = field(default_factory=lambda: FaultCounts(
        controller_kills=3, proxy_kills=2, drone_kills=3, drone_returns=1, dockerd_restarts=1))
    # SAILPLANE_TIME_SCALE of the cluster: a drone is lost (and its leases end) this much
    # sooner than in production, so that a drone can return after its lease in a CI run.
    time_scale: float = 0.5
    # Backends that live through the whole run, beside the storm's short-lived ones.
    anchors: int = 4
    followers: int = 24  # status streams followed live ...
    follow_share: float = 0.4  # ... a random share of the backends returned
    # Every backend the API returns is ready or terminated within this: a drone's silence
    # is noticed after the lost-drone deadline, plus a restart or two on a busy machine.
    settle_bound: float = 60.0
    # A container of a terminated backend is gone within this (grace period and removal).
    leftover_grace: float = 15.0


def run_chaos(plan: ChaosPlan, workdir: Path, image: str,
              log: Callable[[str], None] = print) -> ChaosReport:
    log(f"chaos: seed {plan.seed} on {plan.database} (replay: {SEED_ENV}={plan.seed}); "
        f"logs in {workdir}")
    began = time.monotonic()
    report = ChaosReport(plan.seed, plan.database)
    client = docker.DockerClient.from_env(timeout=30)
    try:
        with chaos_database(plan.database, workdir) as url:
            controllers = 2 if plan.database == "postgresql" else 1
            cluster = ChaosCluster.build(workdir, url, controllers, plan.time_scale)
            try:
                cluster.start()
                _attack(plan, cluster, image, client, report, workdir, log)
            finally:
                try:
                    cluster.stop_processes()
                finally:
                    dockerd.ensure_engine()
                    cluster.remove_containers(client)
    finally:
        dockerd.ensure_engine()
        client.close()
        report.seconds = time.monotonic() - began
    return report


def _attack(plan: ChaosPlan, cluster: ChaosCluster, image: str, client: docker.DockerClient,
            report: ChaosReport, workdir: Path, log: Callable[[str], None]) -> None:
    started, began_wall = time.monotonic(), time.time()
    rng = random.Random(plan.seed)
    drone_ids = set(cluster.drone_ids.values())
    api = Api(cluster.controller_urls, API_TOKEN, plan.seed)
    watcher = Watcher(drone_ids)
    poller = Poller(api)
    followers = Followers(cluster.controller_urls, plan.followers, plan.follow_share, plan.seed)
    urls: dict[str, str] = {}
    returned: dict[str, float] = {}

    def on_backend(backend_id: str, _key: str, body: dict[str, Any]) -> None:
        returned.setdefault(backend_id, time.time())
        # Each connect mints a token of its own: the prober keeps to the first, so that a
        # route it found served is the very one it asks for later.
        urls.setdefault(backend_id, str(body["url"]))
        followers.follow(backend_id)

    storm = Storm(api=api, image=image, namespace=f"chaos-{uuid.uuid4().hex[:6]}",
                  keys=plan.keys, connects=plan.connects, clients=plan.clients,
                  seconds=plan.storm_seconds, bad_share=plan.bad_share,
                  terminate_share=plan.terminate_share, seed=plan.seed, on_backend=on_backend)
    # This process runs unscaled: the cluster's deadlines are the plan's scale of them.
    lost_after = timing.DRONE_LOST_SECONDS / timing.TIME_SCALE * plan.time_scale
    lease = timing.LEASE_SECONDS / timing.TIME_SCALE * plan.time_scale
    heartbeat = timing.HEARTBEAT_INTERVAL_SECONDS / timing.TIME_SCALE * plan.time_scale
    # A drone renews at each heartbeat; its last renewal came up to two heartbeats before
    # its controller died.
    stop_after = timing.LEASE_SELF_STOP_SHARE * lease
    self_stop = stop_after - 2 * heartbeat
    driver = FaultDriver(cluster, plan_faults(rng, cluster, plan.faults, plan.storm_seconds,
                                              lost_after))
    proxy_controller = cluster.proxy_controller().name
    prober = Prober(plan.seed, urls=lambda: dict(urls),
                    ready=lambda b: poller.status_of(b) == "ready", address=poller.address_of,
                    proxy_generation=lambda: cluster.proxy_part.kills,
                    proxy_down=lambda: driver.is_down(cluster.proxy_part.name),
                    controller_down=lambda: driver.is_down(proxy_controller))
    for observer in (watcher, poller, prober):
        observer.start()
    try:
        log(f"chaos: storm of {plan.connects} connects over {plan.keys} keys from "
            f"{plan.clients} clients; {len(driver.plans)} kills planned")
        _wait_ready(poller, storm.anchors(plan.anchors), ANCHORS_READY_SECONDS)
        driver.start()
        storm.run()
        driver.wait(timeout=plan.storm_seconds * 2 + 120)
        log(f"chaos: storm and kills done after {time.monotonic() - started:.0f}s")
        for _ in range(plan.faults.dockerd_restarts):
            killed, back = dockerd.kill_and_restart(DOCKERD_DOWN_SECONDS)
            driver.record(Fault("dockerd", "dockerd", killed, back))
            log(f"chaos: dockerd killed and answering again after {back - killed:.1f}s")
        settled_at, settled, containers = _settle(
            poller, client, drone_ids, plan.settle_bound,
            lambda: all(s == "connected" for s in _drones(api, cluster).values()))
        drones = _drones(api, cluster)
        prober.stop()
        unterminated = _terminate_all(api, poller, settled)
        followers.stop(timeout=10)
        poller.stop()
        poller.poll()  # the final listing
        seen = poller.copy()
        replays = {b: replay(cluster.controller_urls, b) for b, s in sorted(seen.items())
                   if s.last.get("status") == "terminated"}
        final_status = {b: api.call("GET", f"/pub/b/{b}/status").body for b in replays}
        left = _containers_left(client, drone_ids)
    finally:
        for observer in (prober, watcher, poller):
            observer.stop()
    calls = storm.calls
    report.faults = driver.faults
    report.counts = {
        "connects": len(calls),
        "answered 200": sum(1 for c in calls if c.answer.status == 200),
        "answered 4xx": sum(1 for c in calls if (c.answer.status or 0) // 100 == 4),
        "503 no_drone_available": sum(1 for c in calls if c.answer.code == "no_drone_available"),
        "503 key_busy": sum(1 for c in calls if c.answer.code == "key_busy"),
        "unanswered": sum(1 for c in calls if c.answer.status is None),
        "terminates": len(storm.terminates),
        "backends": len(seen),
        "docker ps samples": sum(s.samples for s in watcher.spans),
        # 100 ms when the engine keeps up; a busy machine stretches it (read the table so)
        "ms between samples": int(1000 * (watcher.spans[-1].end - watcher.spans[0].start)
                                  / max(1, sum(s.samples for s in watcher.spans)))
        if watcher.spans else 0,
        "failed samples": watcher.failed_samples,
        "probes": len(prober.probes),
        "streams followed": len(followers.followed),
    }
    evidence = Evidence(
        began=began_wall, spans=watcher.snapshot(), drone_of=dict(watcher.drone_of), seen=seen,
        returned=dict(returned), answers=list(api.answers), calls=list(calls),
        followed=dict(followers.followed), replays=replays, final_status=final_status,
        probes=list(prober.probes),
        outages=[f for f in driver.faults if f.target == proxy_controller],
        settled_at=settled_at, settled=settled, containers_settled=containers,
        containers_left=left, unterminated=unterminated, drones=drones,
        settle_bound=plan.settle_bound,
        leftover_grace=plan.leftover_grace, route_bound=lease, self_stop_bound=self_stop,
        stop_after=stop_after,
        follows=cluster.follows(), faults=list(driver.faults),
        drone_parts={cluster.drone_ids[n]: p.name for n, p in cluster.drones.items()},
    )
    report.verdicts = judge(evidence)
    # Everything recorded, for a closer look at a failure.
    (workdir / "evidence.json").write_text(json.dumps(
        dataclasses.asdict(evidence), default=_jsonable, indent=1))


def _jsonable(value: object) -> object:
    return sorted(value) if isinstance(value, (set, frozenset)) else str(value)


def _engine_listing(client: docker.DockerClient, drone_ids: set[str]) -> dict[str, str] | None:
    try:
        return all_backends(client, drone_ids)
    except (docker.errors.DockerException, requests.RequestException):
        return None


def _wait_ready(poller: Poller, backend_ids: list[str], bound: float) -> None:
    """Wait (up to ``bound``) until the backends are ready; the run goes on either way."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if all(poller.status_of(b) == "ready" for b in backend_ids):
            return
        time.sleep(0.5)


def _settle(poller: Poller, client: docker.DockerClient, drone_ids: set[str],
            bound: float, drones_back: Callable[[], bool],
            ) -> tuple[float, dict[str, dict[str, Any]], dict[str, str]]:
    """Wait (up to ``bound``) until every drone is connected, every backend is terminated,
    or ready with its container running, and no container of a terminated backend is left;
    the state then."""
    deadline = time.monotonic() + bound
    while True:
        listing = poller.poll()
        containers = _engine_listing(client, drone_ids)
        if listing is not None and containers is not None:
            summaries = {s["backend_id"]: s for s in listing}
            done = all(
                (s["status"] == "terminated" and b not in containers)
                or (s["status"] == "ready" and containers.get(b) == "running")
                for b, s in summaries.items())
            if (done and drones_back()) or time.monotonic() > deadline:
                return time.time(), summaries, containers
        elif time.monotonic() > deadline:
            raise AssertionError("neither the controllers nor the engine answer at the end")
        time.sleep(1.0)


def _drones(api: Api, cluster: ChaosCluster) -> dict[str, str]:
    """drone id -> "connected", or why not, once the run has settled."""
    answer = api.call("GET", "/ctrl/drones", retry_seconds=10)
    listed = answer.body if answer.status == 200 and isinstance(answer.body, list) else []
    connected = {d["drone_id"] for d in listed if d["connected"]}
    return {cluster.drone_ids[name]: "connected" if cluster.drone_ids[name] in connected
            else f"not connected (its process {'runs' if part.alive() else 'has exited'})"
            for name, part in cluster.drones.items()}


def _terminate_all(api: Api, poller: Poller,
                   settled: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Hard-terminate every live backend; those not terminated within the bound, with their
    status then."""
    for backend_id, summary in settled.items():
        if summary["status"] != "terminated":
            api.call("POST", f"/ctrl/b/{backend_id}/hard-terminate", retry_seconds=10)
    deadline = time.monotonic() + TERMINATE_ALL_SECONDS
    while True:
        listing = poller.poll() or []
        open_ = {s["backend_id"]: s["status"] for s in listing if s["status"] != "terminated"}
        if not open_ or time.monotonic() > deadline:
            return open_
        time.sleep(0.5)


def _containers_left(client: docker.DockerClient, drone_ids: set[str]) -> dict[str, str]:
    deadline = time.monotonic() + CONTAINERS_GONE_SECONDS
    while True:
        left = _engine_listing(client, drone_ids)
        if left == {} or time.monotonic() > deadline:
            return left or {}
        time.sleep(0.5)
