"""Framing, pure: the crop that makes a product fill the frame, never under the profile's
smallest size, and the square a picture is padded to."""

from __future__ import annotations

import pytest

from imgcrunch.imaging import framing
from imgcrunch.imaging.framing import Box


def test_fill_is_the_products_longest_extent_over_the_frames_side() -> None:
    assert framing.fill(Box(0, 0, 500, 1000), 1000, 1000) == 1.0
    assert framing.fill(Box(0, 0, 400, 300), 1000, 1000) == 0.4


def test_the_crop_keeps_the_pictures_aspect_and_centres_the_product() -> None:
    window = framing.crop_to_fill(Box(900, 500, 450, 300), 2000, 1500, min_longest=500)
    assert window.width / window.height == pytest.approx(2000 / 1500, abs=0.01)
    assert framing.fill(Box(0, 0, 450, 300), window.width, window.height) == pytest.approx(
        framing.TARGET_FILL, abs=0.01
    )
    assert window.left + window.width // 2 == pytest.approx(900 + 225, abs=1)


def test_the_crop_stays_within_the_picture() -> None:
    window = framing.crop_to_fill(Box(0, 0, 300, 300), 2000, 2000, min_longest=500)
    assert (window.left, window.top) == (0, 0)


def test_the_crop_stops_at_the_smallest_size_rather_than_enlarge() -> None:
    window = framing.crop_to_fill(Box(450, 450, 100, 100), 1000, 1000, min_longest=500)
    assert (window.width, window.height) == (500, 500)
    assert framing.fill(Box(0, 0, 100, 100), 500, 500) == 0.2  # still too low: reported


def test_a_picture_already_small_is_not_cropped() -> None:
    whole = framing.crop_to_fill(Box(100, 100, 50, 50), 400, 300, min_longest=500)
    assert whole == Box(0, 0, 400, 300)


def test_square_is_the_longest_side() -> None:
    assert framing.square(1600, 1200) == (1600, 1600)
