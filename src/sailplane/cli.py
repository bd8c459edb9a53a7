"""The ``sailplane`` command: verbs -> config -> the function that does the work."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

from sailplane import __version__
from sailplane.client import ApiError, ControllerClient, find_token
from sailplane.credentials import CredentialError, Role
from sailplane.drone.limits import OperatorLimits
from sailplane.drone.warm_pool import WarmPoolSpec
from sailplane.errors import MountRefused, PolicyError, RuntimeFailure, SailplaneError
from sailplane.mounts.named import runtime_name
from sailplane.mounts.pin import StagingArea, staging_root
from sailplane.mounts.policy import MountPolicy, Platform
from sailplane.mounts.report import plan_document
from sailplane.mounts.validate import check_volume_name
from sailplane.proxy import limits as proxy_limits
from sailplane.proxy.routes import STALE_ROUTE_SECONDS
from sailplane.runtime.base import RUNTIMES, NamedVolume, Runtime, RuntimeName
from sailplane.runtime.containerd.network import DEFAULT_SUBNET
from sailplane.state import BackendStatus
from sailplane.timing import DEFAULT_GRACE_SECONDS, DEFAULT_STARTUP_TIMEOUT_SECONDS
from sailplane.volume_flags import parse_volume_flag

DEFAULT_CONTROLLER = "http://127.0.0.1:9090"

# Plain help text: no Rich markup (a `[/SUB]` in a help text is not a tag) and no traceback
# panels; an error is one line, and --debug adds the traceback.
_PLAIN: dict[str, Any] = {"rich_markup_mode": None, "pretty_exceptions_enable": False}
app = typer.Typer(no_args_is_help=True, help="Sailplane: session backends with secure mounts.",
                  **_PLAIN)
mounts_app = typer.Typer(
    no_args_is_help=True, help="Plan mounts (a dry run), and add or remove mounts of running "
    "backends.", **_PLAIN,
)
app.add_typer(mounts_app, name="mounts")
volumes_app = typer.Typer(
    no_args_is_help=True, help="Named volumes Sailplane created on this machine's engine.",
    **_PLAIN,
)
app.add_typer(volumes_app, name="volumes")
credentials_app = typer.Typer(
    no_args_is_help=True, help="Controller secrets and per-role credentials (docs/security.md).",
    **_PLAIN,
)
app.add_typer(credentials_app, name="credentials")
drones_app = typer.Typer(
    help="List drones (no subcommand), or drain and undrain one.", **_PLAIN,
)
app.add_typer(drones_app, name="drones")
_debug = False  # --debug: a failure prints its traceback too


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"sailplane {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", envvar="SAILPLANE_DEBUG",
                                        help="Print the traceback of a failure, and debug logs.")]
    = False,
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Sailplane: session backends with secure mounts."""
    global _debug
    _debug = debug

# Plane's CLI (`plane admin connect`) gives a spawn 500 s of idle time unless told otherwise.
CONNECT_MAX_IDLE_SECONDS = 500
DefaultMaxIdle = Annotated[
    int | None, typer.Option(min=0, help="Idle limit (seconds) of a spawn whose request gives "
                                         "none; unset or 0: no limit, as in Plane's API.")
]
MountBase = Annotated[
    str | None, typer.Option(help="Directory of the host volume 'default' (Plane's mount).")
]
HostVolumeFlags = Annotated[
    list[str] | None,
    typer.Option("--host-volume", help="NAME=PATH[:ro|:rw][:key], repeatable; ro if not "
                 "given; :key roots every grant at the key's own directory."),
]
PolicyFile = Annotated[
    Path | None, typer.Option("--policy", help="TOML policy file with host volumes.")
]
RuntimeOption = Annotated[
    str, typer.Option("--runtime", help="Container runtime: docker or containerd.")
]
ContainerdAddress = Annotated[
    str | None,
    typer.Option(help="containerd socket (containerd runtime); default: Docker's containerd "
                      "under /run/docker if there, else /run/containerd/containerd.sock."),
]
ContainerdNamespace = Annotated[
    str, typer.Option(help="containerd namespace for the backends (containerd runtime).")
]
ContainerdSubnet = Annotated[
    str, typer.Option(help="Addresses of the containerd backends' bridge (containerd runtime).")
]
WarmPools = Annotated[
    list[str] | None,
    typer.Option("--warm-pool", help="IMAGE or IMAGE=N, repeatable: keep N (default 2) "
                 "containers of IMAGE started, claimed by matching spawns (docker runtime)."),
]
EgressAllow = Annotated[
    list[str] | None,
    typer.Option("--egress-allow", help="CIDR, repeatable: a private network backends may "
                 "reach (they reach no private range, no address of this host, else)."),
]
# The operator's caps (sailplane.drone.limits); absent: the default, 0: no cap.
MaxTmpfsBytes = Annotated[
    int | None, typer.Option(min=0, help="Largest tmpfs one mount may ask for (default: a "
                                         "quarter of this machine's memory; 0: no cap).")
]
DefaultMemoryBytes = Annotated[
    int | None, typer.Option(min=0, help="Each backend's memory limit, which a request may "
                                         "lower but not raise (default: 512 MiB; 0: none).")
]
DefaultPidsLimit = Annotated[
    int | None, typer.Option(min=0, help="Each backend's pids limit, which a request may "
                                         "lower but not raise (default: 512; 0: none).")
]
NamedVolumesFlag = Annotated[
    bool, typer.Option("--named-volumes/--no-named-volumes",
                       help="Allow named volumes (each scoped to the key's namespace).")
]
MaxNamedVolumes = Annotated[
    int | None, typer.Option("--max-named-volumes-per-namespace", min=0, metavar="N",
                             help="Most named volumes one namespace may hold; no cap if unset.")
]

