"""Status streams followed live, through controller restarts.

A follower reads ``GET /pub/b/{id}/status-stream`` from any live controller; when the stream
breaks (its controller was killed) it connects again, to whichever controller answers, with
``Last-Event-ID`` set to the last status it saw, as a browser's EventSource does. It stops at
``terminated`` or when told to. What it received is compared, at the end, with the backend's
whole history replayed (:func:`replay`): a status in the history that the follower never got
is a lost event.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

STREAM_TIMEOUT = httpx.Timeout(5.0, read=20.0)  # the stream sends a keep-alive every 15 s


@dataclass
class Followed:
    backend_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answers other than 200
    done: bool = False  # it saw ``terminated``


def read_stream(client: httpx.Client, backend_id: str, last: str | None,
                sink: list[dict[str, Any]], stop: threading.Event) -> bool:
    """Append the stream's events to ``sink`` until ``terminated`` (True) or the stream ends
    or ``stop`` is set (False). HTTP errors propagate."""
    headers = {"last-event-id": last} if last else {}
    with client.stream("GET", f"/pub/b/{backend_id}/status-stream", headers=headers,
                       timeout=STREAM_TIMEOUT) as response:
        if response.status_code != 200:
            raise httpx.HTTPStatusError(f"status-stream answered {response.status_code}",
                                        request=response.request, response=response)
        for line in response.iter_lines():
            if line.startswith("data: "):
                sink.append(json.loads(line.removeprefix("data: ")))
                if sink[-1]["status"] == "terminated":
                    return True
            if stop.is_set():
                return False
    return False


def replay(urls: list[str], backend_id: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The backend's whole history from its status stream (it must be terminated)."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        for url in urls:
            events: list[dict[str, Any]] = []
            try:
                with httpx.Client(base_url=url) as client:
                    if read_stream(client, backend_id, None, events, threading.Event()):
                        return events
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise AssertionError(f"no whole status stream of {backend_id} in {timeout}s ({last_error})")


class Followers:
    def __init__(self, urls: list[str], limit: int, share: float, seed: int) -> None:
        self.urls = urls
        self.limit = limit  # at most this many streams followed ...
        self.share = share  # ... chosen at random with this probability
        self.followed: dict[str, Followed] = {}
        self._rng = random.Random(f"{seed}-followers")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def follow(self, backend_id: str) -> None:
        with self._lock:
            if (backend_id in self.followed or len(self.followed) >= self.limit
                    or self._rng.random() >= self.share):
                return
            followed = self.followed[backend_id] = Followed(backend_id)
            first = self._rng.randrange(len(self.urls))
        thread = threading.Thread(target=self._run, args=(followed, first),
                                  name=f"chaos-follow-{backend_id}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the followers to see ``terminated``, then stop them."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        for thread in self._threads:
            thread.join(STREAM_TIMEOUT.read or 20.0)

    def _run(self, followed: Followed, first: int) -> None:
        clients = [httpx.Client(base_url=url) for url in self.urls]
        index = first
        try:
            while not self._stop.is_set():
                last = followed.events[-1]["status"] if followed.events else None
                try:
                    if read_stream(clients[index], followed.backend_id, last, followed.events,
                                   self._stop):
                        followed.done = True
                        return
                except httpx.HTTPError as exc:
                    if isinstance(exc, httpx.HTTPStatusError):
                        followed.statuses.append(exc.response.status_code)
                    followed.errors.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.2)
                followed.reconnects += 1
                index = (index + 1) % len(clients)
        finally:
            for client in clients:
                client.close()
