"""The connect hot path: ``POST /ctrl/connect`` to a key that is already running, against the
controller's cheapest route, ``GET /health``, on the same server.

    .venv/bin/python bench/connect.py [--duration 3] [--rounds 3] [--connections 32]
                                      [--threads 2] [--databases sqlite,postgres]
                                      [--postgres-url URL] [--profile] [--check]

Load comes from ``wrk`` (Debian's), a separate process, with ``--threads`` threads and
``--connections`` keep-alive connections; the connect's JSON body comes from a Lua script.
Credentials are on, as in production: every request carries an API token.

* SQLite: ``sailplane dev`` (controller, drone and proxy in one process, Docker runtime). One
  backend is spawned for the key and waited for until ``ready``; then ``GET /health`` and the
  existing-key connect take turns, ``--rounds`` times, ``--duration`` seconds each, after a
  warm-up of each. The connect sends what an application sends on every page load: the key
  and the whole ``spawn_config`` (so that a key that is gone would be spawned again).
* PostgreSQL: a standalone ``sailplane controller`` over ``--postgres-url`` (its schema is
  dropped and made anew: give it a database of its own) and a drone faked here that speaks
  the protocol (acknowledges each spawn, reports it ``ready``, heartbeats). The same turns.
* New keys, beside them: every request is a key never seen, so each one is the spawn path up
  to the answer (choose a drone, insert the backend, its key and its spawn action), with the
  fake drone acknowledging; a standalone controller on each database (on SQLite too: the dev
  drone would start a real container for each).

Prints req/s, p50 and p99 (medians over the rounds) and the ratio of connect to health req/s
per database. Targets: existing-key connect at least 0.5x ``GET /health`` req/s and a p99 of at
most 50 ms; ``--check`` exits 1 when one is missed. ``--profile`` samples the server with
py-spy during one more connect run and prints where it spends its time. Every process
listens on 127.0.0.1 only; all are stopped at the end (the dev cluster removes its backend).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from loadgen import (
    KEY_PLACEHOLDER,
    Load,
    lua_post,
    median_load,
    profiled,
    py_spy,
    top_functions,
    wrk,
)
from sailplane.credentials import Role, mint, new_secret
from sailplane.protocol import ActionAck, BackendEvent, Heartbeat, Hello
from sailplane.state import BackendState, BackendStatus, now_ms

MIN_RATIO = 0.5
MAX_P99_MS = 50.0
WARMUP_SECONDS = 1
SAILPLANE = Path(sys.executable).parent / "sailplane"
IMAGE = "sailplane/static:latest"
DRONE_ID = "bench-drone"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:55432/sailplane_bench"
START_SECONDS = 60.0


def connect_body(name: str) -> dict[str, Any]:
    """What an application sends on each page load: the key and how to spawn it."""
    return {
        "key": {"name": name, "namespace": "bench", "tag": ""},
        "spawn_config": {
            "max_idle_seconds": 600,
            "executable": {"image": IMAGE, "env": {"MODE": "bench", "LEVEL": "3"},
                           "resource_limits": {"memory_limit_bytes": 67108864}},
        },
        "user": "alice",
        "auth": {"role": "editor"},
    }


# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(base: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start")
        time.sleep(0.1)


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, stopped with SIGTERM (then SIGKILL) when the block ends."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, env={**os.environ, **env}, stdout=out, stderr=out)
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@dataclass
class Server:
    what: str
    base: str
    token: str
    pid: int


@contextlib.contextmanager
def dev_server(tmp: Path) -> Iterator[Server]:
    """``sailplane dev`` on SQLite, with one ready backend for the key ``live``."""
    port, proxy_port = free_port(), free_port()
    data = tmp / "dev"
    with running([str(SAILPLANE), "dev", "--controller-port", str(port), "--proxy-port",
                  str(proxy_port), "--data-dir", str(data)],
                 {"XDG_STATE_HOME": str(tmp / "state")}, tmp / "dev.log") as process:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, process, "sailplane dev")
        server = Server("SQLite, sailplane dev (one process)", base,
                        (data / "api-token").read_text().strip(), process.pid)
        spawn_live(server)
        yield server


@contextlib.contextmanager
def standalone_server(tmp: Path, database: str, what: str) -> Iterator[Server]:
    """``sailplane controller`` over ``database`` with a fake drone, and a live key ``live``."""
    port = free_port()
    secret = new_secret()
    with running([str(SAILPLANE), "controller", "--port", str(port), "--database-url",
                  database], {"SAILPLANE_SECRET": secret},
                 tmp / f"controller-{port}.log") as process:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, process, "sailplane controller")
        with fake_drone(base, mint(secret, Role.DRONE, DRONE_ID)):
            server = Server(what, base, mint(secret, Role.API, "bench"), process.pid)
            spawn_live(server)
            yield server


def spawn_live(server: Server) -> None:
    """Connect the key ``live`` and wait until its backend is ready."""
    headers = {"Authorization": f"Bearer {server.token}"}
    deadline = time.monotonic() + START_SECONDS
    while True:  # the drone registers a moment after the controller answers
        answer = httpx.post(f"{server.base}/ctrl/connect", json=connect_body("live"),
                            headers=headers, timeout=30)
        if answer.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    answer.raise_for_status()
    status_url = f"{server.base}/pub/b/{answer.json()['backend_id']}/status"
    while (status := httpx.get(status_url, timeout=5).json()["status"]) != "ready":
        if status == "terminated" or time.monotonic() > deadline:
            raise SystemExit(f"the backend for the live key is {status}: {status_url}")
        time.sleep(0.2)


def reset_postgres(url: str) -> str:
    """Create the database if missing and empty its schema; the controller migrates it."""
    base, _, name = url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True, connect_timeout=5) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return url


# -- a drone that acknowledges ---------------------------------------------------------------


@contextlib.contextmanager
def fake_drone(base: str, token: str) -> Iterator[None]:
    """A drone speaking the protocol in a thread of this process: it acknowledges each spawn
    and reports the backend ``ready`` (no container), acknowledges terminations, heartbeats."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete,
                              args=(_drone(base, token, stop),), daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


