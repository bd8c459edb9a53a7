"""A signal to a container's init process, sent by the drone itself through a pidfd.

Asking the engine to signal a backend (``docker kill``, ``ctr tasks kill``) is an engine call
per backend that the engine relays to the container's shim; stopping a thousand at once queues
a thousand of them behind everything else the engine is doing. The drone, on the same host,
can send the signal itself, provided it is sure of the process:

1. it opens a pidfd on the pid, and only then checks that the process is the init of a pid
   namespace of its own (``NSpid`` ends in 1) in the container's cgroup: a pidfd names one
   process for good, so a pid recycled before the open fails the check, and one recycled
   after it cannot receive the signal;
2. the signal goes through the pidfd.

A process that fails the check is not signalled; the caller then asks the engine.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path


def signal_init(pid: int, in_container: Callable[[str], bool], signum: signal.Signals) -> bool:
    """Send ``signum`` to process ``pid`` if it is a container's init in a cgroup for which
    ``in_container(path)`` holds; whether it was (an init that exits between the check and
    the signal counts: the signal had nothing to do)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # gone
        return False
    try:
        if not is_init(pid, in_container):
            return False
        with contextlib.suppress(ProcessLookupError):  # it exited just now
            signal.pidfd_send_signal(pidfd, signum)
        return True
    finally:
        os.close(pidfd)


def is_init(pid: int, in_container: Callable[[str], bool]) -> bool:
    """Whether process ``pid`` is pid 1 of a pid namespace below the host's, in a cgroup
    (of any hierarchy) whose path satisfies ``in_container``."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        groups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    nspid = next((line.split()[1:] for line in status.splitlines()
                  if line.startswith("NSpid:")), [])
    in_cgroup = any(in_container(line.split(":", 2)[2]) for line in groups.splitlines()
                    if line.count(":") >= 2)
    return len(nspid) > 1 and nspid[-1] == "1" and in_cgroup
