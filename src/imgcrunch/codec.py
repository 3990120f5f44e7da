"""Bytes in, compressed JPEG bytes out, with the image policy of DESIGN.md; no I/O.

Called by codec_pool's workers (processes, or threads), one image at a time each: libvips is
thread-safe and releases the GIL while it works, so the only shared state here is the one-time
process set-up in `configure`.

`quality` means what it means to libjpeg users: the look of standard libjpeg quality N. Each
effort level encodes with its own quantisation tables and options, at the Q that gives that
look (its calibration table, fitted and checked with SSIMULACRA2 by bench/quality.py).
"""

from __future__ import annotations

import bisect
import ctypes
import enum
import logging
import struct
import threading
from dataclasses import dataclass
from typing import Any

import pyvips

from imgcrunch import jpegfile

log = logging.getLogger(__name__)


class Effort(enum.StrEnum):
    BALANCED = "balanced"  # fewer bytes than standard libjpeg, for less CPU than it spends
    MAX = "max"  # the fewest bytes at the same look, for about four times balanced's CPU


@dataclass(frozen=True, slots=True, kw_only=True)
class Encoder:
    """One way to call libvips' jpegsave (whose libjpeg is mozjpeg in pyvips-binary)."""

    quant_table: int  # mozjpeg's table index: 0 is the standard's (Annex K)
    optimize_coding: bool  # Huffman tables fitted to the image: a second pass over it
    trellis: bool  # mozjpeg's rate-distortion search per block (implies optimize_coding)
    # (quality, Q) points, quality ascending: the Q at which these tables look like standard
    # libjpeg at that quality, for colour photos and for grey ones (whose bytes are all in the
    # luminance table, so the chroma tables' savings do not come to them). Between points, Q
    # is interpolated.
    calibration: tuple[tuple[int, int], ...] = ((1, 1), (100, 100))
    grey_calibration: tuple[tuple[int, int], ...] = ((1, 1), (100, 100))

    def q_for(self, quality: int, *, grey: bool = False) -> int:
        points = self.grey_calibration if grey else self.calibration
        qualities = [point[0] for point in points]
        upper = min(max(bisect.bisect_left(qualities, quality), 1), len(qualities) - 1)
        (q0, v0), (q1, v1) = points[upper - 1], points[upper]
        return max(1, min(100, round(v0 + (v1 - v0) * (quality - q0) / (q1 - q0))))

    def save_options(self, quality: int, *, grey: bool = False) -> dict[str, Any]:
        """jpegsave's arguments, those at libvips' defaults left out: each one passed costs
        pyvips some 20 us, which a small image notices."""
        options: dict[str, Any] = {"Q": self.q_for(quality, grey=grey), **_JPEG_POLICY}
        if self.quant_table:
            options["quant_table"] = self.quant_table
        if self.optimize_coding or self.trellis:
            options["optimize_coding"] = True
        if self.trellis:
            options["trellis_quant"] = True
        return options


# Whatever the effort: 4:2:0 at every quality, baseline (libvips' default), and no EXIF, ICC,
# XMP or IPTC, the pixels being upright sRGB already.
_JPEG_POLICY = {"subsample_mode": "on", "keep": "none"}


# Chosen by `bench/quality.py --search` over every table and option libvips offers: table 5
# (Klein, Silverstein and Carney 2005) gives the fewest bytes at the same look, with or without
# trellis. Huffman optimisation would save balanced 9% more bytes for 50% more CPU; progressive
# scans save max 1.5% for 50% more. Calibrated by `bench/quality.py --calibrate` (2026-12-01) on
# the corpus's seven photos at their own size, in colour and in grey: each point is the Q whose
# mean SSIMULACRA2 is nearest standard libjpeg's at that quality. The default run checks it on
# photos it was not fitted to (tests/data/holdout, and the corpus enlarged to 1600x1200).
ENCODERS: dict[Effort, Encoder] = {
    Effort.BALANCED: Encoder(
        quant_table=5,
        optimize_coding=False,
        trellis=False,
        calibration=(
            *((1, 1), (10, 7), (20, 16), (30, 26), (40, 35), (50, 45)),
            *((60, 54), (70, 68), (80, 77), (90, 92), (95, 96), (100, 100)),
        ),
        grey_calibration=(
            *((1, 1), (10, 8), (20, 18), (30, 29), (40, 40), (50, 52)),
            *((60, 60), (70, 72), (80, 81), (90, 96), (95, 96), (100, 100)),
        ),
    ),
    Effort.MAX: Encoder(
        quant_table=5,
        optimize_coding=True,
        trellis=True,
        calibration=(
            *((1, 1), (10, 8), (20, 19), (30, 30), (40, 41), (50, 53)),
            *((60, 61), (70, 73), (80, 82), (90, 94), (95, 96), (100, 100)),
        ),
        grey_calibration=(
            *((1, 1), (10, 9), (20, 21), (30, 33), (40, 46), (50, 57)),
            *((60, 67), (70, 76), (80, 84), (90, 96), (95, 97), (100, 100)),
        ),
    ),
}
# Standard libjpeg: what `quality` is measured against, and what runs where libjpeg is not
# mozjpeg (a libvips of one's own, without pyvips-binary) and cannot take other tables.
STANDARD = Encoder(quant_table=0, optimize_coding=True, trellis=False)

