"""What containerd backends hold outside the drone, for checking that their removal left
nothing: ``tests/integration/test_density.py`` and ``bench/density.py`` look with it.

A backend's container is ``sailplane-{backend_id}``; while it exists, so do its task, its
snapshot (named like it), its network namespace and its address in the bridge's address book
(both named by the drone's namespace pool, ``netns_pool.py``; named like the container for
backends started before the pool), its cgroups (one per hierarchy on cgroup v1) and its log
file. Removing the backend removes every one of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from sailplane.runtime.containerd.cgroup import CGROUP_ROOT
from sailplane.runtime.containerd.ctr import Ctr, task_statuses
from sailplane.runtime.containerd.netns_pool import pool_prefix
from sailplane.runtime.containerd.network import NETNS_DIR, NamespaceNetwork


async def traces(ctr: Ctr, log_dir: Path, containers: list[str], drone_id: str,
                 spare: Iterable[str] = ()) -> dict[str, list[str]]:
    """What of ``containers`` exists, by kind; a kind with nothing left is not listed. The
    namespaces and addresses are every one of ``drone_id``'s pool but its ``spare`` ones
    (``NetnsPool.unused``: none once the drone is closed)."""
    wanted = set(containers)
    prefix, unused = pool_prefix(drone_id), set(spare)

    def held(name: str) -> bool:
        return name in wanted or (name.startswith(prefix) and name not in unused)

    snapshots = {row.split()[0] for row in (await ctr("snapshots", "ls")).splitlines()[1:]
                 if row.split()}
    found = {
        "containers": sorted(wanted & set((await ctr("containers", "ls", "-q")).split())),
        "tasks": sorted(wanted & set(task_statuses(await ctr("tasks", "ls")))),
        "snapshots": sorted(wanted & snapshots),
        "netns": sorted(n for n in os.listdir(NETNS_DIR) if held(n)),
        "addresses": sorted(n for n in set(NamespaceNetwork().bridge.holders().values())
                            if held(n)),
        "cgroups": [str(path) for c in containers
                    for path in (*CGROUP_ROOT.glob(f"*/{ctr.namespace}/{c}"),
                                 CGROUP_ROOT / ctr.namespace / c) if path.exists()],
        "logs": [c for c in containers if (log_dir / f"{c}.log").exists()],
    }
    return {kind: items for kind, items in found.items() if items}
