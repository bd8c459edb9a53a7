"""The operator's dry run (docs/mounts.md): a request's JSON in, the mount plan document out.

This is the surface ``sailplane mounts plan`` prints, so its shape is part of the contract::

    {"mounts": [...resolved mounts...], "docker": [...HostConfig.Mounts...], "oci": [...]}

or, when refused, ``{"error": {"code": "mount_refused", "mount": 0, "message": "..."}}``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from sailplane.errors import MountRefused, SailplaneError
from sailplane.mounts.pin import StagingArea
from sailplane.mounts.plan import plan_mounts
from sailplane.mounts.policy import MountPolicy
from sailplane.mounts.validate import TemplateValues
from sailplane.runtime.containerd.mounts import to_oci_mounts
from sailplane.runtime.docker.mounts import to_docker_mounts
from sailplane.spec import ConnectRequest, ExecutorConfig


def parse_executor(text: str) -> tuple[ExecutorConfig, ConnectRequest | None]:
    """Accept an ``executable`` object or a whole connect request."""
    data = json.loads(text)
    if isinstance(data, dict) and ("spawn_config" in data or "key" in data):
        request = ConnectRequest.model_validate(data)
        if request.spawn_config is None:
            raise ValueError("the connect request has no spawn_config to plan")
        return request.spawn_config.executable, request
    return ExecutorConfig.model_validate(data), None


def plan_document(
    text: str,
    policy: MountPolicy,
    *,
    key: str | None,
    namespace: str | None,
    backend: str,
    apply: bool,
    volume_root: str,
    staging: StagingArea,
) -> tuple[int, dict[str, Any]]:
    """Return (exit status, document): 0 with the plan, or 2 with the error.

    Host mounts' ``docker``/``oci`` sources are the staging paths a drone would pin them at
    (under ``staging``, for backend ``backend``); nothing is pinned here."""
    try:
        executor, request = parse_executor(text)
        if request is not None and request.key is not None:
            key = request.key.name if key is None else key
            namespace = request.key.namespace if namespace is None else namespace
        values = TemplateValues(key=key or "", namespace=namespace or "", backend=backend)
        resolved = plan_mounts(executor, policy, values, apply=apply, staging=staging)
    except MountRefused as exc:
        return 2, exc.to_json()
    except ValidationError as exc:
        return 2, _shape_error(exc)
    except (ValueError, SailplaneError) as exc:
        return 2, {"error": {"code": "invalid_request", "message": str(exc)}}
    return 0, {
        "mounts": [mount.model_dump() for mount in resolved],
        "docker": to_docker_mounts(resolved),
        "oci": to_oci_mounts(resolved, volume_root),
    }


def _shape_error(exc: ValidationError) -> dict[str, Any]:
    """A pydantic error as a document; one inside ``volume_mounts`` names the mount."""
    first = exc.errors()[0]
    loc = list(first["loc"])
    # A whole connect request nests the executor; point at the executor's own fields.
    if loc[:2] == ["spawn_config", "executable"]:
        loc = loc[2:]
    where = ".".join(str(part) for part in loc)
    message = f"{where}: {first['msg']}" if where else first["msg"]
    if len(loc) >= 2 and loc[0] == "volume_mounts" and isinstance(loc[1], int):
        return {"error": {"code": "mount_refused", "mount": loc[1], "message": message}}
    if loc and loc[0] == "mount":
        return {"error": {"code": "mount_refused", "mount": "mount", "message": message}}
    return {"error": {"code": "invalid_request", "message": message}}
