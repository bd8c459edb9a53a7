"""Runtime names and labels of Sailplane's named volumes (``sailplane.mounts.named``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sailplane.errors import MountRefused
from sailplane.mounts.named import (
    MAX_NAME_BYTES,
    NAME_LABEL,
    NAMESPACE_LABEL,
    VOLUME_LABEL,
    Owner,
    check_mountable,
    check_room,
    owner_of,
    runtime_name,
    volume_labels,
)

from .conftest import refused

namespaces = st.one_of(st.just(""), st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z"))
names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,40}\Z")


@pytest.mark.parametrize(("namespace", "name", "expected"), [
    ("editor", "cache", "sailplane.editor.cache"),
    ("", "cache", "sailplane.-.cache"),
    ("a-b_c", "x.y", "sailplane.a-b_c.x.y"),
])
def test_the_runtime_name_holds_the_namespace_and_the_name(namespace, name, expected):
    assert runtime_name(namespace, name, 0) == expected


def test_two_namespaces_asking_for_cache_get_two_volumes():
    assert runtime_name("editor", "cache", 0) != runtime_name("viewer", "cache", 0)
    assert runtime_name("", "cache", 0) != runtime_name("editor", "cache", 0)


@pytest.mark.parametrize("namespace", ["-", "a.b", "a b", "a/b", "_x", "é", "x" * 64, "a\n"])
def test_a_namespace_that_cannot_be_written_unambiguously_is_refused(namespace):
    with refused(2, f"volume_mounts[2].name: namespace {namespace!r} cannot own named volumes"):
        runtime_name(namespace, "cache", 2)


def test_a_long_requested_name_is_refused():
    runtime_name("editor", "x" * MAX_NAME_BYTES, 0)
    with refused(1, f"volume_mounts[1].name: a named volume's name is at most {MAX_NAME_BYTES}"):
        runtime_name("editor", "x" * (MAX_NAME_BYTES + 1), 1)


@given(namespaces, names, namespaces, names)
def test_distinct_pairs_never_share_a_runtime_name(ns1, name1, ns2, name2):
    if (ns1, name1) != (ns2, name2):
        assert runtime_name(ns1, name1, 0) != runtime_name(ns2, name2, 0)


@given(namespaces, names)
def test_a_runtime_name_is_a_docker_volume_name_and_one_path_component(namespace, name):
    made = runtime_name(namespace, name, 0)
    assert len(made.encode()) + len(".json") <= 255
    assert made[0].isalnum() and "/" not in made
    assert all(c.isalnum() or c in "_.-" for c in made)


@given(namespaces, names)
def test_the_labels_of_a_volume_we_create_give_back_its_owner(namespace, name):
    made = runtime_name(namespace, name, 0)
    assert owner_of(made, volume_labels(namespace, name)) == Owner(namespace, name)
    check_mountable(made, volume_labels(namespace, name), namespace, 0)


def test_the_labels():
    assert volume_labels("editor", "cache") == {
        VOLUME_LABEL: "true", NAMESPACE_LABEL: "editor", NAME_LABEL: "cache",
    }


@pytest.mark.parametrize("labels", [
    None,
    {},
    {"com.example": "x"},
    {VOLUME_LABEL: "true"},  # what an older Sailplane wrote: no owner
    {VOLUME_LABEL: "false", NAMESPACE_LABEL: "editor", NAME_LABEL: "cache"},
    {VOLUME_LABEL: "true", NAMESPACE_LABEL: "editor", NAME_LABEL: "other"},  # copied labels
    {VOLUME_LABEL: "true", NAMESPACE_LABEL: "editor", NAME_LABEL: "../x"},
    {VOLUME_LABEL: "true", NAMESPACE_LABEL: 3, NAME_LABEL: "cache"},
])
def test_a_volume_without_our_matching_labels_is_not_ours(labels):
    assert owner_of("sailplane.editor.cache", labels) is None


@pytest.mark.parametrize("labels", [
    None, {}, {VOLUME_LABEL: "true"}, volume_labels("viewer", "cache"),
])
def test_a_volume_not_ours_for_the_namespace_is_never_mounted(labels):
    name = runtime_name("editor", "cache", 2)
    with refused(2, f"volume_mounts[2].name: runtime volume {name!r} exists but was not "
                    "created by Sailplane for namespace 'editor'; refused"):
        check_mountable(name, labels, "editor", 2)


def test_another_namespaces_volume_under_our_name_is_refused():
    # Labels of namespace "viewer" on the volume named for "editor": not mountable for either.
    with pytest.raises(MountRefused):
        check_mountable("sailplane.editor.cache", volume_labels("viewer", "cache"), "viewer", 0)


def test_the_cap_refuses_one_more_volume_than_allowed():
    check_room(2, None, "sailplane.editor.c", "editor", 0)
    check_room(1, 2, "sailplane.editor.c", "editor", 0)
    with refused(4, "volume_mounts[4].name: namespace 'editor' already holds 2 named volumes"):
        check_room(2, 2, "sailplane.editor.c", "editor", 4)
    with refused(0, "'sailplane.-.c' is not created"):
        check_room(0, 0, "sailplane.-.c", "", 0)
