"""``run_proxy``: the proxy's processes, each with its own controller link, on one port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing

from pydantic import BaseModel

from sailplane.proxy.link import ControllerLink
from sailplane.proxy.server import Proxy, listening_socket, serve

log = logging.getLogger(__name__)


class ProxyConfig(BaseModel):
    controller_url: str = "http://127.0.0.1:9090"
    host: str = "127.0.0.1"
    port: int = 9091
    workers: int = 1
    ctrl_token: str | None = None


async def run_proxy(config: ProxyConfig) -> None:
    """Serve until cancelled, in this process (one worker)."""
    link = ControllerLink(config.controller_url, config.ctrl_token)
    proxy = Proxy(link.routes, link.counts)
    sock = listening_socket(config.host, config.port, reuse_port=config.workers > 1)
    server = await serve(proxy, sock)
    log.info("proxy listening on http://%s:%d", config.host, config.port)
    try:
        await link.run()
    finally:
        server.close()


def _worker(config: ProxyConfig) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        run_in_loop(config)


def run_in_loop(config: ProxyConfig) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works
        asyncio.run(run_proxy(config))
    else:
        uvloop.run(run_proxy(config))


def run_workers(config: ProxyConfig) -> None:
    """``workers`` processes share the port with SO_REUSEPORT; the kernel spreads clients."""
    children = [multiprocessing.Process(target=_worker, args=(config,), daemon=True)
                for _ in range(config.workers - 1)]
    for child in children:
        child.start()
    try:
        _worker(config)
    finally:
        for child in children:
            child.terminate()