# The proxy's limits against hostile clients (sailplane.proxy.limits, docs/proxy.md).
MaxHeaderBytes = Annotated[
    int, typer.Option(min=1024, help="Largest request head in bytes; beyond: 431.")
]
MaxHeaders = Annotated[int, typer.Option(min=8, help="Most header lines a request may have.")]
MaxPipelined = Annotated[
    int, typer.Option(min=1, help="Requests read ahead on a connection before it waits.")
]
MaxConnections = Annotated[
    int, typer.Option(min=1, help="Open client connections; beyond: 503 and close.")
]
HeadTimeout = Annotated[
    float, typer.Option(min=0.01, help="Seconds a request head may take; beyond: 408.")
]
IdleTimeout = Annotated[
    float, typer.Option(min=0.01, help="Seconds a keep-alive connection may idle.")
]
BodyTimeout = Annotated[
    float, typer.Option(min=0.01, help="Seconds a body may stall (either direction).")
]


def _emit(document: dict[str, Any], status: int) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    raise typer.Exit(status)


def load_policy(
    mount_base: str | None, host_volumes: list[str] | None, policy_file: Path | None,
    platform: Platform = "posix", *, named_volumes: bool = True,
    max_named_volumes_per_namespace: int | None = None,
) -> MountPolicy:
    """The drone's mount policy from its flags, or from a TOML file (not both); the named
    volume switch and cap come from flags either way."""
    if policy_file is not None:
        if mount_base or host_volumes:
            raise PolicyError("give either --policy or --mount-base/--host-volume, not both")
        policy = MountPolicy.from_toml(policy_file)
    else:
        policy = MountPolicy.from_flags(mount_base, host_volumes or (), platform)
    return policy.model_copy(update={
        "named_volumes": named_volumes,
        "max_named_volumes_per_namespace": max_named_volumes_per_namespace,
    })


@mounts_app.command("plan")
def mounts_plan(
    file: Annotated[str, typer.Argument(help="JSON executable or connect request; - for stdin")],
    mount_base: MountBase = None,
    host_volume: HostVolumeFlags = None,
    policy: PolicyFile = None,
    key: Annotated[str | None, typer.Option(help="Key name for {key} templates.")] = None,
    namespace: Annotated[str | None, typer.Option(help="Namespace for {namespace}.")] = None,
    backend: Annotated[
        str, typer.Option(help="Backend id for {backend} and the staging paths.")
    ] = "BACKEND",
    state_dir: Annotated[
        Path, typer.Option(help="The drone's state directory (staging paths are under it).")
    ] = Path(".sailplane/drone"),
    apply: Annotated[bool, typer.Option(help="Create missing directories as a drone would.")]
    = False,
    platform: Annotated[str, typer.Option(help="posix or windows host paths.")] = "posix",
    volume_root: Annotated[
        str | None, typer.Option(help="Where named volumes live in the plan's containerd "
                                      "paths; default: STATE_DIR/volumes, as a containerd "
                                      "drone keeps them (Docker keeps its own).")
    ] = None,
    max_tmpfs_bytes: MaxTmpfsBytes = None,
    named_volumes: NamedVolumesFlag = True,
    max_named_volumes_per_namespace: MaxNamedVolumes = None,
) -> None:
    """Print, as JSON, what a drone with this policy would mount, or why it refuses."""
    if platform not in ("posix", "windows"):
        _emit({"error": {"code": "bad_policy", "message": "--platform: posix or windows"}}, 2)
    try:
        mount_policy = load_policy(
            mount_base, host_volume, policy, "windows" if platform == "windows" else "posix",
            named_volumes=named_volumes,
            max_named_volumes_per_namespace=max_named_volumes_per_namespace,
        )
    except PolicyError as exc:
        _emit({"error": {"code": exc.code, "message": exc.message}}, 2)
    mount_policy = OperatorLimits.from_flags(max_tmpfs_bytes).cap_policy(mount_policy)
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except OSError as exc:
        _emit({"error": {"code": "invalid_request", "message": f"{file}: {exc.strerror}"}}, 2)
    status, document = plan_document(
        text, mount_policy, key=key, namespace=namespace, backend=backend, apply=apply,
        staging=StagingArea(staging_root(state_dir)),
        volume_root=volume_root or str(state_dir.absolute() / "volumes"),
    )
    _emit(document, status)


@app.command()
def controller(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9090,
    database_url: Annotated[
        str, typer.Option(help="sqlite:///PATH or postgresql://...")
    ] = "sqlite:///.sailplane/controller.db",
    proxy_url: Annotated[str, typer.Option(help="Public URL of the proxy.")]
    = "http://127.0.0.1:9091",
    controller_url: Annotated[
        str | None, typer.Option(help="Public URL of this controller (status URLs).")
    ] = None,
    secret_file: Annotated[
        Path | None, typer.Option(envvar="SAILPLANE_SECRET_FILE",
                                  help="File of the secret(s) that sign credentials; else env "
                                       "SAILPLANE_SECRET.")
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="Check no credential at all (never on a shared network).")
    ] = False,
    open_metrics: Annotated[bool, typer.Option(help="Serve /metrics without a credential.")]
    = False,
    allowed_origin: Annotated[
        list[str] | None,
        typer.Option(help="A browser origin (scheme://host[:port]) allowed to call /ctrl; "
                          "repeatable. Requests from any other Origin are refused."),
    ] = None,
    default_max_idle_seconds: DefaultMaxIdle = None,
) -> None:
    """Run a controller: the HTTP API, scheduling and deadlines."""
    from sailplane.controller.config import ControllerConfig
    from sailplane.controller.run import run_controller
    from sailplane.credentials import secrets_from

    _logging()
    _old_token_env()
    try:
        secret_list = secrets_from(secret_file, "SAILPLANE_SECRET")
    except CredentialError as exc:
        _fail(exc.message)
    if not secret_list and not insecure:
        _fail("the controller needs credentials: --secret-file FILE or env SAILPLANE_SECRET "
              "(make one with `sailplane credentials secret --out FILE`), or --insecure")
    if secret_list and insecure:
        _fail("--insecure and a secret contradict each other; give one")
    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    config = ControllerConfig(
        database_url=database_url, proxy_url=proxy_url, secrets=secret_list, insecure=insecure,
        open_metrics=open_metrics, allowed_origins=allowed_origin or [],
        controller_url=controller_url or f"http://{host}:{port}",
        default_max_idle_seconds=default_max_idle_seconds or None,
    )
    _check_port(host, port, "--port")
    _serve("the controller", lambda: asyncio.run(run_controller(config, host, port)))


