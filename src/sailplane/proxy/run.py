"""``run_proxy``: the proxy's processes, each with its own controller link, on one port."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import signal

from pydantic import BaseModel, Field

from sailplane.proxy.limits import ProxyLimits, fit_fd_limit
from sailplane.proxy.link import ControllerLink
from sailplane.proxy.routes import STALE_ROUTE_SECONDS
from sailplane.proxy.server import Proxy, listening_socket, serve

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class ProxyConfig(BaseModel):
    controller_url: str = "http://127.0.0.1:9090"
    host: str = "127.0.0.1"
    port: int = 9091
    workers: int = 1
    ctrl_token: str | None = None
    limits: ProxyLimits = ProxyLimits()
    # How long a route is served without the controller's confirmation (its link is down).
    stale_route_seconds: float = Field(STALE_ROUTE_SECONDS, gt=0)


async def run_proxy(config: ProxyConfig) -> None:
    """Serve until cancelled, in this process (one worker)."""
    link = ControllerLink(config.controller_url, config.ctrl_token, config.stale_route_seconds)
    proxy = Proxy(link.routes, link.counts, fit_fd_limit(config.limits))
    sock = listening_socket(config.host, config.port, reuse_port=config.workers > 1)
    server = await serve(proxy, sock)
    log.info("proxy listening on http://%s:%d", config.host, config.port)
    try:
        await link.run()
    finally:
        server.close()


async def _until_terminated(config: ProxyConfig) -> None:
    """``run_proxy`` until SIGTERM. The signal is taken by the loop, between callbacks: an
    exception raised by a plain signal handler could land inside a protocol's callback,
    where the loop would log it as that connection's error and go on serving."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await run_proxy(config)


def _worker(config: ProxyConfig) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        run_in_loop(config)


def run_in_loop(config: ProxyConfig) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works
        asyncio.run(_until_terminated(config))
    else:
        uvloop.run(_until_terminated(config))


def _child_worker(config: ProxyConfig) -> None:
    # A worker must not outlive the first process, however that one ends (even SIGKILL).
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    _worker(config)


def run_workers(config: ProxyConfig) -> None:
    """``workers`` processes share the port with SO_REUSEPORT; the kernel spreads clients."""
    children = [multiprocessing.Process(target=_child_worker, args=(config,), daemon=True)
                for _ in range(config.workers - 1)]
    for child in children:
        child.start()
    # SIGTERM ends the first process's loop, and its `finally` stops the others.
    try:
        _worker(config)
    finally:
        for child in children:
            child.terminate()
            child.join(5)
