"""Every message between the controller and its drones and proxies, one union per direction.

A drone holds one WebSocket to a controller (``/ctrl/drone-socket``); each frame is one JSON
object with a ``type``. Delivery is at-least-once both ways and both ends are idempotent:

* drone -> controller: ``hello`` once, then ``heartbeat``s, ``backend_event``s in outbox order
  (each acknowledged by an ``event_ack`` carrying its ``seq``; unacknowledged ones are sent
  again after a reconnect), and ``action_ack``s.
* controller -> drone: ``spawn`` and ``terminate`` actions (each with an ``action_id``, sent
  again until acknowledged), ``event_ack``s, and a ``lease_renewal`` answering each heartbeat.
* hot-plug: ``add_mount`` / ``remove_mount`` (controller -> drone), each answered by one
  ``mount_result`` with its ``request_id``; sent once, for an HTTP caller who waits.

No frame may exceed :data:`MAX_FRAME_BYTES` (the WebSocket libraries' default limit at both
ends): the API refuses at its door whatever could make a bigger one, and the controller checks
every action before sending it. An action the drone cannot take is answered with an
``action_refused``, never resent forever.

Leases: each heartbeat lists the backends the drone runs; the ``lease_renewal`` answer extends
the key leases of those the controller still counts as live and *revokes* the others, which the
drone kills at once. A drone that hears no renewal stops its backends itself before the leases
it holds run out (``sailplane.drone.leases``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

from sailplane.mounts.hot_plug import MountInfo
from sailplane.mounts.policy import Access
from sailplane.names import BackendId
from sailplane.spec import ExecutorConfig, KeyConfig, VolumeMount
from sailplane.state import BackendState, TerminationReason

PROTOCOL_VERSION = "1"
# The largest frame either end sends or accepts (the ``websockets`` default ``max_size``).
MAX_FRAME_BYTES = 1 << 20


class SpawnBackend(BaseModel):
    """Controller -> drone: start this backend (its mounts are checked again on the drone)."""

    type: Literal["spawn"] = "spawn"
    action_id: int = 0
    backend_id: BackendId
    key: KeyConfig
    executable: ExecutorConfig
    secret_token: str
    # Grows each time the key is taken again; reaches the backend as SAILPLANE_FENCING_TOKEN
    # so it can refuse writes from an older holder of its key.
    fencing_token: int = 0


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


class LeaseRenewal(BaseModel):
    """Controller -> drone, the answer to a heartbeat (``time`` echoes it): the leases of the
    listed live backends now run ``lease_ms`` from the heartbeat; ``revoked`` are backends the
    drone listed that the controller counts as terminated (or never knew): kill them now."""

    type: Literal["lease_renewal"] = "lease_renewal"
    time: int
    lease_ms: int
    revoked: list[str] = Field(default_factory=list)


class DroneRefused(BaseModel):
    """Controller -> drone, then the socket closes: this drone may not register (its id is
    live elsewhere). The drone exits with ``message`` instead of reconnecting."""

    type: Literal["drone_refused"] = "drone_refused"
    code: str
    message: str


class AddMount(BaseModel):
    """Controller -> drone: hot-plug ``mount`` into the running backend (``drone.hot_plug``).

    Not an action: an HTTP caller waits for the answer, so it is sent once, never stored or
    resent; the drone answers with a ``mount_result`` carrying the same ``request_id``."""

    type: Literal["add_mount"] = "add_mount"
    request_id: str
    backend_id: BackendId
    mount: VolumeMount


class RemoveMount(BaseModel):
    """Controller -> drone: take the mount at ``target`` out of the running backend; answered
    like :class:`AddMount`."""

    type: Literal["remove_mount"] = "remove_mount"
    request_id: str
    backend_id: BackendId
    target: str = Field(max_length=4096)


MessageToDrone = Annotated[
    SpawnBackend | TerminateBackend | EventAck | LeaseRenewal | DroneRefused | AddMount
    | RemoveMount,
    Field(discriminator="type"),
]


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
    # Names this drone's state (its directory): the same id with another instance while the
    # first is live is a second drone taking the first one's name, and is refused.
    instance: str = ""


class Heartbeat(BaseModel):
    type: Literal["heartbeat"] = "heartbeat"
    time: int
    live: list[str] | None = None  # the backends the drone runs (None: an older drone)


class BackendEvent(BaseModel):
    type: Literal["backend_event"] = "backend_event"
    seq: int
    backend_id: str
    state: BackendState
    address: str | None = None  # host:port, with the ``ready`` event


class ActionAck(BaseModel):
    type: Literal["action_ack"] = "action_ack"
    action_id: int


class ActionRefused(BaseModel):
    """Drone -> controller: the drone cannot take this action (it does not parse, or the
    executor refused it). For a spawn, nothing of the backend exists on the drone, and the
    controller ends it ``terminated (error)`` with ``message``; either way it is acknowledged."""

    type: Literal["action_refused"] = "action_refused"
    action_id: int
    message: str


class MountChangeError(BaseModel):
    """Why a hot-plug change was refused: a stable code, the field it concerns, the reason."""

    code: str
    message: str
    field: str | None = None


class MountResult(BaseModel):
    """Drone -> controller, the answer to an ``add_mount`` or ``remove_mount``: the backend's
    mounts after the change, or the error (then nothing changed)."""

    type: Literal["mount_result"] = "mount_result"
    request_id: str
    mounts: list[MountInfo] = Field(default_factory=list)
    error: MountChangeError | None = None


MessageFromDrone = Annotated[
    Hello | Heartbeat | BackendEvent | ActionAck | ActionRefused | MountResult,
    Field(discriminator="type"),
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
