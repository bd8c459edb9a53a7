"""The ``sailplane`` command: verbs -> config -> the function that does the work."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sailplane.errors import PolicyError
from sailplane.mounts.policy import MountPolicy, Platform
from sailplane.mounts.report import plan_document
from sailplane.runtime.containerd.mounts import DEFAULT_VOLUME_ROOT
from sailplane.timing import DEFAULT_GRACE_SECONDS, DEFAULT_STARTUP_TIMEOUT_SECONDS

app = typer.Typer(no_args_is_help=True, help="Sailplane: session backends with secure mounts.")
mounts_app = typer.Typer(no_args_is_help=True, help="Inspect how a drone would mount things.")
app.add_typer(mounts_app, name="mounts")

MountBase = Annotated[
    str | None, typer.Option(help="Directory of the host volume 'default' (Plane's mount).")
]
HostVolumeFlags = Annotated[
    list[str] | None,
    typer.Option("--host-volume", help="NAME=PATH[:ro|:rw], repeatable; rw if not given."),
]
PolicyFile = Annotated[
    Path | None, typer.Option("--policy", help="TOML policy file with host volumes.")
]


def _emit(document: dict[str, Any], status: int) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    raise typer.Exit(status)


def load_policy(
    mount_base: str | None, host_volumes: list[str] | None, policy_file: Path | None,
    platform: Platform = "posix",
) -> MountPolicy:
    """The drone's mount policy from its flags, or from a TOML file (not both)."""
    if policy_file is not None:
        if mount_base or host_volumes:
            raise PolicyError("give either --policy or --mount-base/--host-volume, not both")
        return MountPolicy.from_toml(policy_file)
    return MountPolicy.from_flags(mount_base, host_volumes or (), platform)


@mounts_app.command("plan")
def mounts_plan(
    file: Annotated[str, typer.Argument(help="JSON executable or connect request; - for stdin")],
    mount_base: MountBase = None,
    host_volume: HostVolumeFlags = None,
    policy: PolicyFile = None,
    key: Annotated[str | None, typer.Option(help="Key name for {key} templates.")] = None,
    namespace: Annotated[str | None, typer.Option(help="Namespace for {namespace}.")] = None,
    backend: Annotated[str, typer.Option(help="Backend id for {backend}.")] = "",
    apply: Annotated[bool, typer.Option(help="Create missing directories as a drone would.")]
    = False,
    platform: Annotated[str, typer.Option(help="posix or windows host paths.")] = "posix",
    volume_root: Annotated[
        str, typer.Option(help="Where containerd-style named volumes live.")
    ] = DEFAULT_VOLUME_ROOT,
) -> None:
    """Print, as JSON, what a drone with this policy would mount (DESIGN 4.5)."""
    if platform not in ("posix", "windows"):
        _emit({"error": {"code": "bad_policy", "message": "--platform: posix or windows"}}, 2)
    try:
        mount_policy = load_policy(
            mount_base, host_volume, policy, "windows" if platform == "windows" else "posix"
        )
    except PolicyError as exc:
        _emit({"error": {"code": exc.code, "message": exc.message}}, 2)
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except OSError as exc:
        _emit({"error": {"code": "invalid_request", "message": f"{file}: {exc.strerror}"}}, 2)
    status, document = plan_document(
        text, mount_policy, key=key, namespace=namespace, backend=backend, apply=apply,
        volume_root=volume_root,
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
    ctrl_token: Annotated[
        str | None, typer.Option(envvar="SAILPLANE_CTRL_TOKEN", help="Bearer token for /ctrl.")
    ] = None,
) -> None:
    """Run a controller: the HTTP API, scheduling and deadlines."""
    from sailplane.controller.config import ControllerConfig
    from sailplane.controller.run import run_controller

    _logging()
    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    config = ControllerConfig(
        database_url=database_url, proxy_url=proxy_url, ctrl_token=ctrl_token,
        controller_url=controller_url or f"http://{host}:{port}",
    )
    asyncio.run(run_controller(config, host, port))


@app.command()
def drone(
    controller: Annotated[str, typer.Option(help="Controller URL.")] = "http://127.0.0.1:9090",
    drone_id: Annotated[str | None, typer.Option(help="Defaults to the host name.")] = None,
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
    ctrl_token: Annotated[
        str | None, typer.Option(envvar="SAILPLANE_CTRL_TOKEN", help="Bearer token for /ctrl.")
    ] = None,
) -> None:
    """Run a drone: start backends on this machine's Docker engine for a controller."""
    from sailplane.drone.config import DroneConfig, run_drone
    from sailplane.drone.executor import ExecutorSettings

    _logging()
    try:
        mount_policy = load_policy(mount_base, host_volume, policy)
    except PolicyError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    config = DroneConfig(
        drone_id=drone_id or socket.gethostname(), controller_url=controller, pool=pool,
        policy=mount_policy, state_dir=state_dir, ctrl_token=ctrl_token,
        settings=ExecutorSettings(grace_seconds=grace_seconds,
                                  startup_timeout_seconds=startup_timeout,
                                  keep_containers=keep_containers),
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_drone(config))


@app.command()
def proxy(
    controller: Annotated[str, typer.Option(help="Controller URL.")] = "http://127.0.0.1:9090",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9091,
    workers: Annotated[int, typer.Option(min=1, help="Processes sharing the port.")] = 1,
    ctrl_token: Annotated[
        str | None, typer.Option(envvar="SAILPLANE_CTRL_TOKEN", help="Bearer token for /ctrl.")
    ] = None,
) -> None:
    """Run a proxy: route http://HOST:PORT/{token}/... to the token's backend."""
    from sailplane.proxy.run import ProxyConfig, run_workers

    _logging()
    run_workers(ProxyConfig(controller_url=controller, host=host, port=port, workers=workers,
                            ctrl_token=ctrl_token))


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
