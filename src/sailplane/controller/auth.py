"""Who may call what on the controller: one check for HTTP routes and both sockets.

Every ``/ctrl`` route wants an ``api`` credential, the drone socket a ``drone`` one (for the
drone it names, see ``drone_socket``), the proxy socket a ``proxy`` one, ``/metrics`` an
``api`` or ``metrics`` one unless the operator opened it. ``/pub`` and ``/health`` are open.

A request carrying a browser's ``Origin`` header that is not in the operator's allow-list is
refused whatever credential it has: a web page must not drain a drone or open a socket with
an ambient credential. (The controller serves no pages, so there is no same-origin case;
matching the ``Host`` header instead would let a DNS-rebound page through.)

Refusals: 401 (no credential, or one no secret signed), 403 (a good credential of another
role, or a foreign origin). A refused WebSocket never upgrades.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sailplane.credentials import Credential, CredentialError, Role, verify
from sailplane.errors import SailplaneError

log = logging.getLogger(__name__)

MAX_VERIFIED_TOKENS = 4096
INSECURE_NOTE = "INSECURE (--insecure: no credential is checked)"


class Refused(SailplaneError):
    """Raised when a request lacks the credential (401) or the right to call (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = "unauthorized" if status == 401 else "forbidden"


class Guard:
    def __init__(
        self, secrets: Iterable[str], *, insecure: bool = False,
        allowed_origins: Iterable[str] = (),
    ) -> None:
        self._secrets = list(secrets)
        # Tokens that verified, and what they carry: a connect sends the same token again and
        # again, and a dictionary hit costs less than a MAC. Only good tokens are kept (a bad
        # one is checked afresh, in constant time, every time) and the secrets never change
        # while the guard lives, so a hit always gives verify()'s answer.
        self._verified: dict[str, Credential] = {}
        self.insecure = insecure
        self._origins = frozenset(origin.rstrip("/") for origin in allowed_origins)
        if not self._secrets and not insecure:
            raise CredentialError("the controller needs a secret (--secret-file or "
                                  "SAILPLANE_SECRET), or --insecure to check no credential")

    def check(
        self, authorization: str | None, origin: str | None, roles: frozenset[Role],
        where: str,
    ) -> Credential | None:
        """The caller's credential if it may call ``where`` (None when insecure), else raise
        :class:`Refused`."""
        if origin is not None and origin.rstrip("/") not in self._origins:
            raise Refused(403, f"requests from origin {origin!r} are refused")
        if self.insecure:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refused(401, f"{where} needs a credential: Authorization: Bearer TOKEN")
        credential = self._verify(token.strip())
        if credential is None:
            raise Refused(401, f"{where}: the credential is not valid")
        if credential.role not in roles:
            raise Refused(403, f"{where}: a {credential.role} credential may not call this")
        return credential

    def _verify(self, token: str) -> Credential | None:
        credential = self._verified.get(token)
        if credential is None:
            credential = verify(self._secrets, token)
            if credential is not None:
                if len(self._verified) >= MAX_VERIFIED_TOKENS:
                    self._verified.clear()  # bounded memory; the next hits fill it again
                self._verified[token] = credential
        return credential


API = frozenset({Role.API})
DRONE = frozenset({Role.DRONE})
PROXY = frozenset({Role.PROXY})
METRICS = frozenset({Role.API, Role.METRICS})
