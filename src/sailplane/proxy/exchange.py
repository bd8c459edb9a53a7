"""One request and its response, from the client's bytes to the backend's and back.

The hot path (a cached route, an idle pooled connection) runs entirely inside parser
callbacks with no task or await; a route lookup or a new upstream connection takes one task.
Bodies are streamed chunk by chunk in both directions and never buffered whole: a request body
that arrives before the upstream connection is ready is held briefly, with the client paused.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sailplane.proxy import answers
from sailplane.proxy.flow import EARLY_BODY, UPGRADE
from sailplane.proxy.limits import MAX_EARLY_BODY_BYTES
from sailplane.proxy.routes import Miss, Route
from sailplane.proxy.upstream import Upstream

if TYPE_CHECKING:
    from sailplane.proxy.server import ClientConnection

log = logging.getLogger(__name__)


def split_token(url: bytes) -> tuple[bytes, bytes]:
    """``/TOKEN/rest?q`` -> (``TOKEN``, ``/rest?q``); the rest is ``/`` when empty.

    >>> split_token(b"/t-abc/x?y=1")
    (b't-abc', b'/x?y=1')
    >>> split_token(b"/t-abc?y=1")
    (b't-abc', b'/?y=1')
    """
    end = url.find(b"/", 1)
    query = url.find(b"?", 1)
    if end == -1 or 0 <= query < end:
        if query == -1:
            return url[1:], b"/"
        return url[1:query], b"/" + url[query:]
    return url[1:end], url[end:]


class Exchange:
    __slots__ = (
        "add_slash",
        "body_bytes",
        "chunked",
        "client",
        "content_length",
        "counted",
        "done",
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
        self, client: ClientConnection, method: bytes, url: bytes, headers: bytes,
        keep_alive: bool, upgrade: bytes | None, chunked: bool, content_length: int | None,
    ) -> None:
        self.client = client
        self.method = method
        self.url = url
        self.rest = b"/"  # the path the backend sees, set by start()
        self.add_slash = False  # ``/TOKEN`` alone: answered with a redirect to ``/TOKEN/``
        self.headers = headers  # the client's header lines the backend gets
        self.keep_alive = keep_alive
        self.upgrade = upgrade  # the parser's verdict: an upgrade to this protocol
        self.is_head = method == b"HEAD"
        self.chunked = chunked
        self.content_length = content_length
        self.route: Route | None = None
        self.upstream: Upstream | None = None
        self.early_body: list[bytes] = []
        self.body_bytes = 0  # of the request body, sent or held
        self.request_complete = False
        self.counted = False
        self.retried = False
        self.done = False  # answered, abandoned or aborted: nothing more to do
        self.tail = b""  # bytes after an upgrade request, for the backend once it agrees

    # -- driven by the client connection ---------------------------------------------------

    def start(self) -> None:
        # split_token, inline, with the common case (``/TOKEN/rest``, no query) first.
        url = self.url
        end = url.find(b"/", 1)
        raw_token = url[1:] if end == -1 else url[1:end]
        if end != -1 and b"?" not in raw_token:
            self.rest = url[end:]
        else:
            raw_token, self.rest = split_token(url)
            # ``/TOKEN`` or ``/TOKEN?query``: the backend's root has a trailing slash.
            self.add_slash = bool(raw_token) and self.upgrade is None
        route = self.client.proxy.routes.cached(raw_token.decode("latin-1"))
        if route is not None:
            self._use(route)
        else:
            self.client.proxy.spawn(self._lookup(raw_token.decode("latin-1")))

    def request_body(self, body: bytes) -> None:
        upstream = self.upstream
        self.body_bytes += len(body)
        if upstream is None:
            self.early_body.append(body)
            client = self.client
            client.early_body_bytes += len(body)
            if client.early_body_bytes > MAX_EARLY_BODY_BYTES:
                client.pause(EARLY_BODY)
            return
        upstream.transport.write(b"%x\r\n%s\r\n" % (len(body), body) if self.chunked else body)

    def request_end(self) -> None:
        self.request_complete = True
        if self.upstream is not None and self.chunked:
            self.upstream.transport.write(b"0\r\n\r\n")

    # -- route and upstream ----------------------------------------------------------------

    async def _lookup(self, token: str) -> None:
        route = await self.client.proxy.routes.lookup(token)
        if self.done or self.client.closed:
            return
        if route is Miss.UNKNOWN:
            self.answer(404, "no_route", "no live backend for this token")
        elif route is Miss.UNAVAILABLE:
            self.answer(503, "route_unavailable", "the proxy cannot look this token up now "
                        "(its controller is out of reach); try again", answers.RETRY_AFTER)
        else:
            self._use(route)

    def _use(self, route: Route) -> None:
        if self.add_slash:
            token_end = self.url.find(b"?")
            path = self.url if token_end == -1 else self.url[:token_end]
            self.answer(308, "add_slash", "the backend's root has a trailing slash",
                        b"location: %s/%s\r\n" % (path, self.rest[1:]))
            return
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
        except OSError as exc:
            if not self.done:
                log.warning("backend %s at %s:%d refused the connection: %s",
                            route.backend_id, route.host, route.port, exc)
                self.answer(502, "backend_unreachable", "the backend refused the connection")
            return
        if self.done or self.client.closed:
            upstream.transport.close()
        else:
            self._send(upstream)

    def _send(self, upstream: Upstream) -> None:
        route = self.route
        assert route is not None
        self.upstream = upstream
        upstream.begin(self)
        client = self.client
        if client.write_paused:  # the client is still slow to take an earlier answer
            client.hold(upstream)
        url = self.url
        path = url if b"?" not in url else url[:url.find(b"?")]
        if self.chunked:
            framing = b"transfer-encoding: chunked\r\n"
        elif self.content_length is not None:
            framing = b"content-length: %d\r\n" % self.content_length
        else:
            framing = b""
        write = upstream.transport.write
        write(b"".join((
            self.method, b" ", self.rest, b" HTTP/1.1\r\n", self.headers, route.verified_headers,
            b"x-verified-path: ", path, b"\r\n", framing,
            b"connection: upgrade\r\nupgrade: %s\r\n\r\n" % self.upgrade if self.upgrade
            else b"connection: keep-alive\r\n\r\n",
        )))
        if self.early_body:
            for body in self.early_body:
                write(b"%x\r\n%s\r\n" % (len(body), body) if self.chunked else body)
                client.early_body_bytes -= len(body)
            self.early_body = []
            if client.early_body_bytes <= MAX_EARLY_BODY_BYTES:
                client.unpause(EARLY_BODY)
        if self.request_complete and self.chunked:
            write(b"0\r\n\r\n")

    # -- driven by the upstream connection -------------------------------------------------

    def response_complete(self) -> None:
        self.done = True
        if self.counted and self.route is not None:  # ``_uncount``, inline: every request
            self.counted = False
            self.client.proxy.counts.closed(self.route.backend_id)
        self.client.finished(self)

    def upgraded(self, upstream: Upstream) -> asyncio.Transport:
        """The backend agreed to switch protocols: what the client sent after its request
        goes to the backend now, and the two connections are spliced from here on."""
        client = self.client
        if self.tail:
            upstream.transport.write(self.tail)
            self.tail = b""
        client.tunnel = upstream.transport
        client.upgrading = None
        client.unpause(UPGRADE)  # paused since the upgrade request
        return client.transport

    def upstream_lost(self, upstream: Upstream) -> None:
        if self.done:
            return
        if not upstream.got_response and not self.retried and not self.body_bytes \
                and self.request_complete and self.route is not None and not self.upgrade:
            # A pooled connection the backend had closed: try once more on a fresh one (only
            # without a body, which may have gone into the dead connection already).
            self.retried = True
            self.upstream = None
            self.client.proxy.spawn(self._connect(self.route))
        elif not upstream.sent:
            if upstream.got_response:
                log.warning("backend %s closed the connection in its response head",
                            self.route.backend_id if self.route else "?")
            self.answer(502, "backend_closed", "the backend closed the connection")
        else:
            log.warning("backend %s closed the connection in the middle of a response",
                        self.route.backend_id if self.route else "?")
            self.cut()

    def bad_response(self, upstream: Upstream, reason: str) -> None:
        """The backend's response cannot be read: 502 if the client has seen none of it."""
        assert self.route is not None
        log.warning("backend %s at %s:%d sent a response the proxy cannot read: %s",
                    self.route.backend_id, self.route.host, self.route.port, reason)
        if upstream.sent:
            self.cut()
        else:
            self.answer(502, "bad_response", "the backend's response could not be read")

    def aborted(self) -> None:
        """The client went away: the upstream connection can't be reused."""
        self.done = True
        self._uncount()
        self._drop_upstream()

    def abandon(self) -> None:
        """The proxy answers this request itself, and not with the backend's response."""
        self.aborted()

    def cut(self) -> None:
        """Mid-response: the client must see its response cut short."""
        self.done = True
        self._uncount()
        self._drop_upstream()
        self.client.transport.close()

    # -- answers by the proxy itself -------------------------------------------------------

    def answer(self, status: int, code: str, message: str, headers: bytes = b"") -> None:
        self.done = True
        self._uncount()
        self._drop_upstream()
        if not self.request_complete and (self.chunked or self.content_length):
            self.keep_alive = False  # the rest of the body is not worth reading
        self.client.transport.write(
            answers.answer(status, code, message, close=not self.keep_alive, headers=headers,
                           head_only=self.is_head))
        self.client.finished(self)

    def _drop_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.exchange = None
            upstream.transport.close()

    def _uncount(self) -> None:
        if self.counted and self.route is not None:
            self.counted = False
            self.client.proxy.counts.closed(self.route.backend_id)
