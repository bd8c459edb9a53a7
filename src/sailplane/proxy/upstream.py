"""Connections from the proxy to backends: a keep-alive pool per backend address, and the
protocol that parses a backend's responses and streams them to the client.

One upstream connection carries one exchange at a time. It goes back to its pool only when
the backend said keep-alive and both the request and the response were complete (and the
request was no upgrade attempt); anything else closes it.

What a backend may send is what nginx takes from one: line ends of a bare LF in the response
head (busybox httpd's CGI responses have them), a body that ends with the connection (then
the client's connection ends after it too, and its head says ``connection: close``). A
response worse than that (unparseable, a head over ``MAX_RESPONSE_HEAD_BYTES``, a ``101`` the
client did not ask for) is logged with the reason, and the client gets 502 if none of the
response has reached it yet, else a cut connection.

Flow control: a side that cannot write fast enough pauses reading on the other side, and the
pause is remembered (``held``) so that it is always undone, by the drain or at the end of the
exchange, whichever comes first: a pooled connection or a keep-alive client is never left
paused for the next exchange.

What one read from the backend yields for the client (the response head, body pieces, the
end of a chunked body) is written to the client in one call at the end of that read: a small
response costs one system call, not three.

The common response is passed on as the backend wrote it. When the first read of a response
holds its whole head, and the head is plain (``passable_head``: HTTP/1.1, a status from 200
to 599 but 204 and 304, a ``Content-Length``, no hop-by-hop header but ``Connection``, which
is cut out), a strict parser (``Upstream.strict``: no leniency, so CRLF line ends only, no
obsolete line folding) checks the head and counts the body, and the bytes go to the client
as they came, cut at the end of the body. Anything else, or anything the strict parser
refuses, goes through the full parse below from its first byte, as before: the pass-through
decides only what needs no rewriting, never what is valid. It saves a Python call per
header (each costs more than the C work of the whole response: ``bench/proxy.py``).
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from typing import TYPE_CHECKING

import httptools

from sailplane.proxy.flow import FlowControl
from sailplane.proxy.limits import MAX_IDLE_PER_BACKEND, MAX_RESPONSE_HEAD_BYTES

if TYPE_CHECKING:
    from sailplane.proxy.exchange import Exchange

# Hop-by-hop headers of a response, which the proxy does not pass on (RFC 9110 7.6.1).
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                         b"upgrade"})


# What a response header is, by its name as sent; remembered for up to _MAX_KINDS names.
_PASS, _HOP, _TE, _CL, _UPGRADE = range(5)
_KINDS: dict[bytes, int] = {}
_MAX_KINDS = 1024


def _kind(name: bytes) -> int:
    lower = name.lower()
    kind = (_TE if lower == b"transfer-encoding" else _CL if lower == b"content-length"
            else _UPGRADE if lower == b"upgrade" else _HOP if lower in _HOP_BY_HOP else _PASS)
    if len(_KINDS) < _MAX_KINDS:
        _KINDS[name] = kind
    return kind


# -- the pass-through of plain responses -------------------------------------------------------
# Hop-by-hop headers (and Transfer-Encoding) that make a head need the full parse. Searched for
# in the lower-cased head; a header line starts after a CRLF (a strict parser allows no CR or LF
# inside a line, and no space before the colon).
_NOT_PASSABLE = re.compile(rb"\r\n(?:keep-alive|proxy-connection|te|trailer|upgrade|"
                           rb"transfer-encoding):")
_CONTENT_LENGTH = b"\r\ncontent-length:"
_CONNECTION = b"\r\nconnection:"
# What ends a passed-on head, by the client connection's fate.
_HEAD_END = b"\r\n\r\n"
_HEAD_END_CLOSE = b"\r\nconnection: close\r\n\r\n"


def passable_head(data: bytes) -> tuple[bytes, int] | None:
    """The head the client gets for the response head ``data`` (up to its last header line,
    without the CRLF that ends it), and the response's Content-Length; None if the
    response needs the full parse.

    A head passes as the backend wrote it, but for its ``Connection`` lines, if it is
    HTTP/1.1, its status is from 200 to 599 but 204 and 304 (no 1xx, no response that has
    no body whatever its Content-Length says), it has a Content-Length, and no other
    hop-by-hop header (nor Transfer-Encoding). Whether the head is valid is not decided here
    but by the strict parser the caller runs over it before any byte is sent.

    >>> passable_head(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: keep-alive\\r\\n"
    ...               b"X-A: b")
    (b'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nX-A: b', 2)
    >>> passable_head(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nKeep-Alive: timeout=5") is None
    True
    """
    end = len(data)
    status = data[9:12]
    if (not data.startswith(b"HTTP/1.1 ") or not b"200" <= status < b"600"
            or status == b"204" or status == b"304"):
        return None
    lower = data.lower()
    at = lower.find(_CONTENT_LENGTH)
    if at == -1 or _NOT_PASSABLE.search(lower) is not None:
        return None
    at += len(_CONTENT_LENGTH)
    value_end = lower.find(b"\r\n", at)
    value = lower[at:end if value_end == -1 else value_end]
    # int() reads what a strict parser takes (digits, spaces and tabs around them) alike, and
    # more (a sign, underscores): the strict parser refuses those before anything is sent.
    if len(value) > 20:
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    cut = lower.find(_CONNECTION)
    if cut == -1:
        return data, length
    pieces = []
    start = 0
    while cut != -1:  # each Connection line, with the CRLF before it
        pieces.append(data[start:cut])
        start = lower.find(b"\r\n", cut + 2)
        if start == -1:
            start = end
        cut = lower.find(_CONNECTION, start)
    pieces.append(data[start:end])
    return b"".join(pieces), length


# passable_head's answers for the heads seen last. A backend's heads repeat byte for byte
# (until its Date header ticks, once a second), and a lookup costs a tenth of the answer.
# Only small heads are kept, and all are forgotten when there are _MAX_PASSABLE of them.
_PASSABLE: dict[bytes, tuple[bytes, int] | None] = {}
_MAX_PASSABLE = 256
_MAX_PASSABLE_HEAD_BYTES = 2048
_UNSEEN = (b"", -1)  # not in _PASSABLE


class _MessageEnd:
    """The strict parser's protocol: httptools calls only the callbacks a protocol has, and
    this one wants only the end of a message (and the backend's keep-alive, which the parser
    forgets once the message is over)."""

    __slots__ = ("ended", "keep_alive", "parser")

    def __init__(self) -> None:
        self.ended = self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)  # strict: no leniency

    def on_message_complete(self) -> None:
        self.ended = True
        self.keep_alive = self.parser.should_keep_alive()


class BadResponse(Exception):
    """Raised in a parser callback: the backend's response cannot be passed on."""


class UpstreamPool:
    """Idle keep-alive connections per backend address, newest last; a connection idle
    longer than the proxy's ``idle_timeout`` is closed (:meth:`prune`)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[Upstream]] = defaultdict(list)
        self.now = 0.0  # the proxy's clock

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
            upstream.idle_since = self.now
            idle.append(upstream)
        else:
            upstream.transport.close()

    def prune(self, now: float, max_idle: float) -> None:
        self.now = now
        for address, idle in list(self._idle.items()):
            stale = 0
            while stale < len(idle) and now - idle[stale].idle_since > max_idle:
                idle[stale].transport.close()
                stale += 1
            del idle[:stale]
            if not idle:
                del self._idle[address]

    def discard(self, upstream: Upstream) -> None:
        idle = self._idle.get(upstream.address)
        if idle and upstream in idle:
            idle.remove(upstream)


def _response_parser(protocol: Upstream) -> httptools.HttpResponseParser:
    parser = httptools.HttpResponseParser(protocol)
    parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)  # bare LF, as nginx
    return parser


class Upstream(FlowControl):
    """One connection to a backend."""

    def __init__(self, pool: UpstreamPool, address: tuple[str, int]) -> None:
        self.pool = pool
        self.address = address
        self.exchange: Exchange | None = None
        self.parser = _response_parser(self)
        self.strict = _MessageEnd()  # the pass-through's parser
        self.passing = 0  # body bytes still to come of a response passed on as it came
        self.tunnel: asyncio.Transport | None = None  # the client, after a 101
        self.out: list[bytes] = []  # for the client, written at the end of each read
        self.idle_since = 0.0  # in the pool since (the proxy's clock)
        # The exchange's response.
        self.got_response = False  # the backend sent bytes of it
        self.sent = False  # the client got bytes of it
        self.head_bytes = 0  # read before its head was complete
        self.until_close = False  # its body ends with the connection
        self.upgrade = b""  # its Upgrade header, for a 101
        # The message being parsed (a 1xx comes before the final one).
        self.head_done = False
        self.head: list[bytes] = [b""]  # [status line] + the header lines' pieces
        self.reason = b""
        self.chunked = False
        self.has_length = False

    # -- asyncio ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        exchange = self.exchange
        if exchange is None:  # a backend talking out of turn: drop the connection
            self.transport.close()
            return
        if self.passing:
            self._pass_body(exchange, data)
            return
        if not self.got_response and not exchange.is_head and exchange.upgrade is None:
            # The first bytes of a response: passed on as they came if its head is plain.
            self.got_response = True
            end = data.find(b"\r\n\r\n")
            if 0 < end <= MAX_RESPONSE_HEAD_BYTES and self._pass_head(exchange, data, end):
                return
        self.got_response = True
        if not self.head_done:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self.exchange is not None:
                self._flush(self.exchange)
                self.tunnel = self.exchange.upgraded(self)
                tail = data[upgrade.args[0]:]
                if tail:
                    self.tunnel.write(tail)
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            self._bad(exchange, str(cause) if isinstance(cause, BadResponse) else str(exc))
            return
        if not self.head_done and self.head_bytes > MAX_RESPONSE_HEAD_BYTES:
            self._bad(exchange, f"a response head over {MAX_RESPONSE_HEAD_BYTES} bytes")
            return
        if self.out:
            self._flush(exchange)

    def _pass_head(self, exchange: Exchange, data: bytes, end: int) -> bool:
        """Pass on the response that begins ``data`` as it came, if its head is plain and the
        strict parser takes it; False (nothing done) for the full parse instead."""
        raw = data[:end]
        passable = _PASSABLE.get(raw, _UNSEEN)
        if passable is _UNSEEN:
            passable = passable_head(raw)
            if end <= _MAX_PASSABLE_HEAD_BYTES:
                if len(_PASSABLE) >= _MAX_PASSABLE:
                    _PASSABLE.clear()
                _PASSABLE[raw] = passable
        if passable is None:
            return False
        head, length = passable
        total = end + 4 + length  # the response's bytes; more in this read are out of turn
        strict = self.strict
        try:
            strict.parser.feed_data(data if len(data) <= total else data[:total])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.strict = _MessageEnd()  # this one's state is spoiled
            return False
        self.head_done = self.sent = True
        exchange.client.transport.write(b"".join((
            head, _HEAD_END if exchange.keep_alive else _HEAD_END_CLOSE, data[end + 4:total])))
        if len(data) < total:
            self.passing = total - len(data)
        else:
            self._passed(extra=len(data) > total)
        return True

    def _pass_body(self, exchange: Exchange, data: bytes) -> None:
        """More of the body of a response passed on as it came."""
        rest = self.passing
        piece = data if len(data) <= rest else data[:rest]
        try:
            self.strict.parser.feed_data(piece)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.strict = _MessageEnd()  # (a body of a known length cannot be refused)
            self._bad(exchange, str(exc))
            return
        exchange.client.transport.write(piece)
        self.passing = rest - len(piece)
        if not self.passing:
            self._passed(extra=len(data) > rest)

    def _passed(self, *, extra: bool) -> None:
        """The end of a response passed on as it came. Bytes after it (``extra``) are the
        backend talking out of turn: they are dropped, with the connection."""
        strict = self.strict
        # Not ``ended``: the parser and the count disagree (they cannot), so the connection
        # is closed, whatever state the parser is in.
        keep_alive = strict.ended and strict.keep_alive and not extra
        strict.ended = False
        self._complete(keep_alive)

    def _flush(self, exchange: Exchange) -> None:
        out, self.out = self.out, []
        self.sent = True
        exchange.client.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _bad(self, exchange: Exchange, reason: str) -> None:
        self.out = []
        self.exchange = None
        self.transport.close()
        if exchange.upstream is self:
            exchange.bad_response(self, reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.discard(self)
        if self.tunnel is not None:
            self.tunnel.close()
        elif self.exchange is not None:
            if self.until_close and self.head_done:
                self._complete(False)  # the body's end, as its framing said
                return
            exchange, self.exchange = self.exchange, None
            exchange.upstream_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.exchange is not None:
            self.hold(self.exchange.client)

    # -- starting an exchange --------------------------------------------------------------

    def begin(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.got_response = self.sent = self.until_close = self.head_done = False
        self.chunked = self.has_length = False
        self.head_bytes = 0
        self.upgrade = b""
        if self.write_paused:  # still draining an earlier request: this client waits too
            self.hold(exchange.client)

    # -- httptools callbacks ---------------------------------------------------------------
    # No ``on_message_begin``: httptools calls only the callbacks a protocol has, and the
    # state of a message is reset where the one before it ended (``begin``, the end of a
    # head, the end of a 1xx) at no extra call per response.

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        kind = _KINDS.get(name)
        if kind == _PASS and not self.head_done:  # the common case first: passed on as is
            self.head += (name, b": ", value, b"\r\n")
            return
        if self.head_done:
            return  # a trailer: not passed on (the proxy ends a chunked body itself)
        if kind is None:
            kind = _kind(name)
        if kind == _HOP:
            return
        if kind == _TE:
            self.chunked = b"chunked" in value.lower()
        elif kind == _CL:
            self.has_length = True
        elif kind == _UPGRADE:
            self.upgrade = value
            return
        self.head += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        self.head_done = True
        parser = self.parser
        status = parser.get_status_code()
        head = self.head
        head[0] = b"HTTP/1.1 %d %s\r\n" % (status, self.reason)
        if status == 101:
            if exchange.upgrade is None:
                raise BadResponse("101 Switching Protocols to a request that asked for none")
            if not parser.should_upgrade():
                raise BadResponse("101 Switching Protocols without Connection: upgrade")
            head.append(b"Connection: Upgrade\r\nUpgrade: %s\r\n\r\n"
                        % (self.upgrade or exchange.upgrade))
        elif status < 200:
            head.append(b"\r\n")
        else:
            if exchange.upgrade:
                # The backend refused to switch: the client's connection is in an unknown
                # state (it may have sent bytes of the new protocol already), so it ends here.
                exchange.keep_alive = False
            if not (self.chunked or self.has_length or exchange.is_head
                    or status in (204, 304)):
                self.until_close = True  # the body ends when the backend closes
                exchange.keep_alive = False
            head.append(b"\r\n" if exchange.keep_alive else b"connection: close\r\n\r\n")
        self.out.append(b"".join(head))
        self.head = [b""]  # for the next message's head (after a 1xx)
        self.reason = b""
        if exchange.is_head and status >= 200:
            # httptools cannot be told the request was HEAD; a HEAD response has no body.
            keep_alive = parser.should_keep_alive()
            self.parser = _response_parser(self)
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
        if status < 200:  # 100 Continue and friends: the real response follows; 101: a tunnel
            self.head_done = self.chunked = self.has_length = False
            return
        if self.chunked:
            self.out.append(b"0\r\n\r\n")
        self._complete(self.parser.should_keep_alive())

    def _complete(self, keep_alive: bool) -> None:
        exchange, self.exchange = self.exchange, None
        assert exchange is not None
        reusable = (keep_alive and exchange.request_complete and not exchange.upgrade
                    and not self.until_close)
        if self.out:
            self._flush(exchange)  # before the client goes on to its next request
        if self.held is not None:
            self.release()
        exchange.response_complete()
        if reusable:
            self.pool.give_back(self)
        else:
            self.transport.close()
