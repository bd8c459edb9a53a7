"""The controller's view, polled: ``GET /ctrl/backends`` twice a second through :class:`Api`.

For every backend it keeps when each status was first seen, the key, the drone and the last
summary. The invariants compare this with what the engine ran (the watcher) and with what the
status streams said.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sailplane.state import BackendStatus
from tests.chaos.api import Api

POLL_SECONDS = 0.5
# The lifecycle's order (sailplane.state.BackendStatus): a status never moves back in it.
ORDER = [status.value for status in BackendStatus]


def key_name(key: dict[str, Any]) -> str:
    return f"{key.get('namespace', '')}/{key.get('name', '')}"


@dataclass
class Seen:
    key: str
    drone: str
    first_seen: dict[str, float] = field(default_factory=dict)  # status -> wall clock
    last: dict[str, Any] = field(default_factory=dict)  # the latest summary
    went_back: list[str] = field(default_factory=list)  # "ready after terminated", ...


class Poller:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.backends: dict[str, Seen] = {}
        self.polls = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(35)

    def poll(self) -> list[dict[str, Any]] | None:
        """One poll, kept; the summaries, or None when no controller answered well."""
        answer = self.api.call("GET", "/ctrl/backends")
        if answer.status != 200 or not isinstance(answer.body, list):
            return None
        at = answer.answered
        with self._lock:
            self.polls += 1
            for summary in answer.body:
                seen = self.backends.setdefault(summary["backend_id"], Seen(
                    key_name(summary["key"]), summary["drone"]))
                seen.first_seen.setdefault(summary["status"], at)
                before = seen.last.get("status")
                if before and ORDER.index(summary["status"]) < ORDER.index(before):
                    seen.went_back.append(f"{summary['status']} after {before}")
                seen.last = summary
        return list(answer.body)

    def status_of(self, backend_id: str) -> str | None:
        with self._lock:
            seen = self.backends.get(backend_id)
            return str(seen.last.get("status")) if seen else None

    def address_of(self, backend_id: str) -> str | None:
        with self._lock:
            seen = self.backends.get(backend_id)
            return str(seen.last["address"]) if seen and seen.last.get("address") else None

    def copy(self) -> dict[str, Seen]:
        with self._lock:
            return dict(self.backends)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                self.poll()
                self._stop.wait(max(0.0, POLL_SECONDS - (time.monotonic() - began)))
        finally:
            self.api.close_thread_clients()
