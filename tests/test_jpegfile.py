"""A JPEG's picture without its metadata: the same pixels, none of the rest."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
import pyvips

from imgcrunch.jpegfile import without_metadata
from tests.imaging import VipsImage, decode, small_photo, with_metadata

METADATA_FIELDS = ("exif-data", "icc-profile-data", "xmp-data", "iptc-data", "jpeg-comment")


def segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def after_soi(jpeg: bytes, *segments: bytes) -> bytes:
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def same_pixels(a: bytes, b: bytes) -> bool:
    return bool((decode(a) - decode(b)).abs().max() == 0)


@pytest.fixture(scope="module")
def plain() -> bytes:
    return bytes(small_photo().jpegsave_buffer(Q=80, keep="none"))


def test_metadata_goes_and_the_pixels_stay() -> None:
    tagged = with_metadata(small_photo())
    tagged = after_soi(
        tagged,
        segment(0xED, b"Photoshop 3.0\x00" + b"8BIM" * 20),  # IPTC
        segment(0xFE, b"a comment"),
    )
    picture = without_metadata(tagged)
    assert picture is not None
    assert len(picture) < len(tagged)
    assert same_pixels(picture, tagged)
    fields = decode(picture).get_fields()
    assert not [field for field in METADATA_FIELDS if field in fields]


def test_a_jpeg_without_metadata_comes_back_as_it_was(plain: bytes) -> None:
    assert without_metadata(plain) == plain


def test_data_after_the_end_of_the_picture_goes(plain: bytes) -> None:
    # A second picture, or an UltraHDR gain map, follows the first one's end.
    assert without_metadata(plain + b"\xff\xd8" + b"x" * 500 + b"\xff\xd9") == plain


def test_a_progressive_jpeg_keeps_all_its_scans() -> None:
    progressive = bytes(small_photo().jpegsave_buffer(Q=80, interlace=True, keep="all"))
    picture = without_metadata(progressive)
    assert picture is not None
    assert decode(picture).get("jpeg-multiscan") == 1
    assert same_pixels(picture, progressive)


def test_restart_markers_and_stuffed_bytes_stay(plain: bytes) -> None:
    with_restarts = bytes(small_photo().jpegsave_buffer(Q=95, restart_interval=2, keep="none"))
    assert b"\xff\xd0" in with_restarts
    assert b"\xff\x00" in with_restarts
    picture = without_metadata(after_soi(with_restarts, segment(0xE1, b"Exif\x00\x00" + b"0" * 64)))
    assert picture == with_restarts


def test_jfif_stays_without_its_thumbnail(plain: bytes) -> None:
    jfif = b"JFIF\x00\x01\x02\x01\x00\x48\x00\x48"
    thumbnail = b"\x02\x02" + b"\x80" * 12  # 2x2 RGB
    data = plain[:2] + segment(0xE0, jfif + thumbnail) + _without_app0(plain)[2:]
    picture = without_metadata(data)
    assert picture is not None
    assert picture[2:20] == segment(0xE0, jfif + b"\x00\x00")
    assert same_pixels(picture, plain)


def test_adobe_colour_transform_stays(plain: bytes) -> None:
    adobe = segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01")
    picture = without_metadata(after_soi(plain, adobe))
    assert picture is not None
    assert adobe in picture


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(lambda: small_photo().colourspace("b-w"), id="grey"),
        pytest.param(lambda: small_photo().icc_transform("cmyk"), id="cmyk"),
    ],
)
def test_other_than_three_components_is_not_a_plain_jpeg(image: Callable[[], VipsImage]) -> None:
    assert without_metadata(bytes(image().jpegsave_buffer(keep="none"))) is None


def test_arithmetic_coding_is_not_kept(plain: bytes) -> None:
    # The same file with its frame marked arithmetic-coded (SOF9): browsers cannot read those.
    start = plain.index(b"\xff\xc0")
    assert without_metadata(plain[:start] + b"\xff\xc9" + plain[start + 2 :]) is None


@pytest.mark.parametrize(
    "data",
    [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"\xff\xd8\xff\xe1\x00"],
    ids=["empty", "png", "soi-only", "cut-in-a-length"],
)
def test_what_is_not_a_whole_jpeg_is_not_kept(data: bytes) -> None:
    assert without_metadata(data) is None


def test_a_cut_off_jpeg_is_not_kept(plain: bytes) -> None:
    assert without_metadata(plain[: len(plain) // 2]) is None
    assert without_metadata(plain[:-2]) is None  # the end-of-image marker missing


def test_libvips_reads_what_comes_back_with_every_option() -> None:
    image = small_photo()
    for options in ({"optimize_coding": True}, {"subsample_mode": "off"}, {"trellis_quant": True}):
        data = bytes(image.jpegsave_buffer(keep="all", **options))
        picture = without_metadata(data)
        assert picture is not None
        assert pyvips.Image.new_from_buffer(picture, "").avg() == decode(data).avg()


def _without_app0(jpeg: bytes) -> bytes:
    if jpeg[2:4] != b"\xff\xe0":
        return jpeg
    length = int.from_bytes(jpeg[4:6], "big")
    return jpeg[:2] + jpeg[4 + length :]


def test_at_most_says_whether_the_picture_would_be_small_enough() -> None:
    tagged = with_metadata(small_photo())
    picture = without_metadata(tagged)
    assert picture is not None
    assert without_metadata(tagged, at_most=len(picture)) == picture
    assert without_metadata(tagged, at_most=len(picture) - 1) is None


def test_a_second_picture_after_the_first_is_counted_out(plain: bytes) -> None:
    # An MPF segment says a second picture (a gain map) follows: its bytes do not count.
    mpf = segment(0xE2, b"MPF\x00" + b"\x00" * 40)
    gain_map = b"\xff\xd8" + b"g" * 5000 + b"\xff\xd9"
    data = after_soi(plain, mpf) + gain_map
    assert without_metadata(data, at_most=len(plain)) == plain
