"""SIGKILL the Docker engine and start it again as ``scripts/setup`` starts it.

There is no init system here: ``scripts/setup`` starts ``dockerd`` in a session of its own
(``setsid nohup dockerd ARGS >>LOG 2>&1 </dev/null``) when no engine answers. After the kill
the same command line is started the same way, with the arguments the killed ``dockerd`` ran
with. :func:`ensure_engine` is the guard every run ends in: whatever failed, the engine is
answering again afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PID_FILE = Path("/var/run/docker.pid")
# scripts/setup waits 60 s by default; an engine restored with every container of a busy
# machine (other tests' too) has taken longer.
START_TIMEOUT_SECONDS = float(os.environ.get("SAILPLANE_DOCKERD_TIMEOUT", "120"))


class EngineDown(RuntimeError):
    """dockerd did not answer again."""


def engine_answers() -> bool:
    try:
        done = subprocess.run(["docker", "info", "--format", "{{.ID}}"], capture_output=True,
                              timeout=15, check=False)
    except subprocess.TimeoutExpired:  # starting: restoring every container takes a while
        return False
    return done.returncode == 0


def _dockerd_pid() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(PID_FILE.read_text().strip())
        os.kill(pid, 0)
        return pid
    return None


def _argv(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode() for part in raw.split(b"\0") if part] or ["dockerd"]


def _log_path() -> Path:
    return Path(os.environ.get("SAILPLANE_DOCKERD_LOG", str(REPO / ".sailplane/dockerd.log")))


def _start(argv: list[str]) -> None:
    log = _log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        # setsid + nohup: its own session, immune to our hangups, outliving this process.
        subprocess.Popen(["setsid", "nohup", *argv], stdin=subprocess.DEVNULL, stdout=out,
                         stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def _wait_answering(timeout: float) -> float:
    started = time.monotonic()
    while not engine_answers():
        if time.monotonic() - started > timeout:
            raise EngineDown(f"dockerd did not answer within {timeout:.0f}s "
                             f"(log: {_log_path()})")
        time.sleep(0.5)
    return time.monotonic() - started


def kill_and_restart(down_seconds: float) -> tuple[float, float]:
    """SIGKILL dockerd, wait ``down_seconds``, start it again; when it was killed and when it
    answered again (wall clock)."""
    pid = _dockerd_pid()
    if pid is None:
        raise EngineDown(f"no running dockerd in {PID_FILE}")
    argv = _argv(pid)
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(down_seconds)
    _start(argv)
    _wait_answering(START_TIMEOUT_SECONDS)
    return killed, time.time()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie no one reaps (its parent is init here) still answers kill(0).
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return False


def ensure_engine() -> None:
    """Start dockerd (plain ``dockerd``, as scripts/setup does, with its extra arguments) if no
    engine answers and none is starting; wait until it answers. Every run ends with this."""
    if engine_answers():
        return
    if _dockerd_pid() is None:
        _start(["dockerd", *os.environ.get("SAILPLANE_DOCKERD_ARGS", "").split()])
    _wait_answering(START_TIMEOUT_SECONDS)
