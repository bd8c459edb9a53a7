"""A small client of the controller's API, used by the CLI (and handy in scripts)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from sailplane.errors import SailplaneError


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

    def backends(self, live: bool = False) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json(
            self.http.get("/ctrl/backends", params={"live": live}))
        return result

    def drones(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json(self.http.get("/ctrl/drones"))
        return result

    def follow(self, backend_id: str) -> Iterator[dict[str, Any]]:
        """Each state of the backend, from the first, until ``terminated``."""
        with self.http.stream("GET", f"/pub/b/{backend_id}/status-stream",
                              timeout=httpx.Timeout(30.0, read=None)) as response:
            if response.status_code >= 400:
                response.read()
                self._json(response)
            for line in response.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line.removeprefix("data: "))

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        body = response.json()
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise ApiError(response.status_code, error.get("code", "error"),
                           error.get("message", response.text))
        return body
