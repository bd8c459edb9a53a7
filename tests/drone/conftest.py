"""Fixtures of the drone's tests: its store and its staging area, in the test's directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sailplane.drone.store import DroneStore
from sailplane.mounts.pin import StagingArea


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DroneStore]:
    opened = DroneStore(tmp_path / "drone.sqlite3")
    yield opened
    opened.close()


@pytest.fixture
def staging(tmp_path: Path) -> StagingArea:
    return StagingArea(tmp_path / "staging")
