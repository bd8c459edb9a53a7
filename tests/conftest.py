"""Session-wide rules: no skipped test passes the run, and no mount outlives it.

A test that needs Docker, containerd or PostgreSQL and finds none fails instead of skipping;
any skip left makes the run fail too (listed in the summary), unless ``SAILPLANE_ALLOW_SKIP=1``
is set on purpose, so CI cannot be green without the real engines having run.

Drones pin host mounts under their state directory (``sailplane.mounts.pin``). A test that
kills a drone process leaves its pins behind, as a crashed drone would (the next drone start
sweeps them); the test run itself must leave the machine as it found it, so every mount left
under the base temporary directory is detached at the end, deepest first.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = [] if reporter is None else reporter.stats.get("skipped", [])
    if skipped and os.environ.get("SAILPLANE_ALLOW_SKIP") != "1" and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_line(f"{len(skipped)} test(s) skipped: that is a failure here "
                                "(SAILPLANE_ALLOW_SKIP=1 allows it)", red=True)


@pytest.fixture(scope="session", autouse=True)
def no_mount_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    base = str(tmp_path_factory.getbasetemp().resolve())
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    left = [line.split()[4] for line in lines if line.split()[4].startswith(base + "/")]
    for mount_point in sorted(left, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)
