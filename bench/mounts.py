"""What the safe mount walk and the pinning cost, against their baselines from the same run.

    .venv/bin/python bench/mounts.py [--n 20000] [--pins 2000] [--batch 500] [--starts 5]
                                     [--check]

Resolves a depth-4 host mount (``sub_path`` ``a/b/c/d``, directories already there) ``--n``
times with each walk method, ``openat2`` and ``openat``, and ``os.path.realpath`` of the same
path as many times, in interleaved batches so that all three see the same machine state. Then
resolves *and pins* the same mount ``--pins`` times with each pin method (``open_tree`` and the
``/proc/self/fd`` bind), each pin released again as a drone does when the container goes: the
whole per-mount cost of pinning. Then times ``--starts`` container starts of ``sailplane/static``
(create + start + wait for ``true``) through the Docker SDK. Targets: a resolve costs at most 3x
a realpath and under 1% of a container start; resolve + pin + release under 5% of a container
start. ``--check`` exits 1 when one is missed. Needs root (pinning mounts).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from sailplane.mounts.pin import DEFAULT_PIN_METHOD, PinMethod, StagingArea
from sailplane.mounts.resolve import (
    HAVE_OPENAT2,
    CreatedDirectories,
    Method,
    open_beneath,
    resolve_beneath,
)

REPO = Path(__file__).resolve().parents[1]
IMAGE = "sailplane/static:latest"
PARTS = ("a", "b", "c", "d")
MAX_REALPATH_RATIO = 3.0
MAX_START_FRACTION = 0.01
MAX_PIN_START_FRACTION = 0.05
RESOLVE_BUDGET_SECONDS = 30.0  # the resolve loops stop early past this, whatever --n says
CONTAINER_TIMEOUT_SECONDS = 30
BENCH_LABELS = {"dev.sailplane.bench": "1"}


@dataclass(frozen=True)
class PerCall:
    """Per-call cost in microseconds: the median and the spread of the batch means."""

    calls: int
    median_us: float
    min_us: float
    max_us: float


def time_interleaved(
    candidates: dict[str, Callable[[], object]], n: int, batch: int, budget: float
) -> dict[str, PerCall]:
    """Run every candidate ``n`` times in batches, rotating which goes first each round."""
    names = list(candidates)
    for name in names:  # warm caches and the dentry cache; not counted
        for _ in range(batch):
            candidates[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    deadline = time.monotonic() + budget
    rounds = max(1, n // batch)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            call = candidates[name]
            started = time.perf_counter_ns()
            for _ in range(batch):
                call()
            samples[name].append((time.perf_counter_ns() - started) / batch / 1000)
        if time.monotonic() > deadline:
            break
    return {
        name: PerCall(len(values) * batch, statistics.median(values), min(values), max(values))
        for name, values in samples.items()
    }


def resolve_costs(n: int, batch: int) -> dict[str, PerCall]:
    with tempfile.TemporaryDirectory(prefix="sailplane-bench-") as tmp:
        root = os.path.realpath(tmp)  # a host volume root is canonical (the policy makes it so)
        path = os.path.join(root, *PARTS)
        os.makedirs(path)
        methods: list[Method] = ["openat2", "openat"] if HAVE_OPENAT2 else ["openat"]

        def walk(method: Method) -> Callable[[], object]:
            def call() -> str:
                return resolve_beneath(root, PARTS, mount=0, field="volume_mounts[0].sub_path",
                                       method=method)
            return call

        candidates: dict[str, Callable[[], object]] = {m: walk(m) for m in methods}
        candidates["realpath"] = lambda: os.path.realpath(path)
        assert all(call() == path for call in candidates.values())
        return time_interleaved(candidates, n, batch, RESOLVE_BUDGET_SECONDS)


def pin_costs(n: int, batch: int) -> dict[str, PerCall]:
    """Resolve + pin + release of one mount, per pin method (what a spawn and its removal pay
    per host mount on top of the walk)."""
    with tempfile.TemporaryDirectory(prefix="sailplane-bench-") as tmp:
        root = os.path.realpath(tmp)
        os.makedirs(os.path.join(root, "volume", *PARTS))
        volume = os.path.join(root, "volume")
        methods: list[PinMethod] = (["open_tree", "bind"] if DEFAULT_PIN_METHOD == "open_tree"
                                    else ["bind"])
        areas = {m: StagingArea(Path(root) / f"staging-{m}", m) for m in methods}

        def cycle(area: StagingArea) -> Callable[[], object]:
            def call() -> None:
                created = CreatedDirectories()
                _, fd = open_beneath(volume, PARTS, mount=0, field="f", created=created)
                try:
                    area.pin(fd, "b-bench", 0, True, 0, "f")
                finally:
                    os.close(fd)
                    created.release()
                area.release("b-bench")
            return call

        try:
            return time_interleaved({f"pin ({m})": cycle(a) for m, a in areas.items()}, n,
                                    batch, RESOLVE_BUDGET_SECONDS)
        finally:
            for area in areas.values():
                area.sweep(keep=())


def container_start_ms(starts: int) -> tuple[float | None, str]:
    """Median milliseconds of create + start + wait of ``true``; or (None, why not)."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        return None, f"no Docker engine answers ({exc})"
    try:
        if not _ensure_image(client):
            return None, f"no image {IMAGE} (run images/build static)"
        api = client.api
        # No network: `true` needs none, and this is then a lower bound on a real backend's
        # start (which also gets a veth pair and a published port): a strict denominator.
        host_config = api.create_host_config(network_mode="none")
        timings: list[float] = []
        for run in range(starts + 1):  # the first warms the engine's caches; not counted
            started = time.perf_counter()
            container = api.create_container(IMAGE, ["true"], host_config=host_config,
                                             labels=BENCH_LABELS)
            try:
                api.start(container)
                status = api.wait(container, timeout=CONTAINER_TIMEOUT_SECONDS)
                elapsed = time.perf_counter() - started
            finally:
                api.remove_container(container, force=True)
            if status["StatusCode"] != 0:
                return None, f"`true` exited {status['StatusCode']} in {IMAGE}"
            if run:
                timings.append(elapsed * 1000)
    finally:
        client.close()
    return statistics.median(timings), f"median of {starts}, network none"


