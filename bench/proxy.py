"""Requests per second and latency through Sailplane's proxy, against nginx, in one run.

    .venv/bin/python bench/proxy.py [--duration 3] [--rounds 5] [--connections 64]
                                    [--ws-connections 8] [--ws-messages 4000] [--profile]
                                    [--check] [--compare SRC]

Three HTTP targets, each loaded by ``wrk`` (Debian's) with ``--connections`` keep-alive
connections for ``--duration`` seconds after a one-second warm-up. The targets take turns,
``--rounds`` times (a, b, c, a, b, c, ...), so that a busy moment of the machine falls on all
of them alike; the table shows each target's median over the rounds, and the ratios are those
of the medians (the per-round ratios are printed too):

  (a) direct      an nginx serving a small response (one worker, started here)
  (b) nginx       an nginx reverse proxy in front of (a): one worker, upstream keep-alive
  (c) sailplane   ``sailplane proxy`` (one process) in front of (a), routing /{token}/
  (d) compared    with ``--compare SRC``: the same, but the proxy of another source tree
                  (``SRC/sailplane``, e.g. ``git archive OLD src | tar -x -C /tmp/old`` and
                  ``--compare /tmp/old/src``), so a change is measured before and after in
                  the same rounds, under the same load

For (c) a real controller runs as a subprocess on SQLite; a fake drone is registered in its
database and a ``ready`` backend whose address is (a)'s is recorded, exactly as a drone's
events would, so the proxy looks the token up over its controller socket as in production.
Then WebSocket messages per second, ``--ws-connections`` connections each sending
``--ws-messages`` small messages and reading their echoes, (a) straight to a local echo server
(the ``websockets`` library, a subprocess) and (c) through the proxy, also in turns, medians.

The CPU column is the proxy's own CPU time per request ((b): nginx's worker; (c): the
proxy's process), steadier than the rates on a busy machine.

Targets: (c) at least 0.6x (b)'s requests per second, (c)'s p99 at most 2x (b)'s, and
WebSocket messages through the proxy at least 0.5x direct. ``--check`` exits 1 when one is
missed. ``--profile`` samples the proxy with py-spy during one
more (c) run and prints the functions where it spends its time (py-spy must be installed).
Every process listens on 127.0.0.1 only; all of them are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import websockets

from loadgen import Load, median_load, profiled, py_spy, top_functions, wrk
from sailplane.controller import backends, drones
from sailplane.controller.db.engine import make_engine
from sailplane.credentials import Role, mint, new_secret
from sailplane.protocol import Hello
from sailplane.spec import ConnectRequest, ExecutorConfig, KeyConfig, SpawnConfig
from sailplane.state import BackendState, BackendStatus, now_ms

REPO = Path(__file__).resolve().parents[1]
SAILPLANE = REPO / ".venv" / "bin" / "sailplane"
NGINX = "/usr/sbin/nginx"
MIN_RPS_RATIO = 0.6  # (c) / (b)
MAX_P99_RATIO = 2.0  # (c) / (b)
MIN_WS_RATIO = 0.5  # (c) / (a), WebSocket messages per second
START_TIMEOUT_SECONDS = 20.0
WARMUP_SECONDS = 1
WS_MESSAGE = b"x" * 64
DRONE_ID = "bench-proxy"

BACKEND_CONF = """\
worker_processes 1;
pid {tmp}/backend.pid;
error_log {tmp}/backend-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    keepalive_requests 10000000;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{ default_type text/plain; return 200 "hello from the backend\\n"; }}
    }}
}}
"""

REVERSE_PROXY_CONF = """\
worker_processes 1;
pid {tmp}/reverse.pid;
error_log {tmp}/reverse-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    keepalive_requests 10000000;
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 128;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

ECHO_SERVER = """\
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(socket):
    async for message in socket:
        await socket.send(message)

async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), compression=None):
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
"""


