"""``pip install`` of the package without any extra gives a working CLI: every module the CLI
imports is a runtime dependency (httpx, fastapi-offline, ...). A fresh virtual environment,
packages from the package index; bounded in time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_SECONDS = 600


@pytest.mark.timeout(INSTALL_TIMEOUT_SECONDS + 120)
def test_the_cli_works_after_a_plain_install(tmp_path: Path) -> None:
    source = tmp_path / "source"  # only what a source distribution holds
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src",
                    ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         str(source)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS)
    assert install.returncode == 0, install.stderr[-4000:]
    sailplane = env_dir / "bin" / "sailplane"
    for args in (["--help"], ["--version"], ["connect", "--help"], ["dev", "--help"]):
        done = subprocess.run([str(sailplane), *args], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, (args, done.stderr[-4000:])
    imports = subprocess.run(
        [str(python), "-c", "import sailplane.cli, sailplane.controller.app, sailplane.dev"],
        capture_output=True, text=True, timeout=60)
    assert imports.returncode == 0, imports.stderr[-4000:]
    assert sys.executable != str(python)
