"""Credentials: minting and checking tokens, secret and token files, and how the CLI finds
its API token."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sailplane.client import find_token
from sailplane.credentials import (
    MAX_TOKEN_CHARS,
    Credential,
    CredentialError,
    Role,
    dev_token_link,
    mint,
    new_secret,
    parse_secrets,
    peek,
    secrets_from,
    verify,
    write_private,
)

SECRET = new_secret()


@pytest.mark.parametrize("subject", ["d1", "drone.with.dots", "host_name-01", "é😀", "a" * 200])
def test_a_token_carries_its_role_and_subject(subject: str) -> None:
    for role in Role:
        token = mint(SECRET, role, subject)
        assert verify([SECRET], token) == Credential(role, subject)
        assert peek(token) == Credential(role, subject)


def test_a_changed_role_subject_or_mac_is_refused() -> None:
    token = mint(SECRET, Role.DRONE, "d1")
    version, role, subject, mac = token.split(".")
    as_d2 = mint(SECRET, Role.DRONE, "d2").split(".")[2]
    for forged in (f"{version}.api.{subject}.{mac}", f"{version}.{role}.{as_d2}.{mac}",
                   f"{version}.{role}.{subject}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",
                   f"{version}.{role}.{subject}.", f"sp0.{role}.{subject}.{mac}"):
        assert verify([SECRET], forged) is None, forged


@pytest.mark.parametrize("token", ["", "nope", "sp1.api", "sp1.root.YQ.x", "sp1.api.!!.x",
                                   "sp1.api.YQ.x.y", "sp1.api..x", "sp1.api._w.x"])
def test_malformed_tokens_are_refused(token: str) -> None:
    assert verify([SECRET], token) is None
    assert peek(token) is None or verify([SECRET], token) is None


def test_a_token_from_another_secret_is_refused_and_rotation_keeps_both() -> None:
    old, new = new_secret(), new_secret()
    token = mint(old, Role.API, "ops")
    assert verify([new], token) is None
    assert verify([new, old], token) == Credential(Role.API, "ops")
    assert verify([SECRET], "x" * (MAX_TOKEN_CHARS + 1)) is None


def test_subjects_have_bounds() -> None:
    for subject in ("", "a" * 201):
        with pytest.raises(CredentialError):
            mint(SECRET, Role.API, subject)


def test_secret_files_need_long_secrets_and_skip_comments() -> None:
    assert parse_secrets(f"# rotated 2024\n{SECRET}\n\n{'b' * 40}\n", "f") == [SECRET, "b" * 40]
    with pytest.raises(CredentialError, match="at least 32"):
        parse_secrets("short", "f")
    with pytest.raises(CredentialError, match="no secret"):
        parse_secrets("# only a comment\n", "f")


def test_secrets_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SAILPLANE_SECRET", raising=False)
    assert secrets_from(None, "SAILPLANE_SECRET") == []
    monkeypatch.setenv("SAILPLANE_SECRET", SECRET)
    assert secrets_from(None, "SAILPLANE_SECRET") == [SECRET]
    path = tmp_path / "secret"
    write_private(path, "c" * 40)
    assert secrets_from(path, "SAILPLANE_SECRET") == ["c" * 40]  # the file wins
    with pytest.raises(CredentialError, match="missing"):
        secrets_from(tmp_path / "missing", "SAILPLANE_SECRET")


def test_write_private_is_0600_whatever_the_umask_and_atomic(tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        path = tmp_path / "sub" / "api-token"
        write_private(path, "one")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        write_private(path, "two")
        assert path.read_text() == "two\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with pytest.raises(FileExistsError):
            write_private(path, "three", replace=False)
        assert path.read_text() == "two\n"
        assert sorted(p.name for p in path.parent.iterdir()) == ["api-token"]  # no leftovers
    finally:
        os.umask(old_umask)


def test_the_cli_finds_its_token_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("SAILPLANE_TOKEN", raising=False)
    assert find_token("http://127.0.0.1:9090") is None
    published = tmp_path / "data" / "api-token"
    write_private(published, "from-dev")
    link = dev_token_link(9090)
    assert link == tmp_path / "state" / "sailplane" / "dev" / "9090.api-token"
    link.parent.mkdir(parents=True)
    link.symlink_to(published)
    for url in ("http://127.0.0.1:9090", "http://localhost:9090/", "http://[::1]:9090"):
        assert find_token(url) == "from-dev", url
    assert find_token("http://127.0.0.1:9091") is None  # another port: another controller
    assert find_token("http://ctrl.example:9090") is None  # a dev token stays on this machine
    monkeypatch.setenv("SAILPLANE_TOKEN", "from-env")
    assert find_token("http://127.0.0.1:9090") == "from-env"
    given = tmp_path / "given"
    write_private(given, "from-file")
    assert find_token("http://ctrl.example:9090", given) == "from-file"
