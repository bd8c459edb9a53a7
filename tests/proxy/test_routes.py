"""The route table's rules for a controller link that comes and goes (pure logic: the
"controller" is a list of the requests the table sends)."""

from __future__ import annotations

import asyncio

import pytest

from sailplane.protocol import RouteGone, RouteInfo, RouteRequest
from sailplane.proxy import routes
from sailplane.proxy.routes import Miss, RouteTable


def _info(token: str, backend_id: str = "b-1") -> RouteInfo:
    return RouteInfo(token=token, backend_id=backend_id, address="127.0.0.1:8080",
                     username="alice", secret="s")


class Table:
    """A route table and what it asked the controller."""

    def __init__(self, stale_after: float = 10.0) -> None:
        self.sent: list[str] = []
        self.table = RouteTable(self._send, stale_after)

    def _send(self, request: RouteRequest) -> None:
        assert self.table.online.is_set(), "a request sent without a link"
        self.sent.append(request.token)


def test_routes_survive_a_lost_link_until_the_bound() -> None:
    made = Table(stale_after=10.0)
    made.table.connected()
    made.table.on_route_info(_info("t-a"))
    made.table.disconnected(now=100.0)
    made.table.expire(now=109.0)
    assert made.table.cached("t-a") is not None  # still served within the bound
    made.table.expire(now=110.5)
    assert made.table.cached("t-a") is None  # unconfirmed for longer than the bound


def test_a_new_link_revalidates_and_keeps_serving_meanwhile() -> None:
    made = Table()
    made.table.connected()
    made.table.on_route_info(_info("t-a", "b-1"))
    made.table.on_route_info(_info("t-b", "b-2"))
    made.table.disconnected(now=0.0)
    made.sent.clear()
    made.table.connected()
    assert sorted(made.sent) == ["t-a", "t-b"]  # asked again, not flushed
    assert made.table.cached("t-a") is not None and made.table.cached("t-b") is not None
    made.table.on_route_info(_info("t-a", "b-1"))  # confirmed
    made.table.on_route_info(RouteInfo(token="t-b"))  # the controller knows it no more
    assert made.table.cached("t-b") is None
    made.table.expire(now=1000.0)
    assert made.table.cached("t-a") is not None  # confirmed routes never go stale


def test_an_unconfirmed_route_keeps_the_time_of_the_first_loss() -> None:
    """A link that flaps without the answers getting through does not extend the bound."""
    made = Table(stale_after=10.0)
    made.table.connected()
    made.table.on_route_info(_info("t-a"))
    made.table.disconnected(now=0.0)
    made.table.connected()
    made.table.disconnected(now=8.0)
    made.table.expire(now=10.5)
    assert made.table.cached("t-a") is None


def test_route_gone_is_obeyed_with_or_without_a_link() -> None:
    made = Table()
    made.table.connected()
    made.table.on_route_info(_info("t-a", "b-1"))
    made.table.on_route_info(_info("t-c", "b-1"))
    made.table.on_route_info(_info("t-b", "b-2"))
    made.table.on_route_gone(RouteGone(backend_id="b-1"))
    assert made.table.cached("t-a") is None and made.table.cached("t-c") is None
    assert made.table.cached("t-b") is not None


def test_lookups_answer_unknown_only_on_the_controllers_word() -> None:
    async def scenario() -> None:
        made = Table()
        made.table.connected()
        waiting = asyncio.create_task(made.table.lookup("t-x"))
        await asyncio.sleep(0)
        assert made.sent == ["t-x"]
        made.table.on_route_info(RouteInfo(token="t-x"))
        assert await waiting is Miss.UNKNOWN
        # A lookup in flight when the link drops cannot be answered: unavailable, not unknown.
        waiting = asyncio.create_task(made.table.lookup("t-y"))
        await asyncio.sleep(0)
        made.table.disconnected(now=0.0)
        assert await waiting is Miss.UNAVAILABLE

    asyncio.run(scenario())


def test_a_lookup_without_a_link_waits_for_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes, "LINK_WAIT_SECONDS", 0.2)

    async def scenario() -> None:
        made = Table()
        # Never connected (the proxy's start): a short wait, then unavailable.
        assert await made.table.lookup("t-x") is Miss.UNAVAILABLE
        assert made.sent == []
        # The link comes up during the wait: the lookup goes through.
        waiting = asyncio.create_task(made.table.lookup("t-x"))
        await asyncio.sleep(0.05)
        made.table.connected()
        await asyncio.sleep(0)
        assert made.sent == ["t-x"]
        made.table.on_route_info(_info("t-x"))
        route = await waiting
        assert not isinstance(route, Miss) and route.backend_id == "b-1"

    asyncio.run(scenario())
