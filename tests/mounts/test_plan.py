"""From a request to resolved mounts (``sailplane.mounts.plan``): example in, plan out."""

from __future__ import annotations

import pytest

from sailplane.errors import MountRefused
from sailplane.mounts.pin import StagingArea
from sailplane.mounts.plan import check_mounts, plan_mounts
from sailplane.mounts.policy import Access, HostVolume, MountPolicy, Scope
from sailplane.mounts.resolved import ResolvedHostMount, ResolvedTmpfsMount, ResolvedVolumeMount
from sailplane.mounts.validate import TemplateValues
from sailplane.spec import ConnectRequest

from .conftest import VALUES, Volumes, executor, host, refused, snapshot
from .examples import EXAMPLE_REQUEST, example_plan_mounts


def example_plan(volumes: Volumes, *, apply: bool = False) -> list[dict[str, object]]:
    request = ConnectRequest.model_validate_json(EXAMPLE_REQUEST)
    assert request.key is not None and request.spawn_config is not None
    values = TemplateValues(key=request.key.name, namespace=request.key.namespace, backend="")
    resolved = plan_mounts(request.spawn_config.executable, volumes.policy(), values, apply=apply)
    return [mount.model_dump() for mount in resolved]


def test_the_example_request_plans_the_example_mounts(volumes):
    plan = example_plan(volumes)
    shown = example_plan_mounts(str(volumes.data))
    assert [mount for mount in plan if mount in shown] == shown
    # ... and the two the document leaves out: the config volume (read-only by default) and
    # Plane's "mount": true, which comes first.
    assert plan == [
        {"type": "host", "host_path": f"{volumes.default}/doc-42", "target": "/plane-data",
         "read_only": False},
        shown[0],
        {"type": "host", "host_path": str(volumes.config), "target": "/etc/app",
         "read_only": True},
        shown[1],
        shown[2],
    ]


def test_the_example_dry_run_creates_nothing_and_apply_creates_the_key_directories(volumes):
    before = snapshot(volumes.top)
    example_plan(volumes)
    assert snapshot(volumes.top) == before
    example_plan(volumes, apply=True)
    assert (volumes.data / "editor" / "doc-42").is_dir()
    assert (volumes.default / "doc-42").is_dir()
    assert sorted(snapshot(volumes.top)) == sorted(
        [*before, "data/editor", "data/editor/doc-42", "default/doc-42"]
    )


@pytest.mark.parametrize(
    ("mount", "sub_dir"),
    [(True, "doc-42"), ("p", "p"), ("shared/p", "shared/p"), ("{namespace}-{key}",
                                                               "editor-doc-42")],
)
def test_plane_mount_shorthand_mounts_under_the_default_volume_at_plane_data_rw(
    volumes, mount, sub_dir
):
    resolved = plan_mounts(executor(mount=mount), volumes.policy(), VALUES, apply=False)
    assert resolved == [ResolvedHostMount(
        host_path=f"{volumes.default}/{sub_dir}", target="/plane-data", read_only=False,
        source=f"{volumes.default}/{sub_dir}",
    )]


@pytest.mark.parametrize("mount", [False, None])
def test_plane_mount_false_or_absent_mounts_nothing(volumes, mount):
    assert plan_mounts(executor(mount=mount), volumes.policy(), VALUES, apply=True) == []
    assert list(volumes.default.iterdir()) == []


def test_plane_mount_without_a_default_volume_is_refused(volumes):
    policy = MountPolicy.build([HostVolume(name="data", path=str(volumes.data),
                                           access=Access.RW)])
    with refused("mount", "mount: this drone offers no host volume 'default'"):
        plan_mounts(executor(mount=True), policy, VALUES, apply=False)


def test_plane_mount_on_a_read_only_default_volume_is_refused(volumes):
    policy = MountPolicy.from_flags(None, [f"default={volumes.default}:ro"])
    with refused("mount", "read-only on this drone"):
        plan_mounts(executor(mount="p"), policy, VALUES, apply=False)


@pytest.mark.parametrize(
    ("mount", "reason"),
    [("../x", "'..' components"), ("/etc", "not absolute"), ("a//b", "empty path"),
     ("{user}", "unknown template")],
)
def test_plane_mount_path_is_held_to_the_sub_path_rules(volumes, mount, reason):
    with refused("mount", "mount: ", reason):
        plan_mounts(executor(mount=mount), volumes.policy(), VALUES, apply=False)


