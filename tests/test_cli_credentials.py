"""The ``credentials`` verbs, the components' refusal to start without (or with the wrong)
credentials, and the client verbs' token: flag, environment, or a clear 401 hint."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sailplane.cli import app
from sailplane.controller.app import create_app
from sailplane.credentials import Credential, Role, mint, new_secret, verify, write_private
from tests.controller.conftest import API_TOKEN, config_for
from tests.controller.server import serving

runner = CliRunner()
CLEAN_ENV = {"SAILPLANE_SECRET": None, "SAILPLANE_SECRET_FILE": None, "SAILPLANE_TOKEN": None,
             "SAILPLANE_TOKEN_FILE": None, "SAILPLANE_DRONE_TOKEN": None,
             "SAILPLANE_DRONE_TOKEN_FILE": None}


def run(*args: str, **env: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={**CLEAN_ENV, **env})
    return result.exit_code, result.stdout, result.stderr


def test_secret_then_credentials_for_each_role(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    assert run("credentials", "secret", "--out", str(secret_file))[0] == 0
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    code, _, err = run("credentials", "secret", "--out", str(secret_file))
    assert code == 2 and "exists" in err
    secret = secret_file.read_text().strip()

    code, out, _ = run("credentials", "new", "--role", "drone", "--drone-id", "d1",
                       "--secret-file", str(secret_file))
    assert code == 0 and verify([secret], out.strip()) == Credential(Role.DRONE, "d1")
    code, out, _ = run("credentials", "new", "--role", "proxy", "--out",
                       str(tmp_path / "proxy.token"), SAILPLANE_SECRET=secret)
    assert code == 0 and out.strip() == str(tmp_path / "proxy.token")
    token = (tmp_path / "proxy.token").read_text().strip()
    assert verify([secret], token) == Credential(Role.PROXY, "proxy")
    assert stat.S_IMODE((tmp_path / "proxy.token").stat().st_mode) == 0o600


@pytest.mark.parametrize(("args", "message"), [
    (["--role", "drone"], "give --drone-id"),
    (["--role", "api", "--drone-id", "d1"], "--drone-id is for drone credentials"),
    (["--role", "root", "--name", "x"], "choose api, drone, proxy, metrics"),
    (["--role", "api"], "give the controller's secret"),
])
def test_credentials_new_refuses_what_makes_no_sense(args: list[str], message: str) -> None:
    code, _, err = run("credentials", "new", *args)
    assert code == 2 and message in err


def test_the_controller_refuses_to_start_without_credentials(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/c.db"
    code, _, err = run("controller", "--database-url", db)
    assert code == 2 and "needs credentials" in err and "--insecure" in err
    write_private(tmp_path / "s", new_secret())
    code, _, err = run("controller", "--database-url", db, "--insecure",
                       "--secret-file", str(tmp_path / "s"))
    assert code == 2 and "contradict" in err
    code, _, err = run("controller", "--database-url", db, SAILPLANE_SECRET="short")
    assert code == 2 and "at least 32" in err


def test_a_drone_checks_its_credential_before_starting(tmp_path: Path) -> None:
    secret = new_secret()
    base = ["drone", "--state-dir", str(tmp_path / "s"), "--controller", "http://127.0.0.1:1"]
    code, _, err = run(*base, SAILPLANE_DRONE_TOKEN=mint(secret, Role.API, "x"))
    assert code == 2 and "role api" in err
    code, _, err = run(*base, "--drone-id", "d2",
                       SAILPLANE_DRONE_TOKEN=mint(secret, Role.DRONE, "d1"))
    assert code == 2 and "the credential is for drone 'd1'" in err
    code, _, err = run(*base, "--token-file", str(tmp_path / "none"))
    assert code == 2 and "No such file" in err


@pytest.fixture
def controller_url(tmp_path: Path) -> Iterator[str]:
    application = create_app(config_for(f"sqlite:///{tmp_path}/c.db"))
    with serving(application) as url:
        yield url
    application.state.engine.dispose()


def test_client_verbs_send_the_token_from_a_file_or_the_environment(
    controller_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # no dev token here
    code, _, err = run("drones", "--controller", controller_url)
    assert code == 2 and "401 unauthorized" in err and "--token-file" in err
    code, _, err = run("drones", "--controller", controller_url, SAILPLANE_TOKEN="sp1.x")
    assert code == 2 and "not valid" in err
    assert run("drones", "--json", "--controller", controller_url,
               SAILPLANE_TOKEN=API_TOKEN)[:2] == (0, "[]\n")
    write_private(tmp_path / "t", API_TOKEN)
    assert run("backends", "--json", "--controller", controller_url, "--token-file",
               str(tmp_path / "t"))[:2] == (0, "[]\n")