@app.command()
def drone(
    controller: Annotated[str, typer.Option(help="Controller URL.")] = "http://127.0.0.1:9090",
    drone_id: Annotated[
        str | None, typer.Option(help="Defaults to the one its credential names, else the host "
                                      "name.")
    ] = None,
    pool: Annotated[str, typer.Option(help="Pool this drone serves.")] = "",
    mount_base: MountBase = None,
    host_volume: HostVolumeFlags = None,
    policy: PolicyFile = None,
    state_dir: Annotated[Path, typer.Option(help="Where the drone keeps its state.")]
    = Path(".sailplane/drone"),
    grace_seconds: Annotated[float, typer.Option(help="SIGTERM -> SIGKILL grace.")]
    = DEFAULT_GRACE_SECONDS,
    startup_timeout: Annotated[float, typer.Option(help="Seconds until the port answers.")]
    = DEFAULT_STARTUP_TIMEOUT_SECONDS,
    keep_containers: Annotated[bool, typer.Option(help="Keep stopped containers.")] = False,
    token_file: Annotated[
        Path | None, typer.Option(envvar="SAILPLANE_DRONE_TOKEN_FILE",
                                  help="The drone's credential; else env SAILPLANE_DRONE_TOKEN.")
    ] = None,
    runtime: RuntimeOption = "docker",
    containerd_address: ContainerdAddress = None,
    containerd_namespace: ContainerdNamespace = "sailplane",
    containerd_subnet: ContainerdSubnet = DEFAULT_SUBNET,
    egress_allow: EgressAllow = None,
    warm_pool: WarmPools = None,
    named_volumes: NamedVolumesFlag = True,
    max_named_volumes_per_namespace: MaxNamedVolumes = None,
    max_tmpfs_bytes: MaxTmpfsBytes = None,
    default_memory_bytes: DefaultMemoryBytes = None,
    default_pids_limit: DefaultPidsLimit = None,
) -> None:
    """Run a drone: start backends on this machine's Docker engine or containerd."""
    from sailplane.drone.config import DroneConfig, run_drone
    from sailplane.drone.executor import ExecutorSettings

    _logging()
    _old_token_env()
    runtime_name = _runtime_name(runtime)
    try:
        mount_policy = load_policy(
            mount_base, host_volume, policy, named_volumes=named_volumes,
            max_named_volumes_per_namespace=max_named_volumes_per_namespace,
        )
    except PolicyError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    token = _component_token(token_file, "SAILPLANE_DRONE_TOKEN", Role.DRONE)
    named = _token_subject(token)
    if drone_id and named and drone_id != named:
        _fail(f"--drone-id {drone_id!r}: the credential is for drone {named!r}")
    limits = OperatorLimits.from_flags(max_tmpfs_bytes, default_memory_bytes, default_pids_limit)
    config = DroneConfig(
        drone_id=drone_id or named or socket.gethostname(), controller_url=controller, pool=pool,
        policy=limits.cap_policy(mount_policy), state_dir=state_dir, token=token,
        runtime=runtime_name, containerd_address=containerd_address,
        containerd_namespace=containerd_namespace, containerd_subnet=containerd_subnet,
        egress_allow=tuple(egress_allow or ()),
        settings=ExecutorSettings(grace_seconds=grace_seconds,
                                  startup_timeout_seconds=startup_timeout,
                                  keep_containers=keep_containers, limits=limits,
                                  warm_pools=_warm_pools(warm_pool)),
    )
    _serve("the drone", lambda: asyncio.run(run_drone(config)))


