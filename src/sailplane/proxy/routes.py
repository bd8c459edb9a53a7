"""The proxy's route cache: token -> backend address and the verified headers to add.

A miss asks the controller (one request per token at a time, however many clients wait on
it); an entry is dropped the moment the controller says its backend left ``ready``. The
cache outlives the controller link (see :class:`RouteTable`): a proxy whose controller is
restarting keeps serving the routes it knows, and answers 503 for those it cannot know.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sailplane.protocol import RouteGone, RouteInfo, RouteRequest
from sailplane.timing import LEASE_SECONDS

log = logging.getLogger(__name__)

# A lookup the controller has not answered within this is answered 503.
ROUTE_LOOKUP_TIMEOUT_SECONDS = 5.0
# A lookup while the link is down waits this long for it (the proxy's own start) before 503.
LINK_WAIT_SECONDS = 1.0
# How long a route is served without the controller's confirmation, by default. A drone
# that cannot reach the controller stops its backends within their key lease, so a route
# older than a lease may lead to a backend that is gone, or to its address reused by another.
STALE_ROUTE_SECONDS = LEASE_SECONDS


@dataclass(frozen=True, slots=True)
class Route:
    backend_id: str
    host: str
    port: int
    verified_headers: bytes  # the x-verified-* lines every request to this route carries


def _header_value(value: str) -> bytes:
    """A header value can never smuggle a line break into the request head."""
    return value.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace")


_PLAIN = frozenset(range(0x21, 0x7F)) - {ord("%")}  # visible ASCII, but not ``%``


def percent_encoded(text: str) -> bytes:
    """``text`` as UTF-8 with every byte outside visible ASCII, and ``%``, written ``%XX``:
    plain names pass unchanged, distinct names stay distinct, and ``unquote`` (UTF-8) in any
    language gives the name back.

    >>> percent_encoded("alice")
    b'alice'
    >>> percent_encoded("李四"), percent_encoded("王五")
    (b'%E6%9D%8E%E5%9B%9B', b'%E7%8E%8B%E4%BA%94')
    >>> percent_encoded("100% sure")
    b'100%25%20sure'
    """
    raw = text.encode("utf-8")
    if all(byte in _PLAIN for byte in raw):
        return raw
    return b"".join(b"%c" % byte if byte in _PLAIN else b"%%%02X" % byte for byte in raw)


def route_from(info: RouteInfo) -> Route | None:
    if info.backend_id is None or info.address is None:
        return None
    host, _, port = info.address.rpartition(":")
    lines = [
        b"x-verified-username: " + percent_encoded(info.username or ""),
        b"x-verified-user-data: " + _header_value(info.user_data),
        b"x-verified-backend: " + _header_value(info.backend_id),
        b"x-verified-secret: " + _header_value(info.secret or ""),
    ]
    return Route(info.backend_id, host, int(port), b"\r\n".join(lines) + b"\r\n")


class Miss(enum.Enum):
    """Why :meth:`RouteTable.lookup` has no route."""

    UNKNOWN = "unknown"  # the controller answered: no ready backend for this token (404)
    UNAVAILABLE = "unavailable"  # the controller could not be asked, or did not answer (503)


class RouteTable:
    """Routes by token, kept through the controller link's outages.

    A route is dropped when the controller says so (``route_gone``, or a ``route_info``
    without an address), or when it has gone ``stale_after`` seconds without the
    controller's confirmation: from the moment the link dropped until the controller
    answered for it again. Until then a cached route is served as it is, so clients of
    healthy backends see nothing of a controller restart. A new link revalidates every
    route it did not confirm (one ``route_request`` each), and the controller watches each
    again from its answer on.
    """

    def __init__(self, send: Callable[[RouteRequest], None],
                 stale_after: float = STALE_ROUTE_SECONDS) -> None:
        self._send = send  # called only while ``online``
        self.stale_after = stale_after
        self.online = asyncio.Event()  # the controller link is up
        self._routes: dict[str, Route] = {}
        # The token's route if cached, else None: the dict's own ``get`` (no Python call on
        # every request), so ``_routes`` is only ever changed in place.
        self.cached: Callable[[str], Route | None] = self._routes.get
        # Tokens whose routes the controller has not confirmed since the link dropped, with
        # the loop's time when it dropped.
        self._unconfirmed: dict[str, float] = {}
        self._pending: dict[str, asyncio.Future[Route | Miss]] = {}

    async def lookup(self, token: str) -> Route | Miss:
        """The token's route, from the cache or the controller. Without a link, a lookup
        waits up to ``LINK_WAIT_SECONDS`` for one (a proxy that just started has none yet)."""
        if not self.online.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LINK_WAIT_SECONDS):
                    await self.online.wait()
        route = self._routes.get(token)
        if route is not None:
            return route
        if not self.online.is_set():
            return Miss.UNAVAILABLE
        future = self._pending.get(token)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._pending[token] = future
            self._send(RouteRequest(token=token))
        try:
            async with asyncio.timeout(ROUTE_LOOKUP_TIMEOUT_SECONDS):
                return await asyncio.shield(future)
        except TimeoutError:
            if self._pending.get(token) is future:
                del self._pending[token]
            return Miss.UNAVAILABLE

    def on_route_info(self, info: RouteInfo) -> None:
        route = route_from(info)
        self._unconfirmed.pop(info.token, None)
        if route is not None:
            self._routes[info.token] = route
        else:
            self._routes.pop(info.token, None)
        future = self._pending.pop(info.token, None)
        if future is not None and not future.done():
            future.set_result(Miss.UNKNOWN if route is None else route)

    def on_route_gone(self, message: RouteGone) -> None:
        self.forget(message.backend_id)

    def forget(self, backend_id: str) -> None:
        for token in [t for t, r in self._routes.items() if r.backend_id == backend_id]:
            del self._routes[token]
            self._unconfirmed.pop(token, None)

    def connected(self) -> None:
        """A new link: ask the controller again for every route it has not confirmed."""
        self.online.set()
        for token in self._unconfirmed:
            self._send(RouteRequest(token=token))

    def disconnected(self, now: float) -> None:
        """The link dropped at ``now`` (the loop's clock): routes are kept but unconfirmed
        (those unconfirmed already keep their earlier time); lookups waiting on the
        controller end as ``UNAVAILABLE``, since their answers cannot come."""
        self.online.clear()
        for token in self._routes:
            self._unconfirmed.setdefault(token, now)
        for future in self._pending.values():
            if not future.done():
                future.set_result(Miss.UNAVAILABLE)
        self._pending.clear()

    def expire(self, now: float) -> None:
        """Drop the routes unconfirmed for longer than ``stale_after`` (called every tick)."""
        if not self._unconfirmed:
            return
        expired = [t for t, since in self._unconfirmed.items() if now - since > self.stale_after]
        if expired:
            for token in expired:
                del self._unconfirmed[token]
                self._routes.pop(token, None)
            log.warning("dropped %d route(s) the controller has not confirmed for %.0fs",
                        len(expired), self.stale_after)
