"""The chaos suite with bigger numbers: a longer connect storm, more kills, more keys.

    .venv/bin/python bench/chaos.py [--seed N] [--database postgresql|sqlite|both]
        [--connects 1000] [--keys 50] [--clients 10] [--storm-seconds 240]
        [--controller-kills 8] [--proxy-kills 5] [--drone-kills 8] [--drone-returns 2]
        [--dockerd-restarts 1] [--workdir DIR]

The same run as ``tests/chaos`` (``tests/chaos/run.py``): real ``sailplane`` controllers,
two drones and a proxy as subprocesses (two controllers on one fresh PostgreSQL database,
or one on SQLite), a storm of ``POST /ctrl/connect`` calls (some oversized or malformed)
while a driver SIGKILLs controllers, drones (one kept away past its lease), the proxy and,
at the end, dockerd (started again as scripts/setup does). Prints the seed first, then a
table of the faults injected and of each invariant: held, FAILED (with the first
violations) or NOT EXERCISED. Exits 1 unless every invariant held.

``--dockerd-restarts 0`` spares the engine, which everyone on the machine shares. Logs of
every process and ``evidence.json`` (all that was recorded) stay in ``--workdir``/DATABASE
(a new temporary directory by default). Traffic stays on loopback and the run's own containers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

# The run lives with the tests (tests/chaos/run.py), one code for both; the repository root
# makes it importable from here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chaos.faults import FaultCounts
from tests.chaos.run import ChaosPlan, run_chaos, seed_from_env

from sailplane.runtime.docker.network import backend_network, remove_network

IMAGE = "sailplane/static:latest"  # built by images/build (scripts/setup); never pulled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=None,
                        help="replay a run (default: SAILPLANE_CHAOS_SEED, else random)")
    parser.add_argument("--database", choices=["postgresql", "sqlite", "both"],
                        default="postgresql")
    parser.add_argument("--connects", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--storm-seconds", type=float, default=240.0)
    parser.add_argument("--controller-kills", type=int, default=8)
    parser.add_argument("--proxy-kills", type=int, default=5)
    parser.add_argument("--drone-kills", type=int, default=8)
    parser.add_argument("--drone-returns", type=int, default=2)
    parser.add_argument("--dockerd-restarts", type=int, default=1)
    parser.add_argument("--image", default=IMAGE)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else seed_from_env()
    databases = ["postgresql", "sqlite"] if args.database == "both" else [args.database]
    had_bridge = backend_network().exists()
    held = True
    try:
        for database in databases:
            workdir = (args.workdir / database if args.workdir
                       else Path(tempfile.mkdtemp(prefix=f"chaos-{database}-")))
            workdir.mkdir(parents=True, exist_ok=True)
            plan = ChaosPlan(
                seed=seed, database="sqlite" if database == "sqlite" else "postgresql",
                connects=args.connects, keys=args.keys, clients=args.clients,
                storm_seconds=args.storm_seconds,
                followers=max(24, args.connects // 10),
                faults=FaultCounts(
                    controller_kills=args.controller_kills, proxy_kills=args.proxy_kills,
                    drone_kills=args.drone_kills, drone_returns=args.drone_returns,
                    dockerd_restarts=args.dockerd_restarts))
            report = run_chaos(plan, workdir, args.image)
            print(report.table(), flush=True)
            held = held and report.held
    finally:
        if not had_bridge:  # leave the machine as found (kept while any backend uses it)
            asyncio.run(remove_network())
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
