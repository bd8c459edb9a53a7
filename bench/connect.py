"""Connect to an existing key (the hot path) against one indexed read, on the same server.

    .venv/bin/python bench/connect.py [--seconds 5] [--requests 3000] [--concurrency 32]
                                      [--check]

Starts a controller on a fresh SQLite database in a child process (uvicorn, the app from
``create_app``), registers a fake drone straight into the database, creates one backend for a
key, then alternates two bounded runs through one ``httpx.AsyncClient`` with ``--concurrency``
requests in flight: ``POST /ctrl/connect`` with that key (join the live backend, mint a token:
two reads and one insert in a write transaction), and the baseline, ``GET /bench/read``, a route
added here to the same app that does one read of ``backend_keys`` by its primary key in a worker
thread, like the API's handlers. Each run stops after ``--requests`` requests or ``--seconds``.

Prints requests/s and p50/p99 latency of both and the throughput ratio; target at least 0.5x
(``--check`` exits 1 when missed). Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

KEY = {"name": "bench-key", "namespace": "bench", "tag": ""}
TARGET = 0.5


def serve(port: int, database: str) -> None:
    """The child: the controller app plus the baseline route, until killed."""
    import uvicorn
    from sqlalchemy import select

    from sailplane.controller.app import create_app
    from sailplane.controller.config import ControllerConfig
    from sailplane.controller.db.tables import backend_keys

    # Credentials on, as in production: the parent passes the secret, and sends an API token.
    app = create_app(ControllerConfig(database_url=database,
                                      secrets=[os.environ["SAILPLANE_SECRET"]]))
    engine = app.state.engine

    def read() -> str | None:
        with engine.connect() as conn:
            found: str | None = conn.execute(
                select(backend_keys.c.backend_id).where(
                    backend_keys.c.namespace == KEY["namespace"],
                    backend_keys.c.name == KEY["name"],
                )
            ).scalar()
        return found

    @app.get("/bench/read")
    async def bench_read() -> dict[str, str | None]:
        return {"backend_id": await asyncio.to_thread(read)}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


@dataclass
class Run:
    name: str
    latencies: list[float]
    seconds: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def line(self) -> str:
        return (f"{self.name:<22} {len(self.latencies):>6} req  {self.rate:>8.0f} req/s  "
                f"p50 {self.quantile(0.5):6.2f} ms  p99 {self.quantile(0.99):6.2f} ms")


async def load(client: httpx.AsyncClient, name: str, request: dict[str, Any], total: int,
               seconds: float, concurrency: int) -> Run:
    latencies: list[float] = []
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal issued
        while issued < total and time.perf_counter() < deadline:
            issued += 1
            started = time.perf_counter()
            response = await client.request(**request)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Run(name, latencies, time.perf_counter() - started)


async def measure(base: str, args: argparse.Namespace, token: str) -> tuple[Run, Run]:
    connect: dict[str, Any] = {"method": "POST", "url": f"{base}/ctrl/connect",
                               "json": {"key": KEY}}
    read: dict[str, Any] = {"method": "GET", "url": f"{base}/bench/read"}
    limits = httpx.Limits(max_connections=args.concurrency)
    headers = {"Authorization": f"Bearer {token}"}  # both paths carry it
    async with httpx.AsyncClient(timeout=30, limits=limits, headers=headers) as client:
        spawned = await client.post(f"{base}/ctrl/connect", json={
            "key": KEY, "spawn_config": {"executable": {"image": "sailplane/demo:latest"}},
        })
        spawned.raise_for_status()
        assert (await client.request(**read)).json()["backend_id"] == spawned.json()["backend_id"]
        for request in (connect, read):  # warm up both paths
            await load(client, "warm-up", request, 200, 2, args.concurrency)
        half = args.seconds / 2  # two halves each, alternating, so both see the same machine
        runs: dict[str, list[Run]] = {"connect": [], "read": []}
        for _ in range(2):
            for name, request in (("connect", connect), ("read", read)):
                runs[name].append(await load(client, name, request, args.requests // 2, half,
                                             args.concurrency))
    merged = [Run(f"{name} ({'existing key' if name == 'connect' else 'baseline'})",
                  [x for r in parts for x in r.latencies], sum(r.seconds for r in parts))
              for name, parts in runs.items()]
    return merged[0], merged[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per path, at most")
    parser.add_argument("--requests", type=int, default=3000, help="per path, at most")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--check", action="store_true", help=f"exit 1 below {TARGET}x")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "DATABASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return 0

    from sailplane.controller import drones
    from sailplane.controller.db.engine import make_engine
    from sailplane.credentials import Role, mint, new_secret
    from sailplane.protocol import Hello

    secret = new_secret()

    with tempfile.TemporaryDirectory(prefix="sailplane-bench-") as tmp:
        database = f"sqlite:///{Path(tmp) / 'controller.db'}"
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        child = subprocess.Popen([sys.executable, __file__, "--serve", str(port), database],
                                 env={**os.environ, "SAILPLANE_SECRET": secret})
        engine = None
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if child.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the controller did not start")
                time.sleep(0.1)
            engine = make_engine(database)
            drones.register(engine, Hello(drone_id="bench-drone", runtime="fake",
                                          host_volumes=[]))
            connect, read = asyncio.run(measure(base, args, mint(secret, Role.API, "bench")))
        finally:
            child.terminate()
            child.wait(10)
            if engine is not None:
                engine.dispose()
    ratio = connect.rate / read.rate
    print(f"SQLite, {args.concurrency} concurrent, one uvicorn worker, {os.cpu_count()} CPUs")
    print(connect.line())
    print(read.line())
    print(f"ratio connect/read throughput: {ratio:.2f}x (target >= {TARGET}x)"
          f"{'' if ratio >= TARGET else '  MISSED'}")
    return 0 if ratio >= TARGET or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
