"""Test images made at run time from tests/data, small so that tests stay fast.

pyvips is untyped, so its images are `VipsImage` (Any) here.
"""

from __future__ import annotations

import functools
import struct
import zlib
from pathlib import Path
from typing import Any, TypeAlias

import pyvips

VipsImage: TypeAlias = Any

DATA = Path(__file__).parent / "data"
PHOTOS = sorted((DATA / "photos").glob("*.jpg"))
LOGO = DATA / "logo.png"
# Product shots made from the catalog's, each breaking a marketplace rule (their README).
MARKETPLACE = sorted((DATA / "marketplace").glob("*.jpg"))

RED = (255, 0, 0)
GREY = (128, 128, 128)


def decode(data: bytes) -> VipsImage:
    return pyvips.Image.new_from_buffer(data, "")


def pixel(image: VipsImage, x: int, y: int) -> list[float]:
    return [float(v) for v in image(x, y)]


def band_means(image: VipsImage) -> list[float]:
    return [float(image.extract_band(b).avg()) for b in range(image.bands)]


def small_photo(width: int = 200) -> VipsImage:
    """A real photo, shrunk: 200x150 by default. In memory, so it can be read more than once."""
    return pyvips.Image.thumbnail(str(PHOTOS[0]), width).copy_memory()


def solid(width: int, height: int, colour: tuple[int, ...]) -> VipsImage:
    image = (pyvips.Image.black(width, height) + list(colour)).cast("uchar")
    return image.copy(interpretation="srgb" if len(colour) >= 3 else "b-w")


def red_top_left(width: int = 64, height: int = 48) -> VipsImage:
    """Grey, with a red top-left quadrant: any rotation or mirroring shows."""
    return solid(width, height, GREY).insert(solid(width // 2, height // 2, RED), 0, 0)


# What to do to an upright picture so that a viewer honouring EXIF `orientation` shows it upright
# again: the inverse of each tag's display transform.
_STORE_FOR_ORIENTATION = {
    1: lambda im: im,
    2: lambda im: im.fliphor(),
    3: lambda im: im.rot180(),
    4: lambda im: im.flipver(),
    5: lambda im: im.rot90().fliphor(),  # transpose
    6: lambda im: im.rot270(),  # displayed after a 90° clockwise turn
    7: lambda im: im.rot270().fliphor(),  # transverse
    8: lambda im: im.rot90(),  # displayed after a 90° anticlockwise turn
}


def oriented_jpeg(upright: VipsImage, orientation: int) -> bytes:
    """A JPEG whose pixels are stored turned, with the EXIF tag that turns them back."""
    stored = _STORE_FOR_ORIENTATION[orientation](upright).copy()
    stored.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    return bytes(stored.jpegsave_buffer(Q=95))


def cmyk_jpeg(image: VipsImage, *, with_profile: bool) -> bytes:
    """CMYK through libvips' built-in profile; optionally keep that profile in the file."""
    cmyk = image.icc_transform("cmyk")
    return bytes(cmyk.jpegsave_buffer(Q=95, keep="icc" if with_profile else "none"))


def png16(image: VipsImage) -> bytes:
    wide = (image.cast("ushort") * 257).cast("ushort")
    return bytes(wide.copy(interpretation="rgb16").pngsave_buffer())


def animated_gif(colours: list[tuple[int, int, int]], width: int = 40, height: int = 30) -> bytes:
    frames = [solid(width, height, colour) for colour in colours]
    strip = pyvips.Image.arrayjoin(frames, across=1).copy()
    strip.set_type(pyvips.GValue.gint_type, "page-height", height)
    strip.set_type(pyvips.GValue.array_int_type, "delay", [100] * len(colours))
    return bytes(strip.gifsave_buffer())


def with_metadata(image: VipsImage) -> bytes:
    """A JPEG carrying EXIF, an ICC profile and XMP."""
    tagged = image.icc_transform("srgb").copy()  # attaches libvips' sRGB profile
    tagged.set_type(pyvips.GValue.gint_type, "orientation", 1)  # makes an EXIF block
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    tagged.set_type(pyvips.GValue.blob_type, "xmp-data", xmp)
    return bytes(tagged.jpegsave_buffer(keep="all"))


def heavily_compressed_photo() -> bytes:
    """A small photo at quality 20, with metadata: quality 50 would only make it larger."""
    tagged = decode(with_metadata(small_photo()))
    return bytes(tagged.jpegsave_buffer(Q=20, keep="all"))


def with_icc_segment(jpeg: bytes, profile: bytes) -> bytes:
    """`jpeg` with `profile` embedded as is (libvips would refuse to write a broken one)."""
    body = b"ICC_PROFILE\x00\x01\x01" + profile  # chunk 1 of 1
    segment = b"\xff\xe2" + struct.pack(">H", len(body) + 2) + body
    return jpeg[:2] + segment + jpeg[2:]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header for a huge 8-bit grey image, with (almost) no pixel data after it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1)))  # one row of many
        + _png_chunk(b"IEND", b"")
    )


@functools.cache
def png_bomb(width: int, height: int) -> bytes:
    """A complete, valid black 1-bit PNG of width x height: a decompression bomb. 50,000 x
    50,000 is some 300 KB on the wire, 312 MB once inflated and 2.5 gigapixels decoded."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = (b"\x00" * (1 + (width + 7) // 8)) * 100  # filter byte + packed bits, 100 rows
    squeeze = zlib.compressobj(9)
    parts = [squeeze.compress(rows) for _ in range(height // 100)]
    parts.append(squeeze.compress(rows[: (height % 100) * (len(rows) // 100)]))
    parts.append(squeeze.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` with its frame header (SOFn) rewritten to claim another size."""
    i = 2
    while i + 4 <= len(jpeg):
        marker = jpeg[i + 1]
        length = int.from_bytes(jpeg[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            size = struct.pack(">HH", height, width)
            return jpeg[: i + 5] + size + jpeg[i + 9 :]
        i += 2 + length
    raise ValueError("no frame header found")
