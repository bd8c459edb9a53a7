"""A small client of the controller's API, used by the CLI (and handy in scripts)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from sailplane.credentials import dev_token_link, read_private, token_from
from sailplane.errors import SailplaneError

TOKEN_ENV = "SAILPLANE_TOKEN"


def find_token(controller_url: str, token_file: Path | None = None) -> str | None:
    """The API token for ``controller_url``, from the first of: ``token_file``, env
    ``SAILPLANE_TOKEN``, and, for a controller on a loopback address, the token that
    ``sailplane dev`` on that port published (:func:`~sailplane.credentials.dev_token_link`).
    None if there is none (the controller will then say 401).

    Raises :class:`~sailplane.credentials.CredentialError` if ``token_file`` is unreadable.
    """
    token = token_from(token_file, TOKEN_ENV)
    if token is not None:
        return token
    url = httpx.URL(controller_url)
    if not _loopback(url.host):
        return None  # a dev token never leaves this machine
    link = dev_token_link(url.port or (443 if url.scheme == "https" else 80))
    return read_private(link, "token file") if link.exists() else None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiError(SailplaneError):
    """The controller answered with an error; ``message`` is its own."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ControllerClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def connect(self, request: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self.http.post("/ctrl/connect", json=request))
        return result

    def terminate(self, backend_id: str, hard: bool) -> dict[str, Any]:
        kind = "hard-terminate" if hard else "soft-terminate"
        result: dict[str, Any] = self._json(self.http.post(f"/ctrl/b/{backend_id}/{kind}"))
        return result

    def status(self, backend_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self.http.get(f"/pub/b/{backend_id}/status"))
        return result

    def backend(self, backend_id: str) -> dict[str, Any]:
        """One backend as ``backends()`` lists it (with the message of an error)."""
        result: dict[str, Any] = self._json(self.http.get(f"/ctrl/b/{backend_id}"))
        return result

    def add_mount(self, backend_id: str, mount: dict[str, Any]) -> dict[str, Any]:
        """Hot-plug one ``volume_mounts`` entry into a running backend; its mounts after."""
        result: dict[str, Any] = self._json(
            self.http.post(f"/ctrl/b/{backend_id}/mounts", json=mount))
        return result

    def remove_mount(self, backend_id: str, target: str) -> dict[str, Any]:
        """Take the mount at ``target`` out of a running backend; its mounts after."""
        result: dict[str, Any] = self._json(
            self.http.delete(f"/ctrl/b/{backend_id}/mounts", params={"target": target}))
        return result

    def drain(self, drone_id: str, draining: bool = True) -> dict[str, Any]:
        """Drain a drone (no new backends), or undrain it with ``draining=False``."""
        verb = "drain" if draining else "undrain"
        result: dict[str, Any] = self._json(self.http.post(f"/ctrl/d/{drone_id}/{verb}"))
        return result

    def backends(self, live: bool = False) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json(
            self.http.get("/ctrl/backends", params={"live": live}))
        return result

    def drones(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json(self.http.get("/ctrl/drones"))
        return result

    def follow(self, backend_id: str) -> Iterator[dict[str, Any]]:
        """Each state of the backend, from the first, until ``terminated`` (the status stream:
        one event per state, its data the state)."""
        with self.http.stream("GET", f"/pub/b/{backend_id}/status-stream",
                              timeout=httpx.Timeout(30.0, read=None)) as response:
            if response.status_code >= 400:
                response.read()
                self._json(response)
            data: list[str] = []
            for line in response.iter_lines():
                if line.startswith("data:"):
                    data.append(line.removeprefix("data:").removeprefix(" "))
                elif not line and data:
                    yield json.loads("\n".join(data))
                    data = []

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            raise ApiError(response.status_code, "not_json",
                           f"the answer is not JSON (HTTP {response.status_code}): is this a "
                           f"Sailplane controller?") from None
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise ApiError(response.status_code, error.get("code", "error"),
                           error.get("message", response.text))
        return body
