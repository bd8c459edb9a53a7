"""The client verbs' handling of bad input: one clear line on stderr, exit status 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sailplane.cli import app, connect_request

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["connect"], "give --key (connect to a live backend) or --image (spawn one)"),
        (["connect", "--image", "x", "--volume", "nfs:/a:/b"], "the kind must be host"),
        (["connect", "--image", "x", "--env", "NOVALUE"], "--env 'NOVALUE': expected KEY=VALUE"),
        (["status", "b-1", "--controller", "http://127.0.0.1:1"],
         "cannot reach the controller at http://127.0.0.1:1"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]


def test_flags_make_a_plane_connect_request_with_volume_mounts():
    request = connect_request(
        "sailplane/demo:latest", "doc-42", "editor", "", "true",
        ["host:data/{key}:/data:rw", "tmpfs:/tmp:64m"], ["MODE=dev"], 60, 3600, "alice",
    )
    assert request == {
        "key": {"name": "doc-42", "namespace": "editor", "tag": ""},
        "user": "alice",
        "spawn_config": {
            "executable": {
                "image": "sailplane/demo:latest", "env": {"MODE": "dev"}, "mount": True,
                "volume_mounts": [
                    {"type": "host", "volume": "data", "sub_path": "{key}", "target": "/data",
                     "read_only": False},
                    {"type": "tmpfs", "target": "/tmp", "size_bytes": 64 * 1024**2},
                ],
            },
            "max_idle_seconds": 60, "lifetime_limit_seconds": 3600,
        },
    }


def test_key_only_connect_asks_for_the_live_backend_and_spawns_nothing():
    assert connect_request(None, "doc-42", "", "", None, [], [], None, None, None) == {
        "key": {"name": "doc-42", "namespace": "", "tag": ""},
    }
