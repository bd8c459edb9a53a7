"""The set-up scripts work behind any Debian mirror: they name no mirror host of their own
(debootstrap takes the mirror from apt's configuration)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A host name in a URL, or a Debian mirror's typical names anywhere.
URL_HOST = re.compile(r"\b(?:https?|ftp)://([A-Za-z0-9.-]+)")
MIRROR_NAMES = re.compile(r"\b(?:deb|ftp|security|archive|mirrors?)\.[a-z0-9-]+\.[a-z]{2,}\b"
                          r"|debian\.(?:org|net)")
LOOPBACK = {"127.0.0.1", "localhost"}


def set_up_files() -> list[Path]:
    files = [path for path in (REPO / "scripts").iterdir() if path.is_file()]
    files += [path for path in (REPO / "images").rglob("*") if path.is_file()]
    return sorted(files)


def test_the_files_are_found() -> None:
    names = {str(path.relative_to(REPO)) for path in set_up_files()}
    assert {"scripts/setup", "images/demo/stage", "images/build"} <= names


def test_no_mirror_host_is_named() -> None:
    for path in set_up_files():
        text = path.read_text(errors="replace")
        hosts = {host for host in URL_HOST.findall(text) if host not in LOOPBACK}
        assert not hosts, f"{path.relative_to(REPO)} names {sorted(hosts)}"
        assert not MIRROR_NAMES.search(text), f"{path.relative_to(REPO)} names a mirror"
