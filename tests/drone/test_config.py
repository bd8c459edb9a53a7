"""The drone refuses, at start, a host volume that would expose its own state or the
controller's: the state directory (above, at or below it) and any protected path."""

from __future__ import annotations

from pathlib import Path

import pytest

from sailplane.drone.config import check_protected
from sailplane.errors import PolicyError
from sailplane.mounts.policy import MountPolicy


def policy(**volumes: Path) -> MountPolicy:
    return MountPolicy.from_flags(None, [f"{name}={path}:rw" for name, path in volumes.items()])


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    for sub in ("data/drone/staging", "data/volumes/default", "elsewhere", "db"):
        (tmp_path / sub).mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize("root", ["", "data", "data/drone", "data/drone/staging"])
def test_a_root_at_above_or_inside_the_state_directory_is_refused(
    layout: Path, root: str,
) -> None:
    with pytest.raises(PolicyError, match="state directory"):
        check_protected(policy(v=layout / root), layout / "data" / "drone", [])


def test_a_root_holding_a_protected_path_is_refused(layout: Path) -> None:
    database = layout / "db" / "controller.db"
    with pytest.raises(PolicyError, match=r"controller\.db"):
        check_protected(policy(v=layout / "db"), layout / "data" / "drone", [database])
    with pytest.raises(PolicyError, match="holds"):
        check_protected(policy(v=layout / "data"), layout / "elsewhere", [layout / "data"])


def test_a_symlinked_state_directory_is_seen_through(layout: Path) -> None:
    (layout / "link").symlink_to(layout / "data")
    with pytest.raises(PolicyError, match="state directory"):
        check_protected(policy(v=layout / "data"), layout / "link" / "drone", [])


def test_roots_beside_or_below_a_protected_directory_pass(layout: Path) -> None:
    check_protected(policy(a=layout / "elsewhere", b=layout / "data" / "volumes" / "default"),
                    layout / "data" / "drone", [layout / "data", layout / "db" / "c.db"])
