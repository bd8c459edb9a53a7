"""A signal to a containerd backend's init process, sent by the drone itself.

``ctr tasks kill`` takes one container, so stopping a thousand backends through it starts a
thousand ``ctr`` processes, each a Go runtime and a gRPC connection to containerd, only to
have the shim send one signal. The drone sends it directly instead, to the same process: the
container's processes are those of its cgroup, ``/{namespace}/{container}``, where runc places
every task ``ctr run`` starts (``cgroup.py``); among them, its init is signalled through a
pidfd once checked (``runtime/init_signal.py``).

A container whose init is not found that way (its task ended, or a cgroup layout other than
runc's default, e.g. the systemd driver) is left to ``ctr tasks kill`` by the caller.
"""

from __future__ import annotations

import signal
from pathlib import Path

from sailplane.runtime.containerd.cgroup import CGROUP_ROOT, container_cgroup
from sailplane.runtime.init_signal import signal_init as signal_checked


def signal_init(
    namespace: str, container: str, signum: signal.Signals, root: Path = CGROUP_ROOT
) -> bool:
    """Send ``signum`` to the container's init process; whether it was found (an init that
    exits between the check and the signal counts as found: the signal had nothing to do)."""
    cgroup = f"/{namespace}/{container}"
    try:
        pids = (container_cgroup(namespace, container, root) / "cgroup.procs").read_text()
    except OSError:  # no such cgroup: no task, or one placed elsewhere
        return False
    return any(signal_checked(pid, cgroup.__eq__, signum) for pid in map(int, pids.split()))
