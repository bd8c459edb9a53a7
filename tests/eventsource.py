"""A test double of a browser's ``EventSource``: the event-stream parsing of the HTML standard
(section 9.2.6, "Interpreting an event stream"), so tests see what ``onmessage`` would see."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class MessageEvent:
    type: str  # "message" unless the stream named it; onmessage sees only "message"
    data: str
    last_event_id: str


def parse(stream: str, last_event_id: str = "") -> list[MessageEvent]:
    """Every event a browser dispatches for ``stream``, in order."""
    dispatched: list[MessageEvent] = []
    data: list[str] = []
    kind = ""
    for line in re.split(r"\r\n|\r|\n", stream):
        if line == "":  # dispatch
            if data:
                dispatched.append(MessageEvent(kind or "message", "\n".join(data),
                                               last_event_id))
            data, kind = [], ""
            continue
        if line.startswith(":"):
            continue  # a comment (keep-alive)
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            kind = value
        elif field == "id" and "\0" not in value:
            last_event_id = value
    return dispatched  # an event without its blank line at the end is dropped


def on_message(stream: str, last_event_id: str = "") -> list[MessageEvent]:
    """The events an ``EventSource.onmessage`` handler receives."""
    return [event for event in parse(stream, last_event_id) if event.type == "message"]