# Loaders we trust with untrusted bytes. libvips names them by how they were called
# (`new_from_buffer` picks the `*_buffer` variant). UltraHDR is a JPEG with a gain map, as
# phones write them; its loader gives the ordinary SDR picture, so it counts as JPEG.
_ALLOWED_LOADERS = frozenset(
    {
        "jpegload_buffer",
        "uhdrload_buffer",
        "pngload_buffer",
        "webpload_buffer",
        "gifload_buffer",
        "tiffload_buffer",
        "heifload_buffer",  # HEIC and AVIF
    }
)

# Blocked outright, whether or not this build of libvips marks them untrusted, so that no
# sniffing or explicit call can reach them.
_BLOCKED_OPERATIONS = ("VipsForeignLoadSvg", "VipsForeignLoadPdf", "VipsForeignLoadMagick")

# pyvips raises this (before calling any loader) when no loader recognises the bytes.
_NO_LOADER_MESSAGE = "unable to load from buffer"

# Magic numbers of the allowed formats. When libvips finds no loader but the bytes start like one
# of these, the file is damaged (a TIFF cut before its directory, say), not something else.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

_SNIFF_BYTES = 1024
_MAX_DETAIL = 200
_UTF8_BOM = b"\xef\xbb\xbf"

# glibc's malloc gives blocks over 128 KiB back to the kernel when they are freed and maps them
# again, zeroed, for the next image: some 300 page faults per image, each unmap interrupting
# every thread of the process. An image service allocates the same sizes over and over, so
# freed memory is kept for reuse (up to 64 MiB spare per arena); peak memory does not change.
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 1024 * 1024  # the largest glibc accepts; bigger blocks are still mapped
_TRIM_THRESHOLD = 64 * 1024 * 1024

_configure_lock = threading.Lock()
_configured = False
_encoders = ENCODERS  # until configure finds a libjpeg without mozjpeg's tables


@dataclass(frozen=True, slots=True, kw_only=True)
class CodecOptions:
    quality: int = 50
    effort: Effort = Effort.BALANCED
    max_pixels: int = 50_000_000
    background: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        # A bad option is the caller's bug, not the image's: fail loudly, not as a CodecError.
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be 1..100, not {self.quality}")
        if not isinstance(self.effort, Effort):
            raise ValueError(f"effort must be one of {', '.join(Effort)}, not {self.effort!r}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, not {self.max_pixels}")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"background must be three values 0..255, not {self.background}")


@dataclass(frozen=True, slots=True)
class Compressed:
    data: bytes
    width: int
    height: int
    # The input JPEG's own picture, without its metadata: re-encoding would not have been smaller.
    kept_original: bool = False
    extension: str = "jpg"


class CodecError(Exception):
    """Why an image was refused. `code` is stable for machines, `message` is for people."""

    code: str  # "not_an_image" | "unsupported_format" | "corrupt_image" | "too_many_pixels"
    message: str

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[CodecError], tuple[str, str]]:
        # It travels back from a codec worker process, pickled.
        return (CodecError, (self.code, self.message))


def configure(*, concurrency: int = 1) -> None:
    """Process-wide libvips set-up; safe to call again (the last concurrency wins)."""
    global _configured
    with _configure_lock:
        # Each image is seen once: caching operations would only grow memory.
        pyvips.cache_set_max(0)
        pyvips.cache_set_max_mem(0)
        pyvips.cache_set_max_files(0)
        pyvips.block_untrusted_set(True)
        for name in _BLOCKED_OPERATIONS:
            pyvips.operation_block_set(name, True)
        # We parallelise across images; libvips' threads within one image only add overhead.
        pyvips.concurrency_set(concurrency)
        _reuse_freed_memory()
        _choose_encoders()
        _configured = True