def test_plane_mount_true_without_a_key_is_refused(volumes):
    values = TemplateValues(key="", namespace="", backend="b-1")
    with refused("mount", "template {key} = ''", "empty"):
        plan_mounts(executor(mount=True), volumes.policy(), values, apply=False)


@pytest.mark.parametrize("key", ["../other", "..", "other/../../etc", "a/b"])
def test_a_key_cannot_reach_another_keys_directory(volumes, key):
    (volumes.data / "editor" / "other").mkdir(parents=True)
    values = TemplateValues(key=key, namespace="editor", backend="b-1")
    before = snapshot(volumes.top)
    with refused(0, f"volume_mounts[0].sub_path: template {{key}} = {key!r}"):
        plan_mounts(executor(host("data", "{namespace}/{key}")), volumes.policy(), values,
                    apply=True)
    with refused("mount", f"mount: template {{key}} = {key!r}"):
        plan_mounts(executor(mount=True), volumes.policy(), values, apply=True)
    assert snapshot(volumes.top) == before


def test_read_only_defaults_to_true_and_is_kept(volumes):
    request = executor({"type": "host", "volume": "data", "target": "/d"})
    assert plan_mounts(request, volumes.policy(), VALUES, apply=False) == [
        ResolvedHostMount(host_path=str(volumes.data), target="/d", read_only=True,
                          source=str(volumes.data))
    ]


def test_read_write_on_a_read_only_volume_is_refused_not_downgraded(volumes):
    request = executor(host("data", "x", "/a"), host("config", "", "/etc/app", read_only=False))
    with refused(1, "volume_mounts[1].volume: host volume 'config' is read-only"):
        plan_mounts(request, volumes.policy(), VALUES, apply=False)


def test_a_namespace_restricted_volume_refuses_other_namespaces(volumes):
    policy = MountPolicy.build([HostVolume(name="data", path=str(volumes.data), access=Access.RW,
                                           namespaces=("games",))])
    with refused(0, "not available to namespace 'editor'"):
        plan_mounts(executor(host("data", "{key}")), policy, VALUES, apply=False)
    games = TemplateValues(key="room-1", namespace="games", backend="b")
    assert plan_mounts(executor(host("data", "{key}")), policy, games, apply=False)


def test_tmpfs_mode_is_parsed_as_octal_and_kept_out_of_the_summary(volumes):
    request = executor({"type": "tmpfs", "target": "/t", "size_bytes": 4096, "mode": "0700"})
    [mount] = plan_mounts(request, volumes.policy(), VALUES, apply=False)
    assert mount == ResolvedTmpfsMount(target="/t", size_bytes=4096, mode=0o700)
    assert mount.model_dump() == {"type": "tmpfs", "target": "/t", "size_bytes": 4096}


def test_check_mounts_needs_no_disk(volumes):
    policy = volumes.policy()
    volumes.data.rmdir()  # gone: only the walk would notice
    assert len(check_mounts(executor(host("data", "{namespace}/{key}")), policy, VALUES)) == 1
    with pytest.raises(MountRefused):
        plan_mounts(executor(host("data", "{namespace}/{key}")), policy, VALUES, apply=False)


def test_a_refusal_serializes_with_its_code_mount_and_message():
    error = MountRefused(2, "volume_mounts[2].sub_path: '..' components are not allowed")
    assert error.to_json() == {"error": {
        "code": "mount_refused", "mount": 2,
        "message": "volume_mounts[2].sub_path: '..' components are not allowed",
    }}


# --- Windows drones: paths are only joined, so Windows' own reading must not escape ----------


@pytest.fixture
def windows() -> MountPolicy:
    return MountPolicy.build([HostVolume(name="data", path="C:\\data", access=Access.RW),
                              HostVolume(name="default", path="D:\\plane", access=Access.RW)],
                             platform="windows")


def test_a_windows_drone_joins_with_backslashes(windows):
    resolved = plan_mounts(executor(host("data", "editor/doc-42", "/data"), mount=True), windows,
                           VALUES, apply=True)
    assert [m.host_path for m in resolved if isinstance(m, ResolvedHostMount)] == [
        "D:\\plane\\doc-42", "C:\\data\\editor\\doc-42",
    ]


