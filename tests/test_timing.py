from sailplane import timing


def test_readiness_polls_faster_than_it_gives_up():
    assert 0 < timing.READY_POLL_FIRST_SECONDS <= timing.READY_POLL_MAX_SECONDS
    assert timing.READY_POLL_MAX_SECONDS < timing.READY_PROBE_TIMEOUT_SECONDS
    assert timing.READY_PROBE_TIMEOUT_SECONDS < timing.DEFAULT_STARTUP_TIMEOUT_SECONDS


def test_grace_period_is_shorter_than_the_kill_confirmation_allows():
    assert 0 < timing.DEFAULT_GRACE_SECONDS <= timing.KILL_CONFIRM_SECONDS


def test_a_drone_misses_several_heartbeats_before_it_is_unschedulable_then_lost():
    assert timing.HEARTBEAT_INTERVAL_SECONDS * 3 <= timing.HEARTBEAT_DEADLINE_SECONDS
    assert timing.HEARTBEAT_DEADLINE_SECONDS < timing.DRONE_LOST_SECONDS
    assert timing.SWEEP_INTERVAL_SECONDS < timing.HEARTBEAT_DEADLINE_SECONDS
