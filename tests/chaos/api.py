"""The controller API as the chaos suite calls it: whichever controller answers, every answer
kept.

Every call of every part of the suite (the storm's clients, the status poller, the final
terminate-all) goes through :class:`Api`, so the "no 5xx but the documented 503" invariant sees
every answer any controller gave. A controller that refuses the connection (it is down) is
skipped for the next one; a call that no controller answers is kept with status ``None``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

# A connect may wait for its key (15 s, CONNECT_KEY_WAIT_SECONDS) before it answers.
CALL_TIMEOUT = httpx.Timeout(30.0, connect=2.0)


@dataclass(frozen=True)
class Answer:
    sent: float  # wall-clock seconds
    answered: float
    method: str
    path: str
    controller: int | None  # the index of the controller that answered
    status: int | None  # None: no controller answered, or the answer was cut off
    code: str  # the error body's code, "" when there is none
    body: Any  # the parsed JSON body, None when it is not JSON
    failure: str = ""  # why there is no status


def error_code(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code", ""))
    return ""


class Api:
    def __init__(self, urls: list[str], token: str, seed: int) -> None:
        self.urls = urls
        self.token = token
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._rng = random.Random(seed)

    def _clients(self) -> list[httpx.Client]:
        clients: list[httpx.Client] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = [httpx.Client(base_url=url, timeout=CALL_TIMEOUT,
                                    headers={"authorization": f"Bearer {self.token}"})
                       for url in self.urls]
            self._local.clients = clients
        return clients

    def close_thread_clients(self) -> None:
        for client in getattr(self._local, "clients", []):
            client.close()

    def call(self, method: str, path: str, *, body: Any = None, content: bytes | None = None,
             retry_seconds: float = 0.0) -> Answer:
        """One call, on the controllers in random order until one answers; retried for up
        to ``retry_seconds`` while none does. Every attempt is kept in :attr:`answers`."""
        deadline = time.monotonic() + retry_seconds
        while True:
            answer = self._once(method, path, body, content)
            with self._lock:
                self.answers.append(answer)
            if answer.status is not None or time.monotonic() >= deadline:
                return answer
            time.sleep(0.2)

    def _once(self, method: str, path: str, body: Any, content: bytes | None) -> Answer:
        clients = self._clients()
        with self._lock:
            order = self._rng.sample(range(len(clients)), len(clients))
        sent = time.time()
        failure = ""
        for index in order:
            try:
                if content is not None:
                    response = clients[index].request(
                        method, path, content=content,
                        headers={"content-type": "application/json"})
                else:
                    response = clients[index].request(method, path, json=body)
            except httpx.ConnectError as exc:  # refused: that controller is down, try another
                failure = f"connect: {exc}"
                continue
            except httpx.HTTPError as exc:  # cut off mid-call: it may have been done
                return Answer(sent, time.time(), method, path, index, None, "", None,
                              f"{type(exc).__name__}: {exc}")
            try:
                parsed = response.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                parsed = None
            return Answer(sent, time.time(), method, path, index, response.status_code,
                          error_code(parsed), parsed)
        return Answer(sent, time.time(), method, path, None, None, "", None,
                      failure or "no controller")
