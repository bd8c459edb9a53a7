"""A signal to a containerd backend's init process, sent by the drone itself.

``ctr tasks kill`` takes one container, so stopping a thousand backends through it starts a
thousand ``ctr`` processes, each a Go runtime and a gRPC connection to containerd, only to
have the shim send one signal. The drone sends it directly instead, to the same process:

1. the container's processes are those of its cgroup, ``/{namespace}/{container}``, where
   runc places every task ``ctr run`` starts (``cgroup.py``);
2. among them, its init is the one whose pid in its own pid namespace is 1 (``NSpid``);
3. the drone opens a pidfd on that pid and only then checks that the process is still in that
   cgroup and still an init: a pidfd names one process for good, so a pid recycled before
   the open fails the check, and one recycled after it cannot receive the signal;
4. the signal goes through the pidfd.

A container whose init is not found that way (its task ended, or a cgroup layout other than
runc's default, e.g. the systemd driver) is left to ``ctr tasks kill`` by the caller.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from sailplane.runtime.containerd.cgroup import CGROUP_ROOT, container_cgroup


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
    for pid in map(int, pids.split()):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # gone since the cgroup was read
            continue
        try:
            if not _is_init_in(pid, cgroup):
                continue
            with contextlib.suppress(ProcessLookupError):  # it exited just now
                signal.pidfd_send_signal(pidfd, signum)
            return True
        finally:
            os.close(pidfd)
    return False


def _is_init_in(pid: int, cgroup: str) -> bool:
    """Whether process ``pid`` is pid 1 of a pid namespace below the host's, in ``cgroup``."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        groups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    nspid = next((line.split()[1:] for line in status.splitlines()
                  if line.startswith("NSpid:")), [])
    in_cgroup = any(line.split(":", 2)[2] == cgroup for line in groups.splitlines()
                    if line.count(":") >= 2)
    return len(nspid) > 1 and nspid[-1] == "1" and in_cgroup
