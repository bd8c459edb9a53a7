"""Fixtures and helpers shared by the mount tests (and imported by the CLI/translation tests)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sailplane.errors import MountRefused
from sailplane.mounts import resolve
from sailplane.mounts.policy import Access, HostVolume, MountPolicy
from sailplane.mounts.validate import TemplateValues
from sailplane.spec import ExecutorConfig

VALUES = TemplateValues(key="doc-42", namespace="editor", backend="b-1")

METHODS = [
    pytest.param(
        "openat2",
        marks=pytest.mark.skipif(not resolve.HAVE_OPENAT2, reason="kernel has no openat2"),
    ),
    "openat",
]


@contextmanager
def refused(mount: int | str, *fragments: str) -> Iterator[pytest.ExceptionInfo[MountRefused]]:
    """Expect a :class:`MountRefused` naming ``mount`` whose message contains every fragment."""
    with pytest.raises(MountRefused) as info:
        yield info
    assert info.value.mount == mount, f"refusal names mount {info.value.mount!r}: {info.value}"
    for fragment in fragments:
        assert fragment in info.value.message, f"{fragment!r} not in {info.value.message!r}"


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def executor(*volume_mounts: dict[str, Any], mount: bool | str | None = None) -> ExecutorConfig:
    """An ``executable`` with these ``volume_mounts`` entries (dicts, as a request sends them)."""
    return ExecutorConfig.model_validate(
        {"image": "sailplane/demo:latest", "mount": mount, "volume_mounts": list(volume_mounts)}
    )


def host(
    volume: str = "data", sub_path: str = "", target: str = "/data", *, read_only: bool = False
) -> dict[str, Any]:
    return {"type": "host", "volume": volume, "sub_path": sub_path, "target": target,
            "read_only": read_only}


def snapshot(top: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under ``top`` (symlinks not followed): kind, permission bits, link target."""
    entries: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                entries[os.path.relpath(path, top)] = ("link", 0, os.readlink(path))
            else:
                kind = "dir" if stat.S_ISDIR(info.st_mode) else "file"
                entries[os.path.relpath(path, top)] = (kind, stat.S_IMODE(info.st_mode), "")
    return entries


def mode_of(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def assert_no_symlink_between(root: str, path: str) -> None:
    """Each existing component from ``root`` down to ``path`` is a real directory."""
    assert os.path.commonpath([root, path]) == root, f"{path} is outside {root}"
    current = root
    for part in Path(os.path.relpath(path, root)).parts if path != root else ():
        current = os.path.join(current, part)
        if not os.path.lexists(current):
            break
        assert not os.path.islink(current), f"{current} is a symlink"
        assert os.path.isdir(current), f"{current} is not a directory"


@dataclass(frozen=True)
class Volumes:
    """A drone's host volumes on a real temporary tree, and a directory outside all of them."""

    top: Path
    data: Path
    config: Path
    default: Path
    outside: Path

    def policy(self) -> MountPolicy:
        return MountPolicy.build([
            HostVolume(name="default", path=str(self.default), access=Access.RW),
            HostVolume(name="data", path=str(self.data), access=Access.RW),
            HostVolume(name="config", path=str(self.config), access=Access.RO),
        ])


@pytest.fixture
def volumes(tmp_path: Path) -> Volumes:
    top = tmp_path.resolve()
    made = Volumes(top, top / "data", top / "config", top / "default", top / "outside")
    for directory in (made.data, made.config, made.default, made.outside):
        directory.mkdir()
    return made


@pytest.fixture
def policy(volumes: Volumes) -> MountPolicy:
    return volumes.policy()


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest) -> resolve.Method:
    value: resolve.Method = request.param
    return value
