"""The proxy's server: an asyncio protocol per client connection, parsed with httptools.

Requests on one connection are answered in order; a pipelined request waits (its body
buffered within limits) until the one before it is answered.

Framing is decided once, by the parser, and checked before anything reaches a backend: a
request whose length could be read two ways (``Content-Length`` with ``Transfer-Encoding``,
a repeated or malformed ``Content-Length``, a transfer coding other than ``chunked``, a
repeated or empty ``Upgrade``, ``CONNECT``) is refused with 400, and the proxy sends the
backend its own framing for exactly the body bytes the parser delivered. Whether a request
is an upgrade is the parser's verdict (it stops parsing there); the bytes after such a head
wait until the backend answers ``101`` and a connection that tried an upgrade is never
reused, on either side.

Memory per connection is bounded (``limits``): the head while it arrives, the requests read
ahead, a request body held before its backend connection is ready. Timeouts are checked by
one task for all connections (:meth:`Proxy.watch`) against a clock it advances each tick,
so the per-request cost is an attribute store, not a timer.

What profiling taught (``bench/proxy.py``, 64 keep-alive connections, nginx behind): a
request costs exactly four system calls (a read and a write on each side; ``strace -c``),
as through nginx, and they take about as much kernel time as nginx's do; what nginx does
not pay is the interpreter, a third of the proxy's CPU time (``perf``). So the hot path
avoids writes first (the response head and what one read from the backend produced leave
in a single ``write``, ``Upstream``'s output buffer), then Python calls and bytecodes:
per-request work stays inside parser callbacks (a lookup or a new connection is the only
task), a callback the parser need not call is not defined, and the common case of each
callback comes first. A Python call per response header cost more than all of llhttp's work
on the response, so a plain response is passed on as it came (``upstream.passable_head``):
83k -> 65k instructions per proxied request in user space (callgrind).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Coroutine
from typing import Any, cast

import httptools

from sailplane.proxy import answers
from sailplane.proxy.counts import ConnectionCounts
from sailplane.proxy.exchange import Exchange
from sailplane.proxy.flow import PIPELINE, REFUSED, UPGRADE, FlowControl
from sailplane.proxy.limits import (
    LINGER_MAX_BYTES,
    LINGER_SECONDS,
    MAX_LINGERING_REFUSALS,
    PARSE_SLICE_BYTES,
    ProxyLimits,
)
from sailplane.proxy.routes import RouteTable
from sailplane.proxy.upstream import UpstreamPool

log = logging.getLogger(__name__)

# Request headers the proxy never passes on: hop-by-hop ones (RFC 9110 7.6.1), the framing it
# sets itself, and (below) every ``x-verified-*``, so none can be forged. A name is compared
# lower-cased and with ``_`` read as ``-``, as many frameworks read it.
_DROPPED = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                      b"transfer-encoding", b"upgrade", b"content-length"})
_FRAMING = frozenset({b"transfer-encoding", b"upgrade", b"content-length"})
_VERIFIED = b"x-verified-"
# What to do with a header, by its name as sent; remembered for the names seen most (a dict
# lookup per header instead of lower-casing and three comparisons), never beyond the bound.
_FORWARD, _DROP, _FRAME = 0, 1, 2
_DECISIONS: dict[bytes, int] = {}
_MAX_DECISIONS = 1024


def _decide(name: bytes) -> int:
    """``_FRAME`` for the framing headers, ``_DROP`` for any other dropped one (compared
    lower-cased, ``_`` read as ``-``), else ``_FORWARD``.

    >>> [_decide(n) for n in (b"Host", b"X_Verified_Username", b"Content-Length", b"TE")]
    [0, 1, 2, 1]
    """
    lower = name.lower()
    if lower in _FRAMING:
        decision = _FRAME
    else:
        lower = lower.replace(b"_", b"-")
        dropped = lower in _DROPPED or lower.startswith(_VERIFIED)
        decision = _DROP if dropped else _FORWARD
    if len(_DECISIONS) < _MAX_DECISIONS:
        _DECISIONS[name] = decision
    return decision
_REFUSAL_LOG_SECONDS = 10.0


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the answer is in ``refusal``."""