# The proxy of another source tree (``--compare``), with its default options.
COMPARED_PROXY = """\
import os, sys
sys.path.insert(0, sys.argv[1])
from sailplane.proxy.run import ProxyConfig, run_workers
run_workers(ProxyConfig(controller_url=sys.argv[2], port=int(sys.argv[3]),
                        ctrl_token=os.environ["SAILPLANE_PROXY_TOKEN"]))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, what: str, process: subprocess.Popen[bytes], status: int = 200) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == status:
                return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not answer {url} within {START_TIMEOUT_SECONDS}s")


def wait_port(port: int, what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {port} within {START_TIMEOUT_SECONDS}s")


class Processes:
    """Subprocesses started by the bench, stopped (TERM, then KILL) in reverse order."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("ab")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.started.append((name, process))
        return process

    def stop_all(self) -> None:
        for _, process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in reversed(self.started):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


# -- WebSocket -------------------------------------------------------------------------------


async def _ws_client(url: str, messages: int) -> None:
    async with websockets.connect(url, compression=None, max_queue=None) as ws:
        async def send() -> None:
            for _ in range(messages):
                await ws.send(WS_MESSAGE)

        sender = asyncio.create_task(send())
        for _ in range(messages):
            await ws.recv()
        await sender


async def _ws_rate(url: str, connections: int, messages: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(_ws_client(url, messages) for _ in range(connections)))
    return connections * messages / (time.perf_counter() - started)


