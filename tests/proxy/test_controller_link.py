"""The proxy without its controller: a real ``sailplane proxy`` process, the stand-in
controller of ``harness`` stopped and started under it, real HTTP from clients. No Docker.

Known routes keep answering while the controller is away, and are asked for again when it
is back; a token the proxy cannot know then is 503 with ``retry-after``, never 404; a
route the controller withdraws stops being served; a proxy that has just started answers a
live route as soon as its link is up, never 404.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.proxy.conftest import Stack
from tests.proxy.harness import (
    START_TIMEOUT_SECONDS,
    TOKEN,
    ClientThreads,
    Controller,
    ProxyProcess,
    free_port,
    request,
    responses,
)

KNOWN = [f"t-known-{n}" for n in range(10)]
HAMMER_THREADS = 4


@pytest.fixture(scope="module")
def controller(stack: Stack) -> Iterator[Controller]:
    """A stand-in controller of this module's own (the tests stop and start it)."""
    made = Controller()
    stack.loop.run(made.start())
    made.route(TOKEN, stack.backend.port)
    for token in KNOWN:
        made.route(token, stack.backend.port)
    try:
        yield made
    finally:
        if made.server is not None and made.server.is_serving():
            stack.loop.run(made.stop())


@pytest.fixture
def linked(controller: Controller, tmp_path: Path) -> Iterator[ProxyProcess]:
    """A proxy with its link up and every ``KNOWN`` route cached."""
    proxy = ProxyProcess(controller.port, tmp_path / "proxy.log")
    try:
        proxy.wait_ready()
        for token in KNOWN:
            assert _status(proxy.port, token) == 200
        yield proxy
    finally:
        proxy.stop()


def _get(port: int, token: str, timeout: float = 5.0) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.request("GET", f"/{token}/", headers={"Connection": "close"})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def _status(port: int, token: str) -> int:
    return _get(port, token).status