class Proxy:
    """What every connection of one proxy process shares."""

    def __init__(self, routes: RouteTable, counts: ConnectionCounts,
                 limits: ProxyLimits | None = None) -> None:
        self.routes = routes
        self.counts = counts
        self.limits = limits or ProxyLimits()
        self.pool = UpstreamPool()
        self.connections: set[ClientConnection] = set()
        self.lingering_refusals = 0
        self.refused = 0  # since the last log line about it
        self._refusal_logged = float("-inf")
        self.now = 0.0  # the loop's clock, advanced every tick by ``watch``
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def new_connection(self) -> asyncio.Protocol:
        if len(self.connections) < self.limits.max_connections:
            return ClientConnection(self)
        self.refused += 1
        if self.now - self._refusal_logged >= _REFUSAL_LOG_SECONDS:
            log.warning("refused %d connection(s) with 503: %d open (max connections %d)",
                        self.refused, len(self.connections), self.limits.max_connections)
            self._refusal_logged, self.refused = self.now, 0
        return Refusal(self)

    async def watch(self) -> None:
        """Advance the clock and apply every connection's timeouts (and the idle timeout of
        pooled backend connections, and the routes' staleness bound), once a tick, forever."""
        loop = asyncio.get_running_loop()
        tick = self.limits.tick()
        while True:
            self.now = now = loop.time()
            for connection in list(self.connections):
                connection.check(now)
            self.pool.prune(now, self.limits.idle_timeout)
            self.routes.expire(now)
            await asyncio.sleep(tick)


