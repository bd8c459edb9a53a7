"""A restarted drone lists its Docker containers from the engine's list alone.

Inspecting each listed container (as the SDK's ``containers.list`` does) failed the drone's
start with NotFound when one was removed between the list and its inspection (found by the
chaos suite). The engine here is a stand-in that answers the list and 404s everything else:
the listing logic is pure."""

from __future__ import annotations

from typing import Any

import docker.errors

from sailplane.runtime.base import BACKEND_LABEL, DRONE_LABEL
from sailplane.runtime.docker.runtime import DockerRuntime


class GoneApi:
    """Lists containers that are all gone by the time anyone asks about one."""

    def __init__(self, listed: list[dict[str, Any]]) -> None:
        self.listed = listed

    def containers(self, **_: Any) -> list[dict[str, Any]]:
        return self.listed

    def inspect_container(self, name: str) -> dict[str, Any]:
        raise docker.errors.NotFound(f"No such container: {name}")

    def remove_container(self, container: str, **_: Any) -> None:
        raise docker.errors.NotFound(f"No such container: {container}")


class GoneClient:
    def __init__(self, listed: list[dict[str, Any]]) -> None:
        self.api = GoneApi(listed)


def entry(backend: str, state: str, status: str) -> dict[str, Any]:
    return {"Id": f"id-{backend}", "Names": [f"/sailplane-{backend}"], "State": state,
            "Status": status, "Labels": {BACKEND_LABEL: backend, DRONE_LABEL: "d1"}}


def test_containers_removed_after_the_list_do_not_fail_the_adoption():
    client = GoneClient([
        entry("b-exited", "exited", "Exited (137) 3 seconds ago"),
        entry("b-dead", "dead", "Dead"),
        {"Id": "id-warm", "Names": ["/sailplane-warm-1"], "State": "running", "Status": "Up",
         "Labels": {"dev.sailplane.warm": "img", DRONE_LABEL: "d1"}},  # unclaimed: removed
    ])
    runtime = DockerRuntime("d1", client=client)  # type: ignore[arg-type]
    owned = {found.backend_id: found for found in runtime._owned()}
    assert set(owned) == {"b-exited", "b-dead"}
    assert (owned["b-exited"].running, owned["b-exited"].exit_code) == (False, 137)
    assert (owned["b-dead"].running, owned["b-dead"].exit_code) == (False, -1)

