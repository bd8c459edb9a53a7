"""The drone operator's caps (``sailplane.drone.limits``): defaults a request may lower, never
raise, and the tmpfs cap the mount plan enforces. The executor's use of them, on real engines,
is in ``tests/integration/test_operator_limits.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sailplane.drone import limits as limits_module
from sailplane.drone.limits import (
    OperatorLimits,
    effective_limits,
    memory_total_bytes,
)
from sailplane.errors import LimitRefused, MountRefused
from sailplane.mounts.plan import check_mounts
from sailplane.mounts.policy import MountPolicy
from sailplane.mounts.resolved import ResolvedTmpfsMount
from sailplane.spec import ExecutorConfig, ResourceLimits

from ..mounts.conftest import VALUES, executor

MiB = 1024 * 1024
CAPS = OperatorLimits(max_tmpfs_bytes=64 * MiB, default_memory_bytes=256 * MiB,
                      default_pids_limit=100)

# --- the operator's defaults --------------------------------------------------------------


def test_the_defaults_are_512_mib_512_pids_and_a_quarter_of_memory_for_a_tmpfs():
    total = memory_total_bytes(Path("/proc/meminfo").read_text())
    assert total is not None and total > 0
    limits = OperatorLimits()
    assert (limits.default_memory_bytes, limits.default_pids_limit) == (512 * MiB, 512)
    assert limits.max_tmpfs_bytes == total // 4


@pytest.mark.parametrize(("meminfo", "total"), [
    ("MemTotal:       24684096 kB\nMemFree:  100 kB\n", 24684096 * 1024),
    ("MemFree: 1 kB\nMemTotal: 2048 kB\n", 2048 * 1024),
    ("MemFree: 1 kB\n", None),
    ("", None),
])
def test_memtotal_is_read_from_meminfo(meminfo, total):
    assert memory_total_bytes(meminfo) == total


def test_without_meminfo_there_is_no_tmpfs_cap(monkeypatch, tmp_path):
    monkeypatch.setattr(limits_module, "MEMINFO", tmp_path / "missing")
    assert OperatorLimits().max_tmpfs_bytes is None


def test_flags_keep_defaults_when_absent_and_zero_means_no_cap():
    assert OperatorLimits.from_flags() == OperatorLimits()
    given = OperatorLimits.from_flags(max_tmpfs_bytes=MiB, default_memory_bytes=2 * MiB,
                                      default_pids_limit=7)
    assert (given.max_tmpfs_bytes, given.default_memory_bytes, given.default_pids_limit) == (
        MiB, 2 * MiB, 7)
    none = OperatorLimits.from_flags(0, 0, 0)
    assert (none.max_tmpfs_bytes, none.default_memory_bytes, none.default_pids_limit) == (
        None, None, None)


@pytest.mark.parametrize("field", ["max_tmpfs_bytes", "default_memory_bytes",
                                   "default_pids_limit"])
def test_a_negative_cap_is_refused(field):
    with pytest.raises(ValidationError, match=field):
        OperatorLimits.model_validate({field: -1})


# --- effective limits ---------------------------------------------------------------------


def test_a_request_without_limits_gets_the_operators_defaults():
    assert effective_limits(ResourceLimits(), CAPS) == ResourceLimits(
        memory_limit_bytes=256 * MiB, pids_limit=100
    )


def test_a_request_may_lower_a_limit_or_ask_for_exactly_the_cap():
    lower = ResourceLimits(memory_limit_bytes=64 * MiB, pids_limit=100, cpu_period_percent=50)
    assert effective_limits(lower, CAPS) == lower


@pytest.mark.parametrize(("asked", "message"), [
    (ResourceLimits(memory_limit_bytes=256 * MiB + 1),
     f"resource_limits.memory_limit_bytes: {256 * MiB + 1} is above this drone's cap of "
     f"{256 * MiB}"),
    (ResourceLimits(pids_limit=101),
     "resource_limits.pids_limit: 101 is above this drone's cap of 100"),
])
def test_asking_for_more_than_the_cap_is_refused_never_lowered(asked, message):
    with pytest.raises(LimitRefused) as info:
        effective_limits(asked, CAPS)
    assert info.value.message == message
    assert info.value.code == "limit_refused"


def test_without_a_cap_a_request_keeps_what_it_asked_for():
    uncapped = OperatorLimits(max_tmpfs_bytes=None, default_memory_bytes=None,
                              default_pids_limit=None)
    huge = ResourceLimits(memory_limit_bytes=1 << 40, pids_limit=1 << 20)
    assert effective_limits(huge, uncapped) == huge
    assert effective_limits(ResourceLimits(), uncapped) == ResourceLimits()


# --- the tmpfs cap, in the mount plan -----------------------------------------------------


def tmpfs_request(size: int) -> ExecutorConfig:
    others = [{"type": "tmpfs", "target": f"/t{index}", "size_bytes": MiB} for index in range(3)]
    return executor(*others, {"type": "tmpfs", "target": "/scratch", "size_bytes": size})


def test_a_tmpfs_up_to_the_cap_plans():
    policy = CAPS.cap_policy(MountPolicy())
    assert policy.max_tmpfs_bytes == 64 * MiB
    [*_, last] = check_mounts(tmpfs_request(64 * MiB), policy, VALUES)
    assert last == ResolvedTmpfsMount(target="/scratch", size_bytes=64 * MiB, mode=0o1777)


def test_a_tmpfs_above_the_cap_is_refused_naming_the_mount():
    with pytest.raises(MountRefused) as info:
        check_mounts(tmpfs_request(1 << 40), CAPS.cap_policy(MountPolicy()), VALUES)
    assert info.value.mount == 3
    assert info.value.message == (
        f"volume_mounts[3].size_bytes: {1 << 40} is above this drone's tmpfs cap of {64 * MiB}"
    )


def test_the_controller_has_no_tmpfs_cap_to_check():
    # Each drone has its own cap; the controller checks without a policy.
    assert len(check_mounts(tmpfs_request(1 << 40), None, VALUES)) == 4