class Refusal(asyncio.Protocol):
    """A connection beyond ``max_connections``: 503, our side shut, its input dropped for a
    moment (so the answer is read, not reset away), then closed."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.lingering: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport.write(answers.TOO_MANY_CONNECTIONS)
        if self.proxy.lingering_refusals >= MAX_LINGERING_REFUSALS:
            transport.close()
            return
        self.proxy.lingering_refusals += 1
        transport.write_eof()
        self.lingering = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lingering is not None:
            self.lingering.cancel()
            self.proxy.lingering_refusals -= 1


class ClientConnection(FlowControl):
    """One client connection: requests in, responses out, answered in order."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.limits = proxy.limits
        self.parser = httptools.HttpRequestParser(self)
        self.exchanges: deque[Exchange] = deque()  # the first is being answered
        self.tunnel: asyncio.Transport | None = None
        self.upgrading: Exchange | None = None  # waits for the backend's 101
        self.closed = False
        self.ending = False  # the last answer is written; input is dropped until the close
        self.unparsed = b""  # read but not parsed: ``max_pipelined`` requests wait
        self.last_word: bytes | None = None  # the proxy's answer once earlier ones are done
        self.refusal: bytes | None = None  # set by a parser callback that refuses a request
        self.early_body_bytes = 0  # request bodies held for exchanges without a backend yet
        self.dropped = 0  # bytes read and dropped while ending
        # The proxy's clock when: a byte was last read, the request head began, the
        # connection became idle, our writes were paused, the ending began.
        now = proxy.now
        self.read_at = self.head_at = self.idle_at = self.write_paused_at = self.end_at = now
        self.fresh = True  # no request yet
        self.in_message = False  # a request is being parsed
        self.in_head = False  # ... and its head is not complete
        # The request being parsed.
        self._url = b""
        self._forward: list[bytes] = []  # its header lines for the backend
        self._head_bytes = 0
        self._header_count = 0
        self._content_length: int | None = None
        self._chunked = False
        self._upgrade: bytes | None = None
        self._progress = 0  # body pieces so far (with ``_head_bytes``: did a read get anywhere?)
        self._max_header_bytes = proxy.limits.max_header_bytes
        self._max_headers = proxy.limits.max_headers
        self._max_pipelined = proxy.limits.max_pipelined
        self.stopped = False  # the connection's last answer is decided: parse no more
        self._unflushed = 0  # bytes read since the parser last emitted something

    # -- asyncio ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.proxy.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.read_at = self.proxy.now
        if self.tunnel is not None:
            self.tunnel.write(data)
        elif self.ending:
            self.dropped += len(data)
            if self.dropped > LINGER_MAX_BYTES:
                self.transport.close()
        elif self.upgrading is not None:  # reading is paused; this was on its way already
            self.upgrading.tail += data
        elif self.unparsed:
            self.unparsed += data
        else:
            self._parse(data)

    def eof_received(self) -> bool | None:
        """The client has sent all it will: answer what it asked, then close."""
        if self.tunnel is not None or self.ending or self.in_message or not self.exchanges:
            return None  # close now
        self.exchanges[-1].keep_alive = False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        self.upgrading = None
        if self.tunnel is not None:
            self.tunnel.close()
        for exchange in self.exchanges:
            exchange.aborted()
        self.exchanges.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_at = self.proxy.now
        if self.exchanges and self.exchanges[0].upstream is not None:
            self.hold(self.exchanges[0].upstream)

    def reading_resumed(self) -> None:
        self.read_at = self.head_at = self.proxy.now  # the pause was ours, not the client's

    # -- parsing ---------------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        """Feed ``data`` to the parser while fewer than ``max_pipelined`` requests wait; a
        large read goes in slices so the queue stops near that bound."""
        end = len(data)
        if end <= PARSE_SLICE_BYTES and len(self.exchanges) < self._max_pipelined:
            # The common case, a read of one slice: the loop below, once, without its
            # bookkeeping.
            progress = self._head_bytes + self._progress
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                self._upgrade_requested(data[upgrade.args[0]:])
            except httptools.HttpParserError as exc:
                self._parse_error(exc)
            else:
                if self.in_message:
                    self._mid_request(end, progress)
                elif len(self.exchanges) >= self._max_pipelined:
                    self.pause(PIPELINE)
            return
        start = 0
        while start < end:
            if len(self.exchanges) >= self._max_pipelined:
                self.unparsed = data[start:]
                break
            stop = end if end - start <= PARSE_SLICE_BYTES else start + PARSE_SLICE_BYTES
            piece = data if stop - start == end else data[start:stop]
            progress = self._head_bytes + self._progress
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade as upgrade:
                self._upgrade_requested(data[start + upgrade.args[0]:])
                return
            except httptools.HttpParserError as exc:
                self._parse_error(exc)
                return
            if self.in_message and not self._mid_request(len(piece), progress):
                return
            start = stop
        if len(self.exchanges) >= self._max_pipelined:
            self.pause(PIPELINE)

    def _mid_request(self, fed: int, progress: int) -> bool:
        """A read of ``fed`` bytes ended inside a request (``progress``: head bytes and body
        pieces before it); False if that request's head is now too large."""
        if self._head_bytes + self._progress != progress:
            self._unflushed = 0
            return True
        # The parser holds what it read in a header being assembled.
        self._unflushed += fed
        if self._head_bytes + self._unflushed > self._max_header_bytes:
            self.refuse(answers.HEADER_TOO_LARGE)
            return False
        return True

    def _parse_error(self, exc: httptools.HttpParserError) -> None:
        refusal, self.refusal = self.refusal, None
        if self.stopped or self.transport.is_closing():
            return  # parsing was stopped on purpose: the connection is ending
        if refusal is None:
            if isinstance(exc, httptools.HttpParserCallbackError) and exc.__context__:
                log.error("proxy bug in a parser callback", exc_info=exc.__context__)
            refusal = answers.bad_request(str(exc) or type(exc).__name__)
        self.refuse(refusal)

    def _upgrade_requested(self, tail: bytes) -> None:
        """The parser's verdict: what follows the head is another protocol, for the backend
        only once it agreed (``Exchange.upgraded``)."""
        if not self.exchanges:  # answered already (it cannot be, but never forward blindly)
            self.transport.close()
            return
        self.upgrading = self.exchanges[-1]
        self.upgrading.tail = tail
        self.pause(UPGRADE)

    def _refuse(self, answer: bytes) -> _Refused:
        self.refusal = answer
        return _Refused()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.stopped:
            raise _Refused  # pipelined after the connection's last answer: not read
        self.in_message = self.in_head = True
        self.fresh = False
        self.head_at = self.proxy.now
        self._url = b""
        self._forward = []
        self._head_bytes = 0
        self._header_count = 0
        self._content_length = None
        self._chunked = False
        self._upgrade = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._max_header_bytes:
            raise self._refuse(answers.HEADER_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        head_bytes = self._head_bytes = self._head_bytes + len(name) + len(value) + 4
        count = self._header_count = self._header_count + 1
        if head_bytes > self._max_header_bytes:
            raise self._refuse(answers.HEADER_TOO_LARGE)
        if count > self._max_headers:
            raise self._refuse(answers.TOO_MANY_HEADERS)
        decision = _DECISIONS.get(name)
        if decision == _FORWARD and self.in_head:  # the common case first
            self._forward += (name, b": ", value, b"\r\n")
            return
        if not self.in_head:
            return  # a trailer after a chunked body: counted, not passed on
        if decision is None:
            decision = _decide(name)
        if decision == _FORWARD:
            self._forward += (name, b": ", value, b"\r\n")
        elif decision == _FRAME:
            self._framing(name.lower(), value)

    def _framing(self, name: bytes, value: bytes) -> None:
        value = value.strip(b" \t")
        if name == b"content-length":
            if self._content_length is not None:
                raise self._refuse(answers.bad_request("repeated Content-Length"))
            if not value.isdigit():
                raise self._refuse(answers.bad_request("malformed Content-Length"))
            self._content_length = int(value)
        elif name == b"transfer-encoding":
            if self._chunked:
                raise self._refuse(answers.bad_request("repeated Transfer-Encoding"))
            if value.lower() != b"chunked":
                raise self._refuse(answers.bad_request("Transfer-Encoding other than chunked"))
            self._chunked = True
        else:
            if self._upgrade is not None:
                raise self._refuse(answers.bad_request("repeated Upgrade"))
            if not value:
                raise self._refuse(answers.bad_request("empty Upgrade"))
            self._upgrade = value

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        method = parser.get_method()
        upgrade = None
        if parser.should_upgrade():
            if method == b"CONNECT":
                raise self._refuse(answers.bad_request("CONNECT is not supported"))
            if self._upgrade is None:
                raise self._refuse(answers.bad_request("an upgrade without Upgrade"))
            if self._chunked or self._content_length:
                raise self._refuse(answers.bad_request("an upgrade request with a body"))
            upgrade = self._upgrade
        if self._chunked and self._content_length is not None:
            raise self._refuse(answers.bad_request("Content-Length with Transfer-Encoding"))
        exchange = Exchange(
            self, method, self._url or b"/", b"".join(self._forward),
            upgrade is None and parser.should_keep_alive(), upgrade,
            self._chunked, self._content_length,
        )
        self.exchanges.append(exchange)
        if len(self.exchanges) == 1:
            exchange.start()

    def on_body(self, body: bytes) -> None:
        self._progress += 1
        if self.exchanges:  # none: the proxy answered early and ignores the rest
            self.exchanges[-1].request_body(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.exchanges:
            self.exchanges[-1].request_end()

    # -- called by exchanges ---------------------------------------------------------------

    def finished(self, exchange: Exchange) -> None:
        """The exchange's response is fully written; go on with the next request."""
        if not self.exchanges or self.exchanges[0] is not exchange:
            return
        self.exchanges.popleft()
        if self.held is not None:
            self.release()  # the upstream may go back to the pool: never paused
        if not exchange.keep_alive:
            self.end()
            return
        if self.exchanges:
            self.exchanges[0].start()
        elif self.last_word is not None:
            self.transport.write(self.last_word)
            self.end()
            return
        else:
            self.idle_at = self.proxy.now
        if self.paused & PIPELINE and len(self.exchanges) < self._max_pipelined:
            unparsed, self.unparsed = self.unparsed, b""
            if unparsed:
                self._parse(unparsed)
            if not self.unparsed and len(self.exchanges) < self._max_pipelined:
                self.unpause(PIPELINE)

    def refuse(self, answer: bytes) -> None:
        """The connection's last word: ``answer`` after the responses before it, then end."""
        if self.closed or self.ending or self.last_word is not None:
            return
        self.stopped = True
        self.pause(REFUSED)
        self.in_message = self.in_head = False
        self.unparsed = b""
        if self.exchanges and not self.exchanges[-1].request_complete:
            # A request whose body can now never arrive in full: its answer is this one if
            # the backend has not begun one, else the connection is cut.
            last = self.exchanges[-1]
            if len(self.exchanges) > 1 or (last.upstream is not None
                                           and last.upstream.got_response):
                self.transport.close()
                return
            last.abandon()
            self.exchanges.clear()
        if self.exchanges:
            self.last_word = answer
        else:
            self.transport.write(answer)
            self.end()

    def end(self) -> None:
        """Shut our side once what we wrote has gone; drop what the client still sends until
        it closes, ``LINGER_SECONDS`` or ``LINGER_MAX_BYTES`` (``check`` does the rest)."""
        if self.ending or self.closed:
            return
        self.ending = self.stopped = True
        self.upgrading = None
        self.unparsed = b""
        self.end_at = self.proxy.now
        self.paused = 0
        self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:  # pragma: no cover - TCP transports can
            self.transport.close()

    def check(self, now: float) -> None:
        """Apply the timeouts (called every tick by :meth:`Proxy.watch`)."""
        limits = self.limits
        if self.write_paused and now - self.write_paused_at > limits.body_timeout:
            log.info("closing a client connection that took no response for %.0fs",
                     limits.body_timeout)
            self.transport.close()
        elif self.ending:
            if self.transport.get_write_buffer_size():
                self.end_at = now
            elif now - self.end_at > LINGER_SECONDS:
                self.transport.close()
        elif self.tunnel is not None or self.paused:
            return
        elif self.in_head:
            if now - self.head_at > limits.head_timeout:
                self.refuse(answers.HEAD_TIMEOUT)
        elif self.in_message:
            if now - self.read_at > limits.body_timeout:
                self.refuse(answers.BODY_TIMEOUT)
        elif not self.exchanges:
            idle = limits.head_timeout if self.fresh else limits.idle_timeout
            if now - max(self.idle_at, self.read_at) > idle:
                self.transport.close()


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
    proxy.now = loop.time()
    proxy.spawn(proxy.watch())
    return await loop.create_server(proxy.new_connection, sock=sock)