def _ensure_image(client: docker.DockerClient) -> bool:
    """Whether the image is there, after building it with images/build if it was not."""
    try:
        client.images.get(IMAGE)
        return True
    except docker.errors.ImageNotFound:
        pass
    build = REPO / "images" / "build"
    if not (os.access(build, os.X_OK) and shutil.which("docker")):
        return False
    done = subprocess.run([str(build), "static"], capture_output=True, timeout=300, check=False)
    return done.returncode == 0


def report(costs: dict[str, PerCall], pins: dict[str, PerCall], start_ms: float | None,
           start_note: str) -> bool:
    """Print the table; return whether every target was met."""
    baseline = costs["realpath"].median_us
    met = True
    calls = costs["realpath"].calls
    print(f"Resolving a depth-{len(PARTS)} host mount, {calls} calls each, interleaved batches")
    print(f"{'':24} {'us/call':>8} {'batch range':>13} {'vs realpath':>11} "
          f"{'of a start':>10}  target")
    for name, cost in costs.items():
        ratio = cost.median_us / baseline
        share = None if start_ms is None else cost.median_us / (start_ms * 1000)
        if name == "realpath":
            label, verdict = "os.path.realpath", "baseline"
        else:
            ok = ratio <= MAX_REALPATH_RATIO and (share is None or share < MAX_START_FRACTION)
            met = met and ok
            label, verdict = f"resolve ({name})", "met" if ok else "MISSED"
        spread = f"{cost.min_us:.1f}-{cost.max_us:.1f}"
        print(f"{label:24} {cost.median_us:8.2f} {spread:>13} {ratio:10.2f}x "
              f"{'-' if share is None else f'{share:.4%}':>10}  {verdict}")
    for name, cost in pins.items():
        share = None if start_ms is None else cost.median_us / (start_ms * 1000)
        ok = share is not None and share < MAX_PIN_START_FRACTION
        met = met and ok
        spread = f"{cost.min_us:.1f}-{cost.max_us:.1f}"
        print(f"{'resolve+' + name:24} {cost.median_us:8.2f} {spread:>13} {'':>11} "
              f"{'-' if share is None else f'{share:.4%}':>10}  {'met' if ok else 'MISSED'}")
    if start_ms is None:
        print(f"container start: not measured: {start_note}")
    else:
        print(f"container start of {IMAGE}, create+start+wait `true`: {start_ms:.1f} ms "
              f"({start_note})")
    print(f"targets: resolve <= {MAX_REALPATH_RATIO:g}x realpath and < {MAX_START_FRACTION:.0%} "
          f"of a container start; resolve+pin+release < {MAX_PIN_START_FRACTION:.0%} of one"
          + ("" if HAVE_OPENAT2 else "; this kernel has no openat2, only openat ran"))
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20000, help="resolves per method")
    parser.add_argument("--pins", type=int, default=2000, help="resolve+pin cycles per method")
    parser.add_argument("--batch", type=int, default=500, help="calls per timed batch")
    parser.add_argument("--starts", type=int, default=5, help="container starts to time")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    if min(args.n, args.pins, args.batch, args.starts) < 1:
        parser.error("--n, --pins, --batch and --starts must be positive")
    costs = resolve_costs(args.n, min(args.batch, args.n))
    pins = pin_costs(args.pins, min(args.batch, args.pins))
    start_ms, start_note = container_start_ms(args.starts)
    met = report(costs, pins, start_ms, start_note)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
