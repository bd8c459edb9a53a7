"""The drone operator's policy (docs/mounts.md): flags, TOML, forbidden roots, authorization."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sailplane.errors import PolicyError
from sailplane.mounts.policy import (
    Access,
    HostVolume,
    MountPolicy,
    Scope,
    check_root,
    parse_host_volume_flag,
)

from .conftest import refused

# --- --host-volume NAME=PATH[:ro|:rw] -----------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "name", "path", "access", "scope"),
    [
        ("data=/srv/data", "data", "/srv/data", Access.RO, Scope.VOLUME),  # ro unless told
        ("data=/srv/data:ro", "data", "/srv/data", Access.RO, Scope.VOLUME),
        ("data=/srv/data:rw", "data", "/srv/data", Access.RW, Scope.VOLUME),
        ("data=/srv/data:rw:key", "data", "/srv/data", Access.RW, Scope.KEY),
        ("data=/srv/data:ro:key", "data", "/srv/data", Access.RO, Scope.KEY),
        ("data=/srv/data:key", "data", "/srv/data", Access.RO, Scope.KEY),
        ("data=/srv/a:b", "data", "/srv/a:b", Access.RO, Scope.VOLUME),
        ("data=/srv/a:b:ro", "data", "/srv/a:b", Access.RO, Scope.VOLUME),
        ("data=/srv/a:rw:ro", "data", "/srv/a:rw", Access.RO, Scope.VOLUME),
        ("data=/srv/x:", "data", "/srv/x:", Access.RO, Scope.VOLUME),
        ("data=/srv/x:b1", "data", "/srv/x:b1", Access.RO, Scope.VOLUME),  # part of the path
        ("data=/a=b", "data", "/a=b", Access.RO, Scope.VOLUME),
        ("data=C:\\data:rw", "data", "C:\\data", Access.RW, Scope.VOLUME),
        ("data=C:\\data", "data", "C:\\data", Access.RO, Scope.VOLUME),
    ],
)
def test_host_volume_flag_parses_name_path_access_and_scope(flag, name, path, access, scope):
    assert parse_host_volume_flag(flag) == HostVolume(name=name, path=path, access=access,
                                                      scope=scope)


@pytest.mark.parametrize("flag", ["data", "", "=", "=/srv/data", "data=", "/srv/data"])
def test_a_malformed_host_volume_flag_is_refused(flag):
    with pytest.raises(PolicyError, match=r"expected NAME=PATH\[:ro\|:rw\]\[:key\]") as info:
        parse_host_volume_flag(flag)
    assert repr(flag) in info.value.message


def test_from_flags_builds_rw_and_ro_volumes_and_the_default_from_mount_base(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "cfg").mkdir()
    policy = MountPolicy.from_flags(
        str(tmp_path / "base"), [f"data={tmp_path}/data:rw", f"config={tmp_path}/cfg"]
    )
    assert policy.host_volumes == {
        "default": HostVolume(name="default", path=str(tmp_path.resolve() / "base"),
                              access=Access.RW),  # Plane's mount writes there
        "data": HostVolume(name="data", path=str(tmp_path.resolve() / "data"),
                           access=Access.RW),
        "config": HostVolume(name="config", path=str(tmp_path.resolve() / "cfg"),
                             access=Access.RO),
    }
    assert policy.platform == "posix"


def test_a_root_path_containing_a_colon_works_end_to_end(tmp_path):
    (tmp_path / "a:b").mkdir()
    policy = MountPolicy.from_flags(None, [f"data={tmp_path}/a:b:ro"])
    assert policy.host_volumes["data"].path == str(tmp_path.resolve() / "a:b")
    assert policy.host_volumes["data"].access is Access.RO


@pytest.mark.parametrize(
    ("flag", "reason"),
    [
        ("bad name={tmp}", "host volume name 'bad name' is not valid"),
        ("-data={tmp}", "host volume name '-data' is not valid"),
        ("{long}={tmp}", "is not valid"),
        ("data=relative/path", "root 'relative/path' must be an absolute path"),
        ("data=:ro", "root ':ro' must be an absolute path"),
        ("data={tmp}/missing", "is not an existing directory"),
    ],
)
def test_bad_host_volume_flags_are_refused(tmp_path, flag, reason):
    with pytest.raises(PolicyError) as info:
        MountPolicy.from_flags(None, [flag.format(tmp=tmp_path, long="x" * 65)])
    assert reason in info.value.message


def test_a_volume_defined_twice_is_refused(tmp_path):
    with pytest.raises(PolicyError, match="host volume 'data' is defined twice"):
        MountPolicy.from_flags(None, [f"data={tmp_path}", f"data={tmp_path}:ro"])


def test_mount_base_and_a_host_volume_named_default_collide(tmp_path):
    with pytest.raises(PolicyError, match="host volume 'default' is defined twice"):
        MountPolicy.from_flags(str(tmp_path), [f"default={tmp_path}"])


# --- forbidden roots ----------------------------------------------------------------------

FORBIDDEN_ROOTS = [
    "/", "/etc", "/proc", "/proc/1", "/proc/self/root", "/sys", "/sys/fs", "/dev", "/dev/shm",
    "/run", "/run/user", "/var/run", "/var", "/var/lib", "/var/lib/docker",
    "/var/lib/docker/volumes", "/var/run/docker.sock", "/run/docker.sock", "/boot",
    "/etc/..", "//etc", "/etc/",
]


@pytest.mark.parametrize("root", FORBIDDEN_ROOTS)
def test_a_system_directory_or_an_ancestor_of_one_is_never_a_root(root):
    with pytest.raises(PolicyError) as info:
        MountPolicy.from_flags(None, [f"data={root}"])
    message = info.value.message
    assert f"host volume 'data': root {root!r}" in message
    assert "can never be published to backends" in message or "lies under" in message


@pytest.mark.parametrize("root", ["/etc", "/var/run"])
def test_a_forbidden_root_is_refused_as_mount_base_too(root):
    with pytest.raises(PolicyError, match="host volume 'default'"):
        MountPolicy.from_flags(root)


def test_a_symlink_to_etc_is_refused_as_a_root(tmp_path):
    os.symlink("/etc", tmp_path / "innocent")
    with pytest.raises(PolicyError, match="is or contains /etc") as info:
        MountPolicy.from_flags(None, [f"data={tmp_path}/innocent"])
    assert str(tmp_path / "innocent") in info.value.message


def test_a_symlink_into_proc_is_refused_as_a_root(tmp_path):
    os.symlink("/proc/self", tmp_path / "me")
    with pytest.raises(PolicyError, match="lies under /proc"):
        MountPolicy.from_flags(None, [f"data={tmp_path}/me"])


def test_a_root_reached_through_a_symlinked_parent_is_stored_as_its_real_path(tmp_path):
    (tmp_path / "real" / "data").mkdir(parents=True)
    os.symlink(tmp_path / "real", tmp_path / "alias")
    policy = MountPolicy.from_flags(None, [f"data={tmp_path}/alias/data/"])
    assert policy.host_volumes["data"].path == str((tmp_path / "real" / "data").resolve())


def test_a_nonexistent_root_is_refused(tmp_path):
    with pytest.raises(PolicyError, match="is not an existing directory"):
        check_root(str(tmp_path / "nope"), "posix", "data")


def test_a_regular_file_is_refused_as_a_root(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(PolicyError, match="is not an existing directory"):
        check_root(str(tmp_path / "file"), "posix", "data")


def test_an_ordinary_directory_is_accepted_as_a_root(tmp_path):
    assert check_root(str(tmp_path), "posix", "data") == str(tmp_path.resolve())


# --- Windows drones -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("root", "stored"),
    [("C:\\data", "C:\\data"), ("D:\\srv\\plane", "D:\\srv\\plane"), ("C:/data", "C:\\data"),
     ("\\\\server\\share\\data", "\\\\server\\share\\data")],
)
def test_a_windows_root_is_accepted_and_normalized(root, stored):
    policy = MountPolicy.build([HostVolume(name="data", path=root)], platform="windows")
    assert policy.host_volumes["data"].path == stored
    assert policy.platform == "windows"


@pytest.mark.parametrize(
    ("root", "reason"),
    [
        ("C:\\", "is a whole drive"),
        ("D:\\", "is a whole drive"),
        ("\\\\server\\share", "is a whole drive"),
        ("C:data", "must be an absolute path"),
        ("\\data", "must be an absolute path"),
        ("data", "must be an absolute path"),
        ("/srv/data", "must be an absolute path"),
        ("C:\\Windows", "lies under C:\\Windows"),
        ("c:\\windows\\system32", "lies under C:\\Windows"),
        ("C:\\Program Files\\app", "lies under C:\\Program Files"),
        ("C:\\ProgramData", "lies under C:\\ProgramData"),
        ("C:\\data\\..\\Windows", "has a '..'"),
        ("C:\\data\\..", "has a '..'"),
        ("C:\\Windows.\\System32", "trailing '.' or space"),
        ("C:\\Windows \\System32", "trailing '.' or space"),
    ],
)
def test_a_forbidden_windows_root_is_refused(root, reason):
    with pytest.raises(PolicyError) as info:
        MountPolicy.build([HostVolume(name="data", path=root)], platform="windows")
    assert f"host volume 'data': root {root!r}" in info.value.message
    assert reason in info.value.message


def test_windows_flags_keep_the_drive_colon_and_read_the_access_suffix():
    policy = MountPolicy.from_flags("C:\\plane", ["data=C:\\data:ro"], platform="windows")
    assert policy.host_volumes["default"].path == "C:\\plane"
    assert policy.host_volumes["data"] == HostVolume(name="data", path="C:\\data",
                                                     access=Access.RO)


# --- TOML ---------------------------------------------------------------------------------


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text.format(tmp=tmp_path))
    return path


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    for name in ("base", "data", "config"):
        (tmp_path / name).mkdir()
    return tmp_path


def test_toml_policy_with_mount_base_namespaces_and_access(roots):
    path = write_toml(roots, """
