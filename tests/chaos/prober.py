"""Requests through the proxy to the backends the controller counts ``ready``.

Four times a second a few such routes are fetched (a token URL from a connect answer). While
the proxy's controller is down every route the current proxy process has served is fetched,
so the invariant "known routes keep answering while the controller is down" has data.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from tests.chaos.api import error_code

PROBE_SECONDS = 0.25
PROBES_PER_ROUND = 3
PROBE_THREADS = 16
PROBE_TIMEOUT = httpx.Timeout(5.0)


@dataclass(frozen=True)
class Probe:
    at: float
    backend_id: str
    proxy_generation: int  # how many times the proxy had been killed then
    controller_down: bool  # the proxy's controller was down when it was sent
    status: int | None  # None: the proxy did not answer
    error: str = ""  # the error code of the proxy's own answer, or why there was none
    proxy_steady: bool = True  # the proxy was neither killed nor down during the probe
    answered: float = 0.0  # when the answer (or the failure) came
    # When the proxy could not reach the backend (502), what the backend's own address
    # answered then, straight from this host: None if it did not answer either.
    direct_status: int | None = None


class Prober:
    def __init__(self, seed: int, urls: Callable[[], dict[str, str]],
                 ready: Callable[[str], bool], address: Callable[[str], str | None],
                 proxy_generation: Callable[[], int],
                 proxy_down: Callable[[], bool], controller_down: Callable[[], bool]) -> None:
        self.urls = urls  # backend id -> its URL through the proxy
        self.ready = ready
        self.address = address  # backend id -> host:port, as the controller last listed it
        self.proxy_generation = proxy_generation
        self.proxy_down = proxy_down
        self.controller_down = controller_down
        self.probes: list[Probe] = []
        self._rng = random.Random(f"{seed}-prober")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0  # probes submitted and not answered yet
        self._thread = threading.Thread(target=self._run, name="chaos-prober", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def served(self, generation: int, before: float) -> set[str]:
        """Backends the proxy process of ``generation`` answered 200 for before ``before``."""
        with self._lock:
            return {p.backend_id for p in self.probes
                    if p.proxy_generation == generation and p.status == 200 and p.at < before}

    def _run(self) -> None:
        with (httpx.Client(timeout=PROBE_TIMEOUT) as client,
              ThreadPoolExecutor(PROBE_THREADS) as pool):
            while not self._stop.is_set():
                down = self.controller_down()
                generation = self.proxy_generation()
                if down:
                    chosen = sorted(self.served(generation, time.time()))
                else:  # routes this proxy has not served yet first: all become known
                    ready = sorted(b for b in self.urls() if self.ready(b))
                    served = self.served(generation, time.time())
                    fresh = [b for b in ready if b not in served]
                    chosen = self._rng.sample(fresh, min(PROBES_PER_ROUND, len(fresh)))
                    rest = [b for b in ready if b in served]
                    chosen += self._rng.sample(
                        rest, min(PROBES_PER_ROUND - len(chosen), len(rest)))
                urls = self.urls()
                # Not waited for: on a busy machine one slow answer must not hold the next
                # round back (what the probe saw is taken when it is sent).
                for backend_id in chosen:
                    with self._lock:
                        if self._in_flight >= 2 * PROBE_THREADS:  # bounded, however slow
                            break
                        self._in_flight += 1
                    pool.submit(self._probe, client, backend_id, urls[backend_id])
                self._stop.wait(PROBE_SECONDS)

    def _probe(self, client: httpx.Client, backend_id: str, url: str) -> None:
        at = time.time()
        generation, down = self.proxy_generation(), self.controller_down()
        steady = not self.proxy_down()
        try:
            response = client.get(url)
            status: int | None = response.status_code
            error = "" if status == 200 else error_code(_json(response)) or response.text[:80]
        except httpx.HTTPError as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
        steady = steady and not self.proxy_down() and generation == self.proxy_generation()
        answered = time.time()
        direct = self._direct(client, backend_id) if status == 502 else None
        with self._lock:
            self._in_flight -= 1
            self.probes.append(Probe(at, backend_id, generation, down, status, error, steady,
                                     answered, direct))

    def _direct(self, client: httpx.Client, backend_id: str) -> int | None:
        address = self.address(backend_id)
        if not address:
            return None
        try:
            return client.get(f"http://{address}/").status_code
        except httpx.HTTPError:
            return None


def _json(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None
