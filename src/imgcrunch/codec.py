"""Bytes in, compressed JPEG bytes out, with the image policy of DESIGN.md; no I/O.

Called from a thread pool, one image per thread: libvips is thread-safe and releases the GIL
while it works, so the only shared state here is the one-time process set-up in `configure`.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Any

import pyvips

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


@dataclass(frozen=True, slots=True, kw_only=True)
class CodecOptions:
    quality: int = 50
    max_pixels: int = 50_000_000
    background: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        # A bad option is the caller's bug, not the image's: fail loudly, not as a CodecError.
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be 1..100, not {self.quality}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, not {self.max_pixels}")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"background must be three values 0..255, not {self.background}")


@dataclass(frozen=True, slots=True)
class Compressed:
    data: bytes
    width: int
    height: int
    media_type: str = "image/jpeg"
    extension: str = "jpg"


class CodecError(Exception):
    """Why an image was refused. `code` is stable for machines, `message` is for people."""

    code: str  # "not_an_image" | "unsupported_format" | "corrupt_image" | "too_many_pixels"
    message: str

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


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
        _configured = True


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


def _compress(data: bytes, options: CodecOptions) -> Compressed:
    _refuse_known_unsupported(data)
    image = _open_header(data)
    _check_loader(image)
    _check_pixels(image, options.max_pixels)
    image = _upright(image, data)
    image = _flatten(_to_srgb8(image), options.background)
    encoded = image.jpegsave_buffer(
        Q=options.quality,
        optimize_coding=True,
        subsample_mode="on",  # 4:2:0 whatever the quality
        keep="none",  # no EXIF, ICC, XMP, IPTC: the pixels are upright sRGB already
        interlace=False,
    )
    return Compressed(data=bytes(encoded), width=image.width, height=image.height)


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


def _check_loader(image: Any) -> None:
    loader = str(image.get("vips-loader"))
    if loader not in _ALLOWED_LOADERS:
        kind = loader.removesuffix("_buffer").removesuffix("load")
        raise CodecError("unsupported_format", f"{kind} images are not supported")


def _check_pixels(image: Any, max_pixels: int) -> None:
    # The loader opened only the first frame, so this is one frame's size: all we decode.
    width, height = image.width, image.height
    if width * height > max_pixels:
        raise CodecError(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
            f"the limit is {max_pixels / 1e6:.1f}",
        )


def _upright(image: Any, data: bytes) -> Any:
    """Apply the EXIF orientation; the result carries no orientation tag."""
    if image.get_typeof("orientation") and image.get("orientation") != 1:
        # A 90/270 rotation reads columns, which sequential access cannot do: reopen the
        # (already vetted) bytes with random access.
        image = _open(data)
    return image.autorot()


def _to_srgb8(image: Any) -> Any:
    """8-bit sRGB, three bands plus alpha if there was one."""
    if image.get_typeof("icc-profile-data"):
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
