"""An independent check of an image against a marketplace's published image rules.

Written from the rules themselves, not from imgcrunch (which it never imports), so that tests
can hold the service's marketplace profiles to them. Pillow and numpy only.

The rules, as the issue gives them; "MB" is read as 1,000,000 bytes and "megapixels" as
1,000,000 pixels (the stricter readings):

- Amazon (main image): pure white background (255, 255, 255); the product fills at least 85% of
  the frame; at least 1000 px on the longest side for zoom (500 px is the minimum), at most
  10,000 px; JPEG, PNG, GIF or TIFF (no WebP).
- Walmart: 1:1; at least 1500x1500 for zoom (2200x2200 recommended); at most 5 MB; JPEG, PNG or
  BMP, RGB; white background; no query string in the image URL.
- Google Merchant Center: at least 100x100 (250x250 for apparel); at most 64 megapixels and
  16 MB; no upscaled images; the file's extension matches its format; JPEG, WebP, PNG, GIF, BMP
  or TIFF.
- eBay: at least 500 px on the longest side (1600 recommended); width plus height at most
  12,000; at most 12 MB; JPEG, PNG, TIFF, BMP, GIF, AVIF, HEIC or WebP.

Not checked: sizes that are only recommended (Walmart 2200, eBay 1600: no rule name fits them,
they are in the table for the record), Google's apparel minimum (the profile has no product
category), and Google's "no upscaled images" (not decidable from the pixels).

Definitions:

- fill = max(bbox width / image width, bbox height / image height), where the bbox bounds the
  pixels any of whose channels is below 255 - 24 (which tolerates JPEG noise in white areas).
- white background: the border ring (the outermost 1% of each side, at least 2 px) has at least
  99% of its pixels with every channel >= 250, and a mean >= 253 in every channel.

Images with transparency are measured as composited on white; greyscale, palette and CMYK ones
after Pillow's conversion to RGB.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import numpy as np
import numpy.typing as npt
from PIL import Image

MB = 1_000_000

# Pixels with any channel below this are product (255 - 24).
PRODUCT_BELOW = 231
# Border ring: this fraction of each side, at least BORDER_MIN_PX.
BORDER_FRACTION = 0.01
BORDER_MIN_PX = 2
# A ring pixel is white when every channel is at least this...
WHITE_PIXEL_MIN = 250
# ...at least this fraction of the ring's pixels are, and every channel's mean is at least this.
WHITE_FRACTION_MIN = 0.99
WHITE_MEAN_MIN = 253.0

JPEG = "JPEG"
PNG = "PNG"
GIF = "GIF"
TIFF = "TIFF"
BMP = "BMP"
WEBP = "WEBP"
AVIF = "AVIF"
HEIC = "HEIC"

EXTENSIONS: dict[str, frozenset[str]] = {
    JPEG: frozenset({".jpg", ".jpeg"}),
    PNG: frozenset({".png"}),
    GIF: frozenset({".gif"}),
    TIFF: frozenset({".tif", ".tiff"}),
    BMP: frozenset({".bmp"}),
    WEBP: frozenset({".webp"}),
    AVIF: frozenset({".avif"}),
    HEIC: frozenset({".heic", ".heif"}),
}

# Pillow modes that are RGB or greyscale at 8 bits a channel.
EIGHT_BIT_RGB_OR_GREY = frozenset({"RGB", "L"})

RULES = (
    "format",
    "extension",
    "query_string",
    "too_small",
    "too_small_for_zoom",
    "too_large",
    "bytes",
    "aspect",
    "colour_mode",
    "background_not_white",
    "product_fill_low",
)


@dataclass(frozen=True)
class Marketplace:
    """One marketplace's image rules. None: the marketplace sets no such limit."""

    name: str
    formats: frozenset[str]
    # too_small: under this on the longest side / on either side.
    min_longest: int | None = None
    min_each_side: int | None = None
    # too_small_for_zoom: under this on the longest side / on either side.
    zoom_longest: int | None = None
    zoom_each_side: int | None = None
    # too_large: over this on the longest side / in pixels / in width plus height.
    max_longest: int | None = None
    max_pixels: int | None = None
    max_side_sum: int | None = None
    # bytes: over this many bytes.
    max_bytes: int | None = None
    # aspect: width must equal height.
    square: bool = False
    # colour_mode: the Pillow modes accepted (None: any).
    colour_modes: frozenset[str] | None = None
    # background_not_white.
    white_background: bool = False
    # product_fill_low: under this fill.
    min_fill: float | None = None
    # extension: the URL path's extension, where it has one, must name the format.
    extension_matches_format: bool = False
    # query_string: the URL must have none.
    no_query_string: bool = False
    # For the record only; not checked (see the module's docstring).
    recommended: str = ""


