"""sailplane/demo: a small session backend that shows what a backend sees and can do.

    GET  /             the files of its mounts (env MOUNTS, space-separated; default those of
                       /data /config /code /plane-data that exist), as HTML, and a chat
                       box on the WebSocket room
    GET  /counter      add one to the counter in $COUNTER_FILE (default /data/counter), return it
    GET  /headers      {"method", "path", "headers"} of this request, as JSON
    GET  /bytes?n=N    N bytes, streamed in chunks
    POST /echo         the request body, streamed back as it arrives
    POST /sink         {"bytes": length, "sha256": hex} of the request body, read as a stream
    GET  /ws           WebSocket: every message goes to every connected client (echo + chat)
    GET  /file/PATH    the file PATH under /config, else /data, else /code

It listens on $PORT (default 8080) and stops at once on SIGTERM.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import os
from pathlib import Path

from aiohttp import WSMsgType, web

CHUNK_BYTES = 64 * 1024
MAX_LISTED_FILES = 500  # per mount, so a huge directory cannot stall the page
FILE_ROOTS = (Path("/config"), Path("/data"), Path("/code"))
FILLER = bytes(range(256)) * (CHUNK_BYTES // 256)
# The room, from a browser; relative URLs, so it works behind the proxy's /{token}/ prefix.
CHAT = """<h2>room</h2><ul id=log></ul><form id=f><input id=m autofocus><button>send</button>
</form><script>
const url = new URL("ws", location.href); url.protocol = url.protocol.replace("http", "ws");
const ws = new WebSocket(url), log = document.getElementById("log");
ws.onmessage = e => { const li = document.createElement("li"); li.textContent = e.data;
  log.append(li); };
document.getElementById("f").onsubmit = e => { e.preventDefault();
  ws.send(document.getElementById("m").value); document.getElementById("m").value = ""; };
</script>"""


def mount_dirs() -> list[Path]:
    if "MOUNTS" in os.environ:
        return [Path(p) for p in os.environ["MOUNTS"].split()]
    candidates = ("/data", "/config", "/code", "/plane-data")
    return [p for p in map(Path, candidates) if p.is_dir()]


async def index(request: web.Request) -> web.Response:
    parts = ["<!doctype html><title>sailplane/demo</title><h1>sailplane/demo</h1>"]
    for mount in mount_dirs():
        files = sorted(str(p.relative_to(mount)) for p in mount.rglob("*") if p.is_file())
        items = "".join(f"<li>{html.escape(f)}</li>" for f in files[:MAX_LISTED_FILES])
        more = f"<p>and {len(files) - MAX_LISTED_FILES} more</p>" \
            if len(files) > MAX_LISTED_FILES else ""
        parts.append(f"<h2>{html.escape(str(mount))}</h2><ul>{items}</ul>{more}")
    parts.append(CHAT)
    return web.Response(text="".join(parts), content_type="text/html")


async def counter(request: web.Request) -> web.Response:
    path = Path(os.environ.get("COUNTER_FILE", "/data/counter"))
    async with request.app["counter_lock"]:
        try:
            value = int(path.read_text() or 0) + 1
        except FileNotFoundError:
            value = 1
        partial = path.with_name(path.name + ".partial")
        partial.write_text(str(value))
        partial.replace(path)  # a crash leaves the old value or the new one, never half
    return web.Response(text=f"{value}\n")


async def headers(request: web.Request) -> web.Response:
    seen: dict[str, str] = {}
    for name, value in request.headers.items():
        name = name.lower()
        seen[name] = f"{seen[name]}, {value}" if name in seen else value
    body = {"method": request.method, "path": request.path_qs, "headers": seen}
    return web.json_response(body)


async def send_bytes(request: web.Request) -> web.StreamResponse:
    left = int(request.query.get("n", "0"))
    response = web.StreamResponse(headers={"content-type": "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    while left > 0:
        chunk = FILLER[:left]
        await response.write(chunk)
        left -= len(chunk)
    await response.write_eof()
    return response


async def echo(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        await response.write(chunk)
    await response.write_eof()
    return response


async def sink(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        digest.update(chunk)
        length += len(chunk)
    return web.json_response({"bytes": length, "sha256": digest.hexdigest()})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    room: set[web.WebSocketResponse] = request.app["room"]
    room.add(socket)
    try:
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                await asyncio.gather(*(peer.send_str(message.data) for peer in list(room)),
                                     return_exceptions=True)
            elif message.type == WSMsgType.BINARY:
                await asyncio.gather(*(peer.send_bytes(message.data) for peer in list(room)),
                                     return_exceptions=True)
    finally:
        room.discard(socket)
    return socket


async def serve_file(request: web.Request) -> web.StreamResponse:
    wanted = request.match_info["path"]
    for root in FILE_ROOTS:
        path = (root / wanted).resolve()
        if path.is_relative_to(root) and path.is_file():  # no ../ out of the root
            return web.FileResponse(path)
    raise web.HTTPNotFound(text=json.dumps({"error": "no such file"}),
                           content_type="application/json")


def make_app() -> web.Application:
    app = web.Application()
    app["counter_lock"] = asyncio.Lock()
    app["room"] = set()
    app.router.add_get("/", index)
    app.router.add_get("/counter", counter)
    app.router.add_get("/headers", headers)
    app.router.add_get("/bytes", send_bytes)
    app.router.add_post("/echo", echo)
    app.router.add_post("/sink", sink)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/file/{path:.+}", serve_file)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), port=int(os.environ.get("PORT", "8080")), access_log=None,
                print=None)
