"""The repository's own docs stand alone: README, docs/ and the CLI's help point only inside
the repository (no design document a user of this repository does not have)."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from sailplane.cli import app
from tests.test_cli_help import verbs

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"\.\./shared|\bDESIGN(?:\.md| \d)")
LINK = re.compile(r"\]\(([^)#]+)(?:#[^)]*)?\)")


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_no_reference_leaves_the_repository() -> None:
    for path in documents():
        found = OUTSIDE.findall(path.read_text())
        assert not found, f"{path.relative_to(REPO)}: {found}"


def test_every_relative_link_resolves() -> None:
    for path in documents():
        for target in LINK.findall(path.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (path.parent / target).exists(), f"{path.relative_to(REPO)} -> {target}"


def test_help_texts_stand_alone() -> None:
    runner = CliRunner()
    for path in verbs():
        text = runner.invoke(app, [*path, "--help"], terminal_width=200).output
        assert not OUTSIDE.search(text), (path, text)
