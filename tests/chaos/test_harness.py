"""The chaos suite's own logic, without a cluster: the fault plan and the judging.

The run itself (test_chaos.py) can only show that nothing was violated; these show that a
violation would be seen, and that a seed replays the same plan.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tests.chaos.faults import FaultCounts, plan_faults
from tests.chaos.invariants import Evidence, Verdict, judge
from tests.chaos.poller import Seen
from tests.chaos.processes import ChaosCluster
from tests.chaos.watcher import Span

COUNTS = FaultCounts(controller_kills=3, proxy_kills=2, drone_kills=3, drone_returns=1,
                     dockerd_restarts=0)


def test_a_seed_replays_its_plan_and_the_proxys_controller_dies_first(tmp_path: Path) -> None:
    cluster = ChaosCluster.build(tmp_path, "sqlite:///unused", 2, 0.5)
    plans = [plan_faults(random.Random(7), cluster, COUNTS, 60, 15) for _ in range(2)]
    assert plans[0] == plans[1]
    kills = plans[0]
    assert kills[0].kind != "proxy"
    first = next(p for p in kills if p.target == cluster.proxy_controller().name)
    assert all(p.at > first.at for p in kills if p.kind == "proxy")
    [away] = [p for p in kills if p.kind == "drone-away"]
    assert away.down > 15
    assert len(kills) == 3 + 2 + 3 + 1


def verdicts(spans: list[Span], seen: dict[str, Seen],
             replays: dict[str, list[dict[str, Any]]]) -> dict[str, Verdict]:
    evidence = Evidence(
        began=0.0, spans=spans, drone_of={}, seen=seen, returned={}, answers=[], calls=[],
        followed={}, replays=replays, final_status={}, probes=[], outages=[], settled_at=0.0,
        settled={}, containers_settled={}, containers_left={}, unterminated={}, drones={},
        settle_bound=60, leftover_grace=15, route_bound=10, self_stop_bound=4, stop_after=6,
        follows={}, drone_parts={}, faults=[])
    return {verdict.name: verdict for verdict in judge(evidence)}


def test_two_containers_of_one_key_and_a_status_moving_back_are_seen() -> None:
    seen = {b: Seen("ns/k", "d") for b in ("b-1", "b-2")}
    seen["b-1"].went_back.append("ready after terminated")
    history: list[dict[str, Any]] = [
        {"status": s, "time": 1000, "reason": "lost" if s == "terminated" else None}
        for s in ("scheduled", "ready", "terminated")]
    found = verdicts([Span(1.0, 2.0, frozenset({"b-1"}), 10),
                      Span(2.1, 2.5, frozenset({"b-1", "b-2"}), 4)], seen, {"b-1": history})
    key = found["never two live containers for one key"]
    assert key.checked == 14 and len(key.violations) == 1 and "b-1" in key.violations[0]
    assert not found["no container the controller does not know"].violations
    [moved] = found["no status event lost (live streams, replay, API agree)"].violations
    assert "move back" in moved
    # Nothing to judge is no proof: a check with nothing checked does not hold.
    assert not found["a connect never returns a dying backend"].held
