"""Every message between the controller and its drones and proxies, one union per direction.

A drone holds one WebSocket to a controller (``/ctrl/drone-socket``); each frame is one JSON
object with a ``type``. Delivery is at-least-once both ways and both ends are idempotent:

* drone -> controller: ``hello`` once, then ``heartbeat``s, ``backend_event``s in outbox order
  (each acknowledged by an ``event_ack`` carrying its ``seq``; unacknowledged ones are sent
  again after a reconnect), and ``action_ack``s.
* controller -> drone: ``spawn`` and ``terminate`` actions (each with an ``action_id``, sent
  again until acknowledged), and ``event_ack``s.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

from sailplane.mounts.policy import Access
from sailplane.names import BackendId
from sailplane.spec import ExecutorConfig, KeyConfig
from sailplane.state import BackendState, TerminationReason

PROTOCOL_VERSION = "1"


class SpawnBackend(BaseModel):
    """Controller -> drone: start this backend (its mounts are checked again on the drone)."""

    type: Literal["spawn"] = "spawn"
    action_id: int = 0
    backend_id: BackendId
    key: KeyConfig
    executable: ExecutorConfig
    secret_token: str


class TerminateBackend(BaseModel):
    type: Literal["terminate"] = "terminate"
    action_id: int = 0
    backend_id: BackendId
    hard: bool
    reason: TerminationReason


class EventAck(BaseModel):
    """Controller -> drone: every event up to ``seq`` is stored; drop them from the outbox."""

    type: Literal["event_ack"] = "event_ack"
    seq: int


MessageToDrone = Annotated[SpawnBackend | TerminateBackend | EventAck, Field(discriminator="type")]


class HostVolumeOffer(BaseModel):
    """What a drone advertises of one host volume: its name and access, never its path."""

    name: str
    access: Access
    namespaces: list[str] | None = None


class Hello(BaseModel):
    type: Literal["hello"] = "hello"
    drone_id: str
    pool: str = ""
    runtime: str
    host_volumes: list[HostVolumeOffer]
    version: str = PROTOCOL_VERSION


class Heartbeat(BaseModel):
    type: Literal["heartbeat"] = "heartbeat"
    time: int


class BackendEvent(BaseModel):
    type: Literal["backend_event"] = "backend_event"
    seq: int
    backend_id: str
    state: BackendState
    address: str | None = None  # host:port, with the ``ready`` event


class ActionAck(BaseModel):
    type: Literal["action_ack"] = "action_ack"
    action_id: int


MessageFromDrone = Annotated[
    Hello | Heartbeat | BackendEvent | ActionAck, Field(discriminator="type")
]

to_drone: TypeAdapter[MessageToDrone] = TypeAdapter(MessageToDrone)
from_drone: TypeAdapter[MessageFromDrone] = TypeAdapter(MessageFromDrone)


# -- proxy <-> controller (``/ctrl/proxy-socket``) ------------------------------------------


class RouteRequest(BaseModel):
    """Proxy -> controller: where does this token lead?"""

    type: Literal["route_request"] = "route_request"
    token: str


class ConnectionReport(BaseModel):
    """Proxy -> controller: live connections per backend, sent every second while there is
    any activity. A backend that had connections only between two reports is listed with 0,
    and so is one whose count dropped to 0 since the last report (once), so idle time starts
    when its last connection closed (``proxy.counts``)."""

    type: Literal["connection_report"] = "connection_report"
    counts: dict[str, int]


class RouteInfo(BaseModel):
    """Controller -> proxy: the answer to a ``route_request``; ``address`` None if unknown."""

    type: Literal["route_info"] = "route_info"
    token: str
    backend_id: str | None = None
    address: str | None = None  # host:port of a ready backend
    username: str | None = None
    user_data: str = "{}"  # the connect's ``auth``, as JSON
    secret: str | None = None


class RouteGone(BaseModel):
    """Controller -> proxy: the backend left ``ready``; forget every route to it."""

    type: Literal["route_gone"] = "route_gone"
    backend_id: str


MessageFromProxy = Annotated[RouteRequest | ConnectionReport, Field(discriminator="type")]
MessageToProxy = Annotated[RouteInfo | RouteGone, Field(discriminator="type")]

from_proxy: TypeAdapter[MessageFromProxy] = TypeAdapter(MessageFromProxy)
to_proxy: TypeAdapter[MessageToProxy] = TypeAdapter(MessageToProxy)
