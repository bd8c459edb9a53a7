"""The proxy against hostile requests, without Docker: request smuggling (CL.TE, TE.CL,
TE.TE, CL.CL, ``Upgrade`` tricks, each also split into one-byte reads), forged verified
headers, the proxy's own answers, the slash redirect, and the per-request timeouts.

After every smuggling attempt the backend's record must hold no request the attacker did
not send as a request of its own (nothing under ``/smuggled``, no forged username), and the
clients that come next must each get their own response."""

from __future__ import annotations

import socket
import time
from itertools import count
from urllib.parse import unquote

import pytest

from tests.proxy.conftest import BODY_TIMEOUT, HEAD_TIMEOUT, IDLE_TIMEOUT, Stack
from tests.proxy.harness import (
    TOKEN,
    USERNAME,
    ProxyProcess,
    get,
    read_all,
    request,
    responses,
)

SMUGGLED = (b"GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Verified-Username: admin\r\n"
            b"X-Client: smuggled\r\n\r\n")
# Slack over a timeout: the proxy checks timeouts every tick (a quarter of the shortest).
TIMEOUT_SLACK = 1.5
_fresh_tokens = count(1)


def fresh_token(stack: Stack) -> bytes:
    """A token the proxy has not cached yet (its first use is a lookup)."""
    token = f"t-fresh-{next(_fresh_tokens)}"
    stack.controller.route(token, stack.backend.port)
    return token.encode()


def head(method: bytes, target: bytes, *lines: bytes, token: bytes = TOKEN.encode()) -> bytes:
    return b"%s /%s%s HTTP/1.1\r\nHost: proxy\r\nX-Client: attacker\r\n%s\r\n" % (
        method, token, target, b"".join(line + b"\r\n" for line in lines))


