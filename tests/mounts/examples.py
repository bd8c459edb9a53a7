"""Requests copied from the documents the tests hold the code to (README, Plane's docs).

Kept as JSON text, unchanged, so a test parses exactly what a reader of the document sees.
"""

from __future__ import annotations

# The example connect request of docs/architecture.md and the README.
EXAMPLE_REQUEST = """
{
  "key": {"name": "doc-42", "namespace": "editor", "tag": ""},
  "spawn_config": {
    "pool": "",
    "lifetime_limit_seconds": 3600,
    "max_idle_seconds": 60,
    "use_static_token": false,
    "executable": {
      "image": "sailplane/demo:latest",
      "pull_policy": "IfNotPresent",
      "env": {"MODE": "prod"},
      "resource_limits": {"memory_limit_bytes": 268435456, "cpu_period_percent": 50},
      "mount": true,
      "volume_mounts": [
        {"type": "host", "volume": "data", "sub_path": "{namespace}/{key}", "target": "/var/lib/app", "read_only": false},
        {"type": "host", "volume": "config", "target": "/etc/app"},
        {"type": "volume", "name": "cache-{key}", "target": "/cache", "read_only": false},
        {"type": "tmpfs", "target": "/tmp", "size_bytes": 67108864}
      ]
    }
  },
  "user": "alice",
  "auth": {"role": "editor"}
}
"""  # noqa: E501

# Plane's documented connect request (plane.dev, "connect"). The original has trailing commas
# after "max_idle_seconds": 60 and after the last auth entry, which is not valid JSON; they are
# removed here and nothing else is changed. Its auth is arbitrary JSON, lists and numbers too.
PLANE_CONNECT_REQUEST = """
{
  "key": {
    "name": "room-abcde",
    "namespace": "games",
    "tag": "drop-four"
  },
  "spawn_config": {
    "executable": {
      "image": "ghcr.io/drifting-in-space/demo-image-drop-four"
    },
    "lifetime_limit_seconds": 3600,
    "max_idle_seconds": 60
  },
  "user": "user-123",
  "auth": {
    "display_name": "Player One",
    "teams": ["red", "blue"],
    "level": 7,
    "score": 12.5,
    "admin": false,
    "nested": {"a": [1, {"b": null}]}
  }
}
"""

# The three mounts the example plan shows for that request, with the data volume at ROOT.
# (the example shows only these; the same request also asks for the config volume at /etc/app
# and Plane's ``mount: true`` at /plane-data, which a full plan contains as well.)
def example_plan_mounts(data_root: str) -> list[dict[str, object]]:
    return [
        {"type": "host", "host_path": f"{data_root}/editor/doc-42", "target": "/var/lib/app",
         "read_only": False},
        {"type": "volume", "name": "sailplane.editor.cache-doc-42", "target": "/cache",
         "read_only": False},
        {"type": "tmpfs", "target": "/tmp", "size_bytes": 67108864},
    ]