@pytest.mark.parametrize(
    ("sub_path", "key"),
    [
        ("editor/D:", "doc-42"),  # PureWindowsPath("C:\\data", "editor", "D:") is "D:"
        ("editor/D:x", "doc-42"),
        ("{namespace}/{key}", "D:"),
        ("{namespace}/{key}", "doc:stream"),  # an alternate data stream
        ("{namespace}/{key}", "doc-42."),  # Windows drops the dot: key doc-42's directory
        ("{namespace}/{key}", "doc-42 "),
        ("editor/.../x", "doc-42"),
    ],
)
def test_a_windows_drone_refuses_components_windows_reads_differently(windows, sub_path, key):
    values = TemplateValues(key=key, namespace="editor", backend="b-1")
    with refused(0, "volume_mounts[0].sub_path: ", "on a Windows drone"):
        plan_mounts(executor(host("data", sub_path)), windows, values, apply=False)


def test_a_posix_drone_accepts_what_only_windows_reads_differently(volumes):
    values = TemplateValues(key="doc-42.", namespace="editor", backend="b-1")
    [mount] = plan_mounts(executor(host("data", "{namespace}/x:y/{key}")), volumes.policy(),
                          values, apply=False)
    assert isinstance(mount, ResolvedHostMount)
    assert mount.host_path == f"{volumes.data}/editor/x:y/doc-42."


def test_plane_mount_empty_string_is_refused_rather_than_mounting_every_keys_data(volumes):
    with refused("mount", "mount: an empty path would mount the whole default volume"):
        plan_mounts(executor(mount=""), volumes.policy(), VALUES, apply=False)


# --- named volumes: namespaced runtime names, the operator's switch and cap -----------------


def named(name: str = "cache-{key}", target: str = "/cache") -> dict[str, object]:
    return {"type": "volume", "name": name, "target": target, "read_only": False}


def test_a_named_volume_gets_the_runtime_name_of_its_namespace():
    other = TemplateValues(key="doc-42", namespace="viewer", backend="b-1")
    bare = TemplateValues(key="doc-42", namespace="", backend="b-1")
    names = [
        check_mounts(executor(host("data", "x", "/d"), named()), None, values)[1]
        for values in (VALUES, other, bare)
    ]
    assert names == [
        ResolvedVolumeMount(name=f"sailplane.{namespace}.cache-doc-42", target="/cache",
                            read_only=False, namespace=ns, requested="cache-doc-42", mount=1)
        for namespace, ns in (("editor", "editor"), ("viewer", "viewer"), ("-", ""))
    ]
    # The plan's summary shows the runtime name and nothing of the labels.
    assert isinstance(names[0], ResolvedVolumeMount)
    assert names[0].model_dump() == {"type": "volume", "name": "sailplane.editor.cache-doc-42",
                                     "target": "/cache", "read_only": False}


def test_named_volumes_disabled_by_the_operator_are_refused(volumes):
    policy = volumes.policy().model_copy(update={"named_volumes": False})
    with refused(0, "volume_mounts[0].name: named volumes are disabled on this drone"):
        plan_mounts(executor(named()), policy, VALUES, apply=True)
    # Without a drone's policy (the controller) only the shape is checked.
    assert len(check_mounts(executor(named()), None, VALUES)) == 1


def test_the_operators_cap_travels_with_the_mount_to_the_runtime(volumes):
    policy = volumes.policy().model_copy(update={"max_named_volumes_per_namespace": 3})
    [mount] = plan_mounts(executor(named()), policy, VALUES, apply=False)
    assert isinstance(mount, ResolvedVolumeMount) and mount.max_per_namespace == 3


def test_a_namespace_that_cannot_name_a_volume_is_refused_at_check_time():
    values = TemplateValues(key="doc-42", namespace="team.a", backend="b-1")
    with refused(0, "volume_mounts[0].name: namespace 'team.a' cannot own named volumes"):
        check_mounts(executor(named()), None, values)


# -- nothing is created in a read-only volume --------------------------------------------------


@pytest.mark.parametrize("apply", [False, True])
def test_a_missing_sub_path_in_a_read_only_volume_is_refused_and_nothing_is_created(
    volumes, apply
):
    before = snapshot(volumes.top)
    request = executor(host("config", "nothere/deeper", "/c", read_only=True))
    with refused(0, "volume_mounts[0].sub_path: 'nothere' does not exist",
                 "nothing is created in a read-only host volume"):
        plan_mounts(request, volumes.policy(), VALUES, apply=apply)
    assert snapshot(volumes.top) == before


