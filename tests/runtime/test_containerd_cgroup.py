"""The pids cgroup the containerd runtime makes before ``ctr run`` (``containerd/cgroup.py``),
on a directory laid out like ``/sys/fs/cgroup``; the real one is in
``tests/integration/test_operator_limits.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sailplane.errors import RuntimeFailure
from sailplane.runtime.containerd.cgroup import prepare_pids_cgroup, remove_pids_cgroup


def test_on_cgroup_v1_the_limit_is_written_in_the_pids_hierarchy(tmp_path: Path) -> None:
    assert prepare_pids_cgroup("ns", "sailplane-b-1", 512, tmp_path) == "/ns/sailplane-b-1"
    assert (tmp_path / "pids" / "ns" / "sailplane-b-1" / "pids.max").read_text() == "512"


def test_on_cgroup_v2_the_pids_controller_is_enabled_for_the_namespace(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    assert prepare_pids_cgroup("ns", "sailplane-b-1", 64, tmp_path) == "/ns/sailplane-b-1"
    assert (tmp_path / "ns" / "cgroup.subtree_control").read_text() == "+pids"
    assert (tmp_path / "ns" / "sailplane-b-1" / "pids.max").read_text() == "64"


def test_cgroups_that_cannot_be_written_refuse_the_start(tmp_path: Path) -> None:
    (tmp_path / "pids").write_text("")  # not a directory: nothing can be made beneath it
    with pytest.raises(RuntimeFailure, match="cannot apply pids_limit 512"):
        prepare_pids_cgroup("ns", "sailplane-b-1", 512, tmp_path)


def test_remove_takes_an_empty_cgroup_and_ignores_one_already_gone(tmp_path: Path) -> None:
    made = tmp_path / "pids" / "ns" / "sailplane-b-1"
    made.mkdir(parents=True)
    remove_pids_cgroup("ns", "sailplane-b-1", tmp_path)
    assert not made.exists()
    remove_pids_cgroup("ns", "sailplane-b-1", tmp_path)  # runc removed it first: nothing to do
