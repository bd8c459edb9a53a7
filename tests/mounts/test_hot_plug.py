"""The pure rules of hot-plug (``sailplane.mounts.hot_plug``): no disk, no container."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from sailplane.errors import MountRefused
from sailplane.mounts.hot_plug import (
    LiveMount,
    MountNotFound,
    check_added,
    check_removed,
    next_pin,
    spawn_mounts,
)
from sailplane.mounts.policy import Access, HostVolume, MountPolicy, Scope
from sailplane.mounts.validate import TemplateValues
from sailplane.spec import ExecutorConfig, VolumeMount

VALUES = TemplateValues("doc-42", "editor", "b-1")
POLICY = MountPolicy(host_volumes={
    "data": HostVolume(name="data", path="/srv/data", access=Access.RW),
    "config": HostVolume(name="config", path="/srv/config"),
    "team": HostVolume(name="team", path="/srv/team", access=Access.RW, namespaces=("other",)),
    "keyed": HostVolume(name="keyed", path="/srv/keyed", access=Access.RW, scope=Scope.KEY),
})
_entry: TypeAdapter[VolumeMount] = TypeAdapter(VolumeMount)


def entry(**fields: Any) -> VolumeMount:
    return _entry.validate_python({"type": "host", "target": "/srv/x", **fields})


def live(target: str, pin: int | None = None) -> LiveMount:
    return LiveMount(target=target, type="host", read_only=True, pin=pin)


def test_an_added_mount_is_planned_like_a_spawns_read_only_unless_asked() -> None:
    plan = check_added(entry(volume="data", sub_path="{namespace}/{key}"), POLICY, VALUES, [])
    assert (plan.parts, plan.target, plan.read_only) == (("editor", "doc-42"), "/srv/x", True)
    assert (plan.mount, plan.field) == ("sub_path", "sub_path")
    keyed = check_added(entry(volume="keyed", sub_path="work"), POLICY, VALUES, [])
    assert keyed.parts == ("editor", "doc-42", "work")  # inside the key's own directory


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"volume": "data", "sub_path": "../x"}, "sub_path", "'..'"),
    ({"volume": "nope"}, "volume", "no host volume 'nope'"),
    ({"volume": "team"}, "volume", "not available to namespace 'editor'"),
    ({"volume": "config", "read_only": False}, "volume", "read-only on this drone"),
    ({"volume": "data", "target": "relative"}, "target", "absolute"),
    ({"volume": "data", "target": "/sys/x"}, "target", "/sys"),
    ({"volume": "data", "target": "/run/sailplane/x"}, "target", "overlaps"),
])
def test_a_refusal_names_the_entrys_field(fields: dict[str, Any], field: str,
                                          words: str) -> None:
    with pytest.raises(MountRefused) as refused:
        check_added(entry(**fields), POLICY, VALUES, [])
    assert refused.value.mount == field
    assert refused.value.message.startswith(f"{field}: ") and words in refused.value.message


def test_only_host_mounts_are_added() -> None:
    tmpfs = _entry.validate_python({"type": "tmpfs", "target": "/t", "size_bytes": 4096})
    with pytest.raises(MountRefused, match=r"^type: only host mounts") as refused:
        check_added(tmpfs, POLICY, VALUES, [])
    assert refused.value.mount == "type"


@pytest.mark.parametrize("target", ["/srv/x", "/srv/x/inner", "/srv"])
def test_a_target_may_not_overlap_a_current_mount(target: str) -> None:
    with pytest.raises(MountRefused, match="overlaps the backend's mount at '/srv/x'"):
        check_added(entry(volume="data", target=target), POLICY, VALUES, [live("/srv/x", 0)])
    check_added(entry(volume="data", target="/srv/xy"), POLICY, VALUES, [live("/srv/x", 0)])


def test_the_controller_checks_the_shape_without_a_policy() -> None:
    assert check_added(entry(volume="nope"), None, VALUES, []).volume is None
    with pytest.raises(MountRefused, match=r"^sub_path: "):
        check_added(entry(volume="nope", sub_path="/abs"), None, VALUES, [])


def test_spawn_mounts_carry_the_pins_the_plan_gives_host_mounts_in_order() -> None:
    executable = ExecutorConfig.model_validate({"image": "x", "mount": True, "volume_mounts": [
        {"type": "tmpfs", "target": "/tmp", "size_bytes": 4096},
        {"type": "host", "volume": "data", "target": "/data", "read_only": False},
        {"type": "volume", "name": "cache", "target": "/cache"},
    ]})
    mounts = spawn_mounts(executable, VALUES)
    assert [(m.target, m.type, m.read_only, m.pin) for m in mounts] == [
        ("/plane-data", "host", False, 0), ("/tmp", "tmpfs", False, None),
        ("/data", "host", False, 1), ("/cache", "volume", True, None)]
    assert not any(m.hot_plugged for m in mounts)
    assert next_pin(mounts) == 2
    assert next_pin([]) == 0


def test_removal_needs_a_mount_at_the_target_and_none_beneath_it() -> None:
    current = [live("/data", 0), live("/data/cache", 1), live("/other", 2)]
    assert check_removed("/other", current).pin == 2
    assert check_removed("/data/cache", current).pin == 1
    with pytest.raises(MountRefused, match="'/data/cache' beneath it"):
        check_removed("/data", current)
    with pytest.raises(MountNotFound, match="no mount at '/nothing'"):
        check_removed("/nothing", current)
    with pytest.raises(MountRefused, match=r"^target: "):
        check_removed("/data/../etc", current)
