"""The descriptor walk on a real tree (docs/mounts.md): symlinks anywhere are refused, for both
methods, in dry run and apply mode, and under a concurrent attacker swapping components."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sailplane.errors import MountRefused
from sailplane.mounts import resolve
from sailplane.mounts.plan import plan_mounts
from sailplane.mounts.policy import Access, HostVolume, MountPolicy
from sailplane.mounts.resolve import CreatedDirectories, resolve_beneath
from sailplane.mounts.resolved import ResolvedHostMount

from .conftest import VALUES, Volumes, executor, host, mode_of, refused, snapshot, umask

FIELD = "volume_mounts[0].sub_path"


def walk(root: Path, *parts: str, method: resolve.Method, apply: bool = False) -> str:
    """Resolve like a drone does for mount 0; in apply mode keep what was created."""
    created = CreatedDirectories() if apply else None
    try:
        return resolve_beneath(str(root), parts, mount=0, field=FIELD, created=created,
                               method=method)
    finally:
        if created is not None:
            created.release()


@pytest.fixture
def tree(volumes: Volumes) -> Volumes:
    """data/ with real dirs, links of every kind, and a file; config/ is a sibling volume.

    data/ok/inner/           real directories
    data/link-inside   ->    data/ok (absolute, inside the root)
    data/link-relative ->    ok (relative, inside the root)
    data/ok/link-root  ->    /
    data/link-sibling  ->    config (the sibling volume)
    data/link-up       ->    ../config
    data/dangling      ->    data/not-yet (missing, inside the root)
    data/dangling-out  ->    outside/not-yet (missing, outside)
    data/file                a regular file
    """
    data = volumes.data
    (data / "ok" / "inner").mkdir(parents=True)
    (volumes.config / "secret").mkdir()
    os.symlink(data / "ok", data / "link-inside")
    os.symlink("ok", data / "link-relative")
    os.symlink("/", data / "ok" / "link-root")
    os.symlink(volumes.config, data / "link-sibling")
    os.symlink("../config", data / "link-up")
    os.symlink(data / "not-yet", data / "dangling")
    os.symlink(volumes.outside / "not-yet", data / "dangling-out")
    (data / "file").write_text("not a directory")
    return volumes


SYMLINK_ATTACKS = {
    "symlink at the last component": ("link-inside",),
    "relative symlink at the last component": ("link-relative",),
    "symlink in the middle": ("link-inside", "inner"),
    "symlink to / at the last component": ("ok", "link-root"),
    "symlink to / in the middle": ("ok", "link-root", "etc"),
    "symlink to a sibling volume": ("link-sibling", "secret"),
    "relative symlink up to a sibling volume": ("link-up", "secret"),
    "symlink followed by a missing tail": ("link-inside", "missing", "deeper"),
    "dangling symlink inside the root": ("dangling",),
    "dangling symlink to outside, then a tail": ("dangling-out", "x"),
}


@pytest.mark.parametrize("apply", [False, True], ids=["dry-run", "apply"])
@pytest.mark.parametrize("parts", SYMLINK_ATTACKS.values(), ids=SYMLINK_ATTACKS.keys())
def test_any_symlink_on_the_way_is_refused_and_nothing_is_created(tree, method, apply, parts):
    before = snapshot(tree.top)
    with refused(0, FIELD, "symlink"):
        walk(tree.data, *parts, method=method, apply=apply)
    assert snapshot(tree.top) == before


@pytest.mark.parametrize("apply", [False, True], ids=["dry-run", "apply"])
@pytest.mark.parametrize("parts", [("file",), ("file", "x")])
def test_a_regular_file_on_the_way_is_refused(tree, method, apply, parts):
    before = snapshot(tree.top)
    with refused(0, FIELD, "not a directory"):
        walk(tree.data, *parts, method=method, apply=apply)
    assert snapshot(tree.top) == before


def test_an_existing_directory_resolves_to_its_lexical_path(tree, method):
    assert walk(tree.data, "ok", "inner", method=method) == f"{tree.data}/ok/inner"


def test_no_parts_resolve_to_the_root_itself(tree, method):
    assert walk(tree.data, method=method) == str(tree.data)


def test_dry_run_reports_a_missing_tail_and_creates_nothing(tree, method):
    before = snapshot(tree.top)
    path = walk(tree.data, "ok", "new", "deeper", method=method)
    assert path == f"{tree.data}/ok/new/deeper"
    assert snapshot(tree.top) == before


@pytest.mark.parametrize("mask", [0o077, 0o022, 0o000, 0o777])
def test_apply_creates_missing_directories_with_mode_0750_whatever_the_umask(
    volumes, method, mask
):
    with umask(mask):
        path = walk(volumes.data, "a", "b", "c", method=method, apply=True)
    assert path == f"{volumes.data}/a/b/c"
    for made in ("a", "a/b", "a/b/c"):
        assert (volumes.data / made).is_dir()
        assert mode_of(volumes.data / made) == 0o750, made


def test_apply_leaves_the_mode_of_existing_directories_alone(volumes, method):
    (volumes.data / "shared").mkdir(mode=0o755)
    os.chmod(volumes.data / "shared", 0o755)
    walk(volumes.data, "shared", "mine", method=method, apply=True)
    assert mode_of(volumes.data / "shared") == 0o755
    assert mode_of(volumes.data / "shared" / "mine") == 0o750


def test_apply_is_idempotent(volumes, method):
    first = walk(volumes.data, "x", "y", method=method, apply=True)
    before = snapshot(volumes.top)
    assert walk(volumes.data, "x", "y", method=method, apply=True) == first
    assert snapshot(volumes.top) == before


def test_a_refused_second_mount_leaves_nothing_created_by_the_first(tree, method):
    request = executor(
        host("data", "fresh/one/two", "/first"),
        host("data", "ok/brand-new", "/second"),
        host("data", "link-inside/x", "/third"),
        mount="plane-dir",
    )
    before = snapshot(tree.top)
    with refused(2, "volume_mounts[2].sub_path", "symlink"):
        plan_mounts(request, tree.policy(), VALUES, apply=True, method=method)
    assert snapshot(tree.top) == before


def test_a_refused_plan_keeps_directories_that_existed_before(tree, method):
    request = executor(host("data", "ok/inner/new", "/a"), host("data", "file/x", "/b"))
    with refused(1, "volume_mounts[1].sub_path"):
        plan_mounts(request, tree.policy(), VALUES, apply=True, method=method)
    assert (tree.data / "ok" / "inner").is_dir()
    assert not (tree.data / "ok" / "inner" / "new").exists()


def test_apply_plan_creates_every_host_mount(volumes, method):
    request = executor(host("data", "{namespace}/{key}", "/a"), mount=True)
    resolved = plan_mounts(request, volumes.policy(), VALUES, apply=True, method=method)
    assert [m.host_path for m in resolved if isinstance(m, ResolvedHostMount)] == [
        f"{volumes.default}/doc-42", f"{volumes.data}/editor/doc-42",
    ]
    assert mode_of(volumes.default / "doc-42") == 0o750
    assert mode_of(volumes.data / "editor" / "doc-42") == 0o750


@pytest.mark.parametrize("apply", [False, True], ids=["dry-run", "apply"])
def test_a_root_replaced_by_a_symlink_after_policy_load_is_refused(volumes, method, apply):
    policy = volumes.policy()  # the root is checked and canonical here ...
    os.rename(volumes.data, volumes.top / "data-moved")
    os.symlink("/etc", volumes.data)  # ... and swapped for a link afterwards
    before = snapshot(volumes.top)
    with refused(0, FIELD, "host volume root is not usable"):
        plan_mounts(executor(host("data", "x")), policy, VALUES, apply=apply, method=method)
    with refused(0, FIELD, "host volume root is not usable"):
        plan_mounts(executor(host("data", "")), policy, VALUES, apply=apply, method=method)
    assert snapshot(volumes.top) == before


def test_a_root_removed_after_policy_load_is_refused(volumes, method):
    policy = volumes.policy()
    volumes.data.rmdir()
    with refused(0, FIELD, "host volume root is not usable"):
        plan_mounts(executor(host("data", "x")), policy, VALUES, apply=True, method=method)
    assert not volumes.data.exists()


@pytest.mark.parametrize("apply", [False, True], ids=["dry-run", "apply"])
def test_a_parent_of_the_root_swapped_for_a_symlink_is_refused_before_creating_anything(
    tmp_path, method, apply, monkeypatch
):
    top = tmp_path.resolve()
    (top / "base" / "vol").mkdir(parents=True)
    (top / "evil" / "vol").mkdir(parents=True)
    policy = MountPolicy.build([HostVolume(name="data", path=str(top / "base" / "vol"),
                                           access=Access.RW)])
    os.rename(top / "base", top / "base-moved")
    os.symlink(top / "evil", top / "base")
    made: list[str] = []
    real_mkdir = os.mkdir

    def spy_mkdir(path, mode=0o777, *, dir_fd=None):
        made.append(path)
        real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", spy_mkdir)
    with refused(0, FIELD, "moved"):
        plan_mounts(executor(host("data", "x/y")), policy, VALUES, apply=apply, method=method)
    assert made == [], "a directory was created under the swapped-in tree"
    assert list((top / "evil" / "vol").iterdir()) == []


def test_a_directory_made_concurrently_is_not_claimed_by_the_rollback(
    volumes, method, monkeypatch
):
    """A directory another spawn made between our open and our mkdir is theirs, not ours."""
    real_mkdir = os.mkdir

    def someone_else_was_faster(path, mode=0o777, *, dir_fd=None):
        if path == "shared":
            real_mkdir(path, 0o755, dir_fd=dir_fd)  # the other spawn's directory
            os.chmod("shared", 0o755, dir_fd=dir_fd)
        real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", someone_else_was_faster)
    (volumes.data / "file").write_text("")
    request = executor(host("data", "shared", "/a"), host("data", "file/x", "/b"))
    with refused(1, "volume_mounts[1].sub_path", "not a directory"):
        plan_mounts(request, volumes.policy(), VALUES, apply=True, method=method)
    assert (volumes.data / "shared").is_dir(), "the rollback removed another spawn's directory"
    assert mode_of(volumes.data / "shared") == 0o755


# --- the race: an attacker swapping a component while the drone resolves ------------------

RACE_RESOLUTIONS = 10_000  # per method and mode
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2

# Runs in its own process, so it really runs in parallel with the walk (no shared GIL).
# "exchange": atomically swap the names A and B (a directory and a symlink) with renameat2.
# "flip": make the name A missing, then a symlink to B, then missing; a directory the walk
#         made there is removed again (only this process makes symlinks, so that removal never
#         follows one).
_SWAPPER = r"""
import ctypes, os, sys
mode, a, b, leaf, stop = sys.argv[1:6]
libc = ctypes.CDLL(None, use_errno=True)
swaps = 0
print("ready", flush=True)
while not os.path.exists(stop):
    for _ in range(200):
        if mode == "exchange":
            if libc.renameat2(-100, a.encode(), -100, b.encode(), 2) != 0:
                sys.exit("renameat2: " + os.strerror(ctypes.get_errno()))
        else:
            try:
                os.symlink(b, a)
            except FileExistsError:  # the walk made a directory here: take it away
                for path in (os.path.join(a, leaf), a):
                    try:
                        os.rmdir(path)
                    except OSError:
                        pass
            else:
                os.unlink(a)
        swaps += 1