def ws_rate(url: str, connections: int, messages: int) -> float:
    asyncio.run(_ws_rate(url, connections, max(messages // 10, 1)))  # warm-up
    return asyncio.run(_ws_rate(url, connections, messages))


# -- the cluster around the proxy ------------------------------------------------------------


def ready_backend(engine: object, address: str, name: str, proxy_url: str) -> str:
    """Record a backend on the fake drone as ready at ``address``; return its token."""
    request = ConnectRequest(key=KeyConfig(name=name), spawn_config=SpawnConfig(
        executable=ExecutorConfig(image="bench/none")))
    made, _ = backends.connect(engine, request,  # type: ignore[arg-type]
                               backends.Urls(proxy=proxy_url, controller=""))
    with engine.begin() as conn:  # type: ignore[attr-defined]
        for status in (BackendStatus.LOADING, BackendStatus.STARTING, BackendStatus.WAITING,
                       BackendStatus.READY):
            backends.record_state(conn, made.backend_id, BackendState(status=status,
                                  time=now_ms()),
                                  address if status is BackendStatus.READY else None)
    return made.token


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="turns of every target")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--ws-connections", type=int, default=8)
    parser.add_argument("--ws-messages", type=int, default=4000, help="per connection")
    parser.add_argument("--profile", action="store_true", help="py-spy the proxy under load")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--compare", type=Path, metavar="SRC",
                        help="also run the proxy of this source tree as target (d)")
    args = parser.parse_args()
    for tool in (NGINX, "wrk"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (scripts/setup installs nginx-light and wrk)")
    if args.profile and not py_spy():
        raise SystemExit("--profile needs py-spy (.venv/bin/pip install py-spy)")

    with tempfile.TemporaryDirectory(prefix="sailplane-bench-proxy-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "body").mkdir()
        (tmp / "proxy").mkdir()
        processes = Processes(tmp)
        try:
            return run(args, tmp, processes)
        finally:
            processes.stop_all()


def run(args: argparse.Namespace, tmp: Path, processes: Processes) -> int:
    backend_port, reverse_port, controller_port, proxy_port, echo_port = (
        free_port() for _ in range(5))
    proxy_url = f"http://127.0.0.1:{proxy_port}"

    nginx_pids = {}
    for name, template, port in (("backend", BACKEND_CONF, backend_port),
                                 ("reverse", REVERSE_PROXY_CONF, reverse_port)):
        conf = tmp / f"{name}.conf"
        conf.write_text(template.format(tmp=tmp, port=port, backend_port=backend_port))
        nginx = nginx_pids[name] = processes.start(f"nginx-{name}", [
            NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / f"{name}-error.log"),
            "-g", "daemon off;"])
        wait_for(f"http://127.0.0.1:{port}/", f"nginx ({name})", nginx)
    echo = processes.start("echo", [sys.executable, "-c", ECHO_SERVER, str(echo_port)])
    wait_port(echo_port, "the echo server", echo)

    # Credentials on, as in production: the children inherit the secret and the proxy's token.
    secret = new_secret()
    os.environ["SAILPLANE_SECRET"] = secret
    os.environ["SAILPLANE_PROXY_TOKEN"] = mint(secret, Role.PROXY, "bench")
    database = f"sqlite:///{tmp}/controller.db"
    controller = processes.start("controller", [
        str(SAILPLANE), "controller", "--port", str(controller_port),
        "--database-url", database, "--proxy-url", proxy_url])
    wait_for(f"http://127.0.0.1:{controller_port}/health", "the controller", controller)
    engine = make_engine(database)
    hello = Hello(drone_id=DRONE_ID, runtime="bench", host_volumes=[])
    drones.register(engine, hello)
    http_token = ready_backend(engine, f"127.0.0.1:{backend_port}", "bench-http", proxy_url)
    ws_token = ready_backend(engine, f"127.0.0.1:{echo_port}", "bench-ws", proxy_url)
    proxy = processes.start("proxy", [
        str(SAILPLANE), "proxy", "--controller", f"http://127.0.0.1:{controller_port}",
        "--port", str(proxy_port)])
    wait_for(f"{proxy_url}/{http_token}/", "the proxy", proxy)
    compared = None
    if args.compare:
        compared_port = free_port()
        compared = processes.start("proxy-compared", [
            sys.executable, "-c", COMPARED_PROXY, str(args.compare.resolve()),
            f"http://127.0.0.1:{controller_port}", str(compared_port)])
        wait_for(f"http://127.0.0.1:{compared_port}/{http_token}/", "the compared proxy",
                 compared)

    targets = {
        "(a) direct": f"http://127.0.0.1:{backend_port}/",
        "(b) nginx": f"http://127.0.0.1:{reverse_port}/",
        "(c) sailplane": f"{proxy_url}/{http_token}/",
    }
    print(f"wrk: 1 thread, {args.connections} keep-alive connections, {args.duration}s each "
          f"(after {WARMUP_SECONDS}s of warm-up), {args.rounds} rounds in turns; "
          f"{os.cpu_count()} CPUs", flush=True)
    # nginx's one worker is the master's child; the proxy is one process.
    pids = {"(b) nginx": int(Path(f"/proc/{nginx_pids['reverse'].pid}/task/"
                                  f"{nginx_pids['reverse'].pid}/children").read_text().split()[0]),
            "(c) sailplane": proxy.pid}
    if compared is not None:
        targets["(d) compared"] = f"http://127.0.0.1:{compared_port}/{http_token}/"
        pids["(d) compared"] = compared.pid
    rounds: dict[str, list[Load]] = {name: [] for name in targets}
    for url in targets.values():
        wrk(url, connections=args.connections, threads=1, seconds=WARMUP_SECONDS)
    for _ in range(args.rounds):
        for name, url in targets.items():
            drones.heartbeat(engine, DRONE_ID)  # the fake drone must not be declared lost
            rounds[name].append(wrk(url, connections=args.connections, threads=1,
                                    seconds=args.duration, server_pid=pids.get(name)))
    loads = {name: median_load(runs) for name, runs in rounds.items()}

    ws_targets = {"(a) direct": f"ws://127.0.0.1:{echo_port}/",
                  "(c) sailplane": f"ws://127.0.0.1:{proxy_port}/{ws_token}/"}
    ws_rounds: dict[str, list[float]] = {name: [] for name in ws_targets}
    for _ in range(args.rounds):
        for name, url in ws_targets.items():
            drones.heartbeat(engine, DRONE_ID)
            ws_rounds[name].append(ws_rate(url, args.ws_connections, args.ws_messages))
    ws = {name: statistics.median(rates) for name, rates in ws_rounds.items()}

    baseline, ours = loads["(b) nginx"], loads["(c) sailplane"]
    print()
    print(f"{'HTTP (median)':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
          f"{'rps/nginx':>11}{'p99/nginx':>11}{'CPU us/req':>12}")
    for name, load in loads.items():
        cpu = f"{load.cpu_us:>12.1f}" if load.cpu_us is not None else f"{'':>12}"
        rps_ratio, p99_ratio = load.rps / baseline.rps, load.p99_ms / baseline.p99_ms
        print(f"{name:<16}{load.rps:>10.0f}{load.p50_ms:>9.2f}{load.p99_ms:>9.2f}"
              f"{load.errors:>8}{rps_ratio:>10.2f}x{p99_ratio:>10.2f}x{cpu}")
    print()
    print("per round, (c)/(b):  req/s " + "  ".join(
        f"{c.rps / b.rps:.2f}x" for b, c in zip(rounds["(b) nginx"], rounds["(c) sailplane"],
                                                strict=True))
          + "   p99 " + "  ".join(
        f"{c.p99_ms / b.p99_ms:.2f}x" for b, c in zip(rounds["(b) nginx"],
                                                      rounds["(c) sailplane"], strict=True)))
    if "(d) compared" in rounds:
        print("per round, (c)/(d):  req/s " + "  ".join(
            f"{c.rps / d.rps:.2f}x" for d, c in zip(rounds["(d) compared"],
                                                    rounds["(c) sailplane"], strict=True))
              + "   CPU/req " + "  ".join(
            f"{(c.cpu_us or 0) / (d.cpu_us or 1):.2f}x"
            for d, c in zip(rounds["(d) compared"], rounds["(c) sailplane"], strict=True)))
    print()
    print(f"{'WebSocket':<16}{'msg/s':>10}{'vs direct':>11}   "
          f"({args.ws_connections} connections x {args.ws_messages} echoed 64-byte messages, "
          f"median of {args.rounds})")
    for name, rate in ws.items():
        print(f"{name:<16}{rate:>10.0f}{rate / ws['(a) direct']:>10.2f}x")
    rps_ok = ours.rps >= MIN_RPS_RATIO * baseline.rps
    p99_ok = ours.p99_ms <= MAX_P99_RATIO * baseline.p99_ms
    ws_ok = ws["(c) sailplane"] >= MIN_WS_RATIO * ws["(a) direct"]
    errors_ok = all(load.errors == 0 for runs in rounds.values() for load in runs)
    print()
    print(f"target (c) >= {MIN_RPS_RATIO}x nginx req/s: {ours.rps / baseline.rps:.2f}x "
          f"{'met' if rps_ok else 'MISSED'}")
    print(f"target (c) p99 <= {MAX_P99_RATIO}x nginx p99: {ours.p99_ms / baseline.p99_ms:.2f}x "
          f"{'met' if p99_ok else 'MISSED'}")
    print(f"target (c) WebSocket >= {MIN_WS_RATIO}x direct: "
          f"{ws['(c) sailplane'] / ws['(a) direct']:.2f}x {'met' if ws_ok else 'MISSED'}")
    if not errors_ok:
        print("some requests failed (see the errors column)")

    if args.profile:
        seconds = args.duration
        assert proxy.pid is not None
        with profiled(proxy.pid, seconds, tmp / "profile.txt") as raw:
            wrk(targets["(c) sailplane"], connections=args.connections, threads=1,
                seconds=seconds)
        print()
        print(f"py-spy, the proxy under the same load ({seconds}s): self% total% function")
        for own, total, function in top_functions(raw):
            print(f"  {own:5.1f} {total:6.1f}  {textwrap.shorten(function, 100)}")
    return 0 if (rps_ok and p99_ok and ws_ok and errors_ok) or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