# Each: (the attacker's bytes, with {token} for the route), expected status of its answer.
ATTACKS: dict[str, tuple[bytes, int]] = {
    # Upgrade tricks. The first is the reproduction: llhttp sees an upgrade, a proxy
    # that keeps the last header value sees none.
    "upgrade-then-empty-upgrade": (head(b"GET", b"/ws-refuse", b"Connection: Upgrade",
                                        b"Upgrade: websocket", b"Upgrade:") + SMUGGLED, 400),
    "upgrade-repeated": (head(b"GET", b"/ws-refuse", b"Connection: Upgrade",
                              b"Upgrade: websocket", b"Upgrade: websocket") + SMUGGLED, 400),
    "upgrade-empty": (head(b"GET", b"/ws-refuse", b"Connection: Upgrade", b"Upgrade: ")
                      + SMUGGLED, 400),
    "upgrade-with-body": (head(b"GET", b"/ws-refuse", b"Connection: Upgrade",
                               b"Upgrade: websocket", b"Content-Length: %d" % len(SMUGGLED))
                          + SMUGGLED, 400),
    "connect": (b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n" + SMUGGLED, 400),
    # CL.TE and TE.CL: the front end and the back end would take different lengths.
    "cl-te": (head(b"POST", b"/", b"Content-Length: %d" % (5 + len(SMUGGLED)),
                   b"Transfer-Encoding: chunked") + b"0\r\n\r\n" + SMUGGLED, 400),
    "te-cl": (head(b"POST", b"/", b"Transfer-Encoding: chunked", b"Content-Length: 4")
              + b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED), 400),
    # TE.TE: Transfer-Encoding obfuscated so that one side ignores it.
    "te-xchunked": (head(b"POST", b"/", b"Transfer-Encoding: xchunked",
                         b"Content-Length: 5") + b"0\r\n\r\n" + SMUGGLED, 400),
    "te-twice": (head(b"POST", b"/", b"Transfer-Encoding: chunked",
                      b"Transfer-Encoding: identity") + b"0\r\n\r\n" + SMUGGLED, 400),
    "te-list": (head(b"POST", b"/", b"Transfer-Encoding: identity, chunked")
                + b"0\r\n\r\n" + SMUGGLED, 400),
    "te-space-before-colon": (head(b"POST", b"/", b"Transfer-Encoding : chunked",
                                   b"Content-Length: 5") + b"0\r\n\r\n" + SMUGGLED, 400),
    "te-vertical-tab": (head(b"POST", b"/", b"Transfer-Encoding:\x0bchunked",
                             b"Content-Length: 5") + b"0\r\n\r\n" + SMUGGLED, 400),
    "te-folded": (head(b"POST", b"/", b"X-Padding: x", b" Transfer-Encoding: chunked",
                       b"Content-Length: 5") + b"0\r\n\r\n" + SMUGGLED, 400),
    "te-chunked-with-params": (head(b"POST", b"/", b"Transfer-Encoding: chunked;q=1")
                               + b"0\r\n\r\n" + SMUGGLED, 400),
    # CL.CL and malformed lengths.
    "cl-cl-different": (head(b"POST", b"/", b"Content-Length: 0",
                             b"Content-Length: %d" % len(SMUGGLED)) + SMUGGLED, 400),
    "cl-cl-same": (head(b"POST", b"/", b"Content-Length: %d" % len(SMUGGLED),
                        b"Content-Length: %d" % len(SMUGGLED)) + SMUGGLED, 400),
    "cl-list": (head(b"POST", b"/", b"Content-Length: 0, %d" % len(SMUGGLED)) + SMUGGLED, 400),
    "cl-plus": (head(b"POST", b"/", b"Content-Length: +0") + SMUGGLED, 400),
    "cl-hex": (head(b"POST", b"/", b"Content-Length: 0x0") + SMUGGLED, 400),
    # Line ends a backend might read differently.
    "bare-lf-head": (b"GET /%s/ HTTP/1.1\nHost: proxy\nContent-Length: 0\n\n" + SMUGGLED,
                     400),
    "bare-cr-in-header": (head(b"GET", b"/", b"X-A: a\rTransfer-Encoding: chunked")
                          + b"0\r\n\r\n" + SMUGGLED, 400),
    "nul-in-header": (head(b"GET", b"/", b"X-A: a\x00b") + SMUGGLED, 400),
    # Chunked bodies that end in the wrong place.
    "chunk-size-overflow": (head(b"POST", b"/", b"Transfer-Encoding: chunked")
                            + b"10000000000000000\r\n" + SMUGGLED, 400),
    "chunk-bad-terminator": (head(b"POST", b"/", b"Transfer-Encoding: chunked")
                             + b"3\r\nabcX\r\n0\r\n\r\n" + SMUGGLED, 400),
}


def victims(proxy: ProxyProcess, n: int = 6) -> None:
    """Clients after an attack (on fresh connections, so on pooled backend connections)
    each get their own response."""
    for i in range(n):
        client = b"victim-%d" % i
        target = b"/victim/%d" % i
        (answer,) = responses(request(proxy.port, get(target, client, close=True)))
        assert answer.status == 200, answer
        seen = answer.json()
        assert (seen["client"], seen["target"]) == (client.decode(), target.decode()), seen


def assert_nothing_smuggled(stack: Stack, since: int) -> None:
    new = stack.backend.seen[since:]
    assert not [s for s in new if "smuggled" in s.target or s.client == "smuggled"], new
    assert all(s.header("x-verified-username") == USERNAME for s in new), new


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize("cached", [True, False], ids=["cached-route", "looked-up-route"])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_smuggling_is_refused_and_reaches_no_one(
    proxy: ProxyProcess, stack: Stack, name: str, cached: bool, split: bool,
) -> None:
    raw, status = ATTACKS[name]
    token = TOKEN.encode() if cached else fresh_token(stack)
    raw = raw.replace(b"/" + TOKEN.encode(), b"/" + token, 1)
    since = len(stack.backend.seen)
    started = time.monotonic()
    got = request(proxy.port, raw, timeout=5, chunk=1 if split else 0, pause=0.0003)
    assert time.monotonic() - started < 4, "the attacker's connection was left hanging"
    (answer,) = responses(got)  # one answer, framed exactly, then the connection closed
    assert answer.status == status, got
    assert answer.header(b"connection") == b"close"
    assert answer.json()["error"]["code"] == "bad_request"
    victims(proxy)
    assert_nothing_smuggled(stack, since)


