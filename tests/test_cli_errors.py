"""The error paths of each verb, black-box: the installed ``sailplane`` command in a process,
against a real controller (SQLite, credentials on) where one is needed. Every failure is one
line on stderr starting ``error:`` and exit status 2 (a JSON error object on stdout under
--json); no traceback unless --debug."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sailplane.credentials import Role, mint, new_secret
from tests.integration.controller_fixtures import (
    SAILPLANE,
    START_TIMEOUT,
    Process,
    free_port,
    wait_until,
)

SECRET = new_secret()


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
        ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SAILPLANE_")}
    return subprocess.run([str(SAILPLANE), *args], capture_output=True, text=True,
                          timeout=timeout, env={**clean, **(env or {})})


def one_line(done: subprocess.CompletedProcess[str], status: int = 2) -> str:
    assert done.returncode == status, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A controller with credentials on and no drone."""
    root = tmp_path_factory.mktemp("controller")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = Process("controller", [
        str(SAILPLANE), "controller", "--port", str(port),
        "--database-url", f"sqlite:///{root}/c.db",
    ], root / "controller.log", env={"SAILPLANE_SECRET": SECRET})
    process.start()
    try:
        wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, START_TIMEOUT,
                   "the controller")
        yield url
    finally:
        process.stop()


@pytest.fixture
def api(controller: str) -> dict[str, str]:
    return {"SAILPLANE_TOKEN": mint(SECRET, Role.API, "tests"),
            "SAILPLANE_CONTROLLER": controller}


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(("args", "message"), [
    (["connect", "--image", "sailplane/demo:latest"], "no drone is connected"),
    (["connect", "--key", "nobody"], "no live backend for key 'nobody'"),
    (["status", "b-0000000000000000"], "no backend 'b-0000000000000000' (404 not_found)"),
    (["status", "b-0000000000000000", "--follow"], "(404 not_found)"),
    (["terminate", "b-0000000000000000"], "(404 not_found)"),
    (["drones", "drain", "nosuch"], "no drone 'nosuch' (404 not_found)"),
    (["drones", "undrain", "nosuch"], "no drone 'nosuch' (404 not_found)"),
    (["connect", "--image", "Bad Image!!"], "spawn_config.executable.image: "),
])
def test_api_errors(api: dict[str, str], args: list[str], message: str) -> None:
    assert message in one_line(run(*args, env=api))


@pytest.mark.parametrize("args", [
    ["connect", "--key", "nobody"], ["status", "b-0000000000000000"],
    ["status", "b-0000000000000000", "--follow"], ["drones", "drain", "nosuch"],
    ["terminate", "b-0000000000000000"],
])
def test_errors_are_json_under_json(api: dict[str, str], args: list[str]) -> None:
    done = run(*args, "--json", env=api)
    assert done.returncode == 2 and done.stderr == ""
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "not_found" and error["status"] == 404 and error["message"]


def test_lists_succeed_as_json(api: dict[str, str]) -> None:
    for verb in ("backends", "drones"):
        done = run(verb, "--json", env=api)
        assert done.returncode == 0 and json.loads(done.stdout) == []


def test_without_a_token_the_error_says_where_to_get_one(controller: str) -> None:
    line = one_line(run("backends", "--controller", controller))
    assert "(401 unauthorized)" in line and "SAILPLANE_TOKEN" in line


def test_an_unreachable_controller(busy_port: int) -> None:
    done = run("backends", "--controller", "http://127.0.0.1:1", "--json")
    assert done.returncode == 2 and json.loads(done.stdout)["error"]["code"] == "unreachable"
    assert "cannot reach the controller" in one_line(
        run("drones", "--controller", "http://127.0.0.1:1"))


@pytest.mark.parametrize(("verb", "flag"), [
    (["controller", "--insecure", "--port"], "--port"),
    (["proxy", "--port"], "--port"),
    (["dev", "--controller-port"], "--controller-port"),
    (["dev", "--controller-port", "0", "--proxy-port"], "--proxy-port"),
])
def test_a_port_in_use_is_one_line(busy_port: int, verb: list[str], flag: str,
                                   tmp_path: Path) -> None:
    args = [*verb, str(busy_port)]
    if verb[0] == "dev":
        args += ["--data-dir", str(tmp_path / "d")]
    line = one_line(run(*args))
    assert line == f"error: port {busy_port} is in use ({flag})"


@pytest.mark.parametrize(("args", "message"), [
    (["controller"], "the controller needs credentials"),
    (["drone", "--runtime", "nosuch"], "--runtime 'nosuch': choose docker or containerd"),
    (["drone", "--host-volume", "data=/p:rx"], "'rx' is not an access"),
    (["drone", "--host-volume", "etc=/etc:ro"], "/etc"),
    (["drone", "--policy", "/nonexistent.toml"], "cannot read policy file"),
    (["dev", "--host-volume", "data=/p:rx"], "'rx' is not an access"),
    (["dev", "--runtime", "nosuch"], "--runtime 'nosuch'"),
    (["proxy", "--token-file", "/nonexistent"], "/nonexistent"),
    (["mounts", "plan", "/nonexistent.json"], None),
    (["volumes", "rm", "--namespace", "ns", "../x"], ""),
    (["credentials", "new", "--role", "king"], "--role 'king': choose"),
    (["credentials", "new", "--role", "api"], "give the controller's secret"),
])
def test_startup_and_input_errors(args: list[str], message: str | None) -> None:
    done = run(*args)
    if message is None:  # mounts plan answers in JSON on stdout, as documented
        assert done.returncode == 2
        assert json.loads(done.stdout)["error"]["code"] == "invalid_request"
        return
    assert message in one_line(done)


def test_a_banner_is_not_printed_before_validation_fails(tmp_path: Path) -> None:
    done = run("dev", "--host-volume", "data=/p:rx", "--data-dir", str(tmp_path / "d"))
    assert "Sailplane dev" not in done.stdout + done.stderr


def test_a_failure_at_runtime_is_one_line_and_debug_shows_the_traceback(
    tmp_path: Path,
) -> None:
    # A database URL that cannot be opened fails after the checks, inside the server.
    args = ["controller", "--insecure", "--port", str(free_port()),
            "--database-url", "postgresql://nobody@127.0.0.1:1/none"]
    done = run(*args, timeout=90)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    debug = run("--debug", *args, timeout=90)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
