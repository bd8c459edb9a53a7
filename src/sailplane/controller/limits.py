"""The request body limit: no HTTP request body over :data:`MAX_BODY_BYTES` is read.

A body announced too large (``Content-Length``) is answered 413 before it is read; one that
turns out too large while it streams in (chunked) is cut off at the limit and answered 413 the
same way, before the app reads any of it. The limit keeps every message derived from a
request (a spawn for a drone, a route for a proxy) far below the sockets' frame limit
(``protocol.MAX_FRAME_BYTES``).
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 256 * 1024


class BodyLimit:
    """ASGI middleware answering 413 ``body_too_large`` for a body over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(send)
                return
        # Read the body up to the limit before the app sees any of it (the framework would
        # turn an error raised mid-read into a 400), then hand it over whole.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replay(b"".join(chunks), receive), send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": {
            "code": "body_too_large",
            "message": f"the request body is over the limit of {self.max_bytes} bytes "
                       "(MAX_BODY_BYTES)",
            "limit": self.max_bytes,
        }}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]})
        await send({"type": "http.response.body", "body": body})


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (read already) as one message, then defers to
    ``receive`` (a disconnect, when it comes)."""
    replayed = False

    async def again() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again