@pytest.mark.parametrize("name,lines", [
    ("chunked-upper-case", [b"Transfer-Encoding: CHUNKED"]),
    ("underscored-te-is-no-te", [b"Transfer_Encoding: chunked",
                                 b"Content-Length: %d" % (5 + len(SMUGGLED))]),
    ("underscored-cl-is-no-cl", [b"Content_Length: 0", b"Transfer-Encoding: chunked"]),
])
def test_ambiguity_free_framing_carries_the_smuggled_text_as_body(
    proxy: ProxyProcess, stack: Stack, name: str, lines: list[bytes],
) -> None:
    """Spellings that every parser reads one way: the would-be request is body bytes."""
    chunked = any(line.lower().startswith(b"transfer-encoding") for line in lines)
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED) if chunked \
        else b"0\r\n\r\n" + SMUGGLED
    since = len(stack.backend.seen)
    (answer,) = responses(request(proxy.port, head(b"POST", b"/", *lines, b"Connection: close")
                                  + body))
    assert answer.status == 200
    (seen,) = stack.backend.seen[since:]
    assert seen.body == (SMUGGLED if chunked else b"0\r\n\r\n" + SMUGGLED)
    assert not [n for n, _ in seen.headers if n.replace("_", "-") in (
        "transfer-encoding", "content-length") and "_" in n]
    victims(proxy, 2)
    assert_nothing_smuggled(stack, since + 1)


