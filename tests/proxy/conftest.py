"""Fixtures of the hostile-client suite: one backend and stand-in controller per session,
one proxy per test module (see ``harness``). No Docker."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.proxy.harness import TOKEN, Backend, Controller, Loop, ProxyProcess

# Short timeouts, so that the timeout tests run in seconds; every other test is far quicker.
HEAD_TIMEOUT = 3.0
IDLE_TIMEOUT = 3.0
BODY_TIMEOUT = 2.0
PROXY_OPTIONS = ("--head-timeout", str(HEAD_TIMEOUT), "--idle-timeout", str(IDLE_TIMEOUT),
                 "--body-timeout", str(BODY_TIMEOUT))


@dataclass
class Stack:
    loop: Loop
    backend: Backend
    controller: Controller


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # The load tests open a few thousand sockets from this process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    loop = Loop()
    backend, controller = Backend(), Controller()
    servers = [loop.run(backend.start()), loop.run(controller.start())]
    controller.route(TOKEN, backend.port)
    controller.route("t-li", backend.port, username="李四")
    controller.route("t-wang", backend.port, username="王五")
    try:
        yield Stack(loop, backend, controller)
    finally:
        for server in servers:
            server.close()
        loop.stop()


@pytest.fixture(scope="module")
def proxy(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    started = ProxyProcess(stack.controller.port, tmp_path_factory.mktemp("proxy") / "proxy.log",
                           *PROXY_OPTIONS)
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()
