"""The image policy, judged by what comes out: decoded output bytes, or the refusal's code."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pyvips
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgcrunch import codec as codec_module
from imgcrunch import jpegfile
from imgcrunch.codec import (
    CodecError,
    CodecOptions,
    Compressed,
    Effort,
    compress,
    configure,
    make_variants,
    spec_digest,
)
from imgcrunch.imaging.calibration import Calibration
from imgcrunch.imaging.jpeg import ENCODERS, JpegEncoder
from imgcrunch.imaging.variants import parse as parse_variants
from tests import ssimulacra2
from tests.imaging import (
    GREY,
    LOGO,
    PHOTOS,
    RED,
    animated_gif,
    band_means,
    cmyk_jpeg,
    decode,
    heavily_compressed_photo,
    jpeg_claiming,
    oriented_jpeg,
    pixel,
    png16,
    png_claiming,
    red_top_left,
    small_photo,
    solid,
    with_icc_segment,
    with_metadata,
)

# JPEG Annex K, table K.1 (luminance), row by row; libjpeg scales it by 100% at quality 50.
ANNEX_K_LUMINANCE = [
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip

# Row-by-row index of the k-th coefficient a DQT segment stores (it stores them in zigzag order).
ZIGZAG = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
]  # fmt: skip

TOLERANCE = 12  # JPEG error on flat colours, well below any wrong-colour difference


def quantisation_tables(jpeg: bytes) -> dict[int, list[int]]:
    """Parse the DQT segments before the scan; each table comes back in row-by-row order."""
    tables: dict[int, list[int]] = {}
    i = 2  # after SOI
    while jpeg[i + 1] != 0xDA:  # up to start of scan
        length = int.from_bytes(jpeg[i + 2 : i + 4], "big")
        segment, j = jpeg[i + 4 : i + 2 + length], 0
        while jpeg[i + 1] == 0xDB and j < len(segment):
            precision, table_id = segment[j] >> 4, segment[j] & 0x0F
            size = 2 if precision else 1
            values = [
                int.from_bytes(segment[j + 1 + k * size : j + 1 + (k + 1) * size], "big")
                for k in range(64)
            ]
            tables[table_id] = [0] * 64
            for k, value in enumerate(values):
                tables[table_id][ZIGZAG[k]] = value
            j += 1 + 64 * size
        i += 2 + length
    return tables


def close_to(
    actual: list[float], expected: tuple[int, ...] | list[float], tolerance: float = TOLERANCE
) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


DEFAULTS = CodecOptions()


def refusal(data: bytes, options: CodecOptions = DEFAULTS) -> CodecError:
    with pytest.raises(CodecError) as caught:
        compress(data, options)
    return caught.value


@pytest.fixture(scope="module")
def photo() -> bytes:
    return PHOTOS[0].read_bytes()


def test_photo_becomes_a_smaller_jpeg_of_the_same_size(photo: bytes) -> None:
    result = compress(photo)
    out = decode(result.data)
    assert out.get("vips-loader") == "jpegload_buffer"
    assert (result.width, result.height) == (out.width, out.height) == (1600, 1200)
    assert result.extension == "jpg"
    assert len(result.data) < len(photo)


def test_every_effort_quantises_with_other_tables_than_standard_libjpeg(photo: bytes) -> None:
    # Standard libjpeg at quality 50 is Annex K's table as it is; the efforts use mozjpeg's.
    standard = bytes(decode(photo).jpegsave_buffer(Q=50))
    assert quantisation_tables(standard)[0] == ANNEX_K_LUMINANCE
    for effort in Effort:
        tables = quantisation_tables(compress(photo, CodecOptions(effort=effort)).data)
        assert tables[0] != ANNEX_K_LUMINANCE


@pytest.mark.parametrize("effort", list(Effort))
def test_higher_quality_quantises_finer_and_weighs_more(photo: bytes, effort: Effort) -> None:
    q50 = compress(photo, CodecOptions(effort=effort))
    q80 = compress(photo, CodecOptions(quality=80, effort=effort))
    table50, table80 = quantisation_tables(q50.data)[0], quantisation_tables(q80.data)[0]
    assert all(a <= b for a, b in zip(table80, table50, strict=True))
    assert table80 != table50
    assert len(q80.data) > len(q50.data)


@pytest.mark.parametrize("effort", list(Effort))
def test_every_effort_decodes_everywhere_as_upright_8_bit_srgb(
    photo: bytes, effort: Effort
) -> None:
    result = compress(photo, CodecOptions(effort=effort))
    out = decode(result.data)
    assert (out.bands, out.format, out.interpretation) == (3, "uchar", "srgb")
    assert out.get("jpeg-chroma-subsample") == "4:2:0"
    assert out.get("jpeg-multiscan") == 0  # baseline: every decoder, and the fastest to show
    assert out.get_typeof("orientation") == 0
    pillow = Image.open(io.BytesIO(result.data))
    pillow.load()
    assert (pillow.format, pillow.mode, pillow.size) == ("JPEG", "RGB", (1600, 1200))
    assert np.abs(np.asarray(pillow, np.int16) - out.numpy().astype(np.int16)).max() <= 1


def test_max_makes_fewer_bytes_than_balanced(photo: bytes) -> None:
    # At the same quality max also looks a little better (its calibration errs that way), so
    # what it saves at the same look (bench/quality.py: 0.759x Pillow's bytes against
    # balanced's 0.815x) is more than this.
    balanced = compress(photo, CodecOptions(effort=Effort.BALANCED))
    most = compress(photo, CodecOptions(effort=Effort.MAX))
    assert len(most.data) < 0.99 * len(balanced.data)


HOLDOUT = Path(__file__).parent / "data" / "holdout"


@pytest.mark.slow
@pytest.mark.parametrize("effort", list(Effort))
@pytest.mark.parametrize("quality", [50, 80])
@pytest.mark.parametrize("photo_name", ["tulips.jpg", "camera.jpg"], ids=["colour", "grey"])
def test_an_effort_looks_like_standard_libjpeg_at_the_same_quality(
    effort: Effort, quality: int, photo_name: str
) -> None:
    # Photos the calibration was not fitted to (bench/quality.py checks all ten): the output
    # scores as standard libjpeg's at the same quality, in fewer bytes; max may look better
    # (it is fitted to look no worse on detailed photos, and trellis costs smooth ones less).
    original = (HOLDOUT / photo_name).read_bytes()
    reference = ssimulacra2.Reference(decode(original).colourspace("srgb").numpy())
    standard = bytes(decode(original).jpegsave_buffer(Q=quality))
    ours = compress(original, CodecOptions(quality=quality, effort=effort)).data
    difference = reference.score(decode(ours).numpy()) - reference.score(
        decode(standard).colourspace("srgb").numpy()
    )
    assert difference >= -CALIBRATION_BAND
    if effort == Effort.BALANCED:
        assert difference <= CALIBRATION_BAND
    assert len(ours) < len(standard)


CALIBRATION_BAND = 2.5  # SSIMULACRA2 points on one photo; bench/quality.py checks the means


def test_calibration_points_are_kept_and_interpolated_between() -> None:
    points = ((1, 1), (50, 40), (90, 86), (100, 100))
    encoder = JpegEncoder(
        quant_table=5, optimize_coding=False, trellis=False, calibration=Calibration(points)
    )
    assert [encoder.q_for(q) for q in (1, 50, 90, 100)] == [1, 40, 86, 100]
    assert encoder.q_for(70) == 63  # halfway between 40 and 86
    assert [encoder.q_for(q) for q in range(1, 101)] == sorted(
        encoder.q_for(q) for q in range(1, 101)
    )


def test_every_effort_has_a_calibration_from_1_to_100() -> None:
    for encoder in ENCODERS.values():
        qualities = [quality for quality, _ in encoder.calibration.points]
        assert qualities == sorted(qualities)
        assert (qualities[0], qualities[-1]) == (1, 100)
        assert all(1 <= q <= 100 for _, q in encoder.calibration.points)


def test_same_input_gives_identical_bytes(photo: bytes) -> None:
    assert compress(photo).data == compress(photo).data


@pytest.mark.parametrize("effort", list(Effort))
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int, effort: Effort) -> None:
    result = compress(oriented_jpeg(red_top_left(64, 48), orientation), CodecOptions(effort=effort))
    out = decode(result.data)
    assert (out.width, out.height) == (result.width, result.height) == (64, 48)
    assert close_to(pixel(out, 16, 12), RED)
    for x, y in ((48, 12), (16, 36), (48, 36)):
        assert close_to(pixel(out, x, y), GREY)
    assert out.get_typeof("orientation") == 0


def test_large_image_turned_a_quarter_is_rotated(photo: bytes) -> None:
    # Big enough that libvips' sequential read cannot buffer it whole for the rotation.
    turned = decode(photo).copy()
    turned.set_type(pyvips.GValue.gint_type, "orientation", 6)
    result = compress(bytes(turned.jpegsave_buffer()))
    assert (result.width, result.height) == (1200, 1600)


def _cut_out_white(image: pyvips.Image) -> pyvips.Image:
    """The logo with its white surround made fully transparent."""
    rgb = image.extract_band(0, n=3)
    opaque = (rgb < 250).bandor().ifthenelse(255, 0).cast("uchar")
    return rgb.bandjoin(opaque)


@pytest.fixture(scope="module")
def transparent_logo() -> bytes:
    logo = _cut_out_white(pyvips.Image.thumbnail(str(LOGO), 100).copy_memory())
    assert logo.bands == 4
    assert pixel(logo, 2, 2)[3] == 0  # the corner is see-through
    return bytes(logo.pngsave_buffer())


@pytest.mark.parametrize("effort", list(Effort))
def test_transparency_is_flattened_onto_white(transparent_logo: bytes, effort: Effort) -> None:
    out = decode(compress(transparent_logo, CodecOptions(effort=effort)).data)
    assert out.bands == 3
    assert close_to(pixel(out, 2, 2), (255, 255, 255))


def test_transparency_is_flattened_onto_a_chosen_background(transparent_logo: bytes) -> None:
    options = CodecOptions(background=(0, 128, 255))
    out = decode(compress(transparent_logo, options).data)
    assert out.bands == 3
    assert close_to(pixel(out, 2, 2), (0, 128, 255))


def test_opaque_rgba_keeps_its_colours() -> None:
    logo = pyvips.Image.thumbnail(str(LOGO), 100).copy_memory()
    out = decode(compress(LOGO.read_bytes()).data).thumbnail_image(100)
    assert out.bands == 3
    assert close_to(band_means(out), band_means(logo.extract_band(0, n=3)))


@pytest.mark.parametrize("with_profile", [True, False], ids=["icc", "no-icc"])
def test_cmyk_becomes_srgb(with_profile: bool) -> None:
    source = small_photo()
    data = cmyk_jpeg(source, with_profile=with_profile)
    assert decode(data).interpretation == "cmyk"
    out = decode(compress(data).data)
    assert (out.bands, out.interpretation, out.format) == (3, "srgb", "uchar")
    assert close_to(band_means(out), band_means(source))


def test_embedded_icc_profile_is_honoured() -> None:
    # Pure sRGB red stored as Display P3 numbers reads (234, 51, 34) if the profile is ignored.
    p3_red = solid(16, 16, RED).icc_transform("p3")
    out = decode(compress(bytes(p3_red.jpegsave_buffer(Q=95, keep="icc"))).data)
    assert close_to(pixel(out, 8, 8), RED)


def test_unreadable_icc_profile_does_not_stop_the_image() -> None:
    source = small_photo()
    data = with_icc_segment(bytes(source.jpegsave_buffer(Q=95)), b"not a profile" * 40)
    assert decode(data).get_typeof("icc-profile-data") != 0
    assert close_to(band_means(decode(compress(data).data)), band_means(source))


def test_16_bit_png_becomes_8_bit() -> None:
    source = small_photo()
    data = png16(source)
    assert decode(data).format == "ushort"
    out = decode(compress(data).data)
    assert (out.bands, out.format) == (3, "uchar")
    assert close_to(band_means(out), band_means(source))


def test_grey_with_alpha_becomes_three_band_srgb() -> None:
    # Left half transparent, right half opaque dark grey.
    grey = solid(64, 48, (60,))
    alpha = solid(32, 48, (0,)).join(solid(32, 48, (255,)), "horizontal")
    data = bytes(grey.bandjoin(alpha).pngsave_buffer())
    assert decode(data).bands == 2
    out = decode(compress(data).data)
    assert (out.bands, out.interpretation) == (3, "srgb")
    assert close_to(pixel(out, 8, 24), (255, 255, 255))
    assert close_to(pixel(out, 56, 24), (60, 60, 60))


@pytest.mark.parametrize("effort", list(Effort))
def test_animation_keeps_only_its_first_frame(effort: Effort) -> None:
    data = animated_gif([RED, (0, 255, 0), (0, 0, 255)], width=40, height=30)
    assert pyvips.Image.new_from_buffer(data, "", n=-1).height == 90
    result = compress(data, CodecOptions(effort=effort))
    out = decode(result.data)
    assert (out.width, out.height) == (result.width, result.height) == (40, 30)
    assert close_to(pixel(out, 20, 15), RED)


@pytest.mark.parametrize(
    ("saver", "options"),
    [
        ("pngsave_buffer", {}),
        ("webpsave_buffer", {}),
        ("tiffsave_buffer", {}),
        ("gifsave_buffer", {}),
        ("heifsave_buffer", {"compression": "av1", "effort": 0}),
    ],
    ids=["png", "webp", "tiff", "gif", "avif"],
)
def test_allowed_formats_are_accepted(saver: str, options: dict[str, object]) -> None:
    data = bytes(getattr(small_photo(64), saver)(**options))
    out = decode(compress(data).data)
    assert (out.get("vips-loader"), out.width, out.height) == ("jpegload_buffer", 64, 48)


def test_ultrahdr_jpeg_gives_its_sdr_picture() -> None:
    data = bytes(small_photo(64).colourspace("scrgb").uhdrsave_buffer())
    assert decode(data).get("vips-loader") == "uhdrload_buffer"
    out = decode(compress(data).data)
    assert (out.width, out.height, out.bands) == (64, 48, 3)
    assert out.get_typeof("gainmap-data") == 0


@pytest.mark.parametrize("effort", list(Effort))
def test_metadata_is_stripped(effort: Effort) -> None:
    data = with_metadata(small_photo())
    source_fields = decode(data).get_fields()
    out_fields = decode(compress(data, CodecOptions(effort=effort)).data).get_fields()
    for field in ("exif-data", "icc-profile-data", "xmp-data"):
        assert field in source_fields
        assert field not in out_fields


# --- never larger than the original -----------------------------------------------------------


def heavily_compressed(image: pyvips.Image, **save: object) -> bytes:
    """A JPEG at quality 20: re-encoding it at quality 50 cannot make it smaller."""
    return bytes(image.jpegsave_buffer(Q=20, **save))


@pytest.mark.parametrize("effort", list(Effort))
def test_a_jpeg_that_would_not_shrink_is_kept_without_its_metadata(effort: Effort) -> None:
    data = heavily_compressed_photo()
    result = compress(data, CodecOptions(effort=effort))
    assert result.kept_original
    assert result.data == jpegfile.without_metadata(data)
    assert len(result.data) < len(data)
    out = decode(result.data)
    assert (out - decode(data)).abs().max() == 0  # the very same pixels
    assert not {"exif-data", "icc-profile-data", "xmp-data"} & set(out.get_fields())
    assert (result.width, result.height) == (out.width, out.height)


def test_a_jpeg_that_shrinks_is_re_encoded(photo: bytes) -> None:
    result = compress(photo)
    assert not result.kept_original
    assert len(result.data) < len(photo)


@pytest.mark.parametrize("quality", [10, 25, 40, 55, 70, 85, 95])
def test_a_plain_jpeg_never_comes_out_larger(quality: int) -> None:
    data = bytes(small_photo().jpegsave_buffer(Q=quality))
    result = compress(data)
    assert len(result.data) <= len(data)
    assert result.kept_original == (result.data == jpegfile.without_metadata(data))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(lambda: oriented_jpeg(small_photo(), 6), id="turned"),
        pytest.param(
            lambda: heavily_compressed(small_photo().icc_transform("p3"), keep="icc"), id="p3"
        ),
        pytest.param(lambda: heavily_compressed(small_photo().icc_transform("cmyk")), id="cmyk"),
        pytest.param(lambda: heavily_compressed(small_photo().colourspace("b-w")), id="grey"),
        pytest.param(lambda: bytes(small_photo().webpsave_buffer(Q=5)), id="webp"),
    ],
)
def test_an_input_the_policy_would_change_is_never_kept(data: Callable[[], bytes]) -> None:
    # Keeping these would keep what the policy removes: a turn, a colour space, a format.
    result = compress(data())
    assert not result.kept_original
    out = decode(result.data)
    assert (out.bands, out.interpretation, out.get("vips-loader")) == (3, "srgb", "jpegload_buffer")


def test_an_srgb_profile_does_not_stop_the_original_being_kept() -> None:
    data = heavily_compressed(small_photo().icc_transform("srgb"), keep="icc")
    assert decode(data).get_typeof("icc-profile-data") != 0
    result = compress(data)
    assert result.kept_original
    assert "icc-profile-data" not in decode(result.data).get_fields()


@pytest.mark.parametrize(
    "data",
    [b"", b"<!doctype html><html><body>Not found</body></html>", random.Random(1).randbytes(4096)],
    ids=["empty", "html", "random"],
)
def test_non_images_are_refused(data: bytes) -> None:
    assert refusal(data).code == "not_an_image"


SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">\
<rect width="10" height="10" fill="red"/></svg>'
PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\ntrailer\n<< >>\n%%EOF\n"


@pytest.mark.parametrize("data", [SVG, PDF], ids=["svg", "pdf"])
def test_svg_and_pdf_are_unsupported(data: bytes) -> None:
    assert refusal(data).code == "unsupported_format"


def test_svg_loader_is_blocked_even_when_called_directly() -> None:
    configure()
    with pytest.raises(pyvips.Error, match="svgload"):
        pyvips.Image.svgload_buffer(SVG).avg()


def test_truncated_jpeg_is_corrupt(photo: bytes) -> None:
    assert refusal(photo[: len(photo) // 2]).code == "corrupt_image"


@pytest.mark.parametrize("saver", ["pngsave_buffer", "tiffsave_buffer"], ids=["png", "tiff"])
def test_truncated_png_and_tiff_are_corrupt(saver: str) -> None:
    data = bytes(getattr(small_photo(), saver)())
    assert refusal(data[: len(data) // 2]).code == "corrupt_image"


def test_pixel_bomb_png_is_refused_from_its_header() -> None:
    # The file holds one row of pixels: had it been decoded, it would be corrupt_image instead.
    error = refusal(png_claiming(50_000, 50_000))
    assert error.code == "too_many_pixels"
    assert error.message == "image is 50000x50000 = 2500.0 megapixels; the limit is 50.0"


def test_pixel_bomb_jpeg_is_refused_from_its_header() -> None:
    tiny = bytes(solid(8, 8, GREY).jpegsave_buffer())
    assert refusal(jpeg_claiming(tiny, 60_000, 60_000)).code == "too_many_pixels"


def test_pixel_limit_is_configurable(photo: bytes) -> None:
    error = refusal(photo, CodecOptions(max_pixels=1_000_000))
    assert error.code == "too_many_pixels"
    assert "1600x1200" in error.message
    assert compress(photo, CodecOptions(max_pixels=1600 * 1200)).width == 1600


def test_configure_turns_the_operation_cache_off_and_can_repeat() -> None:
    configure(concurrency=2)
    configure(concurrency=1)
    assert (pyvips.cache_get_max(), pyvips.cache_get_max_mem()) == (0, 0)
    assert pyvips.concurrency_get() == 1


def test_bad_options_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="quality"):
        CodecOptions(quality=0)
    with pytest.raises(ValueError, match="effort"):
        CodecOptions(effort="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="background"):
        CodecOptions(background=(0, 0, 256))


def test_threads_compress_at_once_with_the_same_results() -> None:
    inputs = [path.read_bytes() for path in PHOTOS] * 2
    expected = [compress(data) for data in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results: list[Compressed] = list(pool.map(compress, inputs))
    assert results == expected
    assert all((r.width, r.height) == (1600, 1200) for r in results)


def test_threads_failing_at_once_each_get_their_own_code(photo: bytes) -> None:
    cases = {
        b"<html>gone</html>": "not_an_image",
        photo[: len(photo) // 2]: "corrupt_image",
        png_claiming(50_000, 50_000): "too_many_pixels",
        PDF: "unsupported_format",
    }
    inputs = list(cases) * 8

    def code(data: bytes) -> str:
        try:
            compress(data)
        except CodecError as error:
            return error.code
        return "ok"

    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = list(pool.map(code, inputs))
    assert codes == [cases[data] for data in inputs]


# --- damaged files -----------------------------------------------------------------------------

CODES = {"not_an_image", "unsupported_format", "corrupt_image", "too_many_pixels"}


def _small_files() -> list[bytes]:
    image = small_photo(64)
    savers: list[tuple[str, dict[str, object]]] = [
        ("jpegsave_buffer", {}),
        ("pngsave_buffer", {}),
        ("gifsave_buffer", {}),
        ("webpsave_buffer", {}),
        ("tiffsave_buffer", {"compression": "deflate"}),
        ("heifsave_buffer", {"compression": "av1", "effort": 0}),
    ]
    return [bytes(getattr(image, saver)(**options)) for saver, options in savers]


SMALL_FILES = _small_files()


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SMALL_FILES)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        match draw(st.sampled_from(["flip", "cut", "insert", "zero"])):
            case "flip":
                data[at] ^= draw(st.integers(1, 255))
            case "cut":
                del data[at:]
            case "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=64))
            case "zero":
                data[at : at + 64] = bytes(len(data[at : at + 64]))
        if not data:
            break
    return bytes(data)


@given(damaged())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_damaged_file_gets_a_verdict_never_a_crash(data: bytes) -> None:
    # Headers, tables and pixel data hit at random in every accepted format: libvips must
    # either make a JPEG of it or refuse it with one of our codes, and return either way.
    try:
        compressed = compress(data, CodecOptions(max_pixels=10_000_000))
    except CodecError as error:
        code = error.code
    else:
        code = "ok"
        assert compressed.data.startswith(b"\xff\xd8\xff")
        assert compressed.width * compressed.height <= 10_000_000
    assert code in {"ok", *CODES}


# --- variants: one decode, several outputs ------------------------------------------------------


def made(data: bytes, spec: str, **options: Any) -> tuple[Compressed, ...]:
    variants = parse_variants(spec, max_pixels=50_000_000)
    return make_variants(data, CodecOptions(variants=variants, **options))


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "avif"])
def test_each_format_decodes_everywhere_as_8_bit_srgb_inside_its_box(
    photo: bytes, fmt: str
) -> None:
    (listing,) = made(photo, f"listing=800x500:{fmt}")
    assert (listing.width, listing.height) == (667, 500)  # 1600x1200 inside 800x500
    assert listing.extension == {"jpeg": "jpg", "webp": "webp", "avif": "avif"}[fmt]
    with Image.open(io.BytesIO(listing.data)) as pillow:
        assert pillow.format == {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}[fmt]
        assert (pillow.mode, pillow.size) == ("RGB", (667, 500))
    out = decode(listing.data)
    assert (out.width, out.height, out.bands, out.format) == (667, 500, 3, "uchar")
    assert out.interpretation == "srgb"
    assert not out.get_typeof("exif-data")
    assert not out.get_typeof("icc-profile-data")
    # The same picture: its colours are the photo's, scaled down.
    expected = band_means(decode(photo))
    assert all(abs(a - b) < 4 for a, b in zip(band_means(out), expected, strict=True))


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "avif"])
def test_a_box_larger_than_the_picture_never_enlarges_it(photo: bytes, fmt: str) -> None:
    (zoom,) = made(photo, f"zoom=4000:{fmt}")
    assert (zoom.width, zoom.height) == (1600, 1200)
    assert (decode(zoom.data).width, decode(zoom.data).height) == (1600, 1200)


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "avif"])
def test_pad_gives_exactly_the_box_with_the_background_on_its_edges(photo: bytes, fmt: str) -> None:
    (tile,) = made(photo, f"tile=200x200:pad:{fmt}", background=(0, 0, 255))
    out = decode(tile.data)
    assert (tile.width, tile.height) == (out.width, out.height) == (200, 200)
    # 1600x1200 fits as 200x150, centred: 25 rows of background above and below.
    for y in (2, 197):
        assert close_to(pixel(out, 100, y), (0, 0, 255), tolerance=24)
    assert not close_to(pixel(out, 100, 100), (0, 0, 255), tolerance=24)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_variant_is_turned_upright_after_it_is_resized(orientation: int) -> None:
    source = oriented_jpeg(red_top_left(128, 96), orientation)
    full, small = made(source, "full=webp, small=64:avif")
    for variant, size in ((full, (128, 96)), (small, (64, 48))):
        out = decode(variant.data)
        assert (out.width, out.height) == (variant.width, variant.height) == size
        assert close_to(pixel(out, size[0] // 4, size[1] // 4), RED, tolerance=40)
        assert close_to(pixel(out, 3 * size[0] // 4, 3 * size[1] // 4), GREY, tolerance=40)


def test_a_variant_of_a_picture_with_alpha_is_flattened_onto_the_background() -> None:
    for variant in made(LOGO.read_bytes(), "a=webp, b=100:avif, c=100x100:pad:jpeg"):
        out = decode(variant.data)
        assert out.bands == 3
        assert close_to(pixel(out, 0, 0), (255, 255, 255), tolerance=12)


def test_a_jpeg_variant_keeps_the_original_only_where_nothing_was_resized() -> None:
    original = heavily_compressed_photo()
    same, smaller, other_format = made(original, "same=jpeg, smaller=100:jpeg, other=webp")
    assert same.kept_original
    assert same.data == jpegfile.without_metadata(original)
    assert not smaller.kept_original
    assert smaller.width == 100
    assert not other_format.kept_original
    assert other_format.extension == "webp"


def test_a_bad_image_is_refused_once_whatever_the_variants() -> None:
    with pytest.raises(CodecError) as refused:
        made(b"<html>hello</html>", "a=jpeg, b=100:webp, c=50:avif")
    assert refused.value.code == "not_an_image"


def test_a_picture_wider_than_a_format_allows_is_refused_for_that_format() -> None:
    wide = bytes(pyvips.Image.black(17_000, 8, bands=3).pngsave_buffer())
    (jpeg_only,) = made(wide, "a=jpeg")
    assert jpeg_only.width == 17_000
    with pytest.raises(CodecError) as refused:
        made(wide, "a=jpeg, b=webp")
    assert refused.value.code == "too_many_pixels"
    assert "webp images are at most 16383 pixels a side" in refused.value.message
    (fits,) = made(wide, "b=16000x:webp")  # a box that brings it inside the limit
    assert fits.width == 16_000


def test_variants_made_together_look_as_those_made_one_at_a_time(photo: bytes) -> None:
    # Alone, a small variant is decoded smaller (shrink-on-load); together, all share one
    # decode, each smaller one box-shrunk from the next larger. Against the photo resized with
    # lanczos3, both look the same to within a point of SSIMULACRA2.
    specs = ("zoom=1000:jpeg", "listing=500:webp", "thumb=120x120:jpeg")
    together = made(photo, ", ".join(specs))
    full = decode(photo)
    for shared, spec in zip(together, specs, strict=True):
        (alone,) = made(photo, spec)
        assert (shared.width, shared.height) == (alone.width, alone.height)
        scaled = full.resize(shared.width / full.width, vscale=shared.height / full.height)
        reference = ssimulacra2.Reference(scaled.numpy())
        look = reference.score(decode(shared.data).numpy())
        assert look > reference.score(decode(alone.data).numpy()) - 1.5


def test_the_spec_digest_names_what_the_options_and_the_encoders_make(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The source cache's key: equal for what makes equal bytes, different for anything else."""
    base = CodecOptions()
    before = spec_digest(base)
    assert before == spec_digest(CodecOptions())
    others = [
        CodecOptions(quality=51),
        CodecOptions(effort=Effort.MAX),
        CodecOptions(background=(0, 0, 0)),
        CodecOptions(max_pixels=1_000_000),
        CodecOptions(variants=parse_variants("thumb=200:jpeg", max_pixels=10**9)),
    ]
    assert len({before, *(spec_digest(options) for options in others)}) == 6
    # A re-fitted calibration (or any other setting of an encoder) makes other bytes.
    refitted = JpegEncoder(
        quant_table=5, optimize_coding=True, trellis=False, calibration=Calibration(((1, 1),))
    )
    monkeypatch.setitem(ENCODERS, Effort.BALANCED, refitted)
    codec_module._codec_described.cache_clear()
    try:
        assert spec_digest(base) != before
    finally:
        monkeypatch.undo()
        codec_module._codec_described.cache_clear()
