"""What containerd backends hold outside the drone, for checking that their removal left
nothing: ``tests/integration/test_density.py`` and ``bench/density.py`` look with it.

A backend's container is ``sailplane-{backend_id}``; while it exists, so do its task, its
snapshot (named like it), its network namespace, its address in the bridge's address book,
its cgroups (one per hierarchy on cgroup v1) and its log file. Removing the backend removes
every one of them.
"""

from __future__ import annotations

from pathlib import Path

from sailplane.runtime.containerd.cgroup import CGROUP_ROOT
from sailplane.runtime.containerd.ctr import Ctr, task_statuses
from sailplane.runtime.containerd.network import NETNS_DIR, CniNetwork, netns_name


async def traces(ctr: Ctr, log_dir: Path, containers: list[str]) -> dict[str, list[str]]:
    """What of ``containers`` exists, by kind; a kind with nothing left is not listed."""
    wanted = set(containers)
    snapshots = {row.split()[0] for row in (await ctr("snapshots", "ls")).splitlines()[1:]
                 if row.split()}
    found = {
        "containers": sorted(wanted & set((await ctr("containers", "ls", "-q")).split())),
        "tasks": sorted(wanted & set(task_statuses(await ctr("tasks", "ls")))),
        "snapshots": sorted(wanted & snapshots),
        "netns": [c for c in containers if (NETNS_DIR / netns_name(c)).exists()],
        "addresses": sorted(wanted & set(CniNetwork().bridge.holders().values())),
        "cgroups": [str(path) for c in containers
                    for path in (*CGROUP_ROOT.glob(f"*/{ctr.namespace}/{c}"),
                                 CGROUP_ROOT / ctr.namespace / c) if path.exists()],
        "logs": [c for c in containers if (log_dir / f"{c}.log").exists()],
    }
    return {kind: items for kind, items in found.items() if items}
