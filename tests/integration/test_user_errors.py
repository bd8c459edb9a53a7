"""What a user sees when things go wrong, through `sailplane dev` and the CLI: a spawn that
fails says why (no URL, exit 1), in `connect --wait`, `status` (text, --json, --follow) and the
backends table; drain and undrain from the CLI."""

from __future__ import annotations

import json

import pytest

from tests.integration.proxy_fixtures import demo_image  # noqa: F401 - a fixture
from tests.integration.test_walkthrough import Dev, dev  # noqa: F401 - a fixture

pytestmark = pytest.mark.docker

MISSING = "nosuch/image:2"


def test_a_failed_spawn_says_why(dev: Dev) -> None:  # noqa: F811 - the fixture
    done = dev.cli("connect", "--image", MISSING, "--key", "k", "--wait", check=False)
    assert done.returncode == 1
    assert "http" not in done.stdout
    why = done.stderr.strip().splitlines()[-1]
    assert why.startswith("error: backend b-") and "terminated (error): " in why
    assert MISSING in why
    backend_id = why.split()[2]

    text = dev.cli("status", backend_id).stdout.strip()
    assert text.startswith("terminated (error): ") and MISSING in text
    state = json.loads(dev.cli("status", backend_id, "--json").stdout)
    assert (state["status"], state["reason"]) == ("terminated", "error")
    assert MISSING in state["message"]
    followed = dev.cli("status", backend_id, "--follow").stdout.strip().splitlines()
    assert followed[0] == "scheduled" and followed[-1] == text
    as_json = dev.cli("connect", "--image", MISSING, "--key", "k2", "--wait", "--json",
                      check=False)
    assert as_json.returncode == 1
    answer = json.loads(as_json.stdout)
    assert answer["url"] is None and answer["reason"] == "error" and MISSING in answer["message"]
    dev.env["COLUMNS"] = "300"  # the table as a wide terminal shows it
    table = dev.cli("backends").stdout
    assert "message" in table and "terminated (error)" in table and MISSING in table


def test_drain_and_undrain(dev: Dev) -> None:  # noqa: F811 - the fixture
    assert dev.cli("drones", "drain", dev.drone_id).stdout.strip().endswith("is draining")
    [row] = json.loads(dev.cli("drones", "--json").stdout)
    assert row["draining"] is True
    refused = dev.cli("connect", "--image", "sailplane/demo:latest", check=False)
    assert refused.returncode == 2 and "draining" in refused.stderr
    dev.cli("drones", "undrain", dev.drone_id)
    [row] = json.loads(dev.cli("drones", "--json").stdout)
    assert row["draining"] is False
