"""The proxy under hostile load, without Docker: 1,000 slowloris connections, 2,000 idle
connections, a connection flood beyond ``max_connections``, a 400 MiB request head, and a
million pipelined requests whose answers are never read.

In each, a well-behaved client keeps asking in parallel and must be answered within a
second every time; the proxy's resident memory (``/proc/PID/status`` of the proxy process,
sampled every 20 ms) may grow by at most ``MAX_RSS_GROWTH_BYTES``; and once the attack ends
the proxy holds no more descriptors than before it (give or take its pools) and serves.

The bound: every attack here is a few thousand connections, each of which the proxy may
cost at most a small fixed size plus what its limits allow (a head under 64 KiB while it
arrives, 32 requests read ahead); the old proxy took 447 MiB for the 400 MiB head and 750 MiB
for the pipelined requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import time
from collections.abc import Iterator

import pytest

from tests.proxy.conftest import HEAD_TIMEOUT, IDLE_TIMEOUT, PROXY_OPTIONS, Stack
from tests.proxy.harness import (
    MIB,
    TOKEN,
    GoodClient,
    PeakRss,
    ProxyProcess,
    get,
    read_all,
    request,
    responses,
)

MAX_RSS_GROWTH_BYTES = 32 * MIB
MAX_GOOD_LATENCY_SECONDS = 1.0
# What the proxy may hold beyond its descriptors before an attack, once it has gone: idle
# backend connections in its pool, which it keeps.
FD_SLACK = 16
RECOVERY_SECONDS = 5.0


def assert_good(good: GoodClient) -> None:
    assert not good.failures, good.failures[:5]
    assert len(good.latencies) >= 5
    assert good.slowest < MAX_GOOD_LATENCY_SECONDS, f"slowest answer {good.slowest:.2f}s"


def assert_recovered(proxy: ProxyProcess, fds_before: int) -> None:
    deadline = time.monotonic() + RECOVERY_SECONDS
    while proxy.open_fds() > fds_before + FD_SLACK and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proxy.open_fds() <= fds_before + FD_SLACK, "the proxy kept the attack's sockets"
    (answer,) = responses(request(proxy.port, get(b"/", b"after", close=True)))
    assert answer.status == 200


@contextlib.contextmanager
def attack_watch(proxy: ProxyProcess) -> Iterator[tuple[PeakRss, GoodClient]]:
    with PeakRss(proxy.rss) as rss, GoodClient(proxy.port) as good:
        time.sleep(0.3)
        yield rss, good
        time.sleep(0.3)  # and just after it
    print(f"proxy RSS {rss.start / MIB:.1f} MiB, grew by {rss.growth / MIB:.1f} MiB; "
          f"slowest good answer {good.slowest * 1000:.0f} ms")
    assert rss.growth < MAX_RSS_GROWTH_BYTES, f"RSS grew by {rss.growth / MIB:.1f} MiB"


def test_1000_slowloris_connections_get_408(proxy: ProxyProcess) -> None:
    n = 1000
    head = b"GET /%s/ HTTP/1.1\r\nHost: x\r\nX-Pad: " % TOKEN.encode() + b"z" * 64

    async def slowloris() -> list[bytes]:
        opened = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(n)]

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
            async def drip() -> None:  # a byte a second, never the end of the head
                for byte in head:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(1)

            dripping = asyncio.create_task(drip())
            try:
                return await asyncio.wait_for(reader.read(), HEAD_TIMEOUT + 5)
            finally:
                dripping.cancel()
                writer.close()

        return await asyncio.gather(*(one(r, w) for r, w in opened))

    fds_before = proxy.open_fds()
    with attack_watch(proxy) as (_, good):
        started = time.monotonic()
        answers = asyncio.run(slowloris())
        took = time.monotonic() - started
    assert [responses(a)[0].status for a in answers] == [408] * n
    assert took < HEAD_TIMEOUT + 4
    assert_good(good)
    assert_recovered(proxy, fds_before)


def test_2000_idle_connections_are_closed_and_others_served(proxy: ProxyProcess) -> None:
    """More than the proxy's inherited open-file limit (1024): it raised its own."""
    n = 2000
    fds_before = proxy.open_fds()
    sockets: list[socket.socket] = []
    try:
        with attack_watch(proxy) as (_, good):
            for i in range(n):
                sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
                sockets.append(sock)
                if i % 2:  # half asked once, then idle on keep-alive; half never asked
                    sock.sendall(get(b"/", b"idle-%d" % i))
            for i, sock in enumerate(sockets):
                if i % 2:
                    assert sock.recv(65536).startswith(b"HTTP/1.1 200"), i
            started = time.monotonic()
            closed = [read_all(sock, IDLE_TIMEOUT + 3) for sock in sockets]
            took = time.monotonic() - started
        assert closed == [b""] * n  # closed by the proxy, without a word
        assert took < IDLE_TIMEOUT + 3
        assert_good(good)
    finally:
        for sock in sockets:
            sock.close()
    assert_recovered(proxy, fds_before)


