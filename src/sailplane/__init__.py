"""Sailplane: a session-backend orchestrator with declarative, secure volume mounts."""

__version__ = "0.1.0"
