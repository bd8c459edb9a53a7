"""One request and its response, from the client's bytes to the backend's and back.

The hot path (a cached route, an idle pooled connection) runs entirely inside parser
callbacks with no task or await; a route lookup or a new upstream connection takes one task.
Bodies are streamed chunk by chunk in both directions and never buffered whole: a request body
that arrives before the upstream connection is ready is held briefly, with the client paused.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from sailplane.proxy.routes import Route
from sailplane.proxy.upstream import Upstream

if TYPE_CHECKING:
    from sailplane.proxy.server import ClientConnection

# Request headers the proxy does not pass on: hop-by-hop ones (RFC 9110 7.6.1) and framing it
# sets itself. ``x-verified-*`` headers from clients are dropped too, so none can be spoofed.
_DROPPED = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                      b"transfer-encoding", b"upgrade", b"content-length"})
_VERIFIED = b"x-verified-"
MAX_EARLY_BODY_BYTES = 256 * 1024


def split_token(url: bytes) -> tuple[bytes, bytes]:
    """``/TOKEN/rest?q`` -> (``TOKEN``, ``/rest?q``); the rest is ``/`` when empty.

    >>> split_token(b"/t-abc/x?y=1")
    (b't-abc', b'/x?y=1')
    """
    end = len(url)
    for stop in (b"/", b"?"):
        found = url.find(stop, 1)
        if found != -1 and found < end:
            end = found
    rest = url[end:]
    if not rest.startswith(b"/"):
        rest = b"/" + rest
    return url[1:end], rest


class Exchange:
    __slots__ = (
        "body_bytes",
        "chunked",
        "client",
        "content_length",
        "counted",
        "early_body",
        "headers",
        "is_head",
        "keep_alive",
        "method",
        "request_complete",
        "rest",
        "retried",
        "route",
        "tail",
        "upgrade",
        "upstream",
        "url",
    )

    def __init__(
        self, client: ClientConnection, method: bytes, url: bytes,
        headers: list[tuple[bytes, bytes]], keep_alive: bool, upgrade: bytes | None,
    ) -> None:
        self.client = client
        self.method = method
        self.url = url
        self.rest = b"/"  # the path the backend sees, set by start()
        self.headers = headers
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.is_head = method == b"HEAD"
        self.chunked = False
        self.content_length: bytes | None = None
        for name, value in headers:
            lower = name.lower()
            if lower == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif lower == b"content-length":
                self.content_length = value
        self.route: Route | None = None
        self.upstream: Upstream | None = None
        self.early_body: list[bytes] = []
        self.body_bytes = 0  # of the request body, sent or held
        self.request_complete = False
        self.counted = False
        self.retried = False
        self.tail = b""  # bytes after an upgrade request, for the backend once it agrees

    # -- driven by the client connection ---------------------------------------------------

    def start(self) -> None:
        raw_token, self.rest = split_token(self.url)
        token = raw_token.decode("latin-1")
        route = self.client.proxy.routes.cached(token)
        if route is not None:
            self._use(route)
        else:
            self.client.proxy.spawn(self._lookup(token))

    def request_body(self, body: bytes) -> None:
        upstream = self.upstream
        self.body_bytes += len(body)
        if upstream is None:
            self.early_body.append(body)
            if self.body_bytes > MAX_EARLY_BODY_BYTES:
                self.client.transport.pause_reading()
            return
        upstream.transport.write(b"%x\r\n%s\r\n" % (len(body), body) if self.chunked else body)

    def request_end(self) -> None:
        self.request_complete = True
        if self.upstream is not None and self.chunked:
            self.upstream.transport.write(b"0\r\n\r\n")

    # -- route and upstream ----------------------------------------------------------------

    async def _lookup(self, token: str) -> None:
        route = await self.client.proxy.routes.lookup(token)
        if route is None:
            self.answer(404, "no_route", "no live backend for this token")
        elif not self.client.closed:
            self._use(route)

    def _use(self, route: Route) -> None:
        self.route = route
        self.counted = True
        self.client.proxy.counts.opened(route.backend_id)
        upstream = None if self.upgrade else self.client.proxy.pool.take(route.host, route.port)
        if upstream is not None:
            self._send(upstream)
        else:
            self.client.proxy.spawn(self._connect(route))

    async def _connect(self, route: Route) -> None:
        try:
            upstream = await self.client.proxy.pool.connect(route.host, route.port)
        except OSError:
            self.answer(502, "backend_unreachable", "the backend refused the connection")
            return
        if self.client.closed:
            upstream.transport.close()
        else:
            self._send(upstream)

    def _send(self, upstream: Upstream) -> None:
        assert self.route is not None
        self.upstream = upstream
        upstream.begin(self)
        if self.client.write_paused:  # the client is still slow to take an earlier answer
            self.client.hold(upstream.transport)
        path = self.url.split(b"?", 1)[0]
        head = [self.method, b" ", self.rest, b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            lower = name.lower()
            if lower in _DROPPED or lower.startswith(_VERIFIED):
                continue
            head += (name, b": ", value, b"\r\n")
        head += (self.route.verified_headers, b"x-verified-path: ", path, b"\r\n")
        if self.chunked:
            head.append(b"transfer-encoding: chunked\r\n")
        elif self.content_length is not None:
            head += (b"content-length: ", self.content_length, b"\r\n")
        if self.upgrade:
            head += (b"connection: upgrade\r\nupgrade: ", self.upgrade, b"\r\n\r\n")
        else:
            head.append(b"connection: keep-alive\r\n\r\n")
        write = upstream.transport.write
        write(b"".join(head))
        for body in self.early_body:
            write(b"%x\r\n%s\r\n" % (len(body), body) if self.chunked else body)
        if self.early_body:
            self.early_body = []
            self.client.transport.resume_reading()
        if self.request_complete and self.chunked:
            write(b"0\r\n\r\n")
        if self.tail:
            write(self.tail)

    # -- driven by the upstream connection -------------------------------------------------

    def response_complete(self) -> None:
        self._uncount()
        self.client.finished(self)

    def upgraded(self, upstream: Upstream) -> asyncio.Transport:
        """The backend agreed to switch protocols: splice the two connections from now on."""
        self.client.tunnel = upstream.transport
        self.client.transport.resume_reading()  # paused since the upgrade request
        return self.client.transport

    def upstream_lost(self, upstream: Upstream) -> None:
        if not upstream.got_response and not self.retried and not self.body_bytes \
                and self.request_complete and self.route is not None and not self.upgrade:
            # A pooled connection the backend had closed: try once more on a fresh one (only
            # without a body, which may have gone into the dead connection already).
            self.retried = True
            self.upstream = None
            self.client.proxy.spawn(self._connect(self.route))
        elif not upstream.got_response:
            self.answer(502, "backend_closed", "the backend closed the connection")
        else:
            self._uncount()
            self.client.transport.close()  # mid-response: the client must see it cut

    def aborted(self) -> None:
        """The client went away: the upstream connection can't be reused."""
        self._uncount()
        if self.upstream is not None:
            self.upstream.exchange = None
            self.upstream.transport.close()

    # -- answers by the proxy itself -------------------------------------------------------

    def answer(self, status: int, code: str, message: str) -> None:
        self._uncount()
        self.upstream = None
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        reason = {404: b"Not Found", 502: b"Bad Gateway"}.get(status, b"Error")
        if not self.request_complete:
            self.keep_alive = False  # the rest of the body is not worth reading
        self.client.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
            % (status, reason, len(body),
               b"" if self.keep_alive else b"connection: close\r\n", body)
        )
        self.client.finished(self)

    def _uncount(self) -> None:
        if self.counted and self.route is not None:
            self.counted = False
            self.client.proxy.counts.closed(self.route.backend_id)