def test_a_read_only_request_in_a_read_write_volume_still_creates_the_directory(volumes):
    [mount] = plan_mounts(executor(host("data", "{namespace}/{key}", "/d", read_only=True)),
                          volumes.policy(), VALUES, apply=True)
    assert mount.type == "host" and mount.read_only
    assert (volumes.data / "editor" / "doc-42").is_dir()


# -- key-scoped volumes ------------------------------------------------------------------------


def key_scoped(volumes: Volumes, access: Access = Access.RW) -> MountPolicy:
    return MountPolicy.build([
        HostVolume(name="data", path=str(volumes.data), access=access, scope=Scope.KEY),
        HostVolume(name="default", path=str(volumes.default), access=Access.RW, scope=Scope.KEY),
    ])


@pytest.mark.parametrize(("sub_path", "inside"), [
    ("", "editor/doc-42"),
    ("cache", "editor/doc-42/cache"),
    ("{key}", "editor/doc-42/doc-42"),
    ("editor/victim", "editor/doc-42/editor/victim"),  # another key's name is just a name here
])
def test_every_grant_in_a_key_scoped_volume_is_rooted_at_the_key(volumes, sub_path, inside):
    [mount] = plan_mounts(executor(host("data", sub_path, "/d", read_only=False)),
                          key_scoped(volumes), VALUES, apply=True)
    assert mount.type == "host"
    assert mount.host_path == f"{volumes.data}/{inside}"


@pytest.mark.parametrize("sub_path", ["../victim", "..", "/editor/victim", "a/../../victim"])
def test_no_sub_path_leaves_the_key_in_a_key_scoped_volume(volumes, sub_path):
    with refused(0):
        plan_mounts(executor(host("data", sub_path, "/d")), key_scoped(volumes), VALUES,
                    apply=True)
    assert not (volumes.data / "editor").exists()


def test_a_key_scoped_volume_without_a_namespace_uses_the_key_alone(volumes):
    values = TemplateValues(key="doc-42", namespace="", backend="b-1")
    [mount] = plan_mounts(executor(host("data", "", "/d")), key_scoped(volumes), values,
                          apply=False)
    assert mount.type == "host" and mount.host_path == f"{volumes.data}/doc-42"


def test_a_backend_without_a_key_cannot_use_a_key_scoped_volume(volumes):
    values = TemplateValues(key="", namespace="", backend="b-1")
    with refused(0, "host volume 'data' is key-scoped, and this backend has no key"):
        plan_mounts(executor(host("data", "", "/d")), key_scoped(volumes), values, apply=False)


@pytest.mark.parametrize(("mount", "inside"), [(True, "editor/doc-42"),
                                               ("p", "editor/doc-42/p"),
                                               ("victim/inner", "editor/doc-42/victim/inner")])
def test_plane_mount_on_a_key_scoped_default_volume_stays_in_the_key(volumes, mount, inside):
    [resolved] = plan_mounts(executor(mount=mount), key_scoped(volumes), VALUES, apply=False)
    assert resolved.type == "host" and resolved.host_path == f"{volumes.default}/{inside}"


def test_a_read_only_key_scoped_volume_refuses_a_key_that_has_no_directory(volumes):
    request = executor(host("data", "", "/d", read_only=True))
    with refused(0, "'editor' does not exist"):
        plan_mounts(request, key_scoped(volumes, Access.RO), VALUES, apply=True)
    (volumes.data / "editor" / "doc-42").mkdir(parents=True)
    [mount] = plan_mounts(request, key_scoped(volumes, Access.RO), VALUES, apply=True)
    assert mount.type == "host" and mount.host_path == f"{volumes.data}/editor/doc-42"


def test_staging_paths_are_the_sources_a_dry_run_shows(volumes, tmp_path):
    staging = StagingArea(tmp_path / "state" / "staging")
    values = TemplateValues(key="doc-42", namespace="editor", backend="b-1")
    request = executor(host("config", "", "/c", read_only=True), host("data", "x", "/d"))
    mounts = plan_mounts(request, volumes.policy(), values, apply=False, staging=staging)
    assert [(m.source, m.staged) for m in mounts if m.type == "host"] == [
        (f"{tmp_path}/state/staging/b-1/0", True), (f"{tmp_path}/state/staging/b-1/1", True)]
    assert not (tmp_path / "state").exists()  # a dry run pins nothing
