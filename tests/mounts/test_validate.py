"""The pure mount rules (``sailplane.mounts.validate``): no disk involved."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sailplane.errors import MountRefused
from sailplane.mounts.plan import check_mounts
from sailplane.mounts.policy import Access, HostVolume, MountPolicy
from sailplane.mounts.validate import (
    MAX_COMPONENT_BYTES,
    MAX_PATH_BYTES,
    TemplateValues,
    check_sub_path,
    check_target,
    check_unique_targets,
    check_volume_name,
    component_problem,
    expand,
)

from .conftest import VALUES, executor, host, refused

SUB = "volume_mounts[3].sub_path"
TARGET = "volume_mounts[3].target"
NAME = "volume_mounts[3].name"


def _policy() -> MountPolicy:
    # Windows roots: check_mounts needs no disk, and a Windows root is never looked up.
    return MountPolicy.build([HostVolume(name="data", path="C:\\data", access=Access.RW),
                              HostVolume(name="default", path="C:\\plane", access=Access.RW)],
                             platform="windows")


def path_of_bytes(total: int) -> str:
    """A relative path of exactly ``total`` bytes whose components are all short enough."""
    parts = ["d" * 200] * (total // 201)
    rest = total - len("/".join(parts)) - 1
    return "/".join([*parts, "e" * rest])


# --- sub_path -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sub_path", "parts"),
    [
        ("", ()),
        ("a", ("a",)),
        ("editor/doc-42", ("editor", "doc-42")),
        ("a/b/c", ("a", "b", "c")),
        (".hidden/..dots/dots../...", (".hidden", "..dots", "dots..", "...")),
        ("ab:c/x:", ("ab:c", "x:")),  # a colon is fine past a drive's place on a posix drone
        ("é/日本", ("é", "日本")),
    ],
)
def test_a_safe_sub_path_splits_into_components(sub_path, parts):
    assert check_sub_path(sub_path, 3, SUB) == parts


@pytest.mark.parametrize(
    ("sub_path", "reason"),
    [
        ("/abs", "must be relative to the volume, not absolute"),
        ("/", "must be relative to the volume, not absolute"),
        ("..", "'..' components are not allowed"),
        ("../x", "'..' components are not allowed"),
        ("a/../b", "'..' components are not allowed"),
        ("a/..", "'..' components are not allowed"),
        (".", "'.' components are not allowed"),
        ("./a", "'.' components are not allowed"),
        ("a/./b", "'.' components are not allowed"),
        ("a/.", "'.' components are not allowed"),
        ("a\x00b", "contains a NUL byte"),
        ("\x00", "contains a NUL byte"),
        ("a\\b", "backslashes are not allowed"),
        ("..\\x", "backslashes are not allowed"),
        ("C:", "drive letters are not allowed"),
        ("C:/x", "drive letters are not allowed"),
        ("c:x", "drive letters are not allowed"),
        ("\\\\server\\share", "UNC paths are not allowed"),
        ("//server/share", "UNC paths are not allowed"),
        ("a//b", "empty path components are not allowed"),
        ("a/", "empty path components are not allowed"),
        ("a/b/", "empty path components are not allowed"),
    ],
)
def test_an_unsafe_sub_path_is_refused_naming_the_mount_and_field(sub_path, reason):
    with refused(3, f"{SUB}: {reason}"):
        check_sub_path(sub_path, 3, SUB)


def test_a_sub_path_of_4096_bytes_is_allowed_and_of_4097_refused():
    assert MAX_PATH_BYTES == 4096
    assert len(path_of_bytes(4096)) == 4096
    assert len(check_sub_path(path_of_bytes(4096), 3, SUB)) > 1
    with refused(3, f"{SUB}: longer than 4096 bytes"):
        check_sub_path(path_of_bytes(4097), 3, SUB)


def test_the_sub_path_limit_counts_utf8_bytes_not_characters():
    two_byte = "/".join(["é" * 100] * 20) + "/" + "é" * 38  # 2,058 characters, 4,096 bytes
    assert len(two_byte.encode()) == 4096
    assert check_sub_path(two_byte, 3, SUB)
    with refused(3, f"{SUB}: longer than 4096 bytes"):
        check_sub_path(two_byte + "é", 3, SUB)


def test_a_component_of_255_bytes_is_allowed_and_of_256_refused():
    assert MAX_COMPONENT_BYTES == 255
    assert check_sub_path("a/" + "x" * 255, 3, SUB) == ("a", "x" * 255)
    with refused(3, f"{SUB}: a component is longer than 255 bytes"):
        check_sub_path("a/" + "x" * 256, 3, SUB)
    with refused(3, f"{SUB}: a component is longer than 255 bytes"):
        check_sub_path("é" * 128, 3, SUB)  # 128 characters, 256 bytes


@pytest.mark.parametrize("bad", ["\ud800", "a/\udcff", "\udc80"])
def test_a_sub_path_that_is_not_valid_unicode_is_refused_not_crashing(bad):
    # JSON can carry lone surrogates ("\ud800") and pydantic lets them through.
    with refused(3, SUB, "UTF-8"):
        check_sub_path(bad, 3, SUB)


# --- templates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expanded"),
    [
        ("{namespace}/{key}", "editor/doc-42"),
        ("{key}", "doc-42"),
        ("{backend}", "b-1"),
        ("cache-{key}", "cache-doc-42"),
        ("{namespace}-{key}-{backend}", "editor-doc-42-b-1"),
        ("{key}/{key}", "doc-42/doc-42"),
        ("plain/path", "plain/path"),
        ("", ""),
    ],
)
def test_templates_expand_key_namespace_and_backend(template, expanded):
    assert expand(template, VALUES, 3, SUB) == expanded


@pytest.mark.parametrize("name", ["user", "KEY", "", "key ", "tag", "0"])
def test_an_unknown_template_is_refused(name):
    with refused(3, f"{SUB}: unknown template {{{name}}}"):
        expand(f"a/{{{name}}}", VALUES, 3, SUB)


@pytest.mark.parametrize("template", ["{key", "key}", "a/{key}}", "{{key}}", "a}{b", "{"])
def test_unbalanced_braces_are_refused(template):
    with refused(3, f"{SUB}: unbalanced"):
        expand(template, VALUES, 3, SUB)


BAD_KEYS = [
    ("../x", "contains '/'"),
    ("a/b", "contains '/'"),
    ("/etc", "contains '/'"),
    ("..", "'..' is not allowed"),
    (".", "'.' is not allowed"),
    ("", "empty"),
    ("a\x00b", "contains a NUL byte"),
    ("a\\b", "contains a backslash"),
    ("..\\..\\x", "contains a backslash"),
    ("k" * 256, "longer than 255 bytes"),
    ("\ud800", "UTF-8"),
]


@pytest.mark.parametrize(("key", "reason"), BAD_KEYS)
def test_a_key_name_that_would_make_a_bad_path_is_refused_not_escaped(key, reason):
    values = TemplateValues(key=key, namespace="editor", backend="b-1")
    with refused(3, f"{SUB}: template {{key}} = {key!r} is not a single safe path", reason):
        expand("{namespace}/{key}", values, 3, SUB)


@pytest.mark.parametrize(("namespace", "reason"), BAD_KEYS)
def test_a_namespace_that_would_make_a_bad_path_is_refused(namespace, reason):
    values = TemplateValues(key="doc-42", namespace=namespace, backend="b-1")
    with refused(3, f"{SUB}: template {{namespace}}", reason):
        expand("{namespace}/{key}", values, 3, SUB)


def test_a_value_is_only_checked_when_its_template_is_used():
    values = TemplateValues(key="doc-42", namespace="", backend="../x")
    assert expand("keys/{key}", values, 3, SUB) == "keys/doc-42"


@pytest.mark.parametrize(("key", "reason"), [("C:", "drive letters"), ("C:x", "drive letters")])
def test_a_key_that_expands_to_a_drive_prefix_is_refused_by_the_path_rules(key, reason):
    values = TemplateValues(key=key, namespace="editor", backend="b-1")
    with refused(3, f"{SUB}: {reason}"):
        check_sub_path(expand("{key}/data", values, 3, SUB), 3, SUB)


def test_a_template_value_that_looks_like_a_template_is_not_expanded_again():
    values = TemplateValues(key="{namespace}", namespace="editor", backend="b-1")
    assert expand("{key}", values, 3, SUB) == "{namespace}"


@pytest.mark.parametrize(
    ("name", "problem"),
    [("ok", None), ("..x", None), ("", "empty"), ("..", "'..' is not allowed"),
     ("a/b", "contains '/'"), ("a\\b", "contains a backslash"), ("\x00", "contains a NUL byte"),
     ("x" * 255, None), ("x" * 256, "longer than 255 bytes")],
)
def test_component_problem_says_why_a_name_is_not_one_component(name, problem):
    assert component_problem(name) == problem


# --- target -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["/data", "/var/lib/app", "/etc/app", "/procx", "/proc-data", "/system", "/devices",
     "/tmp", "/a/b.c", "/a/...", "/a/..b", "/plane-data"],
)
def test_a_safe_target_is_returned_unchanged(target):
    assert check_target(target, 3, TARGET) == target


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("data", "must be an absolute path, got 'data'"),
        ("", "must be an absolute path"),
        ("./data", "must be an absolute path"),
        ("../data", "must be an absolute path"),
        ("/", "cannot mount over the container's root '/'"),
        ("/..", "'.' and '..' components are not allowed"),
        ("/a/../b", "'.' and '..' components are not allowed"),
        ("/a/..", "'.' and '..' components are not allowed"),
        ("/.", "'.' and '..' components are not allowed"),
        ("/a/./b", "'.' and '..' components are not allowed"),
        ("//", "empty components"),
        ("//a", "empty components"),
        ("/a//b", "empty components"),
        ("/a/", "trailing '/'"),
        ("/proc", "mounting under /proc is not allowed"),
        ("/proc/1/root", "mounting under /proc is not allowed"),
        ("/sys", "mounting under /sys is not allowed"),
        ("/sys/fs/cgroup", "mounting under /sys is not allowed"),
        ("/dev", "mounting under /dev is not allowed"),
        ("/dev/shm", "mounting under /dev is not allowed"),
        ("/a\x00", "contains a NUL byte"),
        ("/a\\b", "backslashes are not allowed"),
        ("C:\\data", "backslashes are not allowed"),
        ("/" + "t" * 4096, "longer than 4096 bytes"),
        ("/\ud800", "not valid UTF-8"),
    ],
)
def test_an_unsafe_target_is_refused_naming_the_mount_and_field(target, reason):
    with refused(3, f"{TARGET}: ", reason):
        check_target(target, 3, TARGET)


def test_a_refused_proc_target_through_dot_dot_is_caught_before_the_prefix_check():
    with refused(3, "'.' and '..'"):
        check_target("/tmp/../proc", 3, TARGET)


# --- duplicate targets --------------------------------------------------------------------


def test_two_mounts_at_the_same_target_are_refused_naming_the_second():
    with refused(1, "volume_mounts[1].target: '/a' is also the target of volume_mounts[0]"):
        check_unique_targets([(0, "/a"), (1, "/a")])


def test_a_duplicate_of_an_earlier_mount_names_that_mount():
    with refused(2, "'/b' is also the target of volume_mounts[0]"):
        check_unique_targets([(0, "/b"), (1, "/a"), (2, "/b")])


@pytest.mark.parametrize(
    "targets",
    [[(0, "/data"), (1, "/data/cache")], [(0, "/data/cache"), (1, "/data")],
     [(0, "/a"), (1, "/ab"), (2, "/a/b/c")]],
)
def test_nested_and_prefix_sharing_targets_are_allowed(targets):
    check_unique_targets(targets)


def test_a_volume_mount_at_plane_data_collides_with_the_mount_shorthand():
    request = executor(host("data", "x", "/other"), host("data", "y", "/plane-data"),
                       mount=True)
    with refused(1, "volume_mounts[1].target: '/plane-data' is also the target of mount"):
        check_mounts(request, _policy(), VALUES)


def test_without_the_mount_shorthand_plane_data_is_an_ordinary_target():
    request = executor(host("data", "y", "/plane-data"), mount=False)
    assert len(check_mounts(request, _policy(), VALUES)) == 1


def test_duplicates_between_different_mount_kinds_are_refused():
    request = executor(
        host("data", "x", "/scratch"),
        {"type": "tmpfs", "target": "/scratch", "size_bytes": 1024},
    )
    with refused(1, "'/scratch' is also the target of volume_mounts[0]"):
        check_mounts(request, _policy(), VALUES)


def test_check_mounts_names_the_index_of_a_bad_target():
    request = executor(host("data", "x", "/ok"), {"type": "tmpfs", "target": "/proc/x",
                                                  "size_bytes": 1})
    with refused(1, "volume_mounts[1].target: mounting under /proc"):
        check_mounts(request, _policy(), VALUES)


# --- named volumes ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cache-doc-42", "a", "A.b_c-1", "0cache", "x" * 255])
def test_a_valid_volume_name_is_returned(name):
    assert check_volume_name(name, 3, NAME) == name


@pytest.mark.parametrize(
    "name", ["", "-x", ".x", "_x", "..", "a/b", "a b", "a:b", "a\\b", "cache-{key}", "é"],
)
def test_an_invalid_volume_name_is_refused(name):
    with refused(3, f"{NAME}: {name!r} is not a valid volume name"):
        check_volume_name(name, 3, NAME)


def test_a_volume_name_that_is_not_valid_unicode_is_refused():
    with refused(3, f"{NAME}: not valid UTF-8"):
        check_volume_name("cache-\ud800", 3, NAME)


def test_a_volume_name_longer_than_255_bytes_is_refused():
    with refused(3, f"{NAME}: longer than 255 bytes"):
        check_volume_name("x" * 256, 3, NAME)


def test_a_volume_name_template_with_a_bad_key_is_refused_naming_the_name_field():
    values = TemplateValues(key="../x", namespace="editor", backend="b-1")
    request = executor({"type": "volume", "name": "cache-{key}", "target": "/cache"})
    with refused(0, "volume_mounts[0].name: template {key} = '../x'"):
        check_mounts(request, _policy(), values)


# --- control characters -------------------------------------------------------------------

# Every C0 control but NUL (which keeps its own message), DEL, and every C1 control.
CONTROLS = [chr(code) for code in (*range(0x01, 0x20), *range(0x7F, 0xA0))]


@pytest.mark.parametrize("control", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_a_control_character_is_refused_in_every_path_and_name(control):
    code = f"U+{ord(control):04X}"
    with refused(3, f"{SUB}: contains a control character ({code})"):
        check_sub_path(f"a/b{control}c", 3, SUB)
    with refused(3, f"{TARGET}: contains a control character ({code})"):
        check_target(f"/data{control}", 3, TARGET)
    with refused(3, f"{NAME}: contains a control character ({code})"):
        check_volume_name(f"cache{control}x", 3, NAME)
    assert component_problem(f"doc{control}42") == f"contains a control character ({code})"


def test_a_trailing_newline_does_not_slip_past_the_volume_name_pattern():
    # re's "$" matches before a final newline; the whole name must match.
    with refused(3, f"{NAME}: contains a control character (U+000A)"):
        check_volume_name("cache\n", 3, NAME)


def test_a_key_with_a_newline_is_refused_when_a_template_uses_it():
    values = TemplateValues(key="doc\n42", namespace="editor", backend="b-1")
    with refused(3, f"{SUB}: template {{key}}", "control character (U+000A)"):
        expand("{namespace}/{key}", values, 3, SUB)


def test_the_controller_check_refuses_a_newline_in_a_target_or_the_mount_shorthand():
    with refused(0, "volume_mounts[0].target: contains a control character (U+000A)"):
        check_mounts(executor(host(target="/data\n/x")), None, VALUES)
    with refused("mount", "mount: contains a control character (U+000A)"):
        check_mounts(executor(mount="docs\nro"), None, VALUES)


with_a_control_character = st.builds(
    lambda before, control, after: before + control + after,
    st.text(max_size=20), st.sampled_from(["\x00", *CONTROLS]), st.text(max_size=20),
)


@given(text=with_a_control_character)
def test_any_string_with_a_control_character_is_refused_everywhere(text):
    assert component_problem(text) is not None
    for check, value, field in ((check_sub_path, text, SUB), (check_target, "/" + text, TARGET),
                                (check_volume_name, text, NAME)):
        with pytest.raises(MountRefused) as info:
            check(value, 3, field)
        assert info.value.mount == 3 and info.value.message.startswith(f"{field}: ")
