"""Every timeout of the system in one place, with why it has its value.

``tests/test_timing.py`` checks that they are in the order the lifecycle needs.
"""

from __future__ import annotations

import os

# Tests of drone loss and lease expiry set SAILPLANE_TIME_SCALE below 1 in every process of a
# cluster, so that a lease runs out in seconds; every fault-detection timeout below is scaled
# by it, so their order, which is what matters, stays the same.
TIME_SCALE = float(os.environ.get("SAILPLANE_TIME_SCALE") or 1.0)
if not TIME_SCALE > 0:
    raise ValueError(f"SAILPLANE_TIME_SCALE must be a positive number, not {TIME_SCALE}")


def _scaled(seconds: float) -> float:
    return seconds * TIME_SCALE


# Soft termination: SIGTERM, then this long before SIGKILL (Plane's default too).
DEFAULT_GRACE_SECONDS = 10.0
# From container start until the backend's port answers HTTP; then `startup-timeout`.
DEFAULT_STARTUP_TIMEOUT_SECONDS = 60.0
# Readiness polling starts fast (a tiny backend answers within milliseconds) and backs off.
READY_POLL_FIRST_SECONDS = 0.005
READY_POLL_MAX_SECONDS = 0.1
# One readiness probe may not hang longer than this on a half-open port.
READY_PROBE_TIMEOUT_SECONDS = 1.0
# How long a terminate call waits for the runtime to confirm the kill.
KILL_CONFIRM_SECONDS = 10.0
# Terminate-all (Ctrl-C of `sailplane dev`) waits at most this long for the containers' removal
# after the last backend is terminated; removals still under way then go on in the background.
REMOVALS_TIMEOUT_SECONDS = 60.0
# A drone sends a heartbeat this often ...
HEARTBEAT_INTERVAL_SECONDS = _scaled(2.0)
# ... and is no longer scheduled onto when silent this long ...
HEARTBEAT_DEADLINE_SECONDS = _scaled(10.0)
# ... and its backends are `lost` when silent this long (deadline plus a grace period).
DRONE_LOST_SECONDS = _scaled(30.0)
# The controller's sweeper (deadlines, lost drones) runs this often.
SWEEP_INTERVAL_SECONDS = _scaled(1.0)
# How often a controller looks in the database for actions other controllers queued.
ACTION_POLL_SECONDS = 0.25
# A disconnected drone or proxy retries with exponential backoff up to this.
RECONNECT_MAX_SECONDS = _scaled(5.0)
# Key leases (``sailplane.controller.leases``): every live backend holds its key under a lease
# this long, renewed by each heartbeat its drone sends ...
LEASE_SECONDS = _scaled(20.0)
# ... a drone that has heard no renewal for this share of the lease kills its backends itself,
# leaving the rest of the lease for the kills to finish ...
LEASE_SELF_STOP_SHARE = 0.6
# ... and the controller gives a key whose backend it lost to a new backend only this long
# after the lease ran out (clock drift, a kill still under way).
KEY_RELEASE_MARGIN_SECONDS = _scaled(5.0)
# How often a drone checks its leases.
LEASE_CHECK_SECONDS = _scaled(0.5)
# A connect for a key whose backend is still terminating waits this long for the key before it
# answers 503 (the backend's grace period plus its kill, usually).
CONNECT_KEY_WAIT_SECONDS = 15.0
# A second drone taking the id of one heard from this recently is refused.
DRONE_ID_LIVE_SECONDS = _scaled(10.0)
