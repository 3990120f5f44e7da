"""The byte cap: the highest quality whose file fits, in a few encodes; a smaller picture only
where even the floor quality does not fit. On a real product shot, through the real encoders."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from imgcrunch import codec
from imgcrunch.imaging import bytecap, formats
from imgcrunch.imaging.effort import Effort
from imgcrunch.imaging.formats import Format
from imgcrunch.imaging.variants import Variant
from tests.imaging import DATA, decode, heavily_compressed_photo

SHOT = (DATA / "catalog" / "abo-B07GTFSCHB_844a1cce.jpg").read_bytes()  # a bottle on white


@functools.cache
def picture() -> Any:
    return decode(SHOT).copy_memory()


def saver(fmt: Format) -> bytecap.Save:
    encoder = formats.encoder(fmt, Effort.BALANCED)
    return lambda image, quality: encoder.save(image, quality)


@functools.cache
def sizes(fmt: Format) -> dict[int, int]:
    """Every quality's file size, from the floor to 50: what the search must find in few."""
    save = saver(fmt)
    return {q: len(save(picture(), q)) for q in range(bytecap.FLOOR, 51)}


def best_quality(fmt: Format, cap: int) -> int | None:
    fitting = [q for q, size in sizes(fmt).items() if size <= cap]
    return max(fitting) if fitting else None


@pytest.mark.parametrize("fmt", [Format.JPEG, Format.WEBP])
@pytest.mark.parametrize("share", [0.95, 0.7, 0.4, 0.1])
def test_the_highest_quality_that_fits_is_found_in_a_few_encodes(fmt: Format, share: float) -> None:
    floor, top = sizes(fmt)[bytecap.FLOOR], sizes(fmt)[50]
    cap = int(floor + share * (top - floor))  # between the floor's size and quality 50's
    fitted = bytecap.encode_within(saver(fmt), picture(), 50, cap)
    assert len(fitted.data) <= cap
    assert fitted.quality == best_quality(fmt, cap)
    assert fitted.encodes <= 6  # against 20 for every quality from the floor
    assert fitted.image is picture()  # quality alone met it: the picture kept its size


def test_under_several_caps_none_is_exceeded_and_quality_rises_with_the_cap() -> None:
    top = sizes(Format.JPEG)[50]
    caps = [int(top * share) for share in (0.3, 0.5, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)]
    results = [bytecap.encode_within(saver(Format.JPEG), picture(), 50, cap) for cap in caps]
    for cap, fitted in zip(caps, results, strict=True):
        assert len(fitted.data) <= cap
    qualities = [fitted.quality for fitted in results]
    pixels = [fitted.image.width * fitted.image.height for fitted in results]
    assert qualities == sorted(qualities)
    assert pixels == sorted(pixels)
    assert qualities[-1] == 50  # the file fits as it is: one encode
    assert results[-1].encodes == 1


def test_below_the_floor_the_picture_is_made_smaller_at_the_floor_quality() -> None:
    cap = int(sizes(Format.JPEG)[bytecap.FLOOR] * 0.5)
    fitted = bytecap.encode_within(saver(Format.JPEG), picture(), 50, cap)
    assert len(fitted.data) <= cap
    assert fitted.quality == bytecap.FLOOR
    assert fitted.image.width < picture().width
    assert decode(fitted.data).width == fitted.image.width
    assert len(fitted.data) > cap * 0.6  # not shrunk far past what the cap needed


def test_a_cap_no_picture_meets_still_ends_with_the_smallest_picture() -> None:
    fitted = bytecap.encode_within(saver(Format.JPEG), picture(), 50, 300)
    assert min(fitted.image.width, fitted.image.height) <= 16


def test_a_users_quality_under_the_floor_is_kept_as_the_floor() -> None:
    cap = int(sizes(Format.JPEG)[bytecap.FLOOR] * 0.7)
    fitted = bytecap.encode_within(saver(Format.JPEG), picture(), 20, cap)
    assert fitted.quality <= 20
    assert len(fitted.data) <= cap


def test_a_variants_cap_goes_through_the_codec_and_reports_the_quality_used() -> None:
    plain, capped = codec.make_variants(
        SHOT,
        codec.CodecOptions(
            variants=(
                Variant(name="full"),
                Variant(
                    name="capped", format=Format.WEBP, max_bytes=sizes(Format.WEBP)[50] * 4 // 5
                ),
            )
        ),
    )
    assert plain.quality == 50
    assert capped.quality is not None
    assert capped.quality < 50
    assert len(capped.data) <= sizes(Format.WEBP)[50] * 4 // 5
    assert capped.extension == "webp"


def test_a_kept_original_is_not_said_to_have_a_quality() -> None:
    (kept,) = codec.make_variants(heavily_compressed_photo(), codec.CodecOptions())
    assert kept.kept_original
    assert kept.quality is None
