"""``sailplane dev``'s credentials and its data directory's protection, without starting it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sailplane.client import find_token
from sailplane.credentials import Credential, Role, dev_token_link, new_secret, peek, verify
from sailplane.dev import DevConfig, dev_parts, publish_api_token
from sailplane.errors import PolicyError


def test_each_part_gets_a_credential_of_its_role(tmp_path: Path) -> None:
    secret = new_secret()
    controller, drone, proxy = dev_parts(DevConfig(data_dir=tmp_path / "d", drone_id="dv"),
                                         secret)
    assert controller.secrets == [secret] and not controller.insecure
    assert drone.token and verify([secret], drone.token) == Credential(Role.DRONE, "dv")
    assert proxy.ctrl_token and peek(proxy.ctrl_token) == Credential(Role.PROXY, "dev")
    assert verify([secret], proxy.ctrl_token)
    assert secret not in repr(controller)


def test_the_api_token_is_private_and_found_by_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("SAILPLANE_TOKEN", raising=False)
    config = DevConfig(data_dir=tmp_path / "d", controller_port=9190)
    secret = new_secret()
    path = publish_api_token(config, secret)
    assert path == tmp_path / "d" / "api-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert verify([secret], path.read_text().strip()) == Credential(Role.API, "dev")
    assert dev_token_link(9190).resolve() == path
    assert find_token("http://127.0.0.1:9190") == path.read_text().strip()
    again = publish_api_token(config, new_secret())  # a restart: a fresh token replaces it
    assert verify([secret], again.read_text().strip()) is None


@pytest.mark.parametrize("volume", ["{root}", "{root}/d", "{root}/d/drone"])
def test_a_host_volume_exposing_the_data_directory_is_refused(
    tmp_path: Path, volume: str,
) -> None:
    (tmp_path / "d" / "drone").mkdir(parents=True)
    config = DevConfig(data_dir=tmp_path / "d",
                       host_volumes=[f"x={volume.format(root=tmp_path)}:rw"])
    with pytest.raises(PolicyError):
        dev_parts(config)


def test_the_built_in_drone_id_is_unique_to_the_data_directory(tmp_path):
    ids = [dev_parts(DevConfig(data_dir=tmp_path / name))[1].drone_id for name in ("a", "b", "a")]
    assert ids[0] != ids[1] and ids[0] == ids[2]
    assert all(drone_id.startswith("dev-") for drone_id in ids)
