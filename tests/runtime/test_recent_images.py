"""Images a runtime saw lately are trusted for a while (``RecentImages``): pure logic."""

from __future__ import annotations

from sailplane.runtime import base


def test_an_image_is_trusted_for_a_while_then_asked_about_again(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("sailplane.runtime.base.time.monotonic", lambda: now[0])
    seen = base.RecentImages(seconds=10)
    assert not seen.fresh("img")
    seen.saw("img")
    now[0] += 9.9
    assert seen.fresh("img")
    now[0] += 0.2
    assert not seen.fresh("img")
    seen.saw("img")
    seen.forget("img")  # removed from the engine meanwhile
    assert not seen.fresh("img")
