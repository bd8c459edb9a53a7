"""Load generation and sampling for the HTTP benchmarks: ``wrk`` runs parsed into figures, and
py-spy profiles of a server under that load. Both run outside the measured process.

``wrk`` (Debian's 4.1) is driven with a Lua script when a request needs a method, headers or
a body other than a plain GET; :func:`lua_post` writes one.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
KEY_PLACEHOLDER = "@@KEY@@"  # where lua_post(unique_key=...) puts each request's key name


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers and socket errors
    requests: int
    cpu_us: float | None = None  # the server's CPU time per request, where measured


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if found is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def _field(pattern: str, out: str) -> str:
    found = re.search(pattern, out)
    if found is None:
        raise RuntimeError(f"wrk printed no {pattern!r}:\n{out}")
    return found.group(1)


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time ``pid`` has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, *, connections: int, threads: int, seconds: float,
        script: Path | None = None, headers: dict[str, str] | None = None,
        server_pid: int | None = None) -> Load:
    """One bounded ``wrk`` run against ``url`` (keep-alive connections), parsed; with
    ``server_pid``, also that process's CPU time per request."""
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--latency", "--timeout", "5s"]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    if script is not None:
        args += ["-s", str(script)]
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
    done = subprocess.run([*args, url], capture_output=True, text=True, timeout=seconds + 30,
                          check=True)
    cpu = cpu_seconds(server_pid) - cpu_before if server_pid else None
    out = done.stdout
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    requests = int(_field(r"(\d+) requests in", out))
    return Load(rps=float(_field(r"Requests/sec:\s+([\d.]+)", out)),
                p50_ms=_ms(_field(r"\s50%\s+(\S+)", out)),
                p99_ms=_ms(_field(r"\s99%\s+(\S+)", out)),
                errors=errors, requests=requests,
                cpu_us=cpu * 1e6 / requests if cpu is not None and requests else None)


def median_load(runs: list[Load]) -> Load:
    """Each figure's median over the rounds (errors and requests: the totals)."""
    cpus = [r.cpu_us for r in runs if r.cpu_us is not None]
    return Load(rps=statistics.median(r.rps for r in runs),
                p50_ms=statistics.median(r.p50_ms for r in runs),
                p99_ms=statistics.median(r.p99_ms for r in runs),
                errors=sum(r.errors for r in runs), requests=sum(r.requests for r in runs),
                cpu_us=statistics.median(cpus) if cpus else None)


def lua_post(path: Path, url_path: str, body: Any, *, unique_key: str | None = None) -> Path:
    """Write a wrk script that POSTs ``body`` as JSON to ``url_path``.

    With ``unique_key`` (a prefix), every request gets its own key name, ``PREFIX-THREAD-N``,
    in place of :data:`KEY_PLACEHOLDER` in ``body``: each request is a new key."""
    encoded = json.dumps(body, separators=(",", ":"))
    if unique_key is None:
        path.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.path = {_lua_string(url_path)}\n"
            f"wrk.body = {_lua_string(encoded)}\n")
        return path
    before, _, after = encoded.partition(KEY_PLACEHOLDER)
    path.write_text(
        "local made = 0\n"
        "function setup(thread) made = made + 1; thread:set('tid', made) end\n"
        "local n = 0\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        "function request()\n"
        "  n = n + 1\n"
        f"  local name = {_lua_string(unique_key + '-')} .. tid .. '-' .. n\n"
        # nil headers: wrk.headers, which hold the -H ones (a table here would replace them)
        f"  return wrk.format('POST', {_lua_string(url_path)}, nil,\n"
        f"    {_lua_string(before)} .. name .. {_lua_string(after)})\n"
        "end\n")
    return path


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# -- profiles --------------------------------------------------------------------------------


def py_spy() -> str:
    """py-spy from PATH or from the virtual environment this bench runs in ("" if none)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else "")


@contextlib.contextmanager
def profiled(pid: int, seconds: float, out: Path) -> Iterator[Path]:
    """py-spy samples ``pid`` (all its threads) for ``seconds`` while the block runs."""
    spy = subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--duration",
                            str(max(1, round(seconds))), "--format", "raw", "--output",
                            str(out), "--nonblocking", "--threads"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    try:
        yield out
    finally:
        spy.wait(seconds + 30)


def top_functions(raw: Path, count: int = 15) -> list[tuple[float, float, str]]:
    """(self %, total %, function) from py-spy's collapsed stacks, by self time."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        n = int(number)
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    return [(100 * n / samples, 100 * total[f] / samples, f) for f, n in own.most_common(count)]
