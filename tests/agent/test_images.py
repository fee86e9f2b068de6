"""`BuiltImages`: the agent's lookup of built images is reused for a while instead of parsing the recipe and hashing
the inputs on every create. Uses the real built `base` image (skips without one); the builder's `find_image` is
only counted, not replaced."""

from __future__ import annotations

import pytest

import wrenn.images
from wrenn.agent import BuiltImages
from wrenn.protocol.errors import WrennError


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    if wrenn.images.find_image("base") is None:
        pytest.skip("no built base image (`wrenn image build base`)")
    calls: list[str] = []
    real = wrenn.images.find_image

    def counted(name: str) -> object:
        calls.append(name)
        return real(name)

    monkeypatch.setattr(wrenn.images, "find_image", counted)
    return calls


def test_a_found_image_is_reused_within_the_ttl(lookups: list[str]) -> None:
    images = BuiltImages(ttl=3600)
    first = images.find("base")
    assert images.find("base") == first
    assert lookups == ["base"]
    assert first.rootfs.is_file()


def test_after_the_ttl_the_image_is_looked_up_again(lookups: list[str]) -> None:
    images = BuiltImages(ttl=0)
    assert images.find("base") == images.find("base")
    assert lookups == ["base", "base"]


def test_a_missing_template_is_not_remembered(lookups: list[str]) -> None:
    images = BuiltImages(ttl=3600)
    for _ in range(2):
        with pytest.raises(WrennError):  # unknown template: the builder says so
            images.find("no-such-template-here")
    assert lookups == ["no-such-template-here", "no-such-template-here"]