def _choose_encoders() -> None:
    """Without mozjpeg, libvips ignores `quant_table` and `trellis_quant`: the efforts' Q
    would then give a worse look than promised, so every effort falls back to the standard."""
    global _encoders
    noise = pyvips.Image.gaussnoise(64, 64, mean=128, sigma=40).cast("uchar")
    probe = noise.bandjoin([noise, noise]).copy(interpretation="srgb")
    standard = probe.jpegsave_buffer(Q=50, quant_table=0, keep="none")
    other = probe.jpegsave_buffer(Q=50, quant_table=5, keep="none")
    if standard == other:
        log.warning(
            "this libvips' libjpeg is not mozjpeg: every effort uses the standard tables "
            "(install pyvips-binary for smaller files)"
        )
        _encoders = dict.fromkeys(Effort, STANDARD)
    else:
        _encoders = ENCODERS


def _reuse_freed_memory() -> None:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl...): nothing to tune
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def compress(data: bytes, options: CodecOptions = CodecOptions()) -> Compressed:
    """Apply the image policy to `data`; raises CodecError, and nothing else, for a bad image."""
    if not _configured:
        configure()
    try:
        return _compress(data, options)
    except CodecError:
        raise
    except pyvips.Error as error:
        # Pixels are decoded lazily, inside the save, so a damaged file surfaces here.
        raise CodecError("corrupt_image", f"cannot decode the image: {_detail(error)}") from error
    except Exception as error:  # a worker thread must get a verdict, never a crash
        raise CodecError("corrupt_image", f"cannot decode the image: {error}") from error


@dataclass(frozen=True, slots=True)
class _Header:
    """What the policy asks of an image, read once from its header (each read costs pyvips)."""

    loader: str
    width: int
    height: int
    bands: int
    orientation: int  # EXIF's, 1 (upright) when there is none
    icc_profile: bytes | None
    srgb8: bool  # 8-bit sRGB already (with an sRGB profile or none), alpha or not

    @classmethod
    def of(cls, image: Any) -> _Header:
        orientation = image.get("orientation") if image.get_typeof("orientation") else 1
        profile = image.get_typeof("icc-profile-data") and bytes(image.get("icc-profile-data"))
        bands = image.bands
        srgb8 = (
            image.format == "uchar"
            and image.interpretation == "srgb"
            and bands in (3, 4)
            and (not profile or _is_srgb_profile(profile))
        )
        return cls(
            loader=str(image.get("vips-loader")),
            width=image.width,
            height=image.height,
            bands=bands,
            orientation=int(orientation),
            icc_profile=profile or None,
            srgb8=srgb8,
        )


def _compress(data: bytes, options: CodecOptions) -> Compressed:
    _refuse_known_unsupported(data)
    image = _open_header(data)
    header = _Header.of(image)
    _check_loader(header.loader)
    _check_pixels(header, options.max_pixels)
    if header.orientation != 1:
        image = _upright(data)
    image = _flatten(_to_srgb8(image, header), options.background)
    save = _encoders[options.effort].save_options(options.quality, grey=header.bands < 3)
    encoded = image.jpegsave_buffer(**save)
    width, height = image.width, image.height
    if _meets_policy(header):
        original = jpegfile.without_metadata(data, at_most=len(encoded))
        if original is not None:
            return Compressed(original, width, height, kept_original=True)
    return Compressed(data=bytes(encoded), width=width, height=height)


def _meets_policy(header: _Header) -> bool:
    """An input that is already what the policy makes, so its own bytes may stand: a JPEG,
    upright, 8-bit sRGB, three bands. (`jpegfile` then checks that it is a plain JPEG.)"""
    if header.loader not in ("jpegload_buffer", "uhdrload_buffer"):
        return False
    return header.srgb8 and header.bands == 3 and header.orientation == 1


def _is_srgb_profile(profile: bytes) -> bool:
    """An ICC profile that says it is sRGB ("sRGB IEC61966-2.1", "sRGB built-in", libvips'
    "sRGB"): without it, the picture means the same. A name is all a profile tells of itself."""
    try:
        description = _icc_description(profile)
    except (struct.error, UnicodeDecodeError):
        return False
    return description is not None and "srgb" in description.lower()


