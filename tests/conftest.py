"""Session-wide safety net: no mount made under pytest's temporary directories outlives the run.

Drones pin host mounts under their state directory (``sailplane.mounts.pin``). A test that
kills a drone process leaves its pins behind, as a crashed drone would (the next drone start
sweeps them); the test run itself must leave the machine as it found it, so every mount left
under the base temporary directory is detached at the end, deepest first.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def no_mount_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    base = str(tmp_path_factory.getbasetemp().resolve())
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    left = [line.split()[4] for line in lines if line.split()[4].startswith(base + "/")]
    for mount_point in sorted(left, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)
