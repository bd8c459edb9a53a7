"""Credentials: bearer tokens for each role, signed with the controller's secret.

A token names its role and subject and carries an HMAC-SHA256 of both under the controller's
secret, so the controller checks it with nothing but that secret (no table, no lookup, the
same answer on every controller sharing the secret)::

    sp1.drone.ZDE.6cX0...        role "drone", subject "d1" (base64url), then the MAC

Roles: ``api`` (every ``/ctrl`` route, and ``/metrics``), ``drone`` (the drone socket, as the
drone its subject names), ``proxy`` (the proxy socket), ``metrics`` (``/metrics`` only). The
subject of an ``api``, ``proxy`` or ``metrics`` token is a label for the logs.

The secret file holds one secret a line: the first signs new tokens, every line verifies, so a
secret is rotated by adding the new one first, re-minting, then deleting the old line.
Comparison is constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sailplane.errors import SailplaneError

log = logging.getLogger(__name__)

TOKEN_VERSION = "sp1"
SECRET_BYTES = 32
MIN_SECRET_CHARS = 32  # a shorter line in a secret file is refused, not padded
MAX_TOKEN_CHARS = 1024  # anything longer is refused before any parsing
MAX_SUBJECT_BYTES = 200
_MAC_CONTEXT = b"sailplane credential v1\x00"


class Role(StrEnum):
    API = "api"
    DRONE = "drone"
    PROXY = "proxy"
    METRICS = "metrics"


class CredentialError(SailplaneError):
    """Raised when a secret or token file cannot be used (missing, empty, malformed)."""

    code = "bad_credential"


@dataclass(frozen=True)
class Credential:
    """What a verified token says: its role, and whom it names."""

    role: Role
    subject: str


def new_secret() -> str:
    """A fresh controller secret: 32 random bytes, base64url (43 characters)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def mint(secret: str, role: Role, subject: str) -> str:
    """The token for ``role`` and ``subject`` under ``secret``."""
    if not subject or len(subject.encode()) > MAX_SUBJECT_BYTES:
        raise CredentialError(f"a subject is 1 to {MAX_SUBJECT_BYTES} bytes")
    encoded = _b64(subject.encode())
    return f"{TOKEN_VERSION}.{role.value}.{encoded}.{_mac(secret, role, encoded)}"


def verify(secret_list: Sequence[str], token: str) -> Credential | None:
    """The credential ``token`` carries if one of the secrets signed it, else None."""
    parsed = _parse(token)
    if parsed is None:
        return None
    role, encoded, mac = parsed
    signed = False
    for secret in secret_list:  # every one, whichever matches
        signed |= hmac.compare_digest(_mac(secret, role, encoded).encode(), mac.encode())
    return Credential(role, _unb64(encoded).decode()) if signed else None


def peek(token: str) -> Credential | None:
    """What a token *claims*, unverified: for a component to check its own token's role and
    subject at start (a clear error instead of a refusal from the controller)."""
    parsed = _parse(token)
    return None if parsed is None else Credential(parsed[0], _unb64(parsed[1]).decode())


def _parse(token: str) -> tuple[Role, str, str] | None:
    if len(token) > MAX_TOKEN_CHARS:
        return None
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != TOKEN_VERSION:
        return None
    _, role_name, encoded, mac = parts
    try:
        role = Role(role_name)
        _unb64(encoded).decode()
    except (ValueError, binascii.Error):
        return None
    return role, encoded, mac


def _mac(secret: str, role: Role, encoded_subject: str) -> str:
    message = _MAC_CONTEXT + role.value.encode() + b"\x00" + encoded_subject.encode()
    return _b64(hmac.new(secret.encode(), message, hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or any(c not in _B64_ALPHABET for c in text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


# -- files and the environment ------------------------------------------------------------


def parse_secrets(text: str, where: str) -> list[str]:
    """The secrets in a secret file's text: one a line; blank lines and ``#`` comments skip."""
    found = [line.strip() for line in text.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    if not found:
        raise CredentialError(f"{where}: no secret in it")
    for secret in found:
        if len(secret) < MIN_SECRET_CHARS:
            raise CredentialError(f"{where}: a secret is at least {MIN_SECRET_CHARS} "
                                  "characters (make one with `sailplane credentials secret`)")
    return found


def read_private(path: Path, what: str) -> str:
    """A secret or token file's text (stripped); warns if others may read it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise CredentialError(f"{what} {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s %s can be read by other users (mode %o); chmod 600 it",
                    what, path, stat.S_IMODE(mode))
    if not text:
        raise CredentialError(f"{what} {path} is empty")
    return text


def token_from(file: Path | None, env_var: str) -> str | None:
    """A component's token: from ``file`` if given, else from the environment, else None."""
    if file is not None:
        return read_private(file, "token file")
    return os.environ.get(env_var, "").strip() or None


def secrets_from(file: Path | None, env_var: str) -> list[str]:
    """The controller's secrets: from ``file`` if given, else the environment, else none."""
    if file is not None:
        return parse_secrets(read_private(file, "secret file"), str(file))
    value = os.environ.get(env_var, "").strip()
    return parse_secrets(value, env_var) if value else []


def write_private(path: Path, text: str, *, replace: bool = True) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically: the file is created 0600 under a
    temporary name (never readable by others, whatever the umask) and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text if text.endswith("\n") else text + "\n")
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if ``path`` exists
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


# -- `sailplane dev`'s API token, found by the CLI ------------------------------------------


def dev_token_link(port: int) -> Path:
    """Where ``sailplane dev`` on ``port`` leaves a symlink to its ``DATA_DIR/api-token``, so
    the CLI talking to a loopback controller on that port finds the token from any directory:
    ``$XDG_STATE_HOME/sailplane/dev/PORT.api-token`` (``~/.local/state`` by default)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "sailplane" / "dev" / f"{port}.api-token"
