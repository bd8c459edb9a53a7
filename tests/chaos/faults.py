"""The fault driver: SIGKILL parts of the cluster at random (seeded) moments during the storm,
and start them again after a random pause.

Each part has its own schedule, run by its own thread, so faults of different parts overlap
as they would in life (a controller may die while a drone is away). One drone is kept away
longer than the controller waits before it declares a silent drone's backends lost (and
their keys' leases run out): it returns to find its containers belong to nobody.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

from tests.chaos.processes import ChaosCluster, Part

# A killed part is started again after this many seconds (a supervisor's restart delay) ...
DOWN_SECONDS = {"controller": (0.5, 3.0), "proxy": (0.5, 2.0), "drone": (1.0, 5.0)}
# ... and the next fault of the same part comes no sooner than this after it is back.
RECOVERY_SECONDS = 4.0
# The away drone stays away this much longer than the lost-drone deadline.
AWAY_PAST_LOST_SECONDS = 10.0


@dataclass(frozen=True)
class FaultCounts:
    controller_kills: int
    proxy_kills: int
    drone_kills: int  # short: back before the controller notices much
    drone_returns: int  # away past the lost deadline, then back
    dockerd_restarts: int


@dataclass(frozen=True)
class PlannedFault:
    kind: str  # controller, proxy, drone, drone-away
    target: str  # the part's name
    at: float  # seconds after the storm began
    down: float


@dataclass
class Fault:
    kind: str
    target: str
    killed_at: float = 0.0  # wall clock
    back_at: float = 0.0  # when it served again (a drone: when its process was started)
    error: str = ""

    @property
    def down_seconds(self) -> float:
        return self.back_at - self.killed_at if self.back_at else 0.0


def plan_faults(rng: random.Random, cluster: ChaosCluster, counts: FaultCounts,
                storm_seconds: float, lost_after_seconds: float) -> list[PlannedFault]:
    """Which part dies when, for how long; the same for the same seed.

    The proxy's controller dies first, once backends are up on both drones and the proxy has
    served them; the proxy's own deaths and the away drone's absence come later. The
    routes-while-the-controller-is-down invariant needs one outage with a proxy that knows
    its routes and backends that outlive it."""
    d = storm_seconds
    begin, end = 0.05 * d, 0.85 * d
    plans: list[PlannedFault] = []
    controllers = [part.name for part in cluster.controllers]
    first = _spread(rng, "controller", controllers[0], min(counts.controller_kills, 1),
                    0.3 * d, 0.4 * d)
    plans += first
    rest = [rng.choice(controllers) for _ in range(counts.controller_kills - len(first))]
    after_first = first[-1].at + first[-1].down + RECOVERY_SECONDS if first else begin
    for name in controllers:  # the other controllers too: their drones keep backends up
        plans += _spread(rng, "controller", name, rest.count(name), after_first, end)
    plans += _spread(rng, "proxy", cluster.proxy_part.name, counts.proxy_kills, 0.5 * d, 0.9 * d)
    away = cluster.drones["b"].name
    away_at = rng.uniform(0.5 * d, 0.6 * d)
    for _ in range(counts.drone_returns):
        down = lost_after_seconds + AWAY_PAST_LOST_SECONDS
        plans.append(PlannedFault("drone-away", away, away_at, down))
        away_at += down + RECOVERY_SECONDS
    short = [rng.choice(sorted(cluster.drones)) for _ in range(counts.drone_kills)]
    plans += _spread(rng, "drone", cluster.drones["a"].name, short.count("a"), begin, end)
    plans += _spread(rng, "drone", away, short.count("b"), begin, 0.45 * d)
    return sorted(plans, key=lambda plan: plan.at)


def _spread(rng: random.Random, kind: str, target: str, n: int, begin: float,
            end: float) -> list[PlannedFault]:
    planned: list[PlannedFault] = []
    t = begin
    for i in range(n):
        slot = max(end - t, 0.0) / (n - i)
        at = t + rng.uniform(0, slot / 2)
        down = rng.uniform(*DOWN_SECONDS[kind])
        planned.append(PlannedFault(kind, target, at, down))
        t = at + down + RECOVERY_SECONDS
    return planned


@dataclass
class FaultDriver:
    cluster: ChaosCluster
    plans: list[PlannedFault]
    faults: list[Fault] = field(default_factory=list)
    down: set[str] = field(default_factory=set)  # parts killed and not serving again yet
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        began = time.monotonic()
        for target in sorted({plan.target for plan in self.plans}):
            mine = [plan for plan in self.plans if plan.target == target]
            thread = threading.Thread(target=self._run, args=(began, mine),
                                      name=f"chaos-faults-{target}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        if stuck:
            raise AssertionError(f"fault threads still running after {timeout}s: {stuck}")

    def is_down(self, name: str) -> bool:
        with self._lock:
            return name in self.down

    def record(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def _part(self, name: str) -> Part:
        return next(part for part in self.cluster.parts() if part.name == name)

    def _run(self, began: float, plans: list[PlannedFault]) -> None:
        back = 0.0  # a part that came back late still gets its time to recover
        for plan in plans:
            time.sleep(max(0.0, began + plan.at - time.monotonic(),
                           back + RECOVERY_SECONDS - time.monotonic()))
            part = self._part(plan.target)
            fault = Fault(plan.kind, plan.target)
            with self._lock:
                self.down.add(part.name)
            part.kill()
            fault.killed_at = time.time()
            time.sleep(plan.down)
            try:
                self.cluster.start_part(part)
            except AssertionError as exc:  # it did not come back: kept, and tried once more
                fault.error = str(exc)[-2000:]
                part.process.stop()
                self.cluster.start_part(part)
            fault.back_at, back = time.time(), time.monotonic()
            with self._lock:
                self.down.discard(part.name)
            self.record(fault)
