import pytest

from sailplane.spec import ExecutorConfig
from sailplane.volume_flags import VolumeFlagError, parse_volume_flag


@pytest.mark.parametrize(
    ("flag", "entry"),
    [
        ("host:data/{key}:/var/lib/app:rw", {"type": "host", "volume": "data",
         "sub_path": "{key}", "target": "/var/lib/app", "read_only": False}),
        ("host:config:/etc/app", {"type": "host", "volume": "config", "sub_path": "",
         "target": "/etc/app", "read_only": True}),
        ("host:data/{namespace}/{key}:/d:ro", {"type": "host", "volume": "data",
         "sub_path": "{namespace}/{key}", "target": "/d", "read_only": True}),
        ("volume:cache-{key}:/cache:rw", {"type": "volume", "name": "cache-{key}",
         "target": "/cache", "read_only": False}),
        ("tmpfs:/tmp:64m", {"type": "tmpfs", "target": "/tmp", "size_bytes": 64 * 1024**2}),
        ("tmpfs:/s:1g:0700", {"type": "tmpfs", "target": "/s", "size_bytes": 1024**3,
         "mode": "0700"}),
        ("tmpfs:/s:4096", {"type": "tmpfs", "target": "/s", "size_bytes": 4096}),
    ],
)
def test_compact_forms_become_volume_mounts_entries_the_api_accepts(flag, entry):
    assert parse_volume_flag(flag) == entry
    ExecutorConfig.model_validate({"image": "x", "volume_mounts": [entry]})


@pytest.mark.parametrize(
    ("flag", "reason"),
    [
        ("nfs:/x:/y", "the kind must be host, volume or tmpfs"),
        ("host:data", "expected host:SOURCE:TARGET"),
        ("host::/d", "expected host:SOURCE:TARGET"),
        ("volume:v:/d:rx", "expected volume:SOURCE:TARGET"),
        ("tmpfs:/tmp", "expected tmpfs:TARGET:SIZE"),
        ("tmpfs:/tmp:lots", "is not like 64m"),
        ("tmpfs:/tmp:0", "is not like 64m"),
    ],
)
def test_bad_compact_forms_name_the_flag_and_the_reason(flag, reason):
    with pytest.raises(VolumeFlagError) as info:
        parse_volume_flag(flag)
    assert repr(flag) in str(info.value)
    assert reason in str(info.value)
