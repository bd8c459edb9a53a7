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


def test_a_lease_outlives_missed_heartbeats_and_the_drone_stops_before_it_ends():
    stop_after = timing.LEASE_SECONDS * timing.LEASE_SELF_STOP_SHARE
    assert 0 < timing.LEASE_SELF_STOP_SHARE < 1
    # A renewal survives a couple of lost heartbeats before the drone gives up ...
    assert stop_after >= timing.HEARTBEAT_INTERVAL_SECONDS * 3
    # ... and once it gives up, a SIGKILL and its confirmation fit before the lease ends.
    assert stop_after + timing.KILL_CONFIRM_SECONDS <= timing.LEASE_SECONDS + \
        timing.KEY_RELEASE_MARGIN_SECONDS
    assert timing.LEASE_CHECK_SECONDS < timing.HEARTBEAT_INTERVAL_SECONDS
    # The controller marks a silent drone's backends lost no earlier than it may release keys.
    assert timing.LEASE_SECONDS + timing.KEY_RELEASE_MARGIN_SECONDS <= timing.DRONE_LOST_SECONDS


def test_a_live_drone_id_is_one_heard_within_the_heartbeat_deadline():
    assert timing.HEARTBEAT_INTERVAL_SECONDS * 3 <= timing.DRONE_ID_LIVE_SECONDS
    assert timing.DRONE_ID_LIVE_SECONDS <= timing.HEARTBEAT_DEADLINE_SECONDS
