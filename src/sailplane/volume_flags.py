"""The compact ``--volume`` form of ``sailplane connect``, turned into ``volume_mounts`` entries.

    host:VOLUME[/SUB_PATH]:TARGET[:ro|:rw]     host:data/{namespace}/{key}:/var/lib/app:rw
    volume:NAME:TARGET[:ro|:rw]                volume:cache-{key}:/cache:rw
    tmpfs:TARGET:SIZE[:MODE]                   tmpfs:/tmp:64m   tmpfs:/scratch:1g:0700

Read-only is the default, as in the API. SIZE takes a k, m or g suffix (powers of 1024).
Only the shape is parsed here; every rule of the mount pipeline still applies.
"""

from __future__ import annotations

import re
from typing import Any

_SIZE = re.compile(r"^(\d+)([kmg]?)$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class VolumeFlagError(ValueError):
    """Raised for a ``--volume`` value that is not one of the compact forms."""


def parse_volume_flag(flag: str) -> dict[str, Any]:
    kind, _, rest = flag.partition(":")
    parts = rest.split(":")
    if kind in ("host", "volume"):
        read_only = True
        if len(parts) == 3 and parts[2] in ("ro", "rw"):
            read_only = parts.pop() == "ro"
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise VolumeFlagError(f"--volume {flag!r}: expected {kind}:SOURCE:TARGET[:ro|:rw]")
        source, target = parts
        if kind == "volume":
            return {"type": "volume", "name": source, "target": target, "read_only": read_only}
        volume, _, sub_path = source.partition("/")
        return {"type": "host", "volume": volume, "sub_path": sub_path, "target": target,
                "read_only": read_only}
    if kind == "tmpfs":
        if len(parts) not in (2, 3) or not parts[0]:
            raise VolumeFlagError(f"--volume {flag!r}: expected tmpfs:TARGET:SIZE[:MODE]")
        entry: dict[str, Any] = {"type": "tmpfs", "target": parts[0],
                                 "size_bytes": parse_size(parts[1], flag)}
        if len(parts) == 3:
            entry["mode"] = parts[2]
        return entry
    raise VolumeFlagError(f"--volume {flag!r}: the kind must be host, volume or tmpfs")


def parse_size(text: str, flag: str) -> int:
    match = _SIZE.match(text)
    if match is None or int(match.group(1)) == 0:
        raise VolumeFlagError(f"--volume {flag!r}: size {text!r} is not like 64m, 512k or 1g")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]
