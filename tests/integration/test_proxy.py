"""The proxy end to end: a real controller, drone and proxy (subprocesses) and real backends
(``sailplane/demo`` containers), every request through the ``url`` a connect answered. See
``proxy_fixtures`` for the harness."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import websockets

from sailplane.runtime.docker.runtime import container_name
from tests.integration.controller_fixtures import (
    SAILPLANE,
    START_TIMEOUT,
    Process,
    free_port,
    wait_until,
)
from tests.integration.proxy_fixtures import AUTH, USER, ProxyCluster, demo_image, proxy_cluster
from tests.proxy.harness import ClientThreads, PeakRss, rss_of

__all__ = ["demo_image", "proxy_cluster"]  # the fixtures, imported for pytest

pytestmark = pytest.mark.docker

BIG = 100 * 1024 * 1024
BLOCK = 1024 * 1024
# Streaming 100 MB must not make the proxy hold it: its resident size may grow by this much.
MAX_RSS_GROWTH_BYTES = 40 * 1024 * 1024
TRANSFER_TIMEOUT = httpx.Timeout(30.0)


@pytest.fixture(scope="module")
def backend(proxy_cluster: ProxyCluster) -> dict[str, Any]:
    """One ready demo backend that most tests share (they do not change it)."""
    return proxy_cluster.connect()


def _blocks(digest: Any) -> Iterator[bytes]:
    """``BIG`` bytes in ``BLOCK``-sized pieces, each hashed into ``digest`` as it is sent."""
    block = os.urandom(BLOCK)
    for index in range(BIG // BLOCK):
        piece = index.to_bytes(8, "big") + block[8:]
        digest.update(piece)
        yield piece


# -- routing and headers ---------------------------------------------------------------------


def test_request_arrives_without_token_with_verified_headers_and_no_spoofing(
    proxy_cluster: ProxyCluster, backend: dict[str, Any],
) -> None:
    url = backend["url"]
    assert url.startswith(proxy_cluster.proxy_url + "/")
    response = httpx.get(url + "headers?a=1&b=x%20y&a=2", headers={
        "X-Verified-Username": "mallory", "x-verified-secret": "forged",
        "X-VERIFIED-BACKEND": "b-other", "x-verified-anything": "1", "x-custom": "kept",
    })
    assert response.status_code == 200, response.text
    seen = response.json()
    assert seen["method"] == "GET"
    assert seen["path"] == "/headers?a=1&b=x%20y&a=2"
    headers = seen["headers"]
    assert headers["x-verified-username"] == USER
    assert json.loads(headers["x-verified-user-data"]) == AUTH
    assert headers["x-verified-path"] == f"/{backend['token']}/headers"
    assert headers["x-verified-backend"] == backend["backend_id"]
    assert headers["x-verified-secret"] == backend["secret_token"]
    assert "x-verified-anything" not in headers
    assert headers["x-custom"] == "kept"

    root = httpx.get(url)  # the token alone: the backend's /
    assert root.status_code == 200
    assert "sailplane/demo" in root.text
    bare = httpx.get(url.rstrip("/") + "?q=1", follow_redirects=False)
    assert bare.status_code == 308  # /TOKEN?q=1 -> /TOKEN/?q=1, so relative links resolve
    assert bare.headers["location"] == f"/{backend['token']}/?q=1"
    followed = httpx.get(url.rstrip("/") + "?q=1", follow_redirects=True)
    assert followed.status_code == 200
    assert "sailplane/demo" in followed.text


def test_verified_headers_in_underscore_spellings_are_dropped(backend: dict[str, Any]) -> None:
    response = httpx.get(backend["url"] + "headers", headers={
        "X_Verified_Username": "mallory", "x-verified_secret": "forged"})
    headers = response.json()["headers"]
    assert headers["x-verified-username"] == USER
    assert headers["x-verified-secret"] == backend["secret_token"]
    assert not [name for name in headers if "_" in name and "verified" in name.lower()]


def test_keep_alive_and_a_head_request_on_one_connection(backend: dict[str, Any]) -> None:
    with httpx.Client(timeout=10) as client:
        for _ in range(5):
            assert client.get(backend["url"] + "counter").status_code == 200
        head = client.head(backend["url"] + "headers")
        assert head.status_code == 200
        assert head.content == b""
        after = client.get(backend["url"] + "headers")  # the HEAD left the connection sane
        assert after.json()["path"] == "/headers"


# -- streamed bodies -------------------------------------------------------------------------


def test_100mb_download_is_streamed(
    proxy_cluster: ProxyCluster, backend: dict[str, Any],
) -> None:
    pattern = bytes(range(256)) * (BLOCK // 256)
    expected = hashlib.sha256()
    for _ in range(BIG // BLOCK):
        expected.update(pattern)
    got = hashlib.sha256()
    length = 0
    with PeakRss(lambda: rss_of(proxy_cluster.proxy_pid())) as rss, httpx.stream(
        "GET", backend["url"] + f"bytes?n={BIG}", timeout=TRANSFER_TIMEOUT,
    ) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        for chunk in response.iter_raw():
            got.update(chunk)
            length += len(chunk)
    assert length == BIG
    assert got.hexdigest() == expected.hexdigest()
    assert rss.growth < MAX_RSS_GROWTH_BYTES, f"proxy RSS grew {rss.growth >> 20} MiB"


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_100mb_upload_is_streamed(
    proxy_cluster: ProxyCluster, backend: dict[str, Any], framing: str,
) -> None:
    sent = hashlib.sha256()
    headers = {"content-length": str(BIG)} if framing == "content-length" else {}
    with PeakRss(lambda: rss_of(proxy_cluster.proxy_pid())) as rss:
        response = httpx.post(backend["url"] + "sink", content=_blocks(sent), headers=headers,
                              timeout=TRANSFER_TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.json() == {"bytes": BIG, "sha256": sent.hexdigest()}
    assert rss.growth < MAX_RSS_GROWTH_BYTES, f"proxy RSS grew {rss.growth >> 20} MiB"


def test_echo_streams_both_ways_at_once(backend: dict[str, Any]) -> None:
    sent = hashlib.sha256()
    size = 16 * BLOCK

    def body() -> Iterator[bytes]:
        for index in range(size // BLOCK):
            piece = bytes([index]) * BLOCK
            sent.update(piece)
            yield piece

    back = hashlib.sha256()
    length = 0
    with httpx.stream("POST", backend["url"] + "echo", content=body(),
                      timeout=TRANSFER_TIMEOUT) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            back.update(chunk)
            length += len(chunk)
    assert length == size
    assert back.hexdigest() == sent.hexdigest()


# -- WebSocket -------------------------------------------------------------------------------


def _ws_url(backend: dict[str, Any]) -> str:
    return str(backend["url"]).replace("http://", "ws://", 1) + "ws"


def test_websocket_echo_and_broadcast_through_the_proxy(backend: dict[str, Any]) -> None:
    async def run() -> None:
        url = _ws_url(backend)
        async with websockets.connect(url, max_size=None) as alice, \
                websockets.connect(url, max_size=None) as bob:
            await alice.send("hello")
            assert await asyncio.wait_for(alice.recv(), 5) == "hello"
            assert await asyncio.wait_for(bob.recv(), 5) == "hello"
            big = os.urandom(2 * BLOCK)
            await bob.send(big)
            assert await asyncio.wait_for(bob.recv(), 5) == big
            assert await asyncio.wait_for(alice.recv(), 5) == big
            for index in range(200):
                await alice.send(f"m{index}")
            for index in range(200):
                assert await asyncio.wait_for(alice.recv(), 5) == f"m{index}"

    asyncio.run(run())


# -- errors ----------------------------------------------------------------------------------


def test_unknown_token_is_the_proxys_own_404(proxy_cluster: ProxyCluster) -> None:
    response = proxy_cluster.proxy_http.get("/t-no-such-token/headers")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "no_route"
    again = proxy_cluster.proxy_http.get("/")  # no token at all
    assert again.status_code == 404


def test_a_terminated_backends_token_is_404(proxy_cluster: ProxyCluster) -> None:
    made = proxy_cluster.connect()
    assert httpx.get(made["url"] + "headers").status_code == 200  # the route is cached
    response = proxy_cluster.cluster.http.post(f"/ctrl/b/{made['backend_id']}/hard-terminate")
    assert response.status_code == 200, response.text
    proxy_cluster.cluster.wait_status(made["backend_id"], "terminated")
    gone = httpx.get(made["url"] + "headers")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "no_route"


def test_a_backend_refusing_connections_is_502(
    proxy_cluster: ProxyCluster, docker_client: docker.DockerClient,
) -> None:
    made = proxy_cluster.connect()
    assert httpx.get(made["url"] + "headers").status_code == 200  # route cached, conn pooled
    # A rule inside the backend's own network namespace resets every packet to its port,
    # pooled connection included, while its process runs on: the drone sees no exit, the
    # controller still says ready, and the proxy's connect is refused. Stopping or killing the
    # container instead would race the drone's report of the exit. The rule goes with the
    # namespace when the container is removed.
    container = docker_client.containers.get(container_name(made["backend_id"]))
    netns = container.attrs["NetworkSettings"]["SandboxKey"]
    subprocess.run(["nsenter", f"--net={netns}", "iptables", "-w", "-I", "INPUT", "-p", "tcp",
                    "--dport", "8080", "-j", "REJECT", "--reject-with", "tcp-reset"],
                   check=True, capture_output=True, timeout=30)
    response = httpx.get(made["url"] + "headers")
    assert response.status_code == 502
    assert response.json()["error"]["code"] in {"backend_unreachable", "backend_closed"}
    assert proxy_cluster.cluster.status(made["backend_id"])["status"] == "ready"


# -- idle detection --------------------------------------------------------------------------


def test_idle_sweep_waits_for_an_open_websocket_and_follows_its_close(
    proxy_cluster: ProxyCluster,
) -> None:
    made = proxy_cluster.connect(max_idle_seconds=2)
    backend_id = made["backend_id"]

    async def hold(seconds: float) -> None:
        async with websockets.connect(_ws_url(made)) as socket:
            await socket.send("still here")
            assert await asyncio.wait_for(socket.recv(), 5) == "still here"
            await asyncio.sleep(seconds)  # silent: only the open connection keeps it alive
            assert proxy_cluster.cluster.status(backend_id)["status"] == "ready"

    asyncio.run(hold(6.0))
    closed = time.monotonic()
    ended = proxy_cluster.cluster.wait_status(backend_id, "terminated", timeout=15)
    assert ended["reason"] == "swept"
    assert time.monotonic() - closed < 10


def test_short_requests_keep_a_backend_from_the_idle_sweep(
    proxy_cluster: ProxyCluster,
) -> None:
    made = proxy_cluster.connect(max_idle_seconds=2)
    with httpx.Client(timeout=5) as client:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # each request is over long before a report
            assert client.get(made["url"] + "headers").status_code == 200
            time.sleep(0.7)
    assert proxy_cluster.cluster.status(made["backend_id"])["status"] == "ready"


# -- load ------------------------------------------------------------------------------------


def test_50_concurrent_clients_of_one_backend(backend: dict[str, Any]) -> None:
    clients, requests = 50, 20

    async def client(index: int) -> list[int]:
        statuses = []
        async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=1)) as http:
            for number in range(requests):
                response = await http.get(backend["url"] + f"headers?c={index}&n={number}")
                assert response.json()["path"] == f"/headers?c={index}&n={number}"
                assert response.json()["headers"]["x-verified-backend"] == backend["backend_id"]
                statuses.append(response.status_code)
        return statuses

    async def run() -> list[list[int]]:
        return await asyncio.gather(*(client(index) for index in range(clients)))

    results = asyncio.run(run())
    assert [status for statuses in results for status in statuses] == [200] * clients * requests


def test_the_proxy_logged_no_traceback(proxy_cluster: ProxyCluster) -> None:
    """The proxy's log has no errors from any test above (a crash would show here)."""
    wait_until(proxy_cluster.proxy.alive, 1, "the proxy to be alive")
    assert "Traceback" not in proxy_cluster.proxy.log()