MARKETPLACES: dict[str, Marketplace] = {
    m.name: m
    for m in (
        Marketplace(
            name="amazon",
            formats=frozenset({JPEG, PNG, GIF, TIFF}),
            min_longest=500,
            zoom_longest=1000,
            max_longest=10_000,
            white_background=True,
            min_fill=0.85,
            recommended="JPEG preferred",
        ),
        Marketplace(
            name="walmart",
            formats=frozenset({JPEG, PNG, BMP}),
            zoom_each_side=1500,
            max_bytes=5 * MB,
            square=True,
            colour_modes=EIGHT_BIT_RGB_OR_GREY,
            white_background=True,
            no_query_string=True,
            recommended="2200x2200",
        ),
        Marketplace(
            name="google",
            formats=frozenset({JPEG, WEBP, PNG, GIF, BMP, TIFF}),
            min_each_side=100,
            max_pixels=64_000_000,
            max_bytes=16 * MB,
            extension_matches_format=True,
            recommended="250x250 for apparel; no upscaled images",
        ),
        Marketplace(
            name="ebay",
            formats=frozenset({JPEG, PNG, TIFF, BMP, GIF, AVIF, HEIC, WEBP}),
            min_longest=500,
            max_side_sum=12_000,
            max_bytes=12 * MB,
            recommended="1600 px on the longest side",
        ),
    )
}


@dataclass(frozen=True)
class Violation:
    rule: str
    detail: str


@dataclass(frozen=True)
class Measured:
    """What `measure` found in an image: handy in assertion messages."""

    format: str | None  # by magic bytes; None when not one of the known formats
    width: int
    height: int
    mode: str  # Pillow's mode as decoded, e.g. "RGB", "L", "CMYK", "RGBA", "P"
    byte_count: int
    fill: float
    bbox: tuple[int, int, int, int] | None  # left, top, right, bottom (exclusive) of product
    border_mean: tuple[float, float, float]
    border_white_fraction: float

    @property
    def border_white(self) -> bool:
        return self.border_white_fraction >= WHITE_FRACTION_MIN and all(
            c >= WHITE_MEAN_MIN for c in self.border_mean
        )

    def __str__(self) -> str:
        r, g, b = self.border_mean
        return (
            f"{self.format} {self.mode} {self.width}x{self.height}, {self.byte_count:,} bytes,"
            f" fill {self.fill:.3f}, border mean ({r:.1f}, {g:.1f}, {b:.1f}),"
            f" {self.border_white_fraction:.1%} white"
        )


class Undecodable(ValueError):
    """The bytes are not an image Pillow can decode, so their pixels cannot be judged."""


def sniff(data: bytes) -> str | None:
    """The format by magic bytes, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return TIFF
    if data.startswith(b"BM"):
        return BMP
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    if data[4:8] == b"ftyp":
        # ISO base media: the major brand, then the compatible ones, in the ftyp box.
        size = int.from_bytes(data[:4], "big")
        box = data[8 : max(16, min(size, 64))]
        brands = {box[i : i + 4] for i in range(0, len(box) - 3, 4)}
        if brands & {b"avif", b"avis"}:
            return AVIF
        if brands & {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}:
            return HEIC
    return None


def _open(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise Undecodable(f"{len(data):,} bytes that Pillow cannot decode: {e}") from e
    return image


def _rgb(image: Image.Image) -> npt.NDArray[np.uint8]:
    """The pixels as an (h, w, 3) uint8 array; transparency composited on white."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _border(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The ring's pixels, (n, 3): the outermost 1% (at least 2 px) of each side."""
    height, width = pixels.shape[:2]
    rows = max(BORDER_MIN_PX, round(height * BORDER_FRACTION))
    cols = max(BORDER_MIN_PX, round(width * BORDER_FRACTION))
    ring = np.zeros((height, width), dtype=bool)
    ring[:rows, :] = True
    ring[height - rows :, :] = True
    ring[:, :cols] = True
    ring[:, width - cols :] = True
    return pixels[ring]


