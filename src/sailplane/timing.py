"""Every timeout of the system in one place, with why it has its value.

``tests/test_timing.py`` checks that they are in the order the lifecycle needs.
"""

from __future__ import annotations

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
# A drone sends a heartbeat this often ...
HEARTBEAT_INTERVAL_SECONDS = 2.0
# ... and is no longer scheduled onto when silent this long ...
HEARTBEAT_DEADLINE_SECONDS = 10.0
# ... and its backends are `lost` when silent this long (deadline plus a grace period).
DRONE_LOST_SECONDS = 30.0
# The controller's sweeper (deadlines, lost drones) runs this often.
SWEEP_INTERVAL_SECONDS = 1.0
# How often a controller looks in the database for actions other controllers queued.
ACTION_POLL_SECONDS = 0.25
# A disconnected drone or proxy retries with exponential backoff up to this.
RECONNECT_MAX_SECONDS = 5.0