async def _drone(base: str, token: str, stop: asyncio.Event) -> None:
    url = base.replace("http://", "ws://") + "/ctrl/drone-socket"
    async with ws_connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                          max_size=None) as socket:
        await socket.send(Hello(drone_id=DRONE_ID, runtime="bench", host_volumes=[])
                          .model_dump_json())
        tasks = [asyncio.create_task(_answer(socket)), asyncio.create_task(_beat(socket))]
        await stop.wait()
        for task in tasks:
            task.cancel()


async def _beat(socket: ClientConnection) -> None:
    while True:
        await socket.send(Heartbeat(time=now_ms()).model_dump_json())
        await asyncio.sleep(2)


async def _answer(socket: ClientConnection) -> None:
    seq = 0
    async for frame in socket:
        message = json.loads(frame)
        if message["type"] not in ("spawn", "terminate"):
            continue
        await socket.send(ActionAck(action_id=message["action_id"]).model_dump_json())
        seq += 1
        status = BackendStatus.READY if message["type"] == "spawn" else BackendStatus.TERMINATED
        await socket.send(BackendEvent(
            seq=seq, backend_id=message["backend_id"], address="127.0.0.1:9",
            state=BackendState(status=status, time=now_ms(), reason="external"
                               if status is BackendStatus.TERMINATED else None),
        ).model_dump_json())


# -- the measurement -------------------------------------------------------------------------


@dataclass
class Figures:
    what: str
    health: Load
    connect: Load
    new_key: Load | None
    health_rounds: list[Load]
    connect_rounds: list[Load]

    @property
    def ratio(self) -> float:
        return self.connect.rps / self.health.rps

    @property
    def met(self) -> bool:
        return (self.ratio >= MIN_RATIO and self.connect.p99_ms <= MAX_P99_MS
                and self.connect.errors == 0 and self.health.errors == 0)


def measure(server: Server, args: argparse.Namespace, tmp: Path) -> tuple[list[Load], list[Load]]:
    """Interleaved rounds of ``GET /health`` and the existing-key connect."""
    script = lua_post(tmp / "live.lua", "/ctrl/connect", connect_body("live"))
    headers = {"Authorization": f"Bearer {server.token}"}

    def load(url: str, lua: Path | None, seconds: float) -> Load:
        return wrk(url, connections=args.connections, threads=args.threads, seconds=seconds,
                   script=lua, headers=headers, server_pid=server.pid)

    runs: dict[str, list[Load]] = {"health": [], "connect": []}
    targets: dict[str, tuple[str, Path | None]] = {
        "health": (f"{server.base}/health", None),
        "connect": (f"{server.base}/ctrl/connect", script),
    }
    for url, lua in targets.values():
        load(url, lua, WARMUP_SECONDS)
    for _ in range(args.rounds):
        for name, (url, lua) in targets.items():
            runs[name].append(load(url, lua, args.duration))
    if args.profile:
        with profiled(server.pid, args.duration, tmp / "profile.txt") as raw:
            load(targets["connect"][0], script, args.duration)
        print(f"\npy-spy, {server.what}, existing-key connect ({args.duration}s): "
              "self% total% function")
        for own, total, function in top_functions(raw, 25):
            print(f"  {own:5.1f} {total:6.1f}  {textwrap.shorten(function, 110)}")
    return runs["health"], runs["connect"]


