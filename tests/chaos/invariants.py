"""The invariants of a chaos run, each judged from what was recorded outside the cluster.

Each check returns a :class:`Verdict`: whether it held, how many observations it was judged
on (a check with nothing to judge did not hold: it proves nothing), and every violation,
described so that it can be looked for in the processes' logs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.api import Answer
from tests.chaos.faults import Fault
from tests.chaos.followers import Followed
from tests.chaos.poller import ORDER, Seen
from tests.chaos.prober import Probe
from tests.chaos.storm import BAD_REQUESTS, StormCall
from tests.chaos.watcher import Span

ALIVE = set(ORDER[:5])
# The only 5xx the API documents: no drone can take the backend, or the key is still held by a
# backend on its way out. Both pass.
DOCUMENTED_503 = {"no_drone_available", "key_busy"}
SHOWN_VIOLATIONS = 3
# A proxy connects again this soon after its controller is back (its backoff, scaled, is
# shorter); outages closer together than this are one outage of its link.
RECONNECT_SECONDS = 5.0


@dataclass
class Verdict:
    name: str
    checked: int
    violations: list[str] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return self.checked > 0 and not self.violations


@dataclass
class Evidence:
    """Everything a run recorded."""

    began: float  # wall clock; times in violations are counted from here
    spans: list[Span]
    drone_of: dict[str, str]  # backend -> drone id, as the engine labelled it
    seen: dict[str, Seen]  # the poller's view, with the final listing folded in
    returned: dict[str, float]  # backend -> when the API first returned it
    answers: list[Answer]
    calls: list[StormCall]
    followed: dict[str, Followed]
    replays: dict[str, list[dict[str, Any]]]  # backend -> its whole status stream
    final_status: dict[str, dict[str, Any]]  # backend -> GET /pub/b/{id}/status at the end
    probes: list[Probe]
    outages: list[Fault]  # kills of the proxy's controller
    settled_at: float
    settled: dict[str, dict[str, Any]]  # backend -> summary when the run settled
    containers_settled: dict[str, str]  # backend -> container state when the run settled
    containers_left: dict[str, str]  # after every backend was terminated
    unterminated: dict[str, str]  # backend -> status, not terminated after a hard-terminate
    drones: dict[str, str]  # drone id -> "connected" or why not, when the run settled
    settle_bound: float
    leftover_grace: float
    # The proxy keeps a route it cannot have confirmed for this long (the key lease); after
    # that it drops it by design, so the routes invariant looks at this much of an outage ...
    route_bound: float
    # ... and a drone that follows the dead controller stops its backends itself (hearing no
    # renewal) this soon, by design too: for its backends the invariant looks at this much.
    self_stop_bound: float
    stop_after: float  # a drone without renewals for this long stops its backends
    follows: dict[str, str]  # drone id -> the controller (part name) it follows
    drone_parts: dict[str, str]  # drone id -> its part name in the faults
    faults: list[Fault]  # every fault injected


def one_live_container_per_key(ev: Evidence) -> Verdict:
    verdict = Verdict("never two live containers for one key", sum(s.samples for s in ev.spans))
    found: dict[tuple[str, frozenset[str]], tuple[float, float]] = {}
    for span in ev.spans:
        by_key: dict[str, set[str]] = defaultdict(set)
        for backend_id in span.running:
            if backend_id in ev.seen:
                by_key[ev.seen[backend_id].key].add(backend_id)
        for key, running in by_key.items():
            if len(running) > 1:
                both = (key, frozenset(running))
                start, end = found.get(both, (span.start, span.end))
                found[both] = (min(start, span.start), max(end, span.end))
    for (key, together), (start, end) in found.items():
        verdict.violations.append(
            f"key {key}: {len(together)} containers running together for "
            f"{end - start:.1f}s from t+{start - ev.began:.1f}s: " + ", ".join(
                f"{b} (drone {ev.drone_of.get(b, '?')}, {_history(ev, b)})"
                for b in sorted(together)))
    return verdict


def _history(ev: Evidence, backend_id: str) -> str:
    events = ev.replays.get(backend_id) or []
    return " > ".join(f"{e['status']}{'(' + e['reason'] + ')' if e.get('reason') else ''}"
                      f"@{e['time'] / 1000 - ev.began:.1f}" for e in events) or "no history"


def every_backend_settles(ev: Evidence) -> Verdict:
    verdict = Verdict(f"every backend returned is ready or terminated within "
                      f"{ev.settle_bound:.0f}s", len(ev.returned))
    for backend_id, returned in sorted(ev.returned.items()):
        seen = ev.seen.get(backend_id)
        times = [seen.first_seen[s] for s in ("ready", "terminated")
                 if seen and s in seen.first_seen]
        if not times or min(times) - returned > ev.settle_bound:
            state = seen.last.get("status") if seen else "never listed"
            verdict.violations.append(
                f"{backend_id} (key {seen.key if seen else '?'}): {state} "
                f"{(min(times) - returned) if times else ev.settled_at - returned:.0f}s after "
                f"the API returned it; {_history(ev, backend_id)}")
    for backend_id, summary in sorted(ev.settled.items()):
        if summary["status"] == "terminated" and not summary.get("reason"):
            verdict.violations.append(f"{backend_id} terminated without a reason")
    return verdict


def nothing_stuck(ev: Evidence) -> Verdict:
    """Once the faults are over, every drone is connected again, and every backend the
    controller counts live is ready and its container runs: none waits forever, none is
    "ready" with its container gone."""
    verdict = Verdict("nothing stuck: drones back, every live backend ready and running",
                      len(ev.settled) + len(ev.drones))
    verdict.violations += [f"drone {drone} {state} when the run settled"
                           for drone, state in sorted(ev.drones.items()) if state != "connected"]
    for backend_id, summary in sorted(ev.settled.items()):
        status = summary["status"]
        if status == "terminated":
            continue
        if status != "ready":
            verdict.violations.append(f"{backend_id} still {status} when the run settled "
                                      f"(drone {summary['drone']}); {_history(ev, backend_id)}")
        elif ev.containers_settled.get(backend_id) != "running":
            verdict.violations.append(
                f"{backend_id} ready but its container is "
                f"{ev.containers_settled.get(backend_id, 'gone')} (drone {summary['drone']}); "
                f"{_history(ev, backend_id)}")
    for backend_id, status in sorted(ev.unterminated.items()):
        verdict.violations.append(f"{backend_id} still {status} after a hard-terminate at the "
                                  "end")
    return verdict


def no_unknown_container(ev: Evidence) -> Verdict:
    verdict = Verdict("no container the controller does not know",
                      sum(len(s.running) for s in ev.spans) + len(ev.containers_settled))
    unknown = sorted({b for span in ev.spans for b in span.running if b not in ev.seen})
    for backend_id in unknown:
        verdict.violations.append(f"container of {backend_id} ran, a backend the controller "
                                  "never had")
    for backend_id, state in sorted(ev.containers_settled.items()):
        summary = ev.settled.get(backend_id)
        if summary is None or summary["status"] != "terminated":
            continue
        ended = summary["status_time"] / 1000
        if ev.settled_at - ended > ev.leftover_grace:
            verdict.violations.append(
                f"container of {backend_id} still there ({state}) {ev.settled_at - ended:.0f}s "
                f"after the controller counted it terminated ({summary.get('reason')}); "
                f"{_history(ev, backend_id)}")
    for backend_id, state in sorted(ev.containers_left.items()):
        verdict.violations.append(f"container of {backend_id} left ({state}) after every "
                                  "backend was terminated")
    return verdict


def no_unexpected_5xx(ev: Evidence) -> Verdict:
    verdict = Verdict("no 5xx but the documented 503", len(ev.answers))
    for answer in ev.answers:
        if answer.status is None or answer.status < 500:
            continue
        if answer.status == 503 and answer.code in DOCUMENTED_503:
            continue
        verdict.violations.append(f"{answer.method} {answer.path} -> {answer.status} "
                                  f"{answer.code or ''} {str(answer.body)[:200]}")
    for followed in ev.followed.values():
        verdict.checked += len(followed.statuses)
        verdict.violations += [f"status-stream of {followed.backend_id} -> {status}"
                               for status in followed.statuses if status >= 500]
    return verdict


def bad_requests_refused(ev: Evidence) -> Verdict:
    bad = [call for call in ev.calls if call.kind != "good" and call.answer.status is not None]
    verdict = Verdict("oversized and malformed requests refused at the door (400/413)",
                      len(bad))
    for call in bad:
        expected = BAD_REQUESTS[call.kind].statuses
        if call.answer.status not in expected:
            verdict.violations.append(f"{call.kind} -> {call.answer.status} "
                                      f"(expected {sorted(expected)}): "
                                      f"{str(call.answer.body)[:200]}")
    return verdict


def connect_never_hands_out_dying(ev: Evidence) -> Verdict:
    good = [call for call in ev.calls if call.kind == "good" and call.answer.status == 200]
    verdict = Verdict("a connect never returns a dying backend", len(good))
    for call in good:
        status = call.answer.body.get("status")
        if status not in ALIVE:
            verdict.violations.append(f"connect for {call.key} returned "
                                      f"{call.answer.body.get('backend_id')} in {status}")
    return verdict


def no_status_event_lost(ev: Evidence) -> Verdict:
    verdict = Verdict("no status event lost (live streams, replay, API agree)",
                      len(ev.replays))
    for backend_id, events in sorted(ev.replays.items()):
        statuses = [e["status"] for e in events]
        problems = _stream_problems(statuses, events)
        final = ev.final_status.get(backend_id)
        if final and events and (final["status"], final.get("reason")) != (
                events[-1]["status"], events[-1].get("reason")):
            problems.append(f"the stream ends {events[-1]} but the status is {final}")
        seen = ev.seen.get(backend_id)
        missing = sorted(set(seen.first_seen) - set(statuses), key=ORDER.index) if seen else []
        if missing:
            problems.append(f"the API showed {missing}, the stream never did")
        if seen and seen.went_back:
            problems.append(f"the API showed it move back: {seen.went_back}")
        followed = ev.followed.get(backend_id)
        if followed is not None:
            got = [e["status"] for e in followed.events]
            if len(got) != len(set(got)):
                problems.append(f"a live follower got a status twice: {got}")
            if followed.done and got != statuses:
                problems.append(f"a live follower ({followed.reconnects} reconnects) got {got}")
            elif not followed.done and got != statuses[:len(got)]:
                problems.append(f"a live follower got {got}, not a start of the history")
        verdict.violations += [f"{backend_id}: {problem}; {statuses}" for problem in problems]
    return verdict


def _stream_problems(statuses: list[str], events: list[dict[str, Any]]) -> list[str]:
    problems = []
    ranks = [ORDER.index(s) for s in statuses]
    if ranks != sorted(set(ranks)):
        problems.append("the history does not only move forward")
    if not events or statuses[-1] != "terminated":
        problems.append("the history does not end terminated")
    elif not events[-1].get("reason"):
        problems.append("terminated without a reason")
    return problems


def routes_answer_while_controller_down(ev: Evidence) -> Verdict:
    """While the proxy's controller is down (up to the route bound), every route this proxy
    process served before the outage, whose backend stayed ready and whose container kept
    running, answers 200 (a 502 counts only if the backend answered this host directly)."""
    verdict = Verdict("known routes answer through the proxy while the controller is down",
                      0)
    for outage, link_lost in _link_outages(ev.outages):
        for probe in ev.probes:
            drone = ev.drone_of.get(probe.backend_id, "")
            orphaned = ev.follows.get(drone) == outage.target
            bound = ev.self_stop_bound if orphaned else ev.route_bound
            end = min(outage.back_at, link_lost + bound)
            if not (probe.controller_down and probe.proxy_steady
                    and outage.killed_at <= probe.at <= end):
                continue
            if not orphaned and _renewals_disturbed(ev, drone, probe.at):
                continue  # its drone may be stopping it for want of renewals, by design
            if not _served(ev, probe, outage.killed_at) or not _healthy(ev, probe, outage):
                continue
            if probe.status == 502 and probe.direct_status is None:
                continue  # the backend itself did not answer: nothing the proxy could do
            verdict.checked += 1
            if probe.status != 200:
                verdict.violations.append(
                    f"{probe.backend_id} -> {probe.status} {probe.error} at "
                    f"{probe.at - link_lost:.1f}s after the proxy's link went down with "
                    f"{outage.target} (t+{link_lost - ev.began:.1f}s)")
    return verdict


def _link_outages(outages: list[Fault]) -> list[tuple[Fault, float]]:
    """Each outage with the moment the proxy's link went down for it: that of an earlier
    outage when the proxy may not have connected again in between."""
    chained: list[tuple[Fault, float]] = []
    for outage in sorted(outages, key=lambda f: f.killed_at):
        lost = outage.killed_at
        if chained and outage.killed_at - chained[-1][0].back_at < RECONNECT_SECONDS:
            lost = chained[-1][1]
        chained.append((outage, lost))
    return chained


def _renewals_disturbed(ev: Evidence, drone: str, at: float) -> bool:
    """Whether the drone or the controller it follows was down at some moment of the
    ``stop_after`` before ``at``: the drone may then have gone without renewals long enough
    to stop its backends itself, as it should (and its own account of that may be lost)."""
    parts = {ev.drone_parts.get(drone), ev.follows.get(drone)}
    return any(f.target in parts and f.killed_at <= at and f.back_at >= at - ev.stop_after
               for f in ev.faults)


def _served(ev: Evidence, probe: Probe, before: float) -> bool:
    """Whether the same proxy process answered 200 for the route before ``before``."""
    return any(p.backend_id == probe.backend_id and p.proxy_generation == probe.proxy_generation
               and p.status == 200 and p.at < before for p in ev.probes)


def _healthy(ev: Evidence, probe: Probe, outage: Fault) -> bool:
    """Ready before the outage began and until after the probe, its container running from
    the outage's start until the engine's first look after the probe's answer."""
    events = ev.replays.get(probe.backend_id) or []
    ready = [e["time"] / 1000 for e in events if e["status"] == "ready"]
    left = [e["time"] / 1000 for e in events if ORDER.index(e["status"]) > ORDER.index("ready")]
    if not ready or ready[0] > outage.killed_at or (left and left[0] <= probe.at + 1.0):
        return False
    running = [s for s in ev.spans if s.end >= outage.killed_at and s.start <= probe.answered]
    after = next((s for s in ev.spans if s.end >= probe.answered), None)  # the next look
    return (bool(running) and after is not None
            and all(probe.backend_id in s.running for s in [*running, after]))


CHECKS = (one_live_container_per_key, every_backend_settles, nothing_stuck,
          no_unknown_container, no_unexpected_5xx, bad_requests_refused,
          connect_never_hands_out_dying, no_status_event_lost,
          routes_answer_while_controller_down)


def judge(ev: Evidence) -> list[Verdict]:
    return [check(ev) for check in CHECKS]


def shown(violations: Iterable[str]) -> list[str]:
    listed = list(violations)
    extra = len(listed) - SHOWN_VIOLATIONS
    return listed[:SHOWN_VIOLATIONS] + ([f"... and {extra} more"] if extra > 0 else [])
