"""Typed identifiers. Backend ids become container names, so they are restricted."""

from __future__ import annotations

import re
import secrets
from typing import Annotated

from pydantic import StringConstraints

BACKEND_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{2,62}$"
BackendId = Annotated[str, StringConstraints(pattern=BACKEND_ID_PATTERN)]
DroneId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]


def new_backend_id() -> str:
    return "b-" + secrets.token_hex(8)


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def is_backend_id(value: str) -> bool:
    return re.match(BACKEND_ID_PATTERN, value) is not None
