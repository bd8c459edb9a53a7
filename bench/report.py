"""Run every benchmark (each prints its own baseline and ratio) and write BENCHMARKS.md.

Each script runs as a subprocess with a time limit; its output goes into the report as it
was printed, under the figure's target, with the date and the machine it ran on. The spawn
benchmark's samples become a plot of latency distributions, ours against the raw runtimes;
the density benchmark draws its own plot (spawn latency against live backends).

With ``--only``, the sections of the other benchmarks already in the output file are kept.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PLOT = "bench/spawn-latency.png"
DENSITY_PLOT = "bench/density.png"
# run_all fills to 300 backends per runtime (about 8 minutes for both on the 2-core machine);
# `bench/density.py` alone fills to 1,000, the figure the target is about.
DENSITY_N = 300

# (script, arguments, time limit in seconds, what the figure promises)
BENCHMARKS: list[tuple[str, list[str], int, str]] = [
    ("bench/mounts.py", [], 300,
     "resolving a depth-4 host mount costs at most 3x os.path.realpath, and under 1% of a "
     "container start; resolving and pinning it, under 5%"),
    ("bench/spawn.py", ["--path", "--warm"], 1200,
     "a spawn to `ready` through the executor takes at most 1.15x raw Docker's (and raw "
     "`ctr run`'s) create + start + first HTTP answer, median; the isolated raw series shows "
     "what backend isolation itself costs. The whole cold-spawn path a user waits for "
     "(connect -> first answer through the proxy of a separate `sailplane dev`, one bind "
     "mount) takes at most 1.10x raw Docker Engine API calls with the same mount, median; "
     "warm claims through the same path at most 0.25x"),
    ("bench/warm.py", [], 600,
     "a spawn that claims a warm container, its mount injected, answers in at most 0.25x raw "
     "Docker's create + start + first HTTP answer with the same bind mount, median"),
    ("bench/connect.py", [], 300,
     "`POST /ctrl/connect` to a live key reaches at least 0.5x the requests per second of "
     "`GET /health` on the same server, with a p99 of at most 50 ms at 32 connections, on "
     "SQLite (`sailplane dev`) and PostgreSQL (a standalone controller); new keys beside it"),
    ("bench/proxy.py", [], 600,
     "the proxy, one process, reaches at least 0.6x nginx's requests per second as a reverse "
     "proxy, with a p99 at most 2x nginx's, and WebSocket messages at least 0.5x direct"),
    ("bench/density.py", ["--n", str(DENSITY_N), "--probes", "10", "--plot", DENSITY_PLOT],
     1800,
     "1,000 live backends on one drone with spawn p50 at that load at most 1.5x an idle "
     "drone's, and all of them stopped in at most 15 s (run_all fills to "
     f"{DENSITY_N}; `bench/density.py` alone fills to 1,000)"),
]


def machine() -> str:
    cores = os.cpu_count()
    memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text()
                     .splitlines() if line.startswith("MemTotal:"))
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                  .splitlines() if line.startswith("model name")), platform.machine())
    return (f"{cores} cores ({model}), {memory_kb / 1024 / 1024:.1f} GiB, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def run(script: str, arguments: list[str], limit: int) -> tuple[str, float, int]:
    started = time.monotonic()
    print(f"==> {script} (at most {limit} s)", flush=True)
    try:
        done = subprocess.run([PYTHON, script, *arguments], cwd=ROOT, capture_output=True,
                              text=True, timeout=limit)
        output, status = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        output, status = partial + f"\n(stopped after {limit} s)", -1
    print(output, flush=True)
    return output.rstrip(), time.monotonic() - started, status


def plot(samples: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4))
    names = list(samples)
    axes.boxplot([samples[name] for name in names], orientation="horizontal", showmeans=True)
    axes.set_yticks(range(1, len(names) + 1), names)
    axes.set_xlabel("cold spawn to first HTTP answer (ms)")
    axes.set_title("Spawn latency: Sailplane's executor against the raw runtimes")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def merged(existing: str, fresh: list[str]) -> list[str]:
    """The sections of ``existing`` (a BENCHMARKS.md) with those of ``fresh`` in place of the
    ones of the same script, in the order of BENCHMARKS; new ones at the end."""
    old = ["## " + part for part in existing.split("\n## ")[1:]]
    by_script = {section.split("`")[1]: section.rstrip("\n") + "\n" for section in old}
    by_script.update({section.split("`")[1]: section for section in fresh})
    order = [script for script, *_ in BENCHMARKS]
    return sorted(by_script.values(), key=lambda section: (
        order.index(section.split("`")[1]) if section.split("`")[1] in order else len(order)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--only", nargs="*", help="run only these scripts (e.g. bench/mounts.py)")
    args = parser.parse_args()
    sections = []
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        samples_file = Path(tmp) / "spawn.json"
        for script, arguments, limit, target in BENCHMARKS:
            if args.only and script not in args.only:
                continue
            extra = ["--samples", str(samples_file)] if script == "bench/spawn.py" else []
            output, seconds, status = run(script, arguments + extra, limit)
            failed = failed or status != 0
            sections.append(f"## `{script}`\n\nTarget: {target}.\n\n"
                            f"```\n{output}\n```\n\n({seconds:.0f} s, exit status {status})\n")
            if script == "bench/spawn.py" and samples_file.exists():
                plot(json.loads(samples_file.read_text()), ROOT / PLOT)
                sections[-1] += f"\n![spawn latency distributions]({PLOT})\n"
            if script == "bench/density.py" and status == 0:
                sections[-1] += f"\n![spawn latency against live backends]({DENSITY_PLOT})\n"
    header = (
        "# Benchmarks\n\n"
        f"Written by `bench/run_all` on {datetime.date.today().isoformat()}, on "
        f"{machine()}. Every figure is printed beside its baseline, measured in the same run; "
        "ratios compare the two. Loads go only to loopback and to containers started here.\n"
    )
    if args.only and args.output.exists():
        sections = merged(args.output.read_text(), sections)
    args.output.write_text(header + "\n" + "\n".join(sections))
    print(f"wrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
