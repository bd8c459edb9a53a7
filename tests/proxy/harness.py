"""A proxy under test without Docker: ``sailplane proxy`` as a subprocess, a stand-in
controller that answers its route lookups over the real proxy socket, and a recording
backend that parses with an independent parser (h11), all on 127.0.0.1.

The backend records every request it parses (connection, method, target, headers, body);
the tests assert on that record that nothing reached a backend that its client did not send
as a request of its own. Its answer names the request (client tag, target, connection), so a
client can tell its own response from anyone else's.

Paths the backend treats specially (anything else: ``ok``, a JSON description of the
request, keep-alive):

``/slow?ms=N``   ``ok`` after N milliseconds
``/big?bytes=N`` N bytes (a multiple of 64 KiB), then closed
``/ws``          an upgrade: 101, then every byte echoed back prefixed with ``echo:``; it
                 first waits a moment and records whether any byte beyond the head arrived
                 before its 101 (``Backend.early_bytes``)
``/ws-refuse``   an upgrade request answered 200 (refused), then served like keep-alive
``/raw/NAME``    the bytes of ``RAW_RESPONSES[NAME]`` written as they are, then closed
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import h11
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from sailplane.protocol import RouteGone, RouteInfo, RouteRequest, from_proxy

REPO = Path(__file__).resolve().parents[2]
SAILPLANE = REPO / ".venv" / "bin" / "sailplane"
START_TIMEOUT_SECONDS = 20.0
# The proxy starts with the common default open-file limit, as in the reproduction;
# it raises its own limit as far as ``max_connections`` needs.
PROXY_FD_SOFT_LIMIT = 1024

MIB = 1024 * 1024
USERNAME = "alice"
TOKEN = "t-good"
WS_DELAY_SECONDS = 0.3

RAW_RESPONSES = {
    # busybox httpd's CGI answer: the status line in CRLF, the CGI's head in bare LF, body
    # until the connection closes.
    "busybox": b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\nX-Cgi: yes\n\nhello from cgi\n",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 5\nX-A: b\n\nhello",
    "until-close": b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n" + b"x" * 100_000,
    "garbage": b"this is not HTTP\r\n\r\n",
    "cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"0\r\n\r\n",
    "cr-only": b"HTTP/1.1 200 OK\rContent-Length: 2\r\rhi",
    "head-cut": b"HTTP/1.1 200 OK\r\nContent-Le",
    "body-cut": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..",
    "unasked-101": b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                   b"Upgrade: websocket\r\n\r\nraw bytes",
    "huge-head": b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * (200 * 1024) + b"\r\n\r\n",
    # Plain heads, passed on as they came but for their Connection lines (any spelling).
    "two-connections": b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nContent-Length: 2\r\n"
                       b"X-A: b\r\nCONNECTION: x-a\r\n\r\nhi",
    "out-of-turn": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\n"
                   b"Content-Length: 5\r\n\r\nextra",
    # Not plain: a hop-by-hop header other than Connection, the full parse drops it.
    "keep-alive": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\nhi",
}


@dataclass
class Seen:
    """A request as the backend parsed it."""

    connection: int
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name]
        return values[-1] if values else None

    @property
    def client(self) -> str | None:
        return self.header("x-client")


@dataclass
class Backend:
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    early_bytes: list[bytes] = field(default_factory=list)  # per /ws: read before its 101
    connections: int = 0
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def requests(self, client: str | None = None) -> list[Seen]:
        return [s for s in list(self.seen) if client is None or s.client == client]

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = next(self._ids)
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._next(conn, reader)
                if request is None:
                    return
                head, body = request
                seen = Seen(number, head.method.decode(), head.target.decode("latin-1"),
                            [(n.decode("latin-1"), v.decode("latin-1"))
                             for n, v in head.headers], body)
                self.seen.append(seen)
                if not await self._answer(conn, reader, writer, seen):
                    return
        except (h11.RemoteProtocolError, ConnectionError):
            return
        finally:
            writer.close()

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader,
                    ) -> tuple[h11.Request, bytes] | None:
        head: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                assert head is not None
                return head, body
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _answer(self, conn: h11.Connection, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, seen: Seen) -> bool:
        """Answer ``seen``; False when the connection is done."""
        url = urlsplit(seen.target)
        if url.path.startswith("/raw/"):
            writer.write(RAW_RESPONSES[url.path[5:]])
            await writer.drain()
            return False
        if url.path == "/ws":
            await asyncio.sleep(WS_DELAY_SECONDS)
            early = conn.trailing_data[0]
            with contextlib.suppress(TimeoutError):
                early += await asyncio.wait_for(reader.read(65536), 0.05)
            self.early_bytes.append(early)
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                         b"Upgrade: websocket\r\n\r\n")
            while data := await reader.read(65536):
                writer.write(b"echo:" + data)
            return False
        if url.path == "/slow":
            await asyncio.sleep(int(parse_qs(url.query)["ms"][0]) / 1000)
        if url.path == "/big":
            size = int(parse_qs(url.query)["bytes"][0])
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
            block = b"b" * 65536
            for _ in range(size // len(block)):
                writer.write(block)
                await writer.drain()
            return False
        body = json.dumps({"client": seen.client, "target": seen.target,
                           "connection": seen.connection, "body": len(seen.body)}).encode()
        data = conn.send(h11.Response(status_code=200, headers=[
            ("content-type", "application/json"), ("content-length", str(len(body)))]))
        assert data is not None
        writer.write(data + (conn.send(h11.Data(data=body)) or b"")
                     + (conn.send(h11.EndOfMessage()) or b""))
        await writer.drain()
        if conn.our_state is h11.MUST_CLOSE:
            return False
        conn.start_next_cycle()
        return True


class Controller:
    """Answers the proxy's route lookups as a controller would, over the proxy socket.

    It notes every token asked for (``asked``), can tell its proxies that a backend is gone
    (:meth:`gone`), and can be stopped and started again on the same port (``server``), as
    a controller restart looks to a proxy."""

    def __init__(self) -> None:
        self.routes: dict[str, RouteInfo] = {}
        self.port = 0
        self.asked: list[str] = []
        self.sessions: set[ServerConnection] = set()
        self.server: Any = None

    def route(self, token: str, port: int, username: str = USERNAME) -> None:
        self.routes[token] = RouteInfo(
            token=token, backend_id=f"b-{token}", address=f"127.0.0.1:{port}",
            username=username, user_data=json.dumps({"role": "tester"}), secret="s3cret")

    async def start(self) -> Any:
        """Listen (on the same port as before, once it has one)."""
        self.server = await serve(self._session, "127.0.0.1", self.port)
        self.port = next(iter(self.server.sockets)).getsockname()[1]
        return self.server

    async def stop(self) -> None:
        """Close the server and every proxy's socket, as a controller that went away."""
        self.server.close()
        await self.server.wait_closed()

    async def gone(self, backend_id: str) -> None:
        """Tell every connected proxy that ``backend_id`` left ``ready``."""
        for session in list(self.sessions):
            await session.send(RouteGone(backend_id=backend_id).model_dump_json())

    async def _session(self, socket: ServerConnection) -> None:
        self.sessions.add(socket)
        try:
            with contextlib.suppress(ConnectionClosed):  # the proxy stopped
                async for frame in socket:
                    message = from_proxy.validate_json(frame)
                    if isinstance(message, RouteRequest):
                        self.asked.append(message.token)
                        info = self.routes.get(message.token, RouteInfo(token=message.token))
                        await socket.send(info.model_dump_json())
        finally:
            self.sessions.discard(socket)