@app.command()
def proxy(
    controller: Annotated[str, typer.Option(help="Controller URL.")] = "http://127.0.0.1:9090",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9091,
    workers: Annotated[int, typer.Option(min=1, help="Processes sharing the port.")] = 1,
    token_file: Annotated[
        Path | None, typer.Option(envvar="SAILPLANE_PROXY_TOKEN_FILE",
                                  help="The proxy's credential; else env SAILPLANE_PROXY_TOKEN.")
    ] = None,
    max_header_bytes: MaxHeaderBytes = proxy_limits.MAX_HEADER_BYTES,
    max_headers: MaxHeaders = proxy_limits.MAX_HEADERS,
    max_pipelined: MaxPipelined = proxy_limits.MAX_PIPELINED,
    max_connections: MaxConnections = proxy_limits.MAX_CONNECTIONS,
    head_timeout: HeadTimeout = proxy_limits.HEAD_TIMEOUT_SECONDS,
    idle_timeout: IdleTimeout = proxy_limits.IDLE_TIMEOUT_SECONDS,
    body_timeout: BodyTimeout = proxy_limits.BODY_TIMEOUT_SECONDS,
    stale_route_seconds: Annotated[
        float, typer.Option(min=0.01, help="Seconds a cached route is served while the "
                            "controller cannot confirm it (its link is down).")
    ] = STALE_ROUTE_SECONDS,
) -> None:
    """Run a proxy: route http://HOST:PORT/{token}/... to the token's backend."""
    from sailplane.proxy.run import ProxyConfig, run_workers

    _logging()
    _old_token_env()
    token = _component_token(token_file, "SAILPLANE_PROXY_TOKEN", Role.PROXY)
    limits = proxy_limits.ProxyLimits(
        max_header_bytes=max_header_bytes, max_headers=max_headers, max_pipelined=max_pipelined,
        max_connections=max_connections, head_timeout=head_timeout, idle_timeout=idle_timeout,
        body_timeout=body_timeout)
    _check_port(host, port, "--port", reuse_port=workers > 1)
    _serve("the proxy", lambda: run_workers(ProxyConfig(
        controller_url=controller, host=host, port=port, workers=workers, ctrl_token=token,
        limits=limits, stale_route_seconds=stale_route_seconds)))


@app.command()
def dev(
    controller_port: Annotated[int, typer.Option(help="Controller API port.")] = 9090,
    proxy_port: Annotated[int, typer.Option(help="Proxy port.")] = 9091,
    data_dir: Annotated[Path, typer.Option(help="SQLite, drone state, default volume.")]
    = Path(".sailplane"),
    mount_base: Annotated[
        Path | None, typer.Option(help="Host volume 'default'; {data-dir}/volumes/default.")
    ] = None,
    host_volume: HostVolumeFlags = None,
    runtime: RuntimeOption = "docker",
    containerd_address: ContainerdAddress = None,
    containerd_namespace: ContainerdNamespace = "sailplane",
    containerd_subnet: ContainerdSubnet = DEFAULT_SUBNET,
    egress_allow: EgressAllow = None,
    warm_pool: WarmPools = None,
    drone_id: Annotated[
        str | None,
        typer.Option(help="The built-in drone's id (default: dev- and a hash of the data dir)."),
    ] = None,
    default_max_idle_seconds: DefaultMaxIdle = None,
    named_volumes: NamedVolumesFlag = True,
    max_named_volumes_per_namespace: MaxNamedVolumes = None,
    max_tmpfs_bytes: MaxTmpfsBytes = None,
    default_memory_bytes: DefaultMemoryBytes = None,
    default_pids_limit: DefaultPidsLimit = None,
    max_header_bytes: MaxHeaderBytes = proxy_limits.MAX_HEADER_BYTES,
    max_headers: MaxHeaders = proxy_limits.MAX_HEADERS,
    max_pipelined: MaxPipelined = proxy_limits.MAX_PIPELINED,
    max_connections: MaxConnections = proxy_limits.MAX_CONNECTIONS,
    head_timeout: HeadTimeout = proxy_limits.HEAD_TIMEOUT_SECONDS,
    idle_timeout: IdleTimeout = proxy_limits.IDLE_TIMEOUT_SECONDS,
    body_timeout: BodyTimeout = proxy_limits.BODY_TIMEOUT_SECONDS,
) -> None:
    """Run controller, drone and proxy in one process (Ctrl-C stops every backend)."""
    from sailplane.dev import DevConfig, prepare_dev, run_dev

    _logging()
    config = DevConfig(controller_port=controller_port, proxy_port=proxy_port,
                       data_dir=data_dir, mount_base=mount_base,
                       host_volumes=host_volume or [], runtime=_runtime_name(runtime),
                       containerd_address=containerd_address,
                       containerd_namespace=containerd_namespace, drone_id=drone_id,
                       containerd_subnet=containerd_subnet, egress_allow=egress_allow or [],
                       warm_pools=list(_warm_pools(warm_pool)),
                       limits=OperatorLimits.from_flags(max_tmpfs_bytes, default_memory_bytes,
                                                        default_pids_limit),
                       named_volumes=named_volumes,
                       max_named_volumes_per_namespace=max_named_volumes_per_namespace,
                       proxy_limits=proxy_limits.ProxyLimits(
                           max_header_bytes=max_header_bytes, max_headers=max_headers,
                           max_pipelined=max_pipelined, max_connections=max_connections,
                           head_timeout=head_timeout, idle_timeout=idle_timeout,
                           body_timeout=body_timeout))
    config = config.model_copy(update={"default_max_idle_seconds": default_max_idle_seconds})
    _check_port("127.0.0.1", controller_port, "--controller-port")
    _check_port("127.0.0.1", proxy_port, "--proxy-port")
    try:
        prepared = prepare_dev(config)
    except PolicyError as exc:
        _fail(exc.message)
    console = Console(stderr=True, highlight=False)
    console.print(f"Sailplane dev  controller {config.controller_url}  "
                  f"proxy {config.proxy_url}  default volume {config.default_mount_base()}  "
                  f"runtime {config.runtime}")
    kept = _serve("sailplane dev", lambda: asyncio.run(run_dev(config, prepared)))
    console.print("stopped; every backend terminated")
    if kept:
        console.print(f"named volumes kept: {', '.join(kept)} (`sailplane volumes ls`, "
                      f"`sailplane volumes rm NAME`)")