def test_upgrade_without_connection_upgrade_is_a_plain_request(
    proxy: ProxyProcess, stack: Stack,
) -> None:
    """No upgrade by the parser's verdict: what follows is the client's own next request,
    and it is verified like any other (its forged username is dropped)."""
    since = len(stack.backend.seen)
    got = request(proxy.port, head(b"GET", b"/first", b"Upgrade: websocket")
                  + SMUGGLED.replace(b"GET /smuggled", b"GET /%s/second" % TOKEN.encode())
                  .replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert [r.status for r in responses(got)] == [200, 200]
    first, second = stack.backend.seen[since:]
    assert (first.target, second.target) == ("/first", "/second")
    assert first.header("upgrade") is None
    assert [v for n, v in second.headers if n == "x-verified-username"] == [USERNAME]


def test_upgrade_bytes_wait_for_the_backends_101(proxy: ProxyProcess, stack: Stack) -> None:
    raw = head(b"GET", b"/ws", b"Connection: Upgrade", b"Upgrade: websocket") + b"early bytes"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(raw)
        got = b""
        while b"echo:early bytes" not in got:
            more = sock.recv(65536)
            assert more, got
            got += more
        assert got.startswith(b"HTTP/1.1 101 ")
        sock.sendall(b"more")
        assert sock.recv(65536) == b"echo:more"
    assert stack.backend.early_bytes[-1] == b"", "bytes after the head reached the backend " \
                                                 "before its 101"


def test_a_refused_upgrade_ends_both_connections(proxy: ProxyProcess, stack: Stack) -> None:
    since = len(stack.backend.seen)
    got = request(proxy.port, head(b"GET", b"/ws-refuse", b"Connection: Upgrade",
                                   b"Upgrade: websocket") + SMUGGLED)
    (answer,) = responses(got)  # then closed: nothing after it was read as a request
    assert answer.status == 200
    assert answer.header(b"connection") == b"close"
    (refused,) = stack.backend.seen[since:]
    victims(proxy)
    later = stack.backend.seen[since + 1:]
    assert refused.connection not in {s.connection for s in later}, \
        "a backend connection that carried an upgrade attempt was reused"
    assert_nothing_smuggled(stack, since)


def test_pipelined_requests_are_answered_in_order(proxy: ProxyProcess) -> None:
    """More than ``max_pipelined`` (32) at once, a slow one first: all answered, in order."""
    n = 200
    raw = get(b"/slow?ms=200", b"p-0") + b"".join(get(b"/%d" % i, b"p-%d" % i)
                                                   for i in range(1, n))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(raw + get(b"/last", b"p-last", close=True))
        got = responses(read_all(sock, 10))
    assert [r.json()["client"] for r in got] == [f"p-{i}" for i in range(n)] + ["p-last"]


# -- verified headers ---------------------------------------------------------------------------


def test_forged_verified_headers_in_any_spelling_never_arrive(
    proxy: ProxyProcess, stack: Stack,
) -> None:
    forged = [b"X_Verified_Username: admin", b"x-verified_username: admin2",
              b"X-VERIFIED-USERNAME: admin3", b"x_verified_secret: forged",
              b"X_VERIFIED-BACKEND: b-other", b"x-verified-anything: 1",
              b"X-Verified-Path: /elsewhere", b"x_verified_user_data: {}"]
    since = len(stack.backend.seen)
    (answer,) = responses(request(proxy.port, head(b"GET", b"/h", *forged, b"X-Kept: yes",
                                                   b"Connection: close")))
    assert answer.status == 200
    (seen,) = stack.backend.seen[since:]
    verified = [(n, v) for n, v in seen.headers
                if n.lower().replace("_", "-").startswith("x-verified-")]
    assert sorted(n for n, _ in verified) == sorted([
        "x-verified-username", "x-verified-user-data", "x-verified-backend",
        "x-verified-secret", "x-verified-path"])
    assert dict(verified)["x-verified-username"] == USERNAME
    assert dict(verified)["x-verified-path"] == f"/{TOKEN}/h"
    assert seen.header("x-kept") == "yes"


def test_usernames_outside_latin1_are_percent_encoded_and_stay_distinct(
    proxy: ProxyProcess, stack: Stack,
) -> None:
    names = {}
    for token in (b"t-li", b"t-wang"):
        since = len(stack.backend.seen)
        request(proxy.port, head(b"GET", b"/", b"Connection: close", token=token))
        (seen,) = stack.backend.seen[since:]
        names[token] = seen.header("x-verified-username")
    assert names == {b"t-li": "%E6%9D%8E%E5%9B%9B", b"t-wang": "%E7%8E%8B%E4%BA%94"}
    assert [unquote(v or "") for v in names.values()] == ["李四", "王五"]


# -- the proxy's own answers ------------------------------------------------------------------


@pytest.mark.parametrize("raw,status,code", [
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET /t-no-such-token/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "no_route"),
    (head(b"GET", b"/", b"X-Big: " + b"a" * 70_000), 431, "header_too_large"),
    (head(b"GET", b"/", *[b"X-H%d: v" % i for i in range(101)]), 431, "too_many_headers"),
    (b"GET /" + b"u" * 70_000 + b" HTTP/1.1\r\n\r\n", 431, "header_too_large"),
])
def test_the_proxys_answers_are_framed_exactly(
    proxy: ProxyProcess, raw: bytes, status: int, code: str,
) -> None:
    got = request(proxy.port, raw)
    (answer,) = responses(got)  # a body of exactly content-length bytes, nothing after it
    assert answer.status == status, got
    assert answer.json()["error"]["code"] == code
    assert answer.header(b"content-type") == b"application/json"


def test_a_head_that_just_fits_is_served(proxy: ProxyProcess) -> None:
    (answer,) = responses(request(proxy.port, head(b"GET", b"/", b"X-Big: " + b"a" * 60_000,
                                                   *[b"X-H%d: v" % i for i in range(90)],
                                                   b"Connection: close")))
    assert answer.status == 200


