"""Connections from the proxy to backends: a keep-alive pool per backend address, and the
protocol that parses a backend's responses and streams them to the client.

One upstream connection carries one exchange at a time. It goes back to its pool only when
the backend said keep-alive and both the request and the response were complete; anything
else closes it.

Flow control: a side that cannot write fast enough pauses reading on the other side, and the
pause is remembered (``held``) so that it is always undone, by the drain or at the end of the
exchange, whichever comes first: a pooled connection or a keep-alive client is never left
paused for the next exchange.

What one read from the backend yields for the client (the response head, body pieces, the
end of a chunked body) is written to the client in one call at the end of that read: a small
response costs one system call, not three.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import TYPE_CHECKING

import httptools

from sailplane.proxy.flow import FlowControl

if TYPE_CHECKING:
    from sailplane.proxy.exchange import Exchange

MAX_IDLE_PER_BACKEND = 256
# Hop-by-hop headers of a response, which the proxy does not pass on (RFC 9110 7.6.1).
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                         b"upgrade"})


class UpstreamPool:
    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[Upstream]] = defaultdict(list)

    def take(self, host: str, port: int) -> Upstream | None:
        idle = self._idle.get((host, port))
        while idle:
            upstream = idle.pop()
            if not upstream.transport.is_closing():
                return upstream
        return None

    async def connect(self, host: str, port: int) -> Upstream:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(lambda: Upstream(self, (host, port)),
                                                   host, port)
        return upstream

    def give_back(self, upstream: Upstream) -> None:
        idle = self._idle[upstream.address]
        if len(idle) < MAX_IDLE_PER_BACKEND:
            idle.append(upstream)
        else:
            upstream.transport.close()

    def discard(self, upstream: Upstream) -> None:
        idle = self._idle.get(upstream.address)
        if idle and upstream in idle:
            idle.remove(upstream)


class Upstream(FlowControl):
    """One connection to a backend."""

    def __init__(self, pool: UpstreamPool, address: tuple[str, int]) -> None:
        self.pool = pool
        self.address = address
        self.exchange: Exchange | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.head: list[bytes] = []
        self.chunked = False
        self.tunnel: asyncio.Transport | None = None  # the client, after a 101
        self.got_response = False
        self.upgrade = b"websocket"  # the backend's Upgrade header, for a 101
        self.out: list[bytes] = []  # for the client, written at the end of each read

    # -- asyncio ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.exchange is None:  # a backend talking out of turn: drop the connection
            self.transport.close()
            return
        self.got_response = True
        exchange = self.exchange
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            tail = data[upgrade.args[0]:]
            if self.exchange is not None:
                self._flush(self.exchange)
                self.tunnel = self.exchange.upgraded(self)
                if tail:
                    self.tunnel.write(tail)
        except httptools.HttpParserError:
            self.out = []
            self.transport.close()
        if self.out:
            self._flush(exchange)

    def _flush(self, exchange: Exchange) -> None:
        out, self.out = self.out, []
        exchange.client.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.discard(self)
        if self.tunnel is not None:
            self.tunnel.close()
        elif self.exchange is not None:
            exchange, self.exchange = self.exchange, None
            exchange.upstream_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.exchange is not None:
            self.hold(self.exchange.client.transport)

    # -- starting an exchange --------------------------------------------------------------

    def begin(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.head = []
        self.chunked = False
        self.got_response = False
        if self.write_paused:  # still draining an earlier request: this client waits too
            self.hold(exchange.client.transport)

    # -- httptools callbacks ---------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self.head.append(b"HTTP/1.1 %d %s\r\n" % (self.parser.get_status_code(), status))

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"transfer-encoding":
            self.chunked = b"chunked" in value.lower()
        elif lower in _HOP_BY_HOP:
            if lower == b"upgrade":
                self.upgrade = value
            return
        self.head.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        status = self.parser.get_status_code()
        if status == 101:
            self.head.append(b"Connection: Upgrade\r\nUpgrade: %s\r\n\r\n" % self.upgrade)
        else:
            self.head.append(b"\r\n")
            if exchange.upgrade and status >= 200:
                # The backend refused to switch: the client's connection is in an unknown
                # state (it may have sent bytes of the new protocol already), so it ends here.
                exchange.keep_alive = False
        self.out.append(b"".join(self.head))
        self.head = []
        if exchange.is_head and status >= 200:
            # httptools cannot be told the request was HEAD; a HEAD response has no body.
            keep_alive = self.parser.should_keep_alive()
            self.parser = httptools.HttpResponseParser(self)
            self._complete(keep_alive)

    def on_body(self, body: bytes) -> None:
        if self.chunked:
            self.out.append(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        if self.exchange is None:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # 100 Continue and friends: the real response follows
        if status == 101:
            return  # the upgrade is handled when feed_data raises HttpParserUpgrade
        if self.chunked:
            self.out.append(b"0\r\n\r\n")
        self._complete(self.parser.should_keep_alive())

    def _complete(self, keep_alive: bool) -> None:
        exchange, self.exchange = self.exchange, None
        assert exchange is not None
        reusable = keep_alive and exchange.request_complete and not exchange.upgrade
        if self.out:
            self._flush(exchange)  # before the client goes on to its next request
        self.release()
        exchange.response_complete()
        if reusable:
            self.pool.give_back(self)
        else:
            self.transport.close()