ControllerUrl = Annotated[
    str, typer.Option("--controller", envvar="SAILPLANE_CONTROLLER", help="Controller URL.")
]
TokenFile = Annotated[
    Path | None,
    typer.Option(envvar="SAILPLANE_TOKEN_FILE",
                 help="File holding the API token; else env SAILPLANE_TOKEN, else the token "
                      "`sailplane dev` wrote, for a controller on this machine."),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts (errors "
                                                        "too, on stdout).")]


@app.command()
def connect(
    image: Annotated[str | None, typer.Option(help="Image to spawn if the key has none.")]
    = None,
    key: Annotated[str | None, typer.Option(help="Key name (random when omitted).")] = None,
    namespace: Annotated[str, typer.Option(help="Key namespace.")] = "",
    tag: Annotated[str, typer.Option(help="Key tag.")] = "",
    mount: Annotated[str | None, typer.Option(help="Plane's mount: true or a PATH.")] = None,
    volume: Annotated[
        list[str] | None,
        typer.Option(help="host:VOL[/SUB]:TARGET[:rw], volume:NAME:TARGET[:rw], "
                          "tmpfs:TARGET:SIZE; repeatable."),
    ] = None,
    env: Annotated[list[str] | None, typer.Option(help="K=V, repeatable.")] = None,
    max_idle_seconds: Annotated[
        int, typer.Option(min=0, help="Stop the backend after this long without a connection "
                                      "(as Plane's CLI; 0: the controller's default).")
    ] = CONNECT_MAX_IDLE_SECONDS,
    lifetime_limit_seconds: Annotated[
        int | None, typer.Option(min=1, help="Stop the backend this long after it starts.")
    ] = None,
    user: Annotated[str | None, typer.Option(help="User the token is for.")] = None,
    wait: Annotated[bool, typer.Option(help="Show the states until ready.")] = False,
    json_output: JsonOutput = False,
    controller: ControllerUrl = DEFAULT_CONTROLLER,
    token_file: TokenFile = None,
) -> None:
    """Get the backend for a key, spawning one from --image if needed; prints its URL.

    With --wait, a backend that ends before it is ready prints why (no URL) and exits 1."""
    try:
        request = connect_request(image, key, namespace, tag, mount, volume or [], env or [],
                                  max_idle_seconds or None, lifetime_limit_seconds, user)
    except ValueError as exc:
        _fail(str(exc), as_json=json_output)
    with _client(controller, token_file, json_output) as client:
        response = client.connect(request)
        final = None
        if wait:
            final = _watch(client, response["backend_id"], until_ready=True,
                           quiet=json_output)
            if final.get("status") != BackendStatus.READY.value:
                final = client.backend(response["backend_id"])  # with the message
    if final is not None and final["status"] != BackendStatus.READY.value:
        if json_output:
            _print_json({**response, **_public(final), "url": None})
        else:
            typer.echo(f"error: backend {response['backend_id']} {_describe(final)}", err=True)
        raise typer.Exit(1)
    if json_output:
        _print_json(response if final is None else {**response, "status": final["status"]})
    else:
        typer.echo(response["url"])


def connect_request(
    image: str | None, key: str | None, namespace: str, tag: str, mount: str | None,
    volumes: list[str], env: list[str], max_idle_seconds: int | None,
    lifetime_limit_seconds: int | None, user: str | None,
) -> dict[str, Any]:
    """The connect request the flags describe; ValueError with one clear line if bad."""
    request: dict[str, Any] = {}
    if key is not None:
        request["key"] = {"name": key, "namespace": namespace, "tag": tag}
    if user is not None:
        request["user"] = user
    if image is None:
        if key is None:
            raise ValueError("give --key (connect to a live backend) or --image (spawn one)")
        return request
    executable: dict[str, Any] = {
        "image": image, "volume_mounts": [parse_volume_flag(v) for v in volumes],
        "env": dict(_key_value(item) for item in env),
    }
    if mount is not None:
        executable["mount"] = True if mount == "true" else mount
    request["spawn_config"] = {
        "executable": executable, "max_idle_seconds": max_idle_seconds,
        "lifetime_limit_seconds": lifetime_limit_seconds,
    }
    return request


