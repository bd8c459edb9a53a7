"""``POST /ctrl/connect`` to a live key, answered in front of the web framework.

An application connects on every page load, and nearly always to a key that is running. For
that answer the framework's request pipeline (resolving dependencies, the bearer scheme,
parsing and validating the body, validating the response) cost several times the rest of the
work. This ASGI middleware answers that one case itself, with the same pieces the route
uses: the same :class:`~sailplane.controller.auth.Guard` checks the credential and the
origin, the body is parsed as the route parses it (``json.loads``, then validated as
:class:`~sailplane.spec.ConnectRequest`, whole: a bad ``spawn_config`` is a 400 even for a
live key), :class:`~sailplane.controller.join_batch.JoinBatcher` joins the key's backend and
commits the token, and :class:`~sailplane.controller.models.ConnectResponse` is the body.

Everything else goes on to the route unchanged, which answers it as it always did: a refused
credential, a body that is not JSON or does not validate, a key that is not live (spawn,
wait, 404, 409), a database error in the batch. So the lane changes what an answer costs,
never which answer is given.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from sailplane.controller import auth
from sailplane.controller.auth import Guard, Refused
from sailplane.controller.join_batch import JoinBatcher, JoinFailed
from sailplane.controller.limits import replay
from sailplane.controller.models import ConnectResponse
from sailplane.spec import ConnectRequest

PATH = "/ctrl/connect"


class ConnectLane:
    """ASGI middleware answering ``POST /ctrl/connect`` for a live key; see the module."""

    def __init__(self, app: ASGIApp, guard: Guard, joins: JoinBatcher,
                 observe: Callable[[float], None]) -> None:
        self.app = app
        self.guard = guard
        self.joins = joins
        self.observe = observe  # the connect latency histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        response = await self._join(scope, body)
        if response is None:
            await self.app(scope, replay(body, receive), send)
            return
        content = response.model_dump_json().encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
        ]})
        await send({"type": "http.response.body", "body": content})
        self.observe(time.perf_counter() - started)

    async def _join(self, scope: Scope, body: bytes) -> ConnectResponse | None:
        """The answer for a live key, or None: the route is to answer."""
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:  # the first of each, as the route reads them
            if name in _HEADERS:
                headers.setdefault(name, value.decode("latin-1"))
        if not _json_content(headers.get(b"content-type")):
            return None
        try:
            self.guard.check(headers.get(b"authorization"), headers.get(b"origin"), auth.API,
                             PATH)
            request = ConnectRequest.model_validate(json.loads(body))
        except (Refused, ValueError, RecursionError, ValidationError):
            return None  # the route refuses it, with its own message
        if request.key is None:
            return None
        try:
            return await self.joins.join(request)
        except JoinFailed:  # logged by the batcher
            return None


_HEADERS = frozenset({b"authorization", b"origin", b"content-type"})


def _json_content(content_type: str | None) -> bool:
    """Whether the route reads the body as JSON: no content type, or a JSON one."""
    if content_type is None:
        return True
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/")
                                          and kind.endswith("+json"))