def _icc_description(profile: bytes) -> str | None:
    if len(profile) < 132 or profile[36:40] != b"acsp" or profile[16:20] != b"RGB ":
        return None
    (count,) = struct.unpack_from(">I", profile, 128)
    for index in range(min(count, 64)):
        signature, offset, size = struct.unpack_from(">4sII", profile, 132 + 12 * index)
        if signature != b"desc":
            continue
        body = profile[offset : offset + size]
        if body[:4] == b"desc":  # ICC v2 textDescriptionType: a count, then ASCII
            (length,) = struct.unpack_from(">I", body, 8)
            return body[12 : 12 + length].split(b"\0")[0].decode("latin-1")
        if body[:4] == b"mluc":  # ICC v4: records of UTF-16; the first will do
            (records,) = struct.unpack_from(">I", body, 8)
            if records < 1:
                return None
            length, start = struct.unpack_from(">II", body, 20)
            return body[start : start + length].decode("utf-16-be")
        return None
    return None


def _refuse_known_unsupported(data: bytes) -> None:
    """Name SVG and PDF: their loaders are blocked, so libvips alone would say "not an image"."""
    head = data[:_SNIFF_BYTES]
    if head.startswith(b"%PDF-"):
        raise CodecError("unsupported_format", "PDF documents are not supported")
    text = head.removeprefix(_UTF8_BOM).lstrip()
    if text.startswith(b"<") and b"<svg" in text.lower():
        raise CodecError("unsupported_format", "SVG images are not supported")


def _open(data: bytes, **options: Any) -> Any:
    # fail_on="truncated": a cut-off download must be an error, not a grey-filled picture.
    return pyvips.Image.new_from_buffer(data, "", fail_on="truncated", **options)


def _open_header(data: bytes) -> Any:
    """Sniff the format and read the header only; sequential access decodes nothing yet."""
    if not data:
        raise CodecError("not_an_image", "the file is empty")
    try:
        return _open(data, access="sequential")
    except pyvips.Error as error:
        if error.message == _NO_LOADER_MESSAGE:
            raise _unrecognised(data) from None
        # A loader claimed the bytes but could not read their header.
        raise CodecError("corrupt_image", f"cannot read the header: {_detail(error)}") from error


def _unrecognised(data: bytes) -> CodecError:
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return CodecError("corrupt_image", f"starts like a {kind} file but cannot be read")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return CodecError("corrupt_image", "starts like a WebP file but cannot be read")
    return CodecError("not_an_image", "the bytes are not in any known image format")


def _check_loader(loader: str) -> None:
    if loader not in _ALLOWED_LOADERS:
        kind = loader.removesuffix("_buffer").removesuffix("load")
        raise CodecError("unsupported_format", f"{kind} images are not supported")


def _check_pixels(header: _Header, max_pixels: int) -> None:
    # The loader opened only the first frame, so this is one frame's size: all we decode.
    width, height = header.width, header.height
    if width * height > max_pixels:
        raise CodecError(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
            f"the limit is {max_pixels / 1e6:.1f}",
        )


def _upright(data: bytes) -> Any:
    """The image turned as its EXIF orientation says; the result carries no orientation tag."""
    # A 90/270 rotation reads columns, which sequential access cannot do: reopen the (already
    # vetted) bytes with random access.
    return _open(data).autorot()


def _to_srgb8(image: Any, header: _Header) -> Any:
    """8-bit sRGB, three bands plus alpha if there was one."""
    if header.srgb8:
        return image  # most photos, those with an sRGB profile too: nothing to convert
    if header.icc_profile is not None:
        # An unreadable profile, or one for another colour space, does not fail: libvips falls
        # back on its default profile for the image's interpretation.
        image = image.icc_transform("srgb", embedded=True, depth=8)
    # Handles CMYK without a profile (built-in CMYK profile), 16-bit, greyscale, Lab.
    image = image.colourspace("srgb")
    if image.format != "uchar":
        image = image.cast("uchar")
    return image


def _flatten(image: Any, background: tuple[int, int, int]) -> Any:
    if image.hasalpha():
        image = image.flatten(background=list(background))
    if image.bands > 3:  # stray extra bands (e.g. a TIFF's extra samples) carry no colour
        image = image.extract_band(0, n=3)
    if image.format != "uchar":
        image = image.cast("uchar")
    return image


def _detail(error: pyvips.Error) -> str:
    # libvips' own explanation, e.g. "VipsJpeg: premature end of JPEG image", for people only:
    # its error buffer is shared by all threads, so under load it may hold another image's
    # words. Codes never depend on it. The last entry is the root cause; earlier ones can be a
    # long trail of retries (libheif's "bad seek" lines).
    # An indented line continues the message before it (libheif's "\n (2.100)").
    entries: list[str] = []
    for line in str(error.detail or "").splitlines():
        if line[:1].isspace() and entries:
            entries[-1] = f"{entries[-1]} {line.strip()}"
        elif line.strip():
            entries.append(line.strip())
    return (entries[-1] if entries else str(error.message))[:_MAX_DETAIL]