def _product_bbox(pixels: npt.NDArray[np.uint8]) -> tuple[int, int, int, int] | None:
    product: npt.NDArray[np.bool_] = np.any(pixels < PRODUCT_BELOW, axis=2)
    rows = np.flatnonzero(np.any(product, axis=1))
    cols = np.flatnonzero(np.any(product, axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _measure(data: bytes, image: Image.Image) -> Measured:
    pixels = _rgb(image)
    height, width = pixels.shape[:2]
    bbox = _product_bbox(pixels)
    fill = 0.0
    if bbox is not None:
        left, top, right, bottom = bbox
        fill = max((right - left) / width, (bottom - top) / height)
    ring = _border(pixels)
    mean = ring.mean(axis=0, dtype=np.float64)
    white = (ring >= WHITE_PIXEL_MIN).all(axis=1)
    return Measured(
        format=sniff(data),
        width=width,
        height=height,
        mode=image.mode,
        byte_count=len(data),
        fill=fill,
        bbox=bbox,
        border_mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        border_white_fraction=float(white.mean()),
    )


def measure(data: bytes) -> Measured:
    """Size, format, fill and border colour of an image. Raises Undecodable."""
    with _open(data) as image:
        return _measure(data, image)


def _extension(url: str) -> str:
    return posixpath.splitext(unquote(urlsplit(url).path))[1].lower()


def check(profile: str, data: bytes, url: str) -> list[Violation]:
    """Every rule of `profile` (a key of MARKETPLACES) that the image `data`, to be served at
    `url`, breaks. Raises KeyError for an unknown profile, Undecodable for bytes in a known
    format that Pillow cannot decode (their pixels cannot be judged)."""
    rules = MARKETPLACES[profile]
    found: list[Violation] = []

    def flag(rule: str, detail: str) -> None:
        found.append(Violation(rule, detail))

    fmt = sniff(data)
    if fmt not in rules.formats:
        accepted = ", ".join(sorted(rules.formats))
        flag("format", f"{fmt or 'unknown format'} by magic bytes; {profile} takes {accepted}")
    if rules.extension_matches_format and fmt is not None:
        ext = _extension(url)
        if ext and ext not in EXTENSIONS[fmt]:
            flag("extension", f"{ext!r} in {url!r} but the bytes are {fmt}")
    if rules.no_query_string and urlsplit(url).query:
        flag("query_string", f"{url!r} has a query string")
    if rules.max_bytes is not None and len(data) > rules.max_bytes:
        flag("bytes", f"{len(data):,} bytes, over {rules.max_bytes:,}")
    if fmt is None:
        return found  # not an image the marketplace can read: nothing more to judge

    with _open(data) as image:
        width, height = image.size
        longest, shortest = max(width, height), min(width, height)
        size = f"{width}x{height}"
        if rules.min_longest is not None and longest < rules.min_longest:
            flag("too_small", f"{size}: longest side under {rules.min_longest}")
        if rules.min_each_side is not None and shortest < rules.min_each_side:
            flag("too_small", f"{size}: a side under {rules.min_each_side}")
        if rules.zoom_longest is not None and longest < rules.zoom_longest:
            flag("too_small_for_zoom", f"{size}: longest side under {rules.zoom_longest}")
        if rules.zoom_each_side is not None and shortest < rules.zoom_each_side:
            flag("too_small_for_zoom", f"{size}: a side under {rules.zoom_each_side}")
        if rules.max_longest is not None and longest > rules.max_longest:
            flag("too_large", f"{size}: longest side over {rules.max_longest}")
        if rules.max_pixels is not None and width * height > rules.max_pixels:
            flag("too_large", f"{size}: {width * height:,} pixels, over {rules.max_pixels:,}")
        if rules.max_side_sum is not None and width + height > rules.max_side_sum:
            flag("too_large", f"{size}: width plus height over {rules.max_side_sum}")
        if rules.square and width != height:
            flag("aspect", f"{size} is not 1:1")
        if rules.colour_modes is not None and image.mode not in rules.colour_modes:
            modes = ", ".join(sorted(rules.colour_modes))
            flag("colour_mode", f"mode {image.mode}; {profile} takes {modes}")
        if rules.white_background or rules.min_fill is not None:
            m = _measure(data, image)
            if rules.white_background and not m.border_white:
                r, g, b = m.border_mean
                flag(
                    "background_not_white",
                    f"border mean ({r:.1f}, {g:.1f}, {b:.1f}),"
                    f" {m.border_white_fraction:.1%} of it white",
                )
            if rules.min_fill is not None and m.fill < rules.min_fill:
                flag("product_fill_low", f"fill {m.fill:.3f}, under {rules.min_fill}")
    return found


def rules_broken(profile: str, data: bytes, url: str) -> set[str]:
    """The names of the rules `check` reports, for set comparisons in tests."""
    return {v.rule for v in check(profile, data, url)}
