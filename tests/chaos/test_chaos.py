"""The chaos suite in CI: a connect storm through the real HTTP API while controllers, drones,
the proxy and finally dockerd are SIGKILLed (``tests/chaos/run.py``), then every invariant of
one backend per key judged from outside. Within five minutes.

The seed is printed (and is in the failure message); ``SAILPLANE_CHAOS_SEED=N`` replays a run.
``bench/chaos.py`` is the same run with bigger numbers.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.chaos.run import ChaosPlan, run_chaos, seed_from_env

pytestmark = pytest.mark.docker


def test_one_backend_per_key_through_every_fault(tmp_path: Path, backend_image: str) -> None:
    """Two controllers on one PostgreSQL database, two drones (one away past its lease),
    the proxy, and dockerd once at the end."""
    report = run_chaos(ChaosPlan(seed=seed_from_env(), database="postgresql"), tmp_path,
                       backend_image)
    print(report.table())
    if not report.held:
        kept = keep_logs(tmp_path)
        pytest.fail(f"\n{report.table()}\nlogs and evidence.json kept in {kept}", False)


def keep_logs(workdir: Path) -> Path:
    """The processes' logs and the evidence, out of pytest's rotating temporary directories."""
    kept = Path(tempfile.mkdtemp(prefix="sailplane-chaos-"))
    for path in [*workdir.glob("*.log"), workdir / "evidence.json"]:
        if path.exists():
            shutil.copy2(path, kept / path.name)
    return kept
