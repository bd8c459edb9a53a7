"""Run every benchmark (each prints its own baseline and ratio) and write BENCHMARKS.md.

Each script runs as a subprocess with a time limit; its output goes into the report as it
was printed, under the figure's target, with the date and the machine it ran on. The spawn
benchmark's samples become a plot of latency distributions, ours against the raw runtimes.
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

# (script, arguments, time limit in seconds, what the figure promises)
BENCHMARKS: list[tuple[str, list[str], int, str]] = [
    ("bench/mounts.py", [], 300,
     "resolving a depth-4 host mount costs at most 3x os.path.realpath, and under 1% of a "
     "container start"),
    ("bench/spawn.py", [], 900,
     "a spawn to `ready` through the executor takes at most 1.15x raw Docker's (and raw "
     "`ctr run`'s) create + start + first HTTP answer, median"),
    ("bench/connect.py", [], 300,
     "a connect to a live key reaches at least 0.5x the requests per second of one indexed "
     "read on the same server stack"),
    ("bench/proxy.py", [], 600,
     "the proxy, one process, reaches at least 0.5x nginx's requests per second as a reverse "
     "proxy, with a p99 at most 2x nginx's"),
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
    axes.boxplot([samples[name] for name in names], vert=False, showmeans=True)
    axes.set_yticks(range(1, len(names) + 1), names)
    axes.set_xlabel("cold spawn to first HTTP answer (ms)")
    axes.set_title("Spawn latency: Sailplane's executor against the raw runtimes")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


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
                sections.append(f"![spawn latency distributions]({PLOT})\n")
    header = (
        "# Benchmarks\n\n"
        f"Written by `bench/run_all` on {datetime.date.today().isoformat()}, on "
        f"{machine()}. Every figure is printed beside its baseline, measured in the same run; "
        "ratios compare the two. Loads go only to loopback and to containers started here.\n"
    )
    args.output.write_text(header + "\n" + "\n".join(sections))
    print(f"wrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
