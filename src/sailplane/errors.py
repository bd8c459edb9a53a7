"""Sailplane's exceptions, one tree so callers can catch as broadly as they need.

    SailplaneError
     ├── PolicyError        the drone operator's mount policy is itself unsafe or malformed
     ├── MountRefused       a spawn request's mount was refused (validation, policy or disk)
     ├── LimitRefused       a spawn request asked for more than the drone operator's cap
     └── RuntimeFailure     the container runtime could not do what was asked
          └── BackendExited  the backend's process ended before it could be reached

Each error carries a stable ``code`` for API responses; the message names the field and
the reason, and never a host path when it is meant for a public response.
"""

from __future__ import annotations


class SailplaneError(Exception):
    """Base of every error Sailplane raises on purpose."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PolicyError(SailplaneError):
    """Raised when a drone's host-volume policy is refused (a forbidden root, a bad flag)."""

    code = "bad_policy"


class MountRefused(SailplaneError):
    """Raised when one mount of a request is refused.

    ``mount`` is the index of the entry in ``volume_mounts``, or the field name for the
    Plane-style ``mount`` shorthand, so a caller can point at the offending entry.
    """

    code = "mount_refused"

    def __init__(self, mount: int | str, message: str) -> None:
        super().__init__(message)
        self.mount = mount

    def to_json(self) -> dict[str, object]:
        return {"error": {"code": self.code, "mount": self.mount, "message": self.message}}


class LimitRefused(SailplaneError):
    """Raised when a request's resource limit is above the drone operator's cap (docs/security.md).

    A request may lower a limit, never raise it: the message names the field, the value asked
    for and the cap, and nothing is silently lowered.
    """

    code = "limit_refused"


class RuntimeFailure(SailplaneError):
    """Raised when the container runtime fails (image missing, engine unreachable)."""

    code = "runtime_failure"


class BackendExited(RuntimeFailure):
    """Raised by ``Runtime.start`` when the backend ended before its address could be read.

    Not a failure to start: the backend ran, and ends ``exited`` with ``exit_code``. Its
    container is left in place, like that of any backend that exits.
    """

    code = "backend_exited"

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"the backend exited with code {exit_code} as it started")
        self.exit_code = exit_code
