"""The proxy's server: an asyncio protocol per client connection, parsed with httptools.

Requests on one connection are answered in order; a pipelined request waits (its body
buffered within limits) until the one before it is answered.

What profiling taught (py-spy under ``bench/proxy.py``, 64 keep-alive connections, nginx
behind): the time is in system calls, not in Python logic. About a quarter is the write to
the backend in ``Exchange._send``, a fifth uvloop's own loop, most of the rest writes to the
client. So the hot path avoids writes, not computation: the response head and what one read
from the backend produced leave in a single ``write`` (``Upstream``'s output buffer), which
took the proxy from ~25.7 to ~21 us of CPU per request (0.58x to 0.68x nginx's rate). Keep
per-request work inside parser callbacks; a lookup or a new connection is the only task.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Coroutine
from typing import Any

import httptools

from sailplane.proxy.counts import ConnectionCounts
from sailplane.proxy.exchange import Exchange
from sailplane.proxy.flow import FlowControl
from sailplane.proxy.routes import RouteTable
from sailplane.proxy.upstream import UpstreamPool

log = logging.getLogger(__name__)

_BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                b"content-length: 60\r\nconnection: close\r\n\r\n"
                b'{"error": {"code": "bad_request", "message": "malformed HTTP"}}')


class Proxy:
    """What every connection of one proxy process shares."""

    def __init__(self, routes: RouteTable, counts: ConnectionCounts) -> None:
        self.routes = routes
        self.counts = counts
        self.pool = UpstreamPool()
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class ClientConnection(FlowControl):
    """One client connection: requests in, responses out, answered in order."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.parser = httptools.HttpRequestParser(self)
        self.exchanges: deque[Exchange] = deque()  # the first is being answered
        self.tunnel: asyncio.Transport | None = None
        self.closed = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._upgrade: bytes | None = None

    # -- asyncio ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            tail = data[upgrade.args[0]:]
            if self.tunnel is not None:
                self.tunnel.write(tail)
            elif self.exchanges:
                self.exchanges[-1].tail += tail
                self.transport.pause_reading()  # until the backend agrees to switch
        except httptools.HttpParserError:
            self.transport.write(_BAD_REQUEST)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.tunnel is not None:
            self.tunnel.close()
        for exchange in self.exchanges:
            exchange.aborted()
        self.exchanges.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.exchanges and self.exchanges[0].upstream is not None:
            self.hold(self.exchanges[0].upstream.transport)

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._upgrade = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        if name.lower() == b"upgrade":
            self._upgrade = value

    def on_headers_complete(self) -> None:
        parser = self.parser
        exchange = Exchange(
            self, parser.get_method(), self._url or b"/", self._headers,
            parser.should_keep_alive(), self._upgrade if parser.should_upgrade() else None,
        )
        self.exchanges.append(exchange)
        if len(self.exchanges) == 1:
            exchange.start()

    def on_body(self, body: bytes) -> None:
        if self.exchanges:  # none: the proxy answered early and ignores the rest
            self.exchanges[-1].request_body(body)

    def on_message_complete(self) -> None:
        if self.exchanges:
            self.exchanges[-1].request_end()

    # -- called by exchanges ---------------------------------------------------------------

    def finished(self, exchange: Exchange) -> None:
        """The exchange's response is fully written; go on with the next request."""
        if not self.exchanges or self.exchanges[0] is not exchange:
            return
        self.exchanges.popleft()
        self.release()  # the upstream may go back to the pool: never paused
        if not exchange.keep_alive:
            self.transport.close()
        elif self.exchanges:
            self.exchanges[0].start()


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A bound socket; with ``reuse_port`` several processes share the port (SO_REUSEPORT)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(proxy: Proxy, sock: socket.socket) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: ClientConnection(proxy), sock=sock)