@pytest.mark.parametrize("raw,location", [
    (b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n", b"/%s/"),
    (b"GET /%s?a=1&b=2 HTTP/1.1\r\nHost: x\r\n\r\n", b"/%s/?a=1&b=2"),
    (b"HEAD /%s HTTP/1.1\r\nHost: x\r\n\r\n", b"/%s/"),
    (b"POST /%s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", b"/%s/"),
])
def test_token_without_slash_is_redirected_308(
    proxy: ProxyProcess, raw: bytes, location: bytes,
) -> None:
    token = TOKEN.encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(raw % token + get(b"/after", b"after", close=True))
        got = read_all(sock, 5)
    if raw.startswith(b"HEAD"):  # its content-length describes a body it does not carry
        first_head, _, after = got.partition(b"\r\n\r\n")
        first = responses(first_head.replace(b"content-length", b"x-no-body") + b"\r\n\r\n")[0]
        rest = responses(after)
    else:
        first, *rest = responses(got)
    assert first.status == 308
    assert first.header(b"location") == location % token
    if raw.startswith(b"POST"):  # its body was not read: the connection ends
        assert first.header(b"connection") == b"close"
        assert rest == []
    else:
        assert [r.json()["client"] for r in rest] == ["after"]


def test_an_upgrade_to_the_bare_token_is_not_redirected(proxy: ProxyProcess) -> None:
    got = request(proxy.port, b"GET /%s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                  b"Upgrade: websocket\r\n\r\n" % TOKEN.encode())
    (answer,) = responses(got)
    assert answer.status == 200  # the backend's own (it refuses: its root is no WebSocket)
    assert answer.json()["target"] == "/"


def test_an_unknown_token_without_slash_is_404(proxy: ProxyProcess) -> None:
    (answer,) = responses(request(proxy.port, b"GET /t-nope HTTP/1.1\r\nConnection: close"
                                              b"\r\n\r\n"))
    assert answer.status == 404


# -- timeouts of one connection ---------------------------------------------------------------


def test_a_head_that_never_ends_gets_408(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /%s/ HTTP/1.1\r\nHost: x\r\n" % TOKEN.encode())
        started = time.monotonic()
        got = read_all(sock, HEAD_TIMEOUT + TIMEOUT_SLACK + 2)
        waited = time.monotonic() - started
    (answer,) = responses(got)
    assert answer.status == 408
    assert answer.json()["error"]["code"] == "head_timeout"
    assert HEAD_TIMEOUT - 0.5 < waited < HEAD_TIMEOUT + TIMEOUT_SLACK


def test_a_silent_new_connection_is_closed_without_an_answer(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        started = time.monotonic()
        assert read_all(sock, HEAD_TIMEOUT + TIMEOUT_SLACK + 2) == b""
        assert time.monotonic() - started < HEAD_TIMEOUT + TIMEOUT_SLACK


def test_an_idle_keep_alive_connection_is_closed(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(get(b"/", b"idle"))
        time.sleep(0.2)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert read_all(sock, IDLE_TIMEOUT + TIMEOUT_SLACK + 2) == b""
        assert IDLE_TIMEOUT - 0.5 < time.monotonic() - started < IDLE_TIMEOUT + TIMEOUT_SLACK


def test_a_stalled_request_body_gets_408(proxy: ProxyProcess, stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(head(b"POST", b"/stalled", b"Content-Length: 100") + b"ten bytes.")
        started = time.monotonic()
        got = read_all(sock, BODY_TIMEOUT + TIMEOUT_SLACK + 2)
        waited = time.monotonic() - started
    (answer,) = responses(got)
    assert answer.status == 408
    assert answer.json()["error"]["code"] == "body_timeout"
    assert BODY_TIMEOUT - 0.5 < waited < BODY_TIMEOUT + TIMEOUT_SLACK


def test_a_client_that_reads_nothing_is_closed(proxy: ProxyProcess) -> None:
    size = 64 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(get(b"/big?bytes=%d" % size, b"sleepy"))
        time.sleep(BODY_TIMEOUT + TIMEOUT_SLACK + 0.5)  # reading nothing meanwhile
        got = read_all(sock, 10)
    assert got.startswith(b"HTTP/1.1 200")
    assert len(got) < size / 2, "the proxy kept a client that took nothing"
