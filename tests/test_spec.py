"""The public request models (``sailplane.spec``): Plane's JSON unchanged, mounts strict."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sailplane.spec import (
    MAX_IMAGE_NAME_LENGTH,
    ConnectRequest,
    ExecutorConfig,
    HostMountSpec,
    KeyConfig,
    PullPolicy,
    TmpfsMountSpec,
    VolumeMountSpec,
    control_character,
)

from .mounts.examples import EXAMPLE_REQUEST, PLANE_CONNECT_REQUEST


def errors_of(model: type[Any], data: Any) -> list[tuple[str, tuple[str | int, ...]]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [(error["type"], tuple(error["loc"])) for error in info.value.errors()]


def executable(*volume_mounts: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"image": "img", "volume_mounts": list(volume_mounts), **fields}


# --- documented examples ------------------------------------------------------------------


def test_the_example_example_parses_unchanged():
    request = ConnectRequest.model_validate_json(EXAMPLE_REQUEST)
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


def test_the_example_example_parses_from_a_dict_too():
    assert ConnectRequest.model_validate(json.loads(EXAMPLE_REQUEST)) == (
        ConnectRequest.model_validate_json(EXAMPLE_REQUEST)
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
    data = json.loads(EXAMPLE_REQUEST)
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


# --- input hygiene -----------------------------------------------------------

CONTROLS = [chr(code) for code in (*range(0x20), *range(0x7F, 0xA0))]
DIGEST = "sha256:" + "0123456789abcdef" * 4


def message_of(model: type[Any], data: Any) -> tuple[tuple[str | int, ...], str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    first = info.value.errors()[0]
    return tuple(first["loc"]), first["msg"]


@pytest.mark.parametrize("control", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
@pytest.mark.parametrize("field", ["name", "namespace", "tag"])
def test_a_control_character_in_any_part_of_the_key_is_refused(field, control):
    key = {"name": "doc-42", field: f"doc{control}42"}
    loc, message = message_of(ConnectRequest, {"key": key})
    assert loc == ("key", field)
    assert f"contains a control character (U+{ord(control):04X})" in message


@pytest.mark.parametrize("name", ["data\n", "da\tta", "\x7f", "data\x85"])
def test_a_control_character_in_a_host_volume_name_is_refused(name):
    entry = {"type": "host", "volume": name, "target": "/d"}
    loc, message = message_of(ExecutorConfig, executable(entry))
    assert loc == ("volume_mounts", 0, "host", "volume")
    assert "contains a control character" in message


def test_unicode_that_is_not_a_control_character_is_a_fine_key():
    key = KeyConfig.model_validate({"name": "dokument-é-文書", "namespace": "ü", "tag": "\u00a0"})
    assert key.name == "dokument-é-文書"


@given(before=st.text(max_size=20), control=st.sampled_from(CONTROLS),
       after=st.text(max_size=20))
def test_any_key_name_with_a_control_character_is_refused(before, control, after):
    name = before + control + after
    assert control_character(name) is not None
    with pytest.raises(ValidationError):
        KeyConfig.model_validate({"name": name})
    with pytest.raises(ValidationError):
        ExecutorConfig.model_validate({"image": name})


@pytest.mark.parametrize("image", [
    "img", "sailplane/demo:latest", "ghcr.io/drifting-in-space/demo-image-drop-four",
    "localhost:5000/team/app:v1.2", "registry.example.com:443/a/b:1.0-rc_1",
    "a_b__c--d.e/f-g", "busybox@" + DIGEST, "docker.io/library/busybox:1.36@" + DIGEST,
    "[::1]:5000/img:tag", "Registry.Example.COM/app", "x:" + "t" * 128,
    "a" * MAX_IMAGE_NAME_LENGTH,
])
def test_an_image_in_the_reference_grammar_is_accepted(image):
    assert ExecutorConfig.model_validate({"image": image}).image == image


@pytest.mark.parametrize("image", [
    "Bad Image!!", "-foo", "--help", "Upper", "team/Upper", "a:", ":tag", "a@", "a@sha256:xyz",
    "a@sha256:" + "0" * 31, "a//b", "a/", "/a", "a/-b", "a/b-", "a___b", "a.-b", "a:-tag",
    "a:.tag", "x:" + "t" * 129, "a\nb", "a b", "", "host:port/a", "a" * (MAX_IMAGE_NAME_LENGTH + 1),
    "a:b:c", "é",
])
def test_an_image_outside_the_reference_grammar_is_refused(image):
    loc, message = message_of(ExecutorConfig, {"image": image})
    assert loc == ("image",)
    assert "image" in message


@pytest.mark.parametrize("name", ["A", "_x", "PATH", "a1_B2", "_"])
def test_a_portable_env_name_is_accepted(name):
    assert ExecutorConfig.model_validate({"image": "img", "env": {name: "v"}}).env == {name: "v"}


@pytest.mark.parametrize("name", ["", "1A", "A=B", "A\x00", "A-B", "A B", "é", "A\n"])
def test_an_env_name_a_process_could_not_take_is_refused(name):
    loc, message = message_of(ExecutorConfig, {"image": "img", "env": {name: "v"}})
    assert loc[0] == "env"
    assert "env name" in message and "[A-Za-z_][A-Za-z0-9_]*" in message


def test_an_env_value_may_hold_a_newline_but_not_a_nul():
    assert ExecutorConfig.model_validate(
        {"image": "img", "env": {"PEM": "-----BEGIN\nx\n-----END\n"}}
    ).env["PEM"].count("\n") == 3
    loc, message = message_of(ExecutorConfig, {"image": "img", "env": {"A": "x\x00y"}})
    assert loc == ("env", "A") and "NUL" in message
