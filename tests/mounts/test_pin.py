"""Pinned staging mounts (``sailplane.mounts.pin``) on the real kernel: both methods, real mounts.

Every test removes what it mounted (the ``staging`` fixture sweeps), even when it fails.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sailplane.errors import MountRefused
from sailplane.mounts.pin import DEFAULT_PIN_METHOD, PinMethod, StagingArea

METHODS: list[PinMethod] = ["open_tree", "bind"] if DEFAULT_PIN_METHOD == "open_tree" else ["bind"]


def mount_options(path: Path) -> set[str]:
    """The per-mount options of the mount at ``path``, from this process's mount table."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(path):
            return set(fields[5].split(","))
    raise AssertionError(f"nothing is mounted at {path}")


def mounted_under(root: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if line.split()[4].startswith(f"{root}/")]


@pytest.fixture(params=METHODS)
def staging(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StagingArea]:
    area = StagingArea(tmp_path.resolve() / "state" / "staging", request.param)
    try:
        yield area
    finally:
        area.sweep(keep=())
    assert mounted_under(area.root) == []


@pytest.fixture
def source(tmp_path: Path) -> Path:
    directory = tmp_path.resolve() / "volume" / "x" / "y"
    directory.mkdir(parents=True)
    (directory / "granted").write_text("ok")
    return directory


def pin(staging: StagingArea, directory: Path, read_only: bool, backend: str = "b-1",
        index: int = 0) -> Path:
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        return Path(staging.pin(fd, backend, index, read_only, index, f"m[{index}]"))
    finally:
        os.close(fd)


def test_a_read_only_pin_is_read_only_nosuid_nodev_in_a_root_only_directory(staging, source):
    pinned = pin(staging, source, read_only=True)
    assert pinned == staging.root / "b-1" / "0"
    assert (pinned / "granted").read_text() == "ok"
    assert {"ro", "nosuid", "nodev"} <= mount_options(pinned)
    with pytest.raises(OSError) as info:
        (pinned / "new").write_text("no")
    assert info.value.errno == errno.EROFS
    assert os.stat(staging.root).st_mode & 0o777 == 0o700


def test_a_read_write_pin_is_writable_and_still_nosuid_nodev(staging, source):
    pinned = pin(staging, source, read_only=False)
    (pinned / "new").write_text("yes")
    assert (source / "new").read_text() == "yes"
    options = mount_options(pinned)
    assert "rw" in options and {"nosuid", "nodev"} <= options


def test_a_pin_keeps_the_directory_when_its_path_is_swapped_for_a_symlink(staging, source):
    """What the runtime binds later is the directory checked, whatever the path says by then."""
    pinned = pin(staging, source, read_only=True)
    moved = source.with_name("moved")
    source.rename(moved)
    source.symlink_to("/")
    assert sorted(os.listdir(pinned)) == ["granted"]


def test_a_submount_of_a_read_only_pin_is_read_only_or_absent(staging, source, tmp_path):
    inner = source / "inner"
    inner.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "sailplane-test", str(inner)],
                   check=True)
    try:
        pinned = pin(staging, source, read_only=True)
        with pytest.raises(OSError) as info:
            (pinned / "inner" / "file").write_text("no")
        assert info.value.errno == errno.EROFS
        if staging.method == "open_tree":  # recursive: the tmpfs came along, read-only
            assert {"ro", "nosuid", "nodev"} <= mount_options(pinned / "inner")
        else:  # a plain bind takes no submount: the empty directory beneath shows
            assert all(not path.endswith("/inner") for path in mounted_under(staging.root))
    finally:
        subprocess.run(["umount", "-l", str(inner)], check=False)


def test_release_detaches_and_removes_every_pin_of_a_backend(staging, source):
    pin(staging, source, True, "b-1", 0)
    pin(staging, source, False, "b-1", 1)
    pin(staging, source, True, "b-2", 0)
    staging.release("b-1")
    assert mounted_under(staging.root) == [str(staging.root / "b-2" / "0")]
    assert not (staging.root / "b-1").exists()
    staging.release("b-1")  # again: nothing there is fine


def test_sweep_keeps_only_the_named_backends(staging, source):
    for backend in ("b-1", "b-2", "b-3"):
        pin(staging, source, True, backend)
    assert staging.sweep(keep=["b-2"]) == ["b-1", "b-3"]
    assert staging.backends() == ["b-2"]


def test_pinning_twice_at_one_place_replaces_the_stale_pin(staging, source, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    pin(staging, other, True)
    pinned = pin(staging, source, True)
    assert sorted(os.listdir(pinned)) == ["granted"]
    assert mounted_under(staging.root) == [str(pinned)]


@pytest.mark.parametrize("backend", ["", "..", "a/b", "."])
def test_a_backend_id_that_is_not_one_plain_component_is_refused(staging, source, backend):
    with pytest.raises(MountRefused, match="backend id"):
        pin(staging, source, True, backend)
    assert mounted_under(staging.root) == []
