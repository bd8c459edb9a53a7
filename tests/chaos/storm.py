"""The connect storm: a bounded number of ``POST /ctrl/connect`` calls over a few keys, from
several client threads, some of them oversized or malformed, some followed by a terminate.

Each client has a random generator seeded from the run's seed, so a run's requests can be
replayed (their timing against the faults cannot be exactly). A call no controller answers is
retried on any controller for a while, as a client behind a load balancer would.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sailplane.controller.limits import MAX_BODY_BYTES
from sailplane.spec import MAX_AUTH_BYTES, MAX_NAME_LENGTH
from tests.chaos.api import Answer, Api

# How long a client keeps trying while no controller answers (restarts take a few seconds).
UNANSWERED_RETRY_SECONDS = 20.0
# Lifetimes of the storm's backends: short, so that keys change hands during the run.
LIFETIME_SECONDS = (5, 25)
ANCHOR_LIFETIME_SECONDS = 900


@dataclass(frozen=True)
class Bad:
    """A request the controller must refuse at the door, with one of ``statuses``."""

    make: Callable[[random.Random, dict[str, Any]], bytes]
    statuses: frozenset[int]


def _body(good: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({**good, **changes}).encode()


def _spawn(good: dict[str, Any], **changes: Any) -> dict[str, Any]:
    spawn: dict[str, Any] = {**good["spawn_config"], **changes}
    return spawn


BAD_REQUESTS: dict[str, Bad] = {
    # Over the body limit: 413 before the app reads it.
    "oversized_body": Bad(lambda rng, good: _body(good, spawn_config=_spawn(
        good, executable={**good["spawn_config"]["executable"],
                          "env": {"BIG": "x" * (MAX_BODY_BYTES + 4096)}})),
        frozenset({413})),
    # Under the body limit, over the auth limit: 400 naming it.
    "oversized_auth": Bad(lambda rng, good: _body(
        good, auth={"blob": "y" * (MAX_AUTH_BYTES + 1024)}), frozenset({400})),
    "nul_in_key": Bad(lambda rng, good: _body(
        good, key={**good["key"], "name": "a\u0000b"}), frozenset({400})),
    "key_too_long": Bad(lambda rng, good: _body(
        good, key={**good["key"], "name": "k" * (MAX_NAME_LENGTH + 1)}), frozenset({400})),
    "lifetime_overflow": Bad(lambda rng, good: _body(
        good, spawn_config=_spawn(good, lifetime_limit_seconds=10**16)), frozenset({400})),
    "truncated_json": Bad(lambda rng, good: _body(good)[: rng.randint(1, 40)],
                          frozenset({400})),
    "neither_key_nor_spawn": Bad(lambda rng, good: b"{}", frozenset({400})),
}


@dataclass(frozen=True)
class StormCall:
    client: int
    kind: str  # "good" or a name of BAD_REQUESTS
    key: str  # namespace/name
    answer: Answer


@dataclass
class Storm:
    api: Api
    image: str
    namespace: str
    keys: int
    connects: int
    clients: int
    seconds: float
    bad_share: float
    terminate_share: float
    seed: int
    calls: list[StormCall] = field(default_factory=list)
    terminates: list[Answer] = field(default_factory=list)
    on_backend: Callable[[str, str, dict[str, Any]], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def key_names(self) -> list[str]:
        return [f"key-{index:03d}" for index in range(self.keys)]

    def run(self) -> None:
        """All clients, until each has made its share of the calls (or the time is up twice
        over); returns when they are done."""
        shares = [self.connects // self.clients + (i < self.connects % self.clients)
                  for i in range(self.clients)]
        threads = [threading.Thread(target=self._client, args=(i, share),
                                    name=f"chaos-client-{i}", daemon=True)
                   for i, share in enumerate(shares)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.seconds * 2 + UNANSWERED_RETRY_SECONDS + 60)

    def good_request(self, rng: random.Random, key: str,
                     lifetime: int | None = None) -> dict[str, Any]:
        return {
            "key": {"name": key, "namespace": self.namespace},
            "spawn_config": {
                "executable": {"image": self.image, "pull_policy": "Never"},
                "lifetime_limit_seconds": lifetime or rng.randint(*LIFETIME_SECONDS),
            },
        }

    def anchors(self, count: int) -> list[str]:
        """Backends for keys of their own that live through the whole run (until the final
        terminate-all): routes that outlast a controller outage, whatever the storm does."""
        made = []
        for index in range(count):
            key = f"anchor-{index}"
            answer = self.api.call("POST", "/ctrl/connect", body=self.good_request(
                random.Random(index), key, lifetime=ANCHOR_LIFETIME_SECONDS),
                retry_seconds=UNANSWERED_RETRY_SECONDS)
            call = StormCall(-1, "good", f"{self.namespace}/{key}", answer)
            with self._lock:
                self.calls.append(call)
            if answer.status == 200:
                made.append(str(answer.body["backend_id"]))
                if self.on_backend is not None:
                    self.on_backend(made[-1], call.key, answer.body)
        return made

    def _client(self, index: int, share: int) -> None:
        rng = random.Random(f"{self.seed}-client-{index}")
        deadline = time.monotonic() + self.seconds * 2
        pause = self.seconds / max(share, 1)
        try:
            for _ in range(share):
                if time.monotonic() > deadline:
                    break
                self._one(index, rng)
                time.sleep(rng.uniform(0, 2 * pause))
        finally:
            self.api.close_thread_clients()

    def _one(self, index: int, rng: random.Random) -> None:
        key = rng.choice(self.key_names())
        good = self.good_request(rng, key)
        kind = "good"
        if rng.random() < self.bad_share:
            kind = rng.choice(sorted(BAD_REQUESTS))
            answer = self.api.call("POST", "/ctrl/connect", content=BAD_REQUESTS[kind].make(
                rng, good), retry_seconds=UNANSWERED_RETRY_SECONDS)
        else:
            answer = self.api.call("POST", "/ctrl/connect", body=good,
                                   retry_seconds=UNANSWERED_RETRY_SECONDS)
        call = StormCall(index, kind, f"{self.namespace}/{key}", answer)
        with self._lock:
            self.calls.append(call)
        if kind != "good" or answer.status != 200:
            return
        backend_id = str(answer.body["backend_id"])
        if self.on_backend is not None:
            self.on_backend(backend_id, call.key, answer.body)
        if rng.random() < self.terminate_share:
            how = rng.choice(["soft-terminate", "hard-terminate"])
            done = self.api.call("POST", f"/ctrl/b/{backend_id}/{how}",
                                 retry_seconds=UNANSWERED_RETRY_SECONDS)
            with self._lock:
                self.terminates.append(done)
