"""The drone operator's caps on what one backend may use (docs/security.md)::

    sailplane drone --default-memory-bytes 536870912 --default-pids-limit 512 \\
                    --max-tmpfs-bytes 1073741824

Memory and pids: the operator's value is every backend's default *and* its cap. A request may
ask for less, never for more: :func:`effective_limits` refuses with :class:`LimitRefused`
naming the field rather than silently lowering it, so a caller never runs under a limit it did
not ask for without knowing. tmpfs: one mount's ``size_bytes`` may be at most
``max_tmpfs_bytes``; the mount plan checks it, through :attr:`MountPolicy.max_tmpfs_bytes`
(:meth:`OperatorLimits.cap_policy`), so a refusal names the mount like every mount refusal.

``None`` means no default and no cap (flag value ``0``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from sailplane.errors import LimitRefused
from sailplane.mounts.policy import MountPolicy
from sailplane.spec import ResourceLimits

# A session backend (an editor, a game room), not a database: enough for a runtime and its
# working set, and a machine of 16 GiB still holds about thirty of them.
DEFAULT_MEMORY_BYTES = 512 * 1024 * 1024
# Room for a worker pool and a shell; a fork bomb stops here instead of at the machine's limit.
DEFAULT_PIDS_LIMIT = 512
# A tmpfs is memory: one mount may take at most this fraction (1/4) of the machine's.
TMPFS_SHARE_DIVISOR = 4
MEMINFO = Path("/proc/meminfo")


def memory_total_bytes(meminfo: str) -> int | None:
    """``MemTotal`` in bytes from the text of ``/proc/meminfo``, or None if it is not there.

    >>> memory_total_bytes("MemTotal:       24684096 kB\\nMemFree: 1 kB\\n")
    25276514304
    """
    for line in meminfo.splitlines():
        name, _, value = line.partition(":")
        if name == "MemTotal":
            number, _, unit = value.strip().partition(" ")
            return int(number) * (1024 if unit == "kB" else 1)
    return None


def default_max_tmpfs_bytes() -> int | None:
    """A quarter of this machine's memory; None (no cap) where /proc/meminfo cannot be read."""
    try:
        total = memory_total_bytes(MEMINFO.read_text())
    except OSError:
        return None
    return None if total is None else total // TMPFS_SHARE_DIVISOR


class OperatorLimits(BaseModel):
    """One drone's caps. Read once, when the drone's settings are made."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tmpfs_bytes: int | None = Field(default_factory=default_max_tmpfs_bytes, gt=0)
    default_memory_bytes: int | None = Field(default=DEFAULT_MEMORY_BYTES, gt=0)
    default_pids_limit: int | None = Field(default=DEFAULT_PIDS_LIMIT, gt=0)

    @classmethod
    def from_flags(
        cls, max_tmpfs_bytes: int | None = None, default_memory_bytes: int | None = None,
        default_pids_limit: int | None = None,
    ) -> OperatorLimits:
        """From the CLI: a flag not given keeps its default, ``0`` means no default or cap."""
        given = {"max_tmpfs_bytes": max_tmpfs_bytes, "default_memory_bytes": default_memory_bytes,
                 "default_pids_limit": default_pids_limit}
        return cls.model_validate(
            {name: value or None for name, value in given.items() if value is not None}
        )

    def cap_policy(self, policy: MountPolicy) -> MountPolicy:
        """``policy`` with this drone's tmpfs cap, which the mount plan enforces."""
        return policy.model_copy(update={"max_tmpfs_bytes": self.max_tmpfs_bytes})


def effective_limits(requested: ResourceLimits, limits: OperatorLimits) -> ResourceLimits:
    """The limits a backend runs under: the operator's where the request names none, the
    request's own where they are lower. Higher is refused, naming the field.

    >>> caps = OperatorLimits(default_memory_bytes=512 << 20, default_pids_limit=512)
    >>> effective_limits(ResourceLimits(pids_limit=64), caps).memory_limit_bytes
    536870912
    >>> effective_limits(ResourceLimits(pids_limit=1024), caps)
    Traceback (most recent call last):
      ...
    sailplane.errors.LimitRefused: resource_limits.pids_limit: 1024 is above this drone's cap of 512
    """
    filled: dict[str, int] = {}
    for field, cap in (("memory_limit_bytes", limits.default_memory_bytes),
                       ("pids_limit", limits.default_pids_limit)):
        asked: int | None = getattr(requested, field)
        if cap is None:
            continue
        if asked is None:
            filled[field] = cap
        elif asked > cap:
            raise LimitRefused(
                f"resource_limits.{field}: {asked} is above this drone's cap of {cap}"
            )
    return requested.model_copy(update=filled)
