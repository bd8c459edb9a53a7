"""What the proxy takes from a backend: what nginx takes (bare-LF line ends in the response
head, a body that ends with the connection, busybox httpd's CGI answers), and a logged 502
for anything worse, never a silently closed client connection."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxy.conftest import Stack
from tests.proxy.harness import TOKEN, ProxyProcess, free_port, get, request, responses

BUSYBOX = shutil.which("busybox")
CGI = """#!/bin/sh
echo "Content-Type: text/plain"
echo "X-Cgi: busybox"
echo
echo "hello from busybox, path $PATH_INFO"
"""


def through(proxy: ProxyProcess, target: bytes, token: bytes = TOKEN.encode()) -> bytes:
    return request(proxy.port, get(target, b"t", close=True).replace(
        b"/" + TOKEN.encode(), b"/" + token, 1))


@pytest.mark.parametrize("name,body,header", [
    ("busybox", b"hello from cgi\n", (b"x-cgi", b"yes")),
    ("bare-lf", b"hello", (b"x-a", b"b")),
    ("until-close", b"x" * 100_000, (b"content-type", b"text/plain")),
])
def test_what_nginx_tolerates_reaches_the_client(
    proxy: ProxyProcess, name: str, body: bytes, header: tuple[bytes, bytes],
) -> None:
    (answer,) = responses(through(proxy, b"/raw/" + name.encode()))
    assert answer.status == 200
    assert answer.body == body
    assert answer.header(header[0]) == header[1]


def test_a_body_until_close_ends_the_client_connection_after_it(proxy: ProxyProcess) -> None:
    got = request(proxy.port, get(b"/raw/until-close", b"t") + get(b"/", b"never"))
    (answer,) = responses(got)  # the connection ended after the body: nothing else
    assert answer.header(b"connection") == b"close"
    assert len(answer.body) == 100_000


@pytest.mark.parametrize("name", ["two-connections", "keep-alive", "out-of-turn"])
def test_hop_by_hop_headers_and_bytes_out_of_turn_never_reach_the_client(
    proxy: ProxyProcess, name: str,
) -> None:
    """Plain heads are passed on as the backend wrote them (``passable_head``), others are
    rebuilt: either way without the backend's hop-by-hop headers, and the client's response
    ends where its Content-Length says, whatever the backend sent after it."""
    got = request(proxy.port, get(b"/raw/" + name.encode(), b"t") + get(b"/after", b"t2"))
    first, second = responses(got)
    assert first.status == 200 and first.body == b"hi"
    assert [n.lower() for n, _ in first.headers
            if n.lower() in (b"connection", b"keep-alive")] == []
    assert second.json()["target"] == "/after"  # the client's connection goes on


@pytest.mark.parametrize("name,reason", [
    ("garbage", "Expected HTTP/"),
    ("cl-te", "Content-Length"),
    ("cr-only", "Expected LF after CR"),
    ("unasked-101", "101 Switching Protocols to a request that asked for none"),
    ("huge-head", "a response head over"),
    ("head-cut", "closed the connection in its response head"),
])
def test_an_unreadable_response_is_a_logged_502(
    proxy: ProxyProcess, stack: Stack, name: str, reason: str,
) -> None:
    (answer,) = responses(through(proxy, b"/raw/" + name.encode()))
    assert answer.status == 502
    assert answer.json()["error"]["code"] in ("bad_response", "backend_closed")
    time.sleep(0.1)
    assert reason in proxy.log(), proxy.log()[-2000:]
    (after,) = responses(through(proxy, b"/after"))  # the next client is served as before
    assert after.status == 200


def test_a_response_cut_mid_body_is_cut_for_the_client_and_logged(proxy: ProxyProcess) -> None:
    got = through(proxy, b"/raw/body-cut")
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 100" in head.lower()
    assert body == b"only ten.."  # and then the connection ended: the client sees it short
    time.sleep(0.1)
    assert "closed the connection in the middle of a response" in proxy.log()


@pytest.fixture(scope="module")
def busybox_httpd(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[bytes]:
    """busybox httpd on 127.0.0.1 serving a shell CGI; its token."""
    if BUSYBOX is None:
        pytest.skip("busybox is not installed (apt-get install busybox)")
    root = tmp_path_factory.mktemp("www")
    (root / "cgi-bin").mkdir()
    script = root / "cgi-bin" / "hello"
    script.write_text(CGI)
    script.chmod(0o755)
    port = free_port()
    httpd = subprocess.Popen([BUSYBOX, "httpd", "-f", "-p", f"127.0.0.1:{port}",
                              "-h", str(root)])
    stack.controller.route("t-busybox", port)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if request(port, b"GET /cgi-bin/hello HTTP/1.0\r\n\r\n", 1).startswith(b"HTTP"):
                    break
            time.sleep(0.05)
        yield b"t-busybox"
    finally:
        httpd.terminate()
        httpd.wait(5)


def test_busybox_httpd_cgi_works_through_the_proxy_as_directly(
    proxy: ProxyProcess, busybox_httpd: bytes,
) -> None:
    (answer,) = responses(through(proxy, b"/cgi-bin/hello/x", busybox_httpd))
    assert answer.status == 200
    assert answer.header(b"x-cgi") == b"busybox"
    assert answer.body == b"hello from busybox, path /x\n"


def test_busybox_is_really_there() -> None:
    """The CGI test above must run here, not skip."""
    assert BUSYBOX is not None and Path(BUSYBOX).exists()
