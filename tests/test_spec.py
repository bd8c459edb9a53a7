"""The public request models (``sailplane.spec``): Plane's JSON unchanged, mounts strict."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from sailplane.spec import (
    ConnectRequest,
    ExecutorConfig,
    HostMountSpec,
    PullPolicy,
    TmpfsMountSpec,
    VolumeMountSpec,
)

from .mounts.examples import DESIGN_3_REQUEST, PLANE_CONNECT_REQUEST


def errors_of(model: type[Any], data: Any) -> list[tuple[str, tuple[str | int, ...]]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [(error["type"], tuple(error["loc"])) for error in info.value.errors()]


def executable(*volume_mounts: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"image": "img", "volume_mounts": list(volume_mounts), **fields}


# --- documented examples ------------------------------------------------------------------


def test_the_design_3_example_parses_unchanged():
    request = ConnectRequest.model_validate_json(DESIGN_3_REQUEST)
    assert request.key is not None and request.spawn_config is not None
    assert (request.key.name, request.key.namespace, request.key.tag) == ("doc-42", "editor", "")
    spawn = request.spawn_config
    assert (spawn.pool, spawn.lifetime_limit_seconds, spawn.max_idle_seconds) == ("", 3600, 60)
    assert spawn.use_static_token is False
    exe = spawn.executable
    assert exe.image == "sailplane/demo:latest"
    assert exe.pull_policy is PullPolicy.IF_NOT_PRESENT
    assert exe.env == {"MODE": "prod"}
    assert exe.resource_limits.memory_limit_bytes == 268435456
    assert exe.resource_limits.cpu_period_percent == 50
    assert exe.mount is True
    assert exe.volume_mounts == [
        HostMountSpec(type="host", volume="data", sub_path="{namespace}/{key}",
                      target="/var/lib/app", read_only=False),
        HostMountSpec(type="host", volume="config", target="/etc/app"),
        VolumeMountSpec(type="volume", name="cache-{key}", target="/cache", read_only=False),
        TmpfsMountSpec(type="tmpfs", target="/tmp", size_bytes=67108864),
    ]
    assert (request.user, request.auth) == ("alice", {"role": "editor"})


def test_the_design_3_example_parses_from_a_dict_too():
    assert ConnectRequest.model_validate(json.loads(DESIGN_3_REQUEST)) == (
        ConnectRequest.model_validate_json(DESIGN_3_REQUEST)
    )


def test_plane_documented_connect_request_parses():
    request = ConnectRequest.model_validate_json(PLANE_CONNECT_REQUEST)
    assert request.key is not None and request.spawn_config is not None
    assert request.key.model_dump() == {"name": "room-abcde", "namespace": "games",
                                        "tag": "drop-four"}
    assert request.spawn_config.executable.image == (
        "ghcr.io/drifting-in-space/demo-image-drop-four"
    )
    assert request.spawn_config.lifetime_limit_seconds == 3600
    assert request.spawn_config.max_idle_seconds == 60
    assert request.spawn_config.executable.volume_mounts == []
    assert request.spawn_config.executable.mount is None
    assert request.user == "user-123"
    assert request.auth == json.loads(PLANE_CONNECT_REQUEST)["auth"]


def test_plane_documented_request_with_its_trailing_commas_is_not_json():
    with pytest.raises(ValidationError, match=r"Invalid JSON"):
        ConnectRequest.model_validate_json(
            PLANE_CONNECT_REQUEST.replace('"max_idle_seconds": 60', '"max_idle_seconds": 60,')
        )


def test_plane_executor_config_fields_all_parse():
    exe = ExecutorConfig.model_validate({
        "image": "ghcr.io/org/app:1",
        "pull_policy": "Always",
        "credentials": {"username": "bot", "password": "s3cret"},
        "env": {"A": "1", "B": ""},
        "resource_limits": {"cpu_period": 100000, "cpu_period_percent": 150,
                            "cpu_time_limit": 30, "memory_limit_bytes": 1 << 30,
                            "disk_limit_bytes": 10 << 30},
        "mount": "saves/room-1",
    })
    assert exe.pull_policy is PullPolicy.ALWAYS
    assert exe.credentials is not None
    assert (exe.credentials.username, exe.credentials.password) == ("bot", "s3cret")
    assert exe.env == {"A": "1", "B": ""}
    limits = exe.resource_limits
    assert (limits.cpu_period, limits.cpu_period_percent, limits.cpu_time_limit,
            limits.memory_limit_bytes, limits.disk_limit_bytes) == (
        100000, 150, 30, 1 << 30, 10 << 30)
    assert exe.mount == "saves/room-1"


@pytest.mark.parametrize("policy", ["IfNotPresent", "Always", "Never"])
def test_every_plane_pull_policy_parses(policy):
    assert ExecutorConfig.model_validate({"image": "i", "pull_policy": policy}).pull_policy == (
        policy
    )


@pytest.mark.parametrize("mount", [True, False, "path/to/dir", None])
def test_plane_mount_accepts_true_false_a_path_or_nothing(mount):
    assert ExecutorConfig.model_validate({"image": "i", "mount": mount}).mount == mount


@pytest.mark.parametrize("mount", [1, 0, 1.5, ["a"], {"p": 1}])
def test_plane_mount_refuses_other_types(mount):
    errors = errors_of(ExecutorConfig, {"image": "i", "mount": mount})
    assert errors and all(loc[0] == "mount" for _, loc in errors)


def test_plane_fields_sailplane_does_not_know_are_ignored():
    request = ConnectRequest.model_validate({
        "key": {"name": "k", "future_key_field": 1},
        "spawn_config": {"executable": {"image": "i", "network_name": "n"}, "subdomain": "x"},
        "unknown_top": True,
    })
    assert request.key is not None and request.key.name == "k"


# --- volume_mounts ------------------------------------------------------------------------


def test_read_only_defaults_to_true_for_host_and_named_volumes():
    exe = ExecutorConfig.model_validate(executable(
        {"type": "host", "volume": "data", "target": "/d"},
        {"type": "volume", "name": "v", "target": "/v"},
    ))
    assert [m.read_only for m in exe.volume_mounts] == [True, True]  # type: ignore[union-attr]


def test_a_host_mount_defaults_to_the_volume_root():
    spec = HostMountSpec.model_validate({"type": "host", "volume": "data", "target": "/d"})
    assert spec.sub_path == ""


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"type": "host", "volume": "data", "sub_paht": "x", "target": "/d"}, "sub_paht"),
        ({"type": "host", "volume": "data", "target": "/d", "host_path": "/etc"}, "host_path"),
        ({"type": "host", "volume": "data", "target": "/d", "readonly": False}, "readonly"),
        ({"type": "volume", "name": "v", "target": "/v", "driver": "nfs"}, "driver"),
        ({"type": "tmpfs", "target": "/t", "size_bytes": 1, "options": "exec"}, "options"),
    ],
)
def test_unknown_fields_in_a_volume_mount_are_rejected_naming_the_field(entry, field):
    errors = errors_of(ExecutorConfig, executable({"type": "tmpfs", "target": "/x",
                                                   "size_bytes": 1}, entry))
    assert ("extra_forbidden", ("volume_mounts", 1, entry["type"], field)) in errors


def test_unknown_fields_are_rejected_inside_a_whole_connect_request_too():
    data = json.loads(DESIGN_3_REQUEST)
    data["spawn_config"]["executable"]["volume_mounts"][0]["sub_paht"] = "x"
    errors = errors_of(ConnectRequest, data)
    assert ("extra_forbidden",
            ("spawn_config", "executable", "volume_mounts", 0, "host", "sub_paht")) in errors


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({"volume": "data", "target": "/d"}, "union_tag_not_found"),
        ({"type": "nfs", "target": "/d"}, "union_tag_invalid"),
        ({"type": "Host", "volume": "data", "target": "/d"}, "union_tag_invalid"),
        ({"type": None, "target": "/d"}, "union_tag_invalid"),
    ],
)
def test_a_volume_mount_without_a_known_type_is_rejected(entry, error):
    errors = errors_of(ExecutorConfig, executable(entry))
    assert [(kind, loc[:2]) for kind, loc in errors] == [(error, ("volume_mounts", 0))]


@pytest.mark.parametrize(
    ("entry", "loc"),
    [
        ({"type": "host", "target": "/d"}, ("host", "volume")),
        ({"type": "host", "volume": "", "target": "/d"}, ("host", "volume")),
        ({"type": "host", "volume": "data"}, ("host", "target")),
        ({"type": "volume", "name": "", "target": "/v"}, ("volume", "name")),
        ({"type": "tmpfs", "target": "/t"}, ("tmpfs", "size_bytes")),
        ({"type": "tmpfs", "target": "/t", "size_bytes": 0}, ("tmpfs", "size_bytes")),
        ({"type": "tmpfs", "target": "/t", "size_bytes": -1}, ("tmpfs", "size_bytes")),
    ],
)
def test_a_volume_mount_missing_or_with_an_empty_required_field_is_rejected(entry, loc):
    assert ("volume_mounts", 0, *loc) in [loc for _, loc in errors_of(ExecutorConfig,
                                                                      executable(entry))]


@pytest.mark.parametrize("mode", ["1777", "777", "0700", "0755", "700", "0000", "7777"])
def test_a_tmpfs_mode_of_three_or_four_octal_digits_is_accepted(mode):
    assert TmpfsMountSpec(type="tmpfs", target="/t", size_bytes=1, mode=mode).mode == mode


def test_tmpfs_mode_defaults_to_1777():
    assert TmpfsMountSpec(type="tmpfs", target="/t", size_bytes=1).mode == "1777"


@pytest.mark.parametrize(
    "mode",
    ["", "77", "17777", "8777", "0o777", "rwx", "1777\n", " 777", "-777",
     "\uff17\uff17\uff17"],  # the last: fullwidth sevens, digits to Unicode but not octal
)
def test_a_tmpfs_mode_that_is_not_three_or_four_octal_digits_is_rejected(mode):
    errors = errors_of(TmpfsMountSpec, {"type": "tmpfs", "target": "/t", "size_bytes": 1,
                                        "mode": mode})
    assert errors == [("string_pattern_mismatch", ("mode",))]


def test_a_tmpfs_mode_must_be_a_string():
    assert errors_of(TmpfsMountSpec, {"type": "tmpfs", "target": "/t", "size_bytes": 1,
                                      "mode": 1777}) == [("string_type", ("mode",))]


# --- connect request ----------------------------------------------------------------------


def test_a_request_with_neither_key_nor_spawn_config_is_rejected():
    with pytest.raises(ValidationError, match="at least one of 'key' and 'spawn_config'"):
        ConnectRequest.model_validate({"user": "alice", "auth": {}})


def test_a_request_with_explicit_nulls_for_both_is_rejected():
    with pytest.raises(ValidationError, match="at least one of 'key' and 'spawn_config'"):
        ConnectRequest.model_validate({"key": None, "spawn_config": None})


def test_a_request_with_only_a_key_parses():
    request = ConnectRequest.model_validate({"key": {"name": "doc-42"}})
    assert request.spawn_config is None
    assert request.key is not None and (request.key.namespace, request.key.tag) == ("", "")


def test_a_request_with_only_a_spawn_config_parses():
    request = ConnectRequest.model_validate({"spawn_config": {"executable": {"image": "i"}}})
    assert request.key is None and request.auth == {}


def test_an_empty_key_name_is_rejected():
    assert ("string_too_short", ("key", "name")) in errors_of(
        ConnectRequest, {"key": {"name": ""}}
    )


def test_an_executable_without_an_image_is_rejected():
    assert ("missing", ("image",)) in errors_of(ExecutorConfig, {"env": {}})


@pytest.mark.parametrize("loose", ["no", 0, "false", 1])
def test_read_only_accepts_only_real_booleans(loose):
    entry = {"type": "host", "volume": "data", "target": "/d", "read_only": loose}
    with pytest.raises(ValidationError) as info:
        ExecutorConfig.model_validate({"image": "x", "volume_mounts": [entry]})
    assert info.value.errors()[0]["loc"] == ("volume_mounts", 0, "host", "read_only")
