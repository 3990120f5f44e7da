"""The marketplace profiles as data: each names its pages, makes a JPEG first variant under its
byte cap, and is found by name (any case), or refused naming the known ones."""

from __future__ import annotations

import pytest

from imgcrunch.cli import PROFILE_NAMES
from imgcrunch.imaging import profiles
from imgcrunch.imaging.formats import Format
from imgcrunch.imaging.variants import Variant, VariantsError, led_by, parse


def test_each_marketplace_is_a_table_citing_its_pages() -> None:
    assert list(profiles.PROFILES) == ["amazon", "walmart", "google", "ebay"]
    for profile in profiles.PROFILES.values():
        assert profile.sources
        assert all(source.startswith("https://") for source in profile.sources)
        assert profile.format is Format.JPEG  # the one format all four take


def test_the_command_line_offers_the_same_names() -> None:
    assert tuple(profiles.PROFILES) == PROFILE_NAMES


def test_a_profile_is_found_by_name_in_any_case_and_an_unknown_one_names_the_known() -> None:
    assert profiles.get(" Walmart ") is profiles.WALMART
    with pytest.raises(profiles.UnknownProfile, match="known: amazon, walmart, google, ebay"):
        profiles.get("etsy")


def test_the_profile_makes_the_first_variant_under_its_byte_cap() -> None:
    assert profiles.WALMART.variant() == Variant(
        name="output", format=Format.JPEG, max_bytes=5_000_000
    )
    assert profiles.AMAZON.variant().max_bytes is None  # no cap on an official page


def test_the_requests_variants_follow_the_profiles() -> None:
    made = led_by(profiles.EBAY.variant(), parse("thumb=200:webp", max_pixels=10**8))
    assert [variant.name for variant in made] == ["output", "thumb"]
    assert led_by(profiles.EBAY.variant(), parse("", max_pixels=10**8)) == (
        profiles.EBAY.variant(),
    )
    nine = ", ".join(f"v{n}=100" for n in range(8))
    with pytest.raises(VariantsError, match="9 variants; at most 8"):
        led_by(profiles.EBAY.variant(), parse(nine, max_pixels=10**8))