def measure_new_keys(server: Server, args: argparse.Namespace, tmp: Path, tag: str) -> Load:
    """New keys only: the spawn path up to the answer, the fake drone acknowledging."""
    script = lua_post(tmp / f"new-{tag}.lua", "/ctrl/connect", connect_body(KEY_PLACEHOLDER),
                      unique_key=f"new-{tag}")
    return wrk(f"{server.base}/ctrl/connect", connections=args.connections,
               threads=args.threads, seconds=args.duration, script=script,
               headers={"Authorization": f"Bearer {server.token}"}, server_pid=server.pid)


def run_database(name: str, args: argparse.Namespace, tmp: Path) -> Figures:
    if name == "sqlite":
        with dev_server(tmp) as server:
            health, connect = measure(server, args, tmp)
        with standalone_server(tmp, f"sqlite:///{tmp}/standalone.db",
                               "SQLite, sailplane controller") as server:
            new_key = measure_new_keys(server, args, tmp, "sqlite")
        what = "SQLite (sailplane dev, one process; new keys: standalone controller)"
    else:
        with standalone_server(tmp, reset_postgres(args.postgres_url),
                               "PostgreSQL, sailplane controller") as server:
            health, connect = measure(server, args, tmp)
            new_key = measure_new_keys(server, args, tmp, "postgres")
        what = "PostgreSQL (standalone sailplane controller)"
    return Figures(what, median_load(health), median_load(connect), new_key, health, connect)


def report(figures: Figures) -> None:
    print(f"\n{figures.what}")
    print(f"  {'':<26}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs health':>11}"
          f"{'CPU us/req':>12}")
    rows = [("GET /health", figures.health), ("connect, existing key", figures.connect)]
    if figures.new_key is not None:
        rows.append(("connect, new key (spawn)", figures.new_key))
    for label, load in rows:
        cpu = f"{load.cpu_us:>12.0f}" if load.cpu_us is not None else ""
        print(f"  {label:<26}{load.rps:>9.0f}{load.p50_ms:>9.2f}{load.p99_ms:>9.2f}"
              f"{load.errors:>8}{load.rps / figures.health.rps:>10.2f}x{cpu}")
    print("  per round, connect/health req/s: " + "  ".join(
        f"{c.rps / h.rps:.2f}x" for h, c in zip(figures.health_rounds, figures.connect_rounds,
                                                strict=True)))
    print(f"  target: existing-key connect >= {MIN_RATIO}x health req/s "
          f"({figures.ratio:.2f}x) and p99 <= {MAX_P99_MS:.0f} ms "
          f"({figures.connect.p99_ms:.1f} ms): {'met' if figures.met else 'MISSED'}",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="turns of health and connect")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "SAILPLANE_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="a database of the bench's own: its schema is dropped")
    parser.add_argument("--profile", action="store_true", help="py-spy the server under load")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing (scripts/setup installs it)")
    if args.profile and not py_spy():
        raise SystemExit("--profile needs py-spy (.venv/bin/pip install py-spy)")
    print(f"wrk: {args.threads} threads, {args.connections} keep-alive connections, "
          f"{args.duration:g}s a run, {args.rounds} rounds in turns (medians); "
          f"{os.cpu_count()} CPUs, load generator in its own process; load average "
          f"{os.getloadavg()[0]:.1f} at the start", flush=True)
    met = True
    with tempfile.TemporaryDirectory(prefix="sailplane-bench-connect-") as tmp_name:
        for name in args.databases.split(","):
            tmp = Path(tmp_name) / name
            tmp.mkdir()
            figures = run_database(name.strip(), args, tmp)
            report(figures)
            met &= figures.met
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (other work on the machine "
          "shares its CPUs with the server and wrk)")
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