def _key_value(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise ValueError(f"--env {item!r}: expected KEY=VALUE")
    return name, value


@app.command()
def status(
    backend_id: Annotated[str, typer.Argument(help="Backend id.")],
    follow: Annotated[bool, typer.Option(help="Stream states until terminated.")] = False,
    json_output: JsonOutput = False,
    controller: ControllerUrl = DEFAULT_CONTROLLER,
    token_file: TokenFile = None,
) -> None:
    """Show a backend's status: with reason, exit code and message once terminated (or every
    state as it passes, with --follow)."""
    with _client(controller, token_file, json_output) as client:
        if follow:
            for state in client.follow(backend_id):
                if state["status"] == BackendStatus.TERMINATED.value:
                    state = _public(client.backend(backend_id))  # with the message
                typer.echo(json.dumps(state) if json_output else _describe(state))
            return
        state = _public(client.backend(backend_id))
    if json_output:
        _print_json(state)
    else:
        typer.echo(_describe(state))


@app.command()
def terminate(
    backend_id: Annotated[str, typer.Argument(help="Backend id.")],
    hard: Annotated[bool, typer.Option(help="SIGKILL at once instead of SIGTERM + grace.")]
    = False,
    json_output: JsonOutput = False,
    controller: ControllerUrl = DEFAULT_CONTROLLER,
    token_file: TokenFile = None,
) -> None:
    """Ask a backend's drone to stop it."""
    with _client(controller, token_file, json_output) as client:
        result = client.terminate(backend_id, hard)
    if json_output:
        _print_json(result)
    else:
        typer.echo("termination requested" if result.get("requested") else "nothing to do")


@app.command()
def backends(
    live: Annotated[bool, typer.Option(help="Only backends not terminated.")] = False,
    json_output: JsonOutput = False,
    controller: ControllerUrl = DEFAULT_CONTROLLER,
    token_file: TokenFile = None,
) -> None:
    """List backends."""
    with _client(controller, token_file, json_output) as client:
        rows = client.backends(live)
    if json_output:
        _print_json(rows)
        return
    table = Table("key", "status", "drone")
    for column in ("address", "backend"):  # for copying: never cut
        table.add_column(column, no_wrap=True)
    if any(row.get("message") for row in rows):
        table.add_column("message")
    for row in rows:
        key = row["key"]
        name = f"{key['namespace']}/{key['name']}" if key["namespace"] else key["name"]
        cells = [name, _describe({**row, "message": None}), row["drone"],
                 row["address"] or "", row["backend_id"]]
        if len(table.columns) > len(cells):
            cells.append(row.get("message") or "")
        table.add_row(*cells)
    Console(highlight=False).print(table)


@drones_app.callback(invoke_without_command=True)
def drones(
    ctx: typer.Context,
    json_output: JsonOutput = False,
    controller: ControllerUrl = DEFAULT_CONTROLLER,
    token_file: TokenFile = None,
) -> None:
    """List drones with their host volumes, load, and whether they are draining."""
    if ctx.invoked_subcommand is not None:
        return
    with _client(controller, token_file, json_output) as client:
        rows = client.drones()
    if json_output:
        _print_json(rows)
        return
    table = Table("drone", "pool", "connected", "draining", "load", "host volumes")
    for row in rows:
        volumes = ", ".join(f"{v['name']}:{v['access']}" for v in row["host_volumes"])
        table.add_row(row["drone_id"], row["pool"], str(row["connected"]),
                      str(row["draining"]), str(row["load"]), volumes)
    Console(highlight=False).print(table)


DroneId = Annotated[str, typer.Argument(help="The drone's id, as `sailplane drones` lists it.")]


@drones_app.command("drain")
def drones_drain(
    drone_id: DroneId,
    json_output: JsonOutput = False,
    controller: ControllerUrl = DEFAULT_CONTROLLER,
    token_file: TokenFile = None,
) -> None:
    """Send no new backend to a drone (its running ones go on); kept until undrain."""
    with _client(controller, token_file, json_output) as client:
        result = client.drain(drone_id, True)
    _print_json(result) if json_output else typer.echo(f"drone {drone_id} is draining")


@drones_app.command("undrain")
def drones_undrain(
    drone_id: DroneId,
    json_output: JsonOutput = False,
    controller: ControllerUrl = DEFAULT_CONTROLLER,
    token_file: TokenFile = None,
) -> None:
    """Let a drained drone take new backends again."""
    with _client(controller, token_file, json_output) as client:
        result = client.drain(drone_id, False)
    _print_json(result) if json_output else typer.echo(f"drone {drone_id} takes backends again")


@mounts_app.command("add")
def mounts_add(
    backend_id: Annotated[str, typer.Argument(help="Backend id (a running backend).")],
    spec: Annotated[str, typer.Argument(
        help="host:VOLUME[/SUB_PATH]:TARGET[:ro|:rw] (read-only unless :rw), or one "
             "volume_mounts entry as JSON.")],
    json_output: JsonOutput = False,
    controller: ControllerUrl = DEFAULT_CONTROLLER,
    token_file: TokenFile = None,
) -> None:
    """Hot-plug a mount into a running backend: its drone authorizes and pins it as at a
    spawn, then mounts it inside the container. Prints the backend's mounts."""
    try:
        mount = json.loads(spec) if spec.lstrip().startswith("{") else parse_volume_flag(spec)
    except ValueError as exc:  # JSONDecodeError too
        _fail(f"SPEC {str(exc).removeprefix('--volume ')}", as_json=json_output)
    with _client(controller, token_file, json_output) as client:
        result = client.add_mount(backend_id, mount)
    _print_mounts(result, json_output)


@mounts_app.command("rm")
def mounts_rm(
    backend_id: Annotated[str, typer.Argument(help="Backend id (a running backend).")],
    target: Annotated[str, typer.Option(help="The mount's path inside the container.")],
    json_output: JsonOutput = False,
    controller: ControllerUrl = DEFAULT_CONTROLLER,
    token_file: TokenFile = None,
) -> None:
    """Take a mount (hot-plugged or from the spawn) out of a running backend. Prints the
    backend's mounts."""
    with _client(controller, token_file, json_output) as client:
        result = client.remove_mount(backend_id, target)
    _print_mounts(result, json_output)


def _print_mounts(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(result)
        return
    table = Table("target", "type", "access", "from")
    for mount in result["mounts"]:
        table.add_row(mount["target"], mount["type"], "ro" if mount["read_only"] else "rw",
                      "hot-plug" if mount["hot_plugged"] else "spawn")
    Console(highlight=False).print(table)


StateDir = Annotated[
    Path, typer.Option(help="The drone's state directory (containerd keeps volumes there).")
]


@volumes_app.command("ls")
def volumes_ls(
    namespace: Annotated[
        str | None, typer.Option(help="Only this key namespace's volumes ('' for none).")
    ] = None,
    json_output: JsonOutput = False,
    runtime: RuntimeOption = "docker",
    state_dir: StateDir = Path(".sailplane/drone"),
    containerd_address: ContainerdAddress = None,
    containerd_namespace: ContainerdNamespace = "sailplane",
) -> None:
    """List the named volumes Sailplane created (volumes without its labels are not shown)."""
    engine = _local_runtime(runtime, state_dir, containerd_address, containerd_namespace)
    found = asyncio.run(_volumes(engine))
    rows = [volume for volume in found if namespace is None or volume.namespace == namespace]
    if json_output:
        _print_json([{
            "name": volume.name, "namespace": volume.namespace, "requested": volume.requested,
            "created_at": volume.created_at.isoformat() if volume.created_at else None,
        } for volume in rows])
        return
    table = Table("namespace", "requested", "created")
    table.add_column("name", no_wrap=True)  # for copying into `volumes rm`
    for volume in rows:
        created = volume.created_at.strftime("%Y-%m-%d %H:%M:%S") if volume.created_at else ""
        table.add_row(volume.namespace or "-", volume.requested, created, volume.name)
    Console().print(table)


@volumes_app.command("rm")
def volumes_rm(
    names: Annotated[list[str], typer.Argument(
        help="Runtime names as `volumes ls` shows them, or with --namespace the names the "
             "requests asked for.")],
    namespace: Annotated[
        str | None, typer.Option(help="NAMES are requested names in this key namespace.")
    ] = None,
    runtime: RuntimeOption = "docker",
    state_dir: StateDir = Path(".sailplane/drone"),
    containerd_address: ContainerdAddress = None,
    containerd_namespace: ContainerdNamespace = "sailplane",
) -> None:
    """Remove named volumes and their data. Only volumes carrying Sailplane's labels are
    removed; one a container still uses (even stopped) is refused. Exits 1 if any failed."""
    try:
        targets = names if namespace is None else [
            runtime_name(namespace, check_volume_name(name, name, name), name) for name in names
        ]
    except MountRefused as exc:
        _fail(exc.message)
    engine = _local_runtime(runtime, state_dir, containerd_address, containerd_namespace)
    failures = asyncio.run(_remove_volumes(engine, targets))
    for failure in failures:
        typer.echo(f"error: {failure}", err=True)
    if failures:
        raise typer.Exit(1)


def _local_runtime(
    runtime: str, state_dir: Path, containerd_address: str | None, containerd_namespace: str,
) -> Runtime:
    """A runtime on this machine's engine, as a drone with that state directory has it."""
    from sailplane.drone.config import DroneConfig, make_runtime

    config = DroneConfig(
        drone_id="sailplane-cli", controller_url=DEFAULT_CONTROLLER, policy=MountPolicy(),
        state_dir=state_dir, runtime=_runtime_name(runtime),
        containerd_address=containerd_address, containerd_namespace=containerd_namespace,
    )
    try:
        return make_runtime(config)
    except RuntimeFailure as exc:
        _fail(exc.message)


async def _volumes(engine: Runtime) -> list[NamedVolume]:
    try:
        return await engine.volumes()
    except RuntimeFailure as exc:
        _fail(exc.message)
    finally:
        await engine.close()


async def _remove_volumes(engine: Runtime, names: list[str]) -> list[str]:
    """Remove each in turn; the messages of those that could not be."""
    failures = []
    try:
        for name in names:
            try:
                await engine.remove_volume(name)
            except RuntimeFailure as exc:
                failures.append(exc.message)
            else:
                typer.echo(name)
    finally:
        await engine.close()
    return failures


SecretFile = Annotated[
    Path | None, typer.Option(envvar="SAILPLANE_SECRET_FILE",
                              help="The controller's secret file; else env SAILPLANE_SECRET.")
]


@credentials_app.command("secret")
def credentials_secret(
    out: Annotated[Path, typer.Option(help="New file for the secret (made 0600; never "
                                            "overwritten).")],
) -> None:
    """Make a controller secret: give the file to every controller (--secret-file)."""
    from sailplane.credentials import new_secret, write_private

    try:
        write_private(out, new_secret(), replace=False)
    except FileExistsError:
        _fail(f"{out} exists; to rotate, add a new secret as its first line (see "
              "docs/security.md)")
    except OSError as exc:
        _fail(f"{out}: {exc.strerror}")
    typer.echo(str(out))


@credentials_app.command("new")
def credentials_new(
    role: Annotated[str, typer.Option(help="api, drone, proxy or metrics.")],
    drone_id: Annotated[
        str | None, typer.Option(help="The drone this credential is for (role drone).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="A label for the logs (roles api, proxy, metrics).")
    ] = None,
    secret_file: SecretFile = None,
    out: Annotated[
        Path | None, typer.Option(help="Write it to this file (0600) instead of stdout.")
    ] = None,
) -> None:
    """Mint a credential signed with the controller's secret, e.g. for drone d1:
    `sailplane credentials new --role drone --drone-id d1 --secret-file S --out d1.token`."""
    from sailplane.credentials import mint, secrets_from, write_private

    try:
        kind = Role(role)
    except ValueError:
        _fail(f"--role {role!r}: choose {', '.join(r.value for r in Role)}")
    if kind is Role.DRONE and (not drone_id or name):
        _fail("a drone credential names its drone: give --drone-id (and no --name)")
    if kind is not Role.DRONE and drone_id:
        _fail(f"--drone-id is for drone credentials; role {kind} takes --name")
    try:
        secret_list = secrets_from(secret_file, "SAILPLANE_SECRET")
        if not secret_list:
            _fail("give the controller's secret: --secret-file FILE or env SAILPLANE_SECRET")
        token = mint(secret_list[0], kind, drone_id or name or kind.value)
        if out is not None:
            write_private(out, token)
    except CredentialError as exc:
        _fail(exc.message)
    typer.echo(token if out is None else str(out))


def _component_token(file: Path | None, env_var: str, role: Role) -> str | None:
    """A drone's or proxy's own credential, checked to be of its role (or exit 2)."""
    from sailplane.credentials import peek, token_from

    try:
        token = token_from(file, env_var)
    except CredentialError as exc:
        _fail(exc.message)
    if token is None:
        return None
    claimed = peek(token)
    if claimed is None:
        _fail(f"the {role} credential ({file or env_var}) is not a Sailplane credential")
    if claimed.role is not role:
        _fail(f"this is a credential of role {claimed.role}; a {role} needs one of role {role}")
    return token


def _token_subject(token: str | None) -> str | None:
    from sailplane.credentials import peek

    claimed = peek(token) if token else None
    return claimed.subject if claimed else None


def _old_token_env() -> None:
    if os.environ.get("SAILPLANE_CTRL_TOKEN"):
        logging.getLogger("sailplane.cli").warning(
            "SAILPLANE_CTRL_TOKEN is no longer read: each role has its own credential "
            "(docs/security.md)")


@contextlib.contextmanager
def _client(url: str, token_file: Path | None, as_json: bool = False,
            ) -> Iterator[ControllerClient]:
    """A client whose API errors become one line on stderr (or a JSON error object on stdout
    with --json) and exit status 2."""
    try:
        token = find_token(url, token_file)
    except CredentialError as exc:
        _fail(exc.message, as_json=as_json)
    client = ControllerClient(url, token)
    try:
        yield client
    except ApiError as exc:
        hint = "" if exc.status != 401 else (
            "; give --token-file or SAILPLANE_TOKEN (`sailplane dev` writes "
            "DATA_DIR/api-token)")
        _fail(f"{exc.message} ({exc.status} {exc.code}){hint}", as_json=as_json,
              code=exc.code, status=exc.status)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the controller at {url}: {exc}", as_json=as_json,
              code="unreachable")
    finally:
        client.close()


def _watch(
    client: ControllerClient, backend_id: str, *, until_ready: bool, quiet: bool,
    as_json: bool = False,
) -> dict[str, Any]:
    """Print each state as it passes; return the last one seen."""
    last: dict[str, Any] = {}
    for state in client.follow(backend_id):
        last = state
        if as_json:
            typer.echo(json.dumps(state))
        elif not quiet:
            Console(stderr=until_ready).print(_describe(state))
        if until_ready and state["status"] == BackendStatus.READY.value:
            break
    return last


def _public(summary: dict[str, Any]) -> dict[str, Any]:
    """A backend's status as /pub shows it, plus the message /ctrl callers get."""
    state = {"status": summary["status"], "time": summary.get("time",
                                                              summary.get("status_time"))}
    for field in ("reason", "exit_code", "message"):
        if summary.get(field) is not None:
            state[field] = summary[field]
    return state


def _describe(state: dict[str, Any]) -> str:
    """``terminated (error): why``, ``terminated (exited, exit code 3)``, ``ready``."""
    text = str(state["status"])
    if state.get("reason"):
        text += f" ({state['reason']}"
        text += f", exit code {state['exit_code']})" if state.get("exit_code") is not None \
            else ")"
    if state.get("message"):
        text += f": {state['message']}"
    return text


def _warm_pools(flags: list[str] | None) -> tuple[WarmPoolSpec, ...]:
    try:
        return tuple(WarmPoolSpec.parse(flag) for flag in flags or ())
    except ValueError as exc:
        _fail(str(exc))


def _runtime_name(runtime: str) -> RuntimeName:
    """--runtime's value, or exit 2 naming the choices."""
    for name in RUNTIMES:
        if runtime == name:
            return name
    _fail(f"--runtime {runtime!r}: choose {' or '.join(RUNTIMES)}")


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _fail(message: str, *, as_json: bool = False, code: str = "error",
          status: int | None = None) -> NoReturn:
    """One line on stderr (a JSON error object on stdout with ``as_json``), exit status 2."""
    if as_json:
        error: dict[str, Any] = {"code": code, "message": message}
        if status is not None:
            error["status"] = status
        typer.echo(json.dumps({"error": error}))
    else:
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _serve(what: str, run: Callable[[], Any]) -> Any:
    """Run a long-lived part; Ctrl-C ends it quietly, and a failure is one line (exit 2), its
    traceback only with --debug."""
    try:
        return run()
    except KeyboardInterrupt:
        return None
    except (typer.Exit, typer.Abort):
        raise
    except SystemExit as exc:  # uvicorn exits 1 when it cannot start
        if exc.code in (0, None):
            return None
        _fail(f"{what} could not start (see the log above)")
    except Exception as exc:
        if _debug:
            traceback.print_exc()
        _fail(f"{what} stopped: {_one_line(exc)}"
              + ("" if _debug else " (--debug for the traceback)"))


def _one_line(exc: BaseException) -> str:
    """The innermost useful message of an error (groups and chains unwrapped)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, SailplaneError):
        return exc.message
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_port(host: str, port: int, flag: str, *, reuse_port: bool = False) -> None:
    """Exit 2 with one line if ``host:port`` cannot be listened on (before anything starts)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        _fail(f"cannot listen on {host} ({flag}): {exc.strerror}")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind(address)
        except PermissionError:
            _fail(f"port {port} needs privileges ({flag})")
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                _fail(f"port {port} is in use ({flag})")
            _fail(f"cannot listen on {host}:{port} ({flag}): {exc.strerror}")


def _logging() -> None:
    logging.basicConfig(level=logging.DEBUG if _debug else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    if not _debug:  # each start's schema check is not news, nor a traceback a user's
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("uvicorn.error").addFilter(_without_traceback)


def _without_traceback(record: logging.LogRecord) -> bool:
    record.exc_info, record.exc_text = None, None
    return True
