"""The proxy's route cache: token -> backend address and the verified headers to add.

A miss asks the controller (one request per token at a time, however many clients wait on
it); an entry is dropped the moment the controller says its backend left ``ready``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from sailplane.protocol import RouteGone, RouteInfo, RouteRequest

ROUTE_LOOKUP_TIMEOUT_SECONDS = 5.0


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


class RouteTable:
    def __init__(self, send: Callable[[RouteRequest], bool]) -> None:
        self._send = send  # False when the controller is not connected
        self._routes: dict[str, Route] = {}
        self._pending: dict[str, asyncio.Future[Route | None]] = {}

    def cached(self, token: str) -> Route | None:
        return self._routes.get(token)

    async def lookup(self, token: str) -> Route | None:
        route = self._routes.get(token)
        if route is not None:
            return route
        future = self._pending.get(token)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._pending[token] = future
            if not self._send(RouteRequest(token=token)):
                del self._pending[token]
                return None
        try:
            async with asyncio.timeout(ROUTE_LOOKUP_TIMEOUT_SECONDS):
                return await asyncio.shield(future)
        except TimeoutError:
            self._pending.pop(token, None)
            return None

    def on_route_info(self, info: RouteInfo) -> None:
        route = route_from(info)
        if route is not None:
            self._routes[info.token] = route
        future = self._pending.pop(info.token, None)
        if future is not None and not future.done():
            future.set_result(route)

    def on_route_gone(self, message: RouteGone) -> None:
        self.forget(message.backend_id)

    def forget(self, backend_id: str) -> None:
        for token in [t for t, r in self._routes.items() if r.backend_id == backend_id]:
            del self._routes[token]

    def disconnected(self) -> None:
        """Without a controller, cached routes may be stale and pending lookups never end."""
        self._routes.clear()
        for future in self._pending.values():
            with contextlib.suppress(asyncio.InvalidStateError):
                future.set_result(None)
        self._pending.clear()