mount_base = "{tmp}/base"

[host_volumes.data]
path = "{tmp}/data"
access = "rw"
namespaces = ["editor", "games"]

[host_volumes.config]
path = "{tmp}/config"
access = "ro"
""")
    real = roots.resolve()
    assert MountPolicy.from_toml(path).host_volumes == {
        "default": HostVolume(name="default", path=str(real / "base"), access=Access.RW),
        "data": HostVolume(name="data", path=str(real / "data"), access=Access.RW,
                           namespaces=("editor", "games")),
        "config": HostVolume(name="config", path=str(real / "config"), access=Access.RO),
    }


def test_toml_access_defaults_to_ro_and_namespaces_to_all(roots):
    path = write_toml(roots, '[host_volumes.data]\npath = "{tmp}/data"\n')
    volume = MountPolicy.from_toml(path).host_volumes["data"]
    assert volume.access is Access.RO
    assert volume.scope is Scope.VOLUME
    assert volume.namespaces is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('mount_bsae = "{tmp}/base"\n', "unknown keys ['mount_bsae']"),
        ('[host_volumes.data]\npath = "{tmp}/data"\nacess = "ro"\n', "acess"),
        ('[host_volumes.data]\npath = "{tmp}/data"\nnamespace = ["a"]\n', "namespace"),
        ('[host_volumes.data]\npath = "{tmp}/data"\naccess = "RO"\n', "access"),
        ('[host_volumes.data]\npath = "{tmp}/data"\naccess = "write"\n', "access"),
        ('[host_volumes.data]\naccess = "ro"\n', "path"),
        ('[host_volumes.data]\nname = "x"\npath = "{tmp}/data"\n', "policy file"),
        ('[host_volumes]\ndata = "{tmp}/data"\n', "policy file"),
        ('host_volumes = 3\n', "policy file"),
        ('host_volumes = ["{tmp}/data"]\n', "policy file"),
        ('mount_base = 3\n', "policy file"),
        ('[host_volumes.data]\npath = "/etc"\n', "is or contains /etc"),
        ('[host_volumes.data\npath = "{tmp}/data"\n', "cannot read policy file"),
    ],
)
def test_a_bad_toml_policy_is_refused(roots, text, reason):
    path = write_toml(roots, text)
    with pytest.raises(PolicyError) as info:
        MountPolicy.from_toml(path)
    assert reason in info.value.message


def test_a_missing_toml_policy_is_refused(tmp_path):
    with pytest.raises(PolicyError, match="cannot read policy file"):
        MountPolicy.from_toml(tmp_path / "absent.toml")


# --- authorize ----------------------------------------------------------------------------


@pytest.fixture
def shared(roots: Path) -> MountPolicy:
    return MountPolicy.build([
        HostVolume(name="data", path=str(roots / "data"), access=Access.RW),
        HostVolume(name="config", path=str(roots / "config"), access=Access.RO),
        HostVolume(name="games-only", path=str(roots / "base"), access=Access.RW,
                   namespaces=("games",)),
    ])


def test_authorize_returns_the_named_volume(shared):
    volume = shared.authorize("data", False, "editor", 0, "volume_mounts[0].volume")
    assert volume is shared.host_volumes["data"]


def test_authorize_refuses_an_unknown_volume(shared):
    with refused(4, "volume_mounts[4].volume: this drone offers no host volume 'nope'"):
        shared.authorize("nope", True, "editor", 4, "volume_mounts[4].volume")


def test_authorize_refuses_a_namespace_the_volume_does_not_allow(shared):
    with refused(1, "volume_mounts[1].volume: host volume 'games-only' is not available to "
                    "namespace 'editor'"):
        shared.authorize("games-only", True, "editor", 1, "volume_mounts[1].volume")


def test_authorize_refuses_the_empty_namespace_when_namespaces_are_listed(shared):
    with refused(0, "is not available to namespace ''"):
        shared.authorize("games-only", True, "", 0, "volume_mounts[0].volume")


def test_authorize_allows_a_listed_namespace(shared):
    assert shared.authorize("games-only", False, "games", 0, "f").name == "games-only"


def test_read_write_on_a_read_only_volume_is_refused_never_downgraded(shared):
    with refused(2, "volume_mounts[2].volume: host volume 'config' is read-only on this drone; "
                    "read_only: false is refused"):
        shared.authorize("config", False, "editor", 2, "volume_mounts[2].volume")


def test_read_only_on_a_read_write_volume_is_allowed(shared):
    assert shared.authorize("data", True, "editor", 0, "f").access is Access.RW


def test_read_only_on_a_read_only_volume_is_allowed(shared):
    assert shared.authorize("config", True, "editor", 0, "f").access is Access.RO


def test_authorize_names_the_shorthand_field_for_plane_mounts(shared):
    with refused("mount", "mount: this drone offers no host volume 'default'"):
        shared.authorize("default", False, "editor", "mount", "mount")


@pytest.mark.parametrize("suffix", ["rx", "RW", "r", "wr"])
def test_a_mistyped_access_is_named_as_such_not_as_a_missing_directory(tmp_path, suffix):
    with pytest.raises(PolicyError, match=r"is not an access; after the path give :ro or :rw"):
        parse_host_volume_flag(f"data={tmp_path}:{suffix}")
