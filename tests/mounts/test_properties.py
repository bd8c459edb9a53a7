"""Property tests: whatever the request and whatever is already on disk, a plan never escapes.

For any ``sub_path`` and key, and any small tree of directories, files and symlinks (pointing
inside, outside, at ``/`` or nowhere), :func:`plan_mounts` either refuses with
:class:`MountRefused` or returns a host path inside the root with no symlink on the way; in
apply mode it creates nothing outside the root.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sailplane.errors import MountRefused
from sailplane.mounts.plan import plan_mounts
from sailplane.mounts.policy import Access, HostVolume, MountPolicy
from sailplane.mounts.resolved import ResolvedHostMount
from sailplane.mounts.validate import TemplateValues

from .conftest import METHODS, assert_no_symlink_between, executor, host, snapshot

PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

NAMES = ["a", "b", "c", "editor", "doc-42"]
FRAGMENTS = [*NAMES, "/", ".", "..", "\\", "\x00", ":", "C:", "//", "{key}", "{namespace}",
             "{backend}", "{", "}", "{user}", " ", "é", "x" * 256]

sub_paths = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), max_size=8).map("".join),
    st.lists(st.sampled_from([*NAMES, "{key}", "{namespace}", ".."]), max_size=5).map("/".join),
    st.text(max_size=40),
)
template_values = st.one_of(
    st.sampled_from([*NAMES, "", ".", "..", "../a", "a/b", "/", "C:", "\\", "a\x00", "{key}",
                     "x" * 256, "\ud800"]),
    st.text(max_size=12),
)

# Where a generated symlink points; "{root}" and "{outside}" are filled in per example.
LINK_TARGETS = ["/", "/etc", "..", "../..", "../outside", "a", "a/b", ".", "{root}",
                "{root}/a", "{outside}", "{outside}/a", "missing", "{outside}/missing"]


@dataclass(frozen=True)
class Entry:
    kind: str  # "dir", "file" or "link"
    path: tuple[str, ...]
    target: str = ""


entries = st.lists(
    st.builds(
        Entry,
        kind=st.sampled_from(["dir", "dir", "file", "link"]),
        path=st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(tuple),
        target=st.sampled_from(LINK_TARGETS),
    ),
    max_size=12,
)


def build_tree(root: Path, outside: Path, tree: list[Entry]) -> None:
    """Create the entries whose parent is a real directory we made; never follow a link."""
    real_dirs: set[tuple[str, ...]] = {()}
    for entry in tree:
        parent, path = entry.path[:-1], root.joinpath(*entry.path)
        if parent not in real_dirs or os.path.lexists(path):
            continue
        if entry.kind == "dir":
            path.mkdir()
            real_dirs.add(entry.path)
        elif entry.kind == "file":
            path.write_text("")
        else:
            os.symlink(entry.target.format(root=root, outside=outside), path)


def host_paths(resolved) -> list[str]:
    return [mount.host_path for mount in resolved if isinstance(mount, ResolvedHostMount)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("apply", [False, True], ids=["dry-run", "apply"])
@PROPERTY_SETTINGS
@given(tree=entries, sub_path=sub_paths, key=template_values, namespace=template_values)
def test_a_plan_is_refused_or_stays_inside_its_root_without_symlinks(
    method, apply, tree, sub_path, key, namespace
):
    with tempfile.TemporaryDirectory() as workspace:
        top = Path(workspace).resolve()
        root, outside = top / "root", top / "outside"
        root.mkdir()
        (outside / "a").mkdir(parents=True)
        build_tree(root, outside, tree)
        policy = MountPolicy.build([HostVolume(name="data", path=str(root), access=Access.RW),
                                    HostVolume(name="default", path=str(root), access=Access.RW)])
        values = TemplateValues(key=key, namespace=namespace, backend="b-1")
        request = executor(host("data", sub_path, "/data"), mount=True)
        outside_before, etc_before = snapshot(outside), sorted(os.listdir("/etc"))
        before = snapshot(root)
        try:
            resolved = plan_mounts(request, policy, values, apply=apply, method=method)
        except MountRefused as exc:
            assert exc.mount in (0, "mount")
            assert snapshot(root) == before, "a refused plan left something behind"
        else:
            for path in host_paths(resolved):
                assert_no_symlink_between(str(root), path)
                if apply:
                    assert os.path.isdir(path) and not os.path.islink(path)
            if not apply:
                assert snapshot(root) == before, "a dry run changed the tree"
        assert snapshot(outside) == outside_before
        assert sorted(os.listdir("/etc")) == etc_before


@PROPERTY_SETTINGS
@given(sub_path=sub_paths, key=template_values, namespace=template_values)
def test_a_windows_plan_is_refused_or_stays_inside_its_root(sub_path, key, namespace):
    policy = MountPolicy.build([HostVolume(name="data", path="C:\\data", access=Access.RW),
                                HostVolume(name="default", path="C:\\plane", access=Access.RW)],
                               platform="windows")
    values = TemplateValues(key=key, namespace=namespace, backend="b-1")
    request = executor(host("data", sub_path, "/data"), mount=True)
    try:
        resolved = plan_mounts(request, policy, values, apply=True)
    except MountRefused as exc:
        assert exc.mount in (0, "mount")
        return
    for path, root in zip(host_paths(resolved), ("C:\\plane", "C:\\data"), strict=True):
        windows = PureWindowsPath(path)
        assert windows.is_relative_to(root)
        # Lexically what it says: no component Windows would read as a drive, a stream or a
        # shorter name.
        for part in windows.relative_to(root).parts:
            assert ":" not in part and part == part.rstrip(". ") and part not in ("", "..")