class Loop:
    """An asyncio loop on its own thread, for the backend and the controller."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _low_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (PROXY_FD_SOFT_LIMIT, hard))


# ``SAILPLANE_PROXY_SRC=DIR`` runs the proxy of another source tree (``DIR/sailplane``) with
# its default limits instead, to show which tests an older proxy fails:
#   git archive OLD src | tar -x -C /tmp/old && SAILPLANE_PROXY_SRC=/tmp/old/src pytest ...
OTHER_SOURCE = os.environ.get("SAILPLANE_PROXY_SRC")
_OTHER_PROXY = """\
import sys
sys.path.insert(0, sys.argv[1])
from sailplane.proxy.run import ProxyConfig, run_workers
run_workers(ProxyConfig(controller_url=sys.argv[2], port=int(sys.argv[3])))
"""


class ProxyProcess:
    """``sailplane proxy`` with the given options, its output in ``log_path``."""

    def __init__(self, controller_port: int, log_path: Path, *options: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("ab")
        controller = f"http://127.0.0.1:{controller_port}"
        command = [str(SAILPLANE), "proxy", "--controller", controller, "--port",
                   str(self.port), *options]
        if OTHER_SOURCE:
            command = [sys.executable, "-c", _OTHER_PROXY, OTHER_SOURCE, controller,
                       str(self.port)]
        self.popen = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=_low_fd_limit,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        """Until a request through the proxy reaches the backend (the link is up)."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"the proxy exited:\n{self.log()}")
            with contextlib.suppress(OSError):
                got = request(self.port, b"GET /%s/ HTTP/1.1\r\nHost: x\r\n"
                              b"Connection: close\r\n\r\n" % TOKEN.encode(), timeout=2)
                if got.startswith(b"HTTP/1.1 200"):
                    return
            time.sleep(0.1)
        raise AssertionError(f"the proxy did not route within {START_TIMEOUT_SECONDS}s:\n"
                             f"{self.log()}")

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
        self._log.close()

    def rss(self) -> int:
        return rss_of(self.pid)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


