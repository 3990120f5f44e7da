"""What an output image's URL names: `images/<the owner's scope>/<SHA-256 of the file>.<ext>`."""

from __future__ import annotations

import re

IMAGE_KEY = re.compile(
    r"images/(?P<scope>[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12})/"
    r"(?P<digest>[0-9a-f]{64})\.(?P<extension>jpg|webp|avif)"
)


def image_key_of(url: str, base: str) -> str:
    """The storage key that an output URL served under `base` names; fails if it names none."""
    assert url.startswith(f"{base}/"), url
    key = url.removeprefix(f"{base}/")
    assert IMAGE_KEY.fullmatch(key), url
    return key


def scope_of(url: str) -> str:
    found = IMAGE_KEY.search(url)
    assert found, url
    return found["scope"]
