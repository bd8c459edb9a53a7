"""Every verb's --help renders (exit 0), as plain text: no Rich markup is read from a help text,
and flags show no ``<bool>`` placeholder."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from sailplane import __version__
from sailplane.cli import app

runner = CliRunner()


def verbs() -> list[list[str]]:
    """Every command path, groups included: ["connect"], ["mounts", "plan"], ..."""
    found: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():  # a group's verbs
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_the_verbs_are_all_found() -> None:
    names = {" ".join(path) for path in verbs()}
    assert {"", "connect", "status", "dev", "controller", "drone", "proxy", "drones drain",
            "drones undrain", "volumes ls", "mounts plan", "credentials new"} <= names


@pytest.mark.parametrize("path", verbs(), ids=lambda path: " ".join(path) or "sailplane")
def test_help_renders(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "<bool>" not in result.output
    assert "Traceback" not in result.output


def test_the_volume_help_keeps_its_brackets() -> None:
    result = runner.invoke(app, ["connect", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "host:VOL[/SUB]:TARGET[:rw]" in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"sailplane {__version__}"