class PeakRss:
    """The peak of a process's resident memory while the block runs, sampled every 20 ms;
    ``measure`` reads it (``ProxyProcess.rss``, or :func:`rss_of` a pid)."""

    def __init__(self, measure: Callable[[], int]) -> None:
        self.measure = measure
        self.start = measure()
        self.peak = self.start
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, self.measure())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.start


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class ClientThreads:
    """``threads`` clients, each running :meth:`run` (client ``number``) from the block's
    start until it ends or ``MAX_CLIENT_SECONDS`` have passed: a bounded load loop."""

    MAX_CLIENT_SECONDS = 30.0

    def __init__(self, threads: int) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self.run, args=(n,), daemon=True)
                         for n in range(threads)]

    def going(self, deadline: float) -> bool:
        """Whether a client goes on (``deadline`` from :meth:`deadline`)."""
        return not self._stop.is_set() and time.monotonic() < deadline

    def deadline(self) -> float:
        return time.monotonic() + self.MAX_CLIENT_SECONDS

    def run(self, number: int) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.MAX_CLIENT_SECONDS)


# -- raw HTTP on the client side ---------------------------------------------------------------


def request(port: int, raw: bytes, timeout: float = 5.0, pause: float = 0.0,
            chunk: int = 0) -> bytes:
    """Send ``raw`` (in pieces of ``chunk`` bytes, ``pause`` apart, if given), then read until
    the proxy closes the connection or ``timeout``; everything it sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if chunk:
            for start in range(0, len(raw), chunk):
                sock.sendall(raw[start:start + chunk])
                time.sleep(pause)
        else:
            sock.sendall(raw)
        return read_all(sock, timeout)


def read_all(sock: socket.socket, timeout: float) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not data:
            break
        got += data
    return got


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n.lower() == name]
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def responses(data: bytes) -> list[Response]:
    """Split what a client read into responses, strictly: CRLF heads, a body of exactly its
    ``content-length`` (or chunked, or up to the end); leftover bytes fail the test."""
    found = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, f"an incomplete response head: {head[:200]!r}"
        status_line, *lines = head.split(b"\r\n")
        version, status, *_ = status_line.split(b" ", 2)
        assert version == b"HTTP/1.1", status_line
        headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(b":") for line in lines)]
        response = Response(int(status), headers, b"")
        length = response.header(b"content-length")
        if length is not None:
            response.body, data = data[:int(length)], data[int(length):]
            assert len(response.body) == int(length), "a body shorter than its content-length"
        elif response.header(b"transfer-encoding") == b"chunked":
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                response.body += data[:size]
                data = data[size + 2:]
                if size == 0:
                    break
        elif 100 <= response.status < 200 or response.status in (204, 304):
            pass
        else:
            response.body, data = data, b""
        found.append(response)
    return found


def get(target: bytes, client: bytes, *, extra: bytes = b"", close: bool = False) -> bytes:
    """A well-formed request through the proxy for ``TOKEN``."""
    return (b"GET /%s%s HTTP/1.1\r\nHost: proxy\r\nX-Client: %s\r\n%s%s\r\n"
            % (TOKEN.encode(), target, client, extra, b"Connection: close\r\n" if close else b""))


class GoodClient:
    """A well-behaved client in a thread: a request every ``interval`` seconds, alternately
    on its own keep-alive connection and on a new one, noting the slowest answer and any
    failure, until stopped."""

    def __init__(self, port: int, interval: float = 0.05, fresh: bool = True) -> None:
        self.port = port
        self.interval = interval
        self.fresh = fresh  # also new connections (else only the kept one)
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._kept: socket.socket | None = None

    def __enter__(self) -> GoodClient:
        self._kept = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._kept is not None:
            self._kept.close()

    def _run(self) -> None:
        for n in itertools.count():
            if self._stop.wait(self.interval):
                return
            started = time.monotonic()
            try:
                ok = self._fresh(n) if self.fresh and n % 2 else self._keep_alive(n)
            except OSError as exc:
                ok = f"{type(exc).__name__}: {exc}"
            self.latencies.append(time.monotonic() - started)
            if ok is not True:
                self.failures.append(str(ok))

    def _check(self, data: bytes, n: int) -> bool | str:
        try:
            (response,) = responses(data)
        except (AssertionError, ValueError) as exc:
            return f"request {n}: {exc}: {data[:200]!r}"
        if response.status != 200 or response.json()["client"] != f"good-{n}":
            return f"request {n}: {response.status} {response.body[:200]!r}"
        return True

    def _fresh(self, n: int) -> bool | str:
        return self._check(request(self.port, get(b"/", b"good-%d" % n, close=True), 5), n)

    def _keep_alive(self, n: int) -> bool | str:
        sock = self._kept
        assert sock is not None
        sock.sendall(get(b"/", b"good-%d" % n))
        data = b""
        while True:
            more = sock.recv(65536)
            if not more:
                return f"request {n}: the kept connection was closed"
            data += more
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    return self._check(data, n)

    @property
    def slowest(self) -> float:
        return max(self.latencies, default=0.0)
