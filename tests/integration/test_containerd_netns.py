"""A containerd backend's network namespace comes from its drone's pool (``netns_pool.py``),
is recorded on its container, survives a drone restart with it and goes at its removal; what
the dead drone's pool held goes at the restart. Real containerd, bridge and veth pairs."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import pytest

from sailplane.drone.readiness import answers_http, wait_until_ready
from sailplane.runtime.base import BackendSpec
from sailplane.runtime.containerd.netns_pool import NetnsPool, pool_prefix
from sailplane.runtime.containerd.network import NETNS_DIR, NamespaceNetwork
from sailplane.runtime.containerd.runtime import (
    NETNS_LABEL,
    ContainerdRuntime,
    container_id,
)

from .conftest import SyncCtr

READY_WITHIN_SECONDS = 30.0


def pooled(drone_id: str) -> tuple[set[str], set[str]]:
    """The drone's namespaces and its address holders."""
    prefix = pool_prefix(drone_id)
    return ({n for n in os.listdir(NETNS_DIR) if n.startswith(prefix)},
            {n for n in NamespaceNetwork().bridge.holders().values() if n.startswith(prefix)})


@pytest.mark.containerd
def test_a_backend_s_namespace_is_its_own_survives_a_drone_restart_and_goes_with_it(
    drone_ctr: SyncCtr, containerd_image: str, tmp_path: Path,
) -> None:
    drone_id = f"test-{uuid.uuid4().hex[:12]}"
    backend_id = f"b-{uuid.uuid4().hex[:12]}"
    cid = container_id(backend_id)

    def runtime() -> ContainerdRuntime:
        return ContainerdRuntime(drone_id, tmp_path / "state", drone_ctr.ctr.address,
                                 drone_ctr.ctr.namespace)

    async def first_run() -> str:
        drone = runtime()
        assert await drone.owned() == []
        address = await drone.start(BackendSpec(backend_id, containerd_image, {}, []))
        await asyncio.wait_for(wait_until_ready(address), READY_WITHIN_SECONDS)
        deadline = time.monotonic() + READY_WITHIN_SECONDS
        while len(drone.netns.ready()) < drone.netns.size:  # refilled after the start
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        return address.host  # then the drone dies: nothing closed, its pool left as it was

    try:
        ip = asyncio.run(first_run())
        labels = json.loads(drone_ctr("containers", "info", cid).stdout)["Labels"]
        name = labels[NETNS_LABEL]
        namespaces, holders = pooled(drone_id)
        assert name in namespaces and NamespaceNetwork().bridge.holders()[ip] == name
        assert len(namespaces) == len(holders) == 3  # the backend's and two ready ones

        async def restarted() -> None:
            drone = runtime()
            [found] = await drone.owned()
            assert found.running and found.address is not None and found.address.host == ip
            assert await answers_http(found.address)
            # The dead run's ready namespaces are gone, the backend's kept; the new pool fills.
            assert name in pooled(drone_id)[0]
            assert not (namespaces - {name}) & pooled(drone_id)[0]
            await drone.remove(backend_id)
            assert name not in pooled(drone_id)[0]
            assert name not in NamespaceNetwork().bridge.holders().values()
            await drone.close()
            assert pooled(drone_id) == (set(), set())

        asyncio.run(restarted())
    finally:
        drone_ctr("tasks", "delete", "--force", cid, check=False)
        drone_ctr("containers", "delete", cid, check=False)
        asyncio.run(NetnsPool(NamespaceNetwork(), drone_id, size=0).sweep(set()))
