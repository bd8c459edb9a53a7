"""Every limit of the proxy in one place: what a client (or a backend) may cost it.

The operator's limits (``ProxyLimits``, each a CLI option of ``sailplane proxy`` and
``sailplane dev``) and what a client gets when it crosses one:

===================  ============  ===========================================================
limit                default       crossing it
===================  ============  ===========================================================
max_header_bytes     64 KiB        431 ``header_too_large``, connection closed
max_headers          100           431 ``too_many_headers``, connection closed
max_pipelined        32            no error: the proxy stops reading the connection until
                                   earlier requests are answered
max_connections      4096          a new connection gets 503 ``too_many_connections`` and is
                                   closed; open ones are served as before
head_timeout         10 s          408 ``head_timeout`` (a connection that sent nothing is
                                   closed without an answer)
idle_timeout         60 s          a keep-alive connection without a request is closed
body_timeout         30 s          a request body that pauses this long: 408
                                   ``body_timeout`` (closed without an answer when the
                                   response had begun); a client that takes none of its
                                   response for this long is closed
===================  ============  ===========================================================

The other names are fixed bounds of the implementation, documented where they are used.
"""

from __future__ import annotations

import logging
import resource

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

KIB = 1024
MIB = 1024 * KIB

# -- the operator's limits, defaults ----------------------------------------------------------
MAX_HEADER_BYTES = 64 * KIB  # request line + headers (+ trailers) of one request
MAX_HEADERS = 100  # header lines (+ trailer lines) of one request
MAX_PIPELINED = 32  # requests read ahead on one connection while an earlier one is answered
MAX_CONNECTIONS = 4096  # open client connections per proxy process
HEAD_TIMEOUT_SECONDS = 10.0  # from a request's first byte (or a new connection) to its last header
IDLE_TIMEOUT_SECONDS = 60.0  # a keep-alive connection between requests
BODY_TIMEOUT_SECONDS = 30.0  # the longest pause of a body in either direction

# -- fixed bounds -----------------------------------------------------------------------------
# A request body that arrives before its backend connection is ready is held up to this, then
# the client is paused.
MAX_EARLY_BODY_BYTES = 256 * KIB
# Idle keep-alive connections kept per backend address.
MAX_IDLE_PER_BACKEND = 256
# A backend's response head (status line + headers); beyond it the client gets 502.
MAX_RESPONSE_HEAD_BYTES = 64 * KIB
# Reads larger than this are parsed in slices of this size, so that a read full of tiny
# pipelined requests queues at most about this many bytes' worth beyond ``max_pipelined``.
PARSE_SLICE_BYTES = 8 * KIB
# After its last answer on a connection the proxy shuts its side and reads (and drops) what
# the client still sends for this long, or this much, before closing: closing with unread
# input would reset the connection and could destroy the answer before the client read it.
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 1 * MIB
# Connections refused with 503 that may linger at once; beyond, they are closed at once.
MAX_LINGERING_REFUSALS = 1024
# File descriptors kept free for the controller link, logs and a burst of refusals.
FD_RESERVE = 64 + MAX_LINGERING_REFUSALS


class ProxyLimits(BaseModel):
    """The operator's limits for one proxy process (see the table above)."""

    model_config = ConfigDict(frozen=True)

    max_header_bytes: int = Field(MAX_HEADER_BYTES, ge=1 * KIB)
    max_headers: int = Field(MAX_HEADERS, ge=8)
    max_pipelined: int = Field(MAX_PIPELINED, ge=1)
    max_connections: int = Field(MAX_CONNECTIONS, ge=1)
    head_timeout: float = Field(HEAD_TIMEOUT_SECONDS, gt=0)
    idle_timeout: float = Field(IDLE_TIMEOUT_SECONDS, gt=0)
    body_timeout: float = Field(BODY_TIMEOUT_SECONDS, gt=0)

    def tick(self) -> float:
        """How often timeouts are checked: a quarter of the shortest, within [50 ms, 1 s].

        >>> ProxyLimits().tick()
        1.0
        >>> ProxyLimits(head_timeout=1).tick()
        0.25
        """
        shortest = min(self.head_timeout, self.idle_timeout, self.body_timeout)
        return max(0.05, min(1.0, shortest / 4))


def fds_needed(max_connections: int) -> int:
    """A client connection can hold two descriptors: its own and one to its backend."""
    return 2 * max_connections + FD_RESERVE


def fit_fd_limit(limits: ProxyLimits) -> ProxyLimits:
    """Raise this process's open-file limit as far as ``max_connections`` needs (up to the hard
    limit); if the hard limit is lower, lower ``max_connections`` to fit, and say so. Running
    out of descriptors would fail connections at random; a lower cap refuses them politely."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = fds_needed(limits.max_connections)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # pragma: no cover - depends on the host
            log.warning("could not raise the open-file limit to %d: %s", target, exc)
    if soft >= needed:
        return limits
    fitting = max(1, (soft - FD_RESERVE) // 2)
    log.warning("max connections lowered from %d to %d: the open-file limit is %d "
                "(raise it with ulimit -n)", limits.max_connections, fitting, soft)
    return limits.model_copy(update={"max_connections": fitting})
