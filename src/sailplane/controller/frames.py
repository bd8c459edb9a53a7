"""Reading a peer's frames on the controller's sockets without letting one bad frame end
the link: a binary frame, which no drone or proxy sends, reads as None."""

from __future__ import annotations

from starlette.websockets import WebSocket, WebSocketDisconnect


async def receive_text(websocket: WebSocket) -> str | None:
    """The next text frame; None for a binary one. Raises WebSocketDisconnect at the end."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    text = message.get("text")
    return text if isinstance(text, str) else None