print(swaps, flush=True)
"""


def _have_rename_exchange(tmp: Path) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    (tmp / "x").mkdir()
    os.symlink("x", tmp / "y")
    try:
        ok = libc.renameat2(_AT_FDCWD, bytes(tmp / "x"), _AT_FDCWD, bytes(tmp / "y"),
                            _RENAME_EXCHANGE) == 0
        return ok or ctypes.get_errno() not in (errno.ENOSYS, errno.EINVAL)
    finally:
        for name in ("x", "y"):
            if (tmp / name).is_symlink():
                (tmp / name).unlink()
            else:
                (tmp / name).rmdir()


def _etc_entries_named(prefix: str) -> list[str]:
    return [name for name in os.listdir("/etc") if name.startswith(prefix)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("apply", [False, True], ids=["dry-run", "apply"])
@pytest.mark.parametrize("variant", ["exchange", "flip"])
def test_race_swapping_a_component_with_a_symlink_to_etc_never_escapes(
    volumes, method, apply, variant
):
    """Every resolution is refused or gives the expected path; nothing appears in /etc.

    ``exchange`` swaps an existing middle component with a link to /etc atomically, so the
    name always exists; ``flip`` makes a middle component come and go as a link to /etc,
    which drives apply mode through its mkdir path.
    """
    if variant == "exchange" and not _have_rename_exchange(volumes.outside):
        pytest.skip("the file system has no renameat2(RENAME_EXCHANGE)")
    sentinel = f"sailplane-race-{uuid.uuid4().hex}"
    root = volumes.data
    (root / "a").mkdir()
    if variant == "exchange":
        (root / "a" / "mid" / sentinel).mkdir(parents=True)
        os.symlink("/etc", root / "a" / "mid-swap")
        swapped = (root / "a" / "mid", root / "a" / "mid-swap")
    else:
        swapped = (root / "a" / "mid", Path("/etc"))
    stop = volumes.outside / "stop"
    swapper = subprocess.Popen(
        [sys.executable, "-c", _SWAPPER, variant, str(swapped[0]), str(swapped[1]), sentinel,
         str(stop)],
        stdout=subprocess.PIPE, text=True,
    )
    outcomes = {"refused": 0, "resolved": 0}
    unexpected: list[str] = []
    try:
        assert swapper.stdout is not None
        assert swapper.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 60
        for i in range(RACE_RESOLUTIONS):
            # In apply mode a fresh leaf each time, so the walk keeps creating directories.
            leaf = f"{sentinel}-{i}" if apply and variant == "exchange" else sentinel
            expected = f"{root}/a/mid/{leaf}"
            try:
                path = walk(root, "a", "mid", leaf, method=method, apply=apply)
            except MountRefused as exc:
                assert exc.mount == 0 and exc.message.startswith(FIELD)
                outcomes["refused"] += 1
            except Exception as exc:  # anything else is the failure
                unexpected.append(f"{type(exc).__name__}: {exc}")
            else:
                if path != expected:
                    unexpected.append(f"resolved to {path}")
                outcomes["resolved"] += 1
            assert time.monotonic() < deadline, "the race test is too slow"
    finally:
        stop.touch()
        out, _ = swapper.communicate(timeout=30)
    assert swapper.returncode == 0, out
    assert int(out.strip()) > 0, "the swapper never swapped"
    assert unexpected == [], f"{len(unexpected)} unexpected outcomes, first: {unexpected[:3]}"
    assert _etc_entries_named(sentinel) == [], "a directory was created in /etc"
    assert os.path.isdir("/etc") and not os.path.islink("/etc")
    # Both outcomes happened, so the race really raced.
    assert outcomes["refused"] > 0 and outcomes["resolved"] > 0, outcomes