@pytest.fixture(scope="module")
def small_proxy(stack: Stack, tmp_path_factory: pytest.TempPathFactory,
                ) -> Iterator[ProxyProcess]:
    started = ProxyProcess(stack.controller.port,
                           tmp_path_factory.mktemp("small") / "proxy.log",
                           *PROXY_OPTIONS, "--max-connections", "100")
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def test_a_connection_flood_is_refused_with_503_without_starving_open_ones(
    small_proxy: ProxyProcess,
) -> None:
    proxy, n = small_proxy, 1000
    fds_before = proxy.open_fds()
    sockets: list[socket.socket] = []
    try:
        with PeakRss(proxy.rss) as rss, GoodClient(proxy.port, fresh=False) as good:
            time.sleep(0.2)
            for _ in range(n):
                sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
                sock.sendall(get(b"/", b"flood"))
                sockets.append(sock)
            got = [read_all(sock, 0.5) if i % 10 == 0 else b"" for i, sock in
                   enumerate(sockets)]  # a sample: waiting for each would take minutes
            time.sleep(0.5)
        statuses = [responses(g)[0].status for g in got if g]
        assert statuses.count(503) >= len(statuses) - 100 // 10, statuses
        refused = next(responses(g)[0] for g in got if g.startswith(b"HTTP/1.1 503"))
        assert refused.json()["error"]["code"] == "too_many_connections"
        assert refused.header(b"connection") == b"close"
        assert rss.growth < MAX_RSS_GROWTH_BYTES
        assert_good(good)
    finally:
        for sock in sockets:
            sock.close()
    assert_recovered(proxy, fds_before)


@pytest.mark.parametrize("filler", [b"a" * 1024, b"X-A: b\r\n" * 128],
                         ids=["one-value", "many-lines"])
def test_a_400_mib_head_is_cut_off_early_with_431(proxy: ProxyProcess, filler: bytes) -> None:
    total = 400 * MIB
    block = filler * (MIB // len(filler))
    fds_before = proxy.open_fds()
    with attack_watch(proxy) as (_, good), \
            socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /%s/ HTTP/1.1\r\nHost: x\r\nX-Big: " % TOKEN.encode())
        sent = 0
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the proxy ends the connection
            while sent < total and time.monotonic() - started < 20:
                sock.sendall(block)
                sent += len(block)
        got = read_all(sock, 5)
    assert got.startswith(b"HTTP/1.1 431 "), got[:200]
    print(f"sent {sent / MIB:.0f} MiB of the head before the proxy ended it")
    assert sent < 64 * MIB, f"the proxy read {sent / MIB:.0f} MiB of one head"
    assert_good(good)
    assert_recovered(proxy, fds_before)


def test_a_million_pipelined_requests_never_read(proxy: ProxyProcess, stack: Stack) -> None:
    """The client writes a million requests and reads nothing: the proxy stops reading it
    (the requests wait in the kernel's buffers, not in the proxy) and its memory stays flat."""
    n = 1_000_000
    one = get(b"/", b"pipelined")
    batch = one * 1000
    deadline_seconds = 8.0
    fds_before = proxy.open_fds()
    before = len(stack.backend.requests("pipelined"))
    sent = 0
    with attack_watch(proxy) as (_, good), \
            socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.setblocking(False)
        started = time.monotonic()
        pending = memoryview(batch)
        batches = 0
        while batches < n // 1000 and time.monotonic() - started < deadline_seconds:
            _, writable, _ = select.select([], [sock], [], 0.1)
            if not writable:
                continue
            with contextlib.suppress(BlockingIOError):
                wrote = sock.send(pending)
                sent += wrote
                pending = pending[wrote:]
            if not pending:
                batches += 1
                pending = memoryview(batch)
    answered = len(stack.backend.requests("pipelined")) - before
    print(f"sent {sent // len(one)} of {n} requests in {deadline_seconds:.0f}s; "
          f"{answered} reached the backend")
    assert answered > 0
    assert sent < n * len(one), "the proxy read every request though none was answered"
    assert_good(good)
    assert_recovered(proxy, fds_before)