class SlowReader:
    """Reads HTTP/1.1 responses from a socket, pausing ``pace`` seconds after every read."""

    def __init__(self, sock: socket.socket, pace: float) -> None:
        self.sock = sock
        self.pace = pace
        self.buffer = b""

    def _more(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the proxy closed the connection"
        self.buffer += data
        time.sleep(self.pace)

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._more()
        taken, self.buffer = self.buffer[:size], self.buffer[size:]
        return taken

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._more()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def response(self) -> tuple[bytes, int]:
        """The status line, and the body's length (chunked or content-length)."""
        status = self._line()
        headers = {}
        while line := self._line():
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding") != b"chunked":
            return status, len(self._take(int(headers.get(b"content-length", b"0"))))
        length = 0
        while size := int(self._line().split(b";")[0], 16):
            length += len(self._take(size))
            assert self._take(2) == b"\r\n"
        assert self._line() == b""
        return status, length


def test_a_slow_reader_leaves_no_connection_paused(backend: dict[str, Any]) -> None:
    """A client slower than the backend makes the proxy stop reading the backend; once the
    answer is complete, the backend's connection (pooled again) and the client's must both
    work as before, on the next requests."""
    url = httpx.URL(backend["url"])
    size = 16 * BLOCK
    with socket.create_connection((url.host, url.port), timeout=10) as sock:
        reader = SlowReader(sock, pace=0.002)  # at most ~32 MB/s: slower than the backend
        for _ in range(3):
            sock.sendall(b"GET %sbytes?n=%d HTTP/1.1\r\nhost: x\r\n\r\n" % (url.raw_path, size))
            assert reader.response() == (b"HTTP/1.1 200 OK", size)
        # Pipelined: each answer waits in the proxy for the one before it to be read.
        sock.sendall(b"GET %sbytes?n=%d HTTP/1.1\r\nhost: x\r\n\r\n" % (url.raw_path, BLOCK) * 8)
        for _ in range(8):
            assert reader.response() == (b"HTTP/1.1 200 OK", BLOCK)
        reader.pace = 0
        for _ in range(3):
            sock.sendall(b"GET %sheaders HTTP/1.1\r\nhost: x\r\n\r\n" % url.raw_path)
            assert reader.response()[0] == b"HTTP/1.1 200 OK"


def test_two_worker_processes_share_one_port(
    proxy_cluster: ProxyCluster, backend: dict[str, Any],
) -> None:
    port = free_port()
    workers = Process("proxy-workers", [
        str(SAILPLANE), "proxy", "--controller", proxy_cluster.cluster.url, "--port", str(port),
        "--workers", "2",
    ], proxy_cluster.cluster.tmp / "proxy-workers.log")
    workers.start()
    try:
        url = backend["url"].replace(str(proxy_cluster.proxy_port), str(port))

        def answers() -> bool:
            return httpx.get(url + "headers").status_code == 200

        wait_until(answers, START_TIMEOUT, "the two-worker proxy to answer")
        assert workers.popen is not None
        pid = workers.popen.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        assert len(children.split()) == 1, "one worker forked beside the first"
        for number in range(40):  # new connections each: the kernel spreads them
            response = httpx.get(url + f"headers?n={number}")
            assert response.json()["headers"]["x-verified-backend"] == backend["backend_id"]
    finally:
        workers.stop()
    time.sleep(0.5)
    with pytest.raises(httpx.ConnectError):  # the forked worker ended with the first
        httpx.get(url + "headers")


# -- the controller link ---------------------------------------------------------------------

HAMMER_THREADS = 4


class Hammer(ClientThreads):
    """Clients on keep-alive connections requesting ``urls`` in turn until stopped (or
    ``MAX_CLIENT_SECONDS``); every outcome is counted, with when it happened."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.outcomes: list[tuple[float, int | str]] = []
        super().__init__(HAMMER_THREADS)

    def run(self, number: int) -> None:
        deadline = self.deadline()
        with httpx.Client(timeout=10) as client:
            turn = number
            while self.going(deadline):
                url = self.urls[turn % len(self.urls)]
                turn += 1
                try:
                    outcome: int | str = client.get(url + "headers").status_code
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                self.outcomes.append((time.monotonic(), outcome))

    def between(self, start: float, end: float) -> int:
        return sum(1 for at, _ in list(self.outcomes) if start <= at <= end)


def test_known_routes_answer_through_a_controller_kill(proxy_cluster: ProxyCluster) -> None:
    """10 healthy backends, clients on all of them, the controller SIGKILLed and started
    again: not one request fails, during the outage or after the proxy's reconnect. (The
    outage stays well within the drones' key lease: a drone that cannot renew it for long
    stops its backends, and then 502s would be right.)"""
    cluster = proxy_cluster.cluster
    urls = [proxy_cluster.connect()["url"] for _ in range(10)]
    for url in urls:
        assert httpx.get(url + "headers").status_code == 200  # every route cached
    with Hammer(urls) as hammer:
        time.sleep(1.0)
        cluster.controller.stop(signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(1.0)
        cluster.start_controller()
        restarted = time.monotonic()  # healthy again
        # The controller's own answer for an unknown token (404, not 503): the link is back.
        wait_until(lambda: proxy_cluster.proxy_http.get("/t-nope/").status_code == 404,
                   START_TIMEOUT, "the proxy to reconnect")
        time.sleep(1.0)
    statuses = collections.Counter(outcome for _, outcome in hammer.outcomes)
    assert statuses.keys() == {200}, statuses
    assert hammer.between(killed, restarted) > 100, "few requests while the controller was away"
    cluster.wait_drone_connected()  # the module's other tests need it back


def test_a_restarted_proxy_never_answers_404_for_a_live_route(
    proxy_cluster: ProxyCluster, backend: dict[str, Any],
) -> None:
    proxy_cluster.proxy.stop()
    proxy_cluster.proxy.start()
    deadline = time.monotonic() + START_TIMEOUT
    statuses: list[int] = []
    while len(statuses) < 5 and time.monotonic() < deadline:
        try:  # from the first moment it accepts connections
            statuses.append(httpx.get(backend["url"] + "headers", timeout=10).status_code)
        except httpx.ConnectError:
            time.sleep(0.01)
    assert statuses == [200] * 5, proxy_cluster.proxy.log()