def _wait_until(check: Callable[[], bool], what: str,
                timeout: float = START_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Hammer(ClientThreads):
    """``HAMMER_THREADS`` clients, each on one keep-alive connection, requesting the known
    routes in turn until stopped (or ``MAX_CLIENT_SECONDS``); statuses counted."""

    MAX_CLIENT_SECONDS = 10.0

    def __init__(self, port: int) -> None:
        self.port = port
        self.statuses: Counter[int | str] = Counter()
        self._lock = threading.Lock()
        super().__init__(HAMMER_THREADS)

    def run(self, number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        deadline = self.deadline()
        turn = number
        while self.going(deadline):
            token = KNOWN[turn % len(KNOWN)]
            turn += 1
            try:
                connection.request("GET", f"/{token}/")
                response = connection.getresponse()
                response.read()
                outcome: int | str = response.status
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            with self._lock:
                self.statuses[outcome] += 1
        connection.close()

    def total(self) -> int:
        with self._lock:
            return sum(self.statuses.values())


def test_known_routes_answer_while_the_controller_is_away(
    stack: Stack, controller: Controller, linked: ProxyProcess,
) -> None:
    with Hammer(linked.port) as hammer:
        time.sleep(0.5)
        before = hammer.total()
        stack.loop.run(controller.stop())
        _wait_until(lambda: "lost" in linked.log(), "the proxy to notice the lost link")
        away_from = hammer.total()
        time.sleep(2.0)
        during = hammer.total() - away_from
        asked_before = len(controller.asked)
        stack.loop.run(controller.start())
        _wait_until(lambda: set(KNOWN) <= set(controller.asked[asked_before:]),
                    "the proxy to ask for its routes again")
        time.sleep(0.5)
    assert before > 0 and during > 100, (before, during, hammer.statuses)
    assert set(hammer.statuses) == {200}, hammer.statuses  # not one error, away or back
    # Revalidated, not refetched on demand: each cached route was asked for exactly once on
    # the new link, while every request was served from the cache.
    again = Counter(controller.asked[asked_before:])
    assert all(again[token] == 1 for token in KNOWN), again


def test_an_unknown_token_while_the_controller_is_away_is_503(
    stack: Stack, controller: Controller, linked: ProxyProcess,
) -> None:
    stack.loop.run(controller.stop())
    try:
        _wait_until(lambda: "lost" in linked.log(), "the proxy to notice the lost link")
        started = time.monotonic()
        response = _get(linked.port, "t-never-seen")
        assert response.status == 503
        assert response.getheader("retry-after") == "1"
        assert time.monotonic() - started < 3  # a short wait for the link, then the answer
        assert _status(linked.port, KNOWN[0]) == 200  # known ones are still served
    finally:
        stack.loop.run(controller.start())
    _wait_until(lambda: _status(linked.port, "t-never-seen") == 404,
                "the controller's word: no such token")


def test_a_route_withdrawn_while_the_controller_was_away_is_dropped_on_return(
    stack: Stack, controller: Controller, linked: ProxyProcess,
) -> None:
    token = KNOWN[3]
    stack.loop.run(controller.stop())
    saved = controller.routes.pop(token)
    try:
        _wait_until(lambda: "lost" in linked.log(), "the proxy to notice the lost link")
        assert _status(linked.port, token) == 200  # cached: the proxy cannot know yet
        stack.loop.run(controller.start())
        _wait_until(lambda: _status(linked.port, token) == 404,
                    "the revalidation to drop the route", timeout=10)
        assert _status(linked.port, KNOWN[4]) == 200  # the others were confirmed
    finally:
        controller.routes[token] = saved


def test_a_route_gone_while_linked_stops_being_served(
    stack: Stack, controller: Controller, linked: ProxyProcess,
) -> None:
    token = KNOWN[5]
    saved = controller.routes.pop(token)
    try:
        assert _status(linked.port, token) == 200  # cached from before
        stack.loop.run(controller.gone(saved.backend_id or ""))
        _wait_until(lambda: _status(linked.port, token) == 404, "route_gone to be obeyed",
                    timeout=5)
    finally:
        controller.routes[token] = saved


def _first_answers(port: int, token: str, count: int) -> list[int]:
    """Connect as soon as the proxy listens, then ``count`` requests one after another."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            first = request(port, b"GET /%s/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                            % token.encode(), timeout=5)
        except ConnectionRefusedError:
            time.sleep(0.01)
            continue
        (response,) = responses(first)
        return [response.status] + [_status(port, token) for _ in range(count - 1)]
    raise AssertionError("the proxy did not listen")


def test_a_starting_proxy_never_answers_404_for_a_live_route(
    controller: Controller, tmp_path: Path,
) -> None:
    for attempt in range(3):
        proxy = ProxyProcess(controller.port, tmp_path / f"proxy-{attempt}.log")
        try:
            assert _first_answers(proxy.port, KNOWN[attempt], 5) == [200] * 5, proxy.log()
        finally:
            proxy.stop()


def test_a_proxy_started_without_its_controller_answers_503(
    controller: Controller, tmp_path: Path,
) -> None:
    nowhere = free_port()  # no controller listens here
    proxy = ProxyProcess(nowhere, tmp_path / "proxy.log")
    try:
        statuses = _first_answers(proxy.port, KNOWN[0], 2)
        assert statuses == [503, 503], proxy.log()
    finally:
        proxy.stop()


def test_a_route_unconfirmed_beyond_the_bound_is_dropped(
    stack: Stack, controller: Controller, tmp_path: Path,
) -> None:
    bound = 1.5
    proxy = ProxyProcess(controller.port, tmp_path / "proxy.log",
                         "--stale-route-seconds", str(bound))
    try:
        proxy.wait_ready()
        assert _status(proxy.port, KNOWN[6]) == 200
        stack.loop.run(controller.stop())
        try:
            _wait_until(lambda: "lost" in proxy.log(), "the proxy to notice the lost link")
            lost = time.monotonic()
            assert _status(proxy.port, KNOWN[6]) == 200  # within the bound: served
            # Past the bound (plus a tick of the proxy's clock): the proxy no longer knows.
            _wait_until(lambda: _status(proxy.port, KNOWN[6]) == 503, "the route to expire",
                        timeout=bound + 3)
            assert time.monotonic() - lost >= bound - 0.1
        finally:
            stack.loop.run(controller.start())
        _wait_until(lambda: _status(proxy.port, KNOWN[6]) == 200, "the route to come back")
    finally:
        proxy.stop()
