"""Bytes in, one compressed image per variant out, with the image policy of DESIGN.md; no I/O.

Called by codec_pool's workers (processes, or threads), one image at a time each: libvips is
thread-safe and releases the GIL while it works, so the only shared state here is the one-time
process set-up in `configure`.

The image is decoded once, at the smallest scale the largest variant allows (JPEG's
shrink-on-load), and each variant is resized from that, turned upright, padded and encoded by
its format's module in `imgcrunch.imaging`. `quality` means what it means to libjpeg users,
in every format: the look of standard libjpeg quality N (each encoder's calibration).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import struct
import threading
from dataclasses import dataclass, replace
from typing import Any

import pyvips

from imgcrunch import jpegfile
from imgcrunch.imaging import bytecap, conform, findings, formats, jpeg, sizing
from imgcrunch.imaging import variants as variant_specs
from imgcrunch.imaging.effort import Effort
from imgcrunch.imaging.findings import Finding
from imgcrunch.imaging.formats import Format
from imgcrunch.imaging.profiles import WHITE, Profile
from imgcrunch.imaging.variants import DEFAULT, Fit, Variant

__all__ = [
    "CodecError",
    "CodecOptions",
    "Compressed",
    "Effort",
    "EncoderError",
    "Finding",
    "compress",
    "configure",
    "make_variants",
    "spec_digest",
]

log = logging.getLogger(__name__)


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
    effort: Effort = Effort.BALANCED
    max_pixels: int = 50_000_000
    background: tuple[int, int, int] = (255, 255, 255)
    variants: tuple[Variant, ...] = DEFAULT
    # A marketplace's rules for the first variant (profiles.Profile), which it then makes.
    profile: Profile | None = None

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
        if not self.variants:
            raise ValueError("at least one variant is made")


@dataclass(frozen=True, slots=True)
class Compressed:
    data: bytes
    width: int
    height: int
    # The input JPEG's own picture, without its metadata: re-encoding would not have been smaller.
    kept_original: bool = False
    extension: str = jpeg.EXTENSION
    quality: int | None = None  # what it was encoded at: under the asked one to meet a cap
    # What the profile's rules found that could not be fixed (the first variant's only).
    findings: tuple[Finding, ...] = ()


class EncoderError(Exception):
    """An encoder failed on pixels already decoded: a fault of ours, not the image's, so it
    is tried again as any bug of ours is, not recorded as the image's failure."""


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
        jpeg.configure()
        _configured = True


def _reuse_freed_memory() -> None:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl...): nothing to tune
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


# Raised when the codec would make other bytes of the same image with the same options: a
# change of policy (orientation, colour, padding, keeping originals). The encoders' settings
# and calibration tables, and libvips' version, are in `spec_digest` by themselves.
POLICY_VERSION = 1


def spec_digest(options: CodecOptions) -> str:
    """What these options make of an image, with this codec, as a SHA-256: equal digests make
    equal outputs of equal bytes, so the outputs may be reused (the source cache's key)."""
    described = {
        "codec": _codec_described(),
        "quality": options.quality,
        "effort": options.effort.value,
        "max_pixels": options.max_pixels,
        "background": list(options.background),
        "variants": variant_specs.to_json(options.variants),
    }
    if options.profile is not None:  # a key only where given: digests made before stay
        described["profile"] = repr(options.profile)  # its rules, each figure
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


@functools.cache
def _codec_described() -> dict[str, Any]:
    if not _configured:
        jpeg.configure()  # which JPEG encoders run depends on the libjpeg found
    return {
        "policy": POLICY_VERSION,
        "libvips": [pyvips.version(n) for n in range(3)],
        "encoders": {
            f"{fmt.value} {effort.value}": repr(formats.encoder(fmt, effort))
            for fmt in Format
            for effort in Effort
        },
    }


def compress(data: bytes, options: CodecOptions = CodecOptions()) -> Compressed:
    """The first variant alone (by default, the one JPEG at the original size)."""
    return make_variants(data, replace(options, variants=options.variants[:1]))[0]


def make_variants(data: bytes, options: CodecOptions = CodecOptions()) -> tuple[Compressed, ...]:
    """Apply the image policy to `data` and make each variant, in order. Raises CodecError for
    a bad image (once, whatever the variants), EncoderError for a fault of ours."""
    if not _configured:
        configure()
    try:
        return _make(data, options)
    except (CodecError, EncoderError):
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

    @property
    def swaps_axes(self) -> bool:
        """Orientations 5 to 8 turn the picture a quarter: its upright width is its height."""
        return self.orientation >= 5

    @property
    def upright_size(self) -> tuple[int, int]:
        return (self.height, self.width) if self.swaps_axes else (self.width, self.height)


@dataclass(frozen=True, slots=True)
class _Planned:
    """A variant and the size of its picture, upright, before any padding."""

    variant: Variant
    width: int
    height: int

    def stored_size(self, header: _Header) -> tuple[int, int]:
        """Its size before it is turned upright (resizing comes first)."""
        return (self.height, self.width) if header.swaps_axes else (self.width, self.height)


# libvips' resize shrinks by whole factors with a box filter while more than `gap` times the
# target remains, then resamples the rest with lanczos3. Its default leaves up to 2x to lanczos
# (sharper, and dearer). Where the picture was decoded smaller already (shrink-on-load), that
# is what's left; where several variants share one full-size decode, a box to within 1x of
# each keeps the cascade cheap (bench/throughput.py --variants-only).
_GAP = 2.0
_CASCADE_GAP = 1.0


def _make(data: bytes, options: CodecOptions) -> tuple[Compressed, ...]:
    _refuse_known_unsupported(data)
    image = _open_header(data)
    header = _Header.of(image)
    _check_loader(header.loader)
    _check_pixels(header, options.max_pixels)
    plans = [_plan(header, variant) for variant in options.variants]
    if options.profile is not None:
        plans[0] = _plan_profiled(header, plans[0].variant, options.profile)
    decoded = _to_srgb8(_decode(data, image, header, plans), header)
    two_backgrounds = options.profile is not None and options.background != WHITE
    if two_backgrounds and decoded.hasalpha():
        decoded = decoded.copy_memory()  # flattened twice: read twice
    base = _flatten(decoded, options.background)
    if options.profile is None and len(plans) == 1:
        resized = _resized(base, plans[0].stored_size(header))
        return (_encode(data, resized, header, plans[0], options),)
    # Decoded once for all; a pixel error surfaces here, as the image's, not a variant's.
    base = base.copy_memory()
    if options.profile is None:
        return _cascade(data, base, header, plans, options)
    # Flattened onto white, as every marketplace asks, whatever the other variants' background.
    white = _flatten(decoded, WHITE).copy_memory() if two_backgrounds else base
    first = _profiled(data, white, header, plans[0], options.profile, options)
    return (first, *(_cascade(data, base, header, plans[1:], options) if plans[1:] else ()))


def _cascade(
    data: bytes, base: Any, header: _Header, plans: list[_Planned], options: CodecOptions
) -> tuple[Compressed, ...]:
    """Every variant from one decode, largest first, each resized from the smallest picture
    already made that is at least its size: a thumbnail comes from the listing image, not
    from the full-size one, for a sixteenth of the pixels to read."""
    sources = [base]
    made: dict[int, Compressed] = {}
    order = sorted(range(len(plans)), key=lambda i: -plans[i].width * plans[i].height)
    for index in order:
        plan = plans[index]
        size = plan.stored_size(header)
        source = min(
            (s for s in sources if s.width >= size[0] and s.height >= size[1]),
            key=lambda s: s.width * s.height,
        )
        resized = _resized(source, size, gap=_CASCADE_GAP)
        if resized is not source and index != order[-1]:  # the smallest serves no other
            resized = resized.copy_memory()
            sources.append(resized)
        try:
            made[index] = _encode(data, resized, header, plan, options)
        except pyvips.Error as error:
            raise EncoderError(f"{plan.variant.name}: {_detail(error)}") from error
    return tuple(made[index] for index in range(len(plans)))


def _plan(header: _Header, variant: Variant) -> _Planned:
    width, height = header.upright_size
    fitted = sizing.fit_inside(width, height, (variant.width, variant.height))
    side = formats.max_side(variant.format)
    if max(fitted) > side:
        raise CodecError(
            "too_many_pixels",
            f"image is {fitted[0]}x{fitted[1]}; {variant.format.value} images are at most "
            f"{side} pixels a side (variant {variant.name})",
        )
    return _Planned(variant, *fitted)


def _plan_profiled(header: _Header, variant: Variant, profile: Profile) -> _Planned:
    """What the profile's variant needs decoded: the picture within the profile's maximums,
    or whole where the product may be cropped out of it (a crop needs the full detail)."""
    width, height = header.upright_size
    if profile.min_fill is not None:
        return _Planned(variant, width, height)
    scale = profile.cap_scale(width, height)
    if scale >= 1.0:
        return _Planned(variant, width, height)
    return _Planned(variant, max(1, int(width * scale)), max(1, int(height * scale)))


def _profiled(
    data: bytes, base: Any, header: _Header, plan: _Planned, profile: Profile, options: CodecOptions
) -> Compressed:
    """The marketplace's image: made to its rules, encoded under its cap, and what could not
    be fixed, found."""
    variant = plan.variant
    upright = base.autorot() if header.orientation != 1 else base
    made = conform.conform(upright, profile)
    caps = [cap for cap in (variant.max_bytes, profile.max_bytes) if cap is not None]
    capped = replace(variant, max_bytes=min(caps)) if caps else variant
    try:
        encoded, quality, image = _saved(made.image, header, capped, options)
    except pyvips.Error as error:
        raise EncoderError(f"{variant.name}: {_detail(error)}") from error
    width, height = image.width, image.height
    found = [*made.findings, *findings.size_findings(profile, width, height)]
    unchanged = not made.changed and image is made.image and header.orientation == 1
    if unchanged and _may_keep(header, variant, (width, height)):
        original = jpegfile.without_metadata(data, at_most=len(encoded))
        if original is not None:
            return Compressed(original, width, height, kept_original=True, findings=tuple(found))
    return Compressed(
        encoded,
        width,
        height,
        extension=variant.extension,
        quality=quality,
        findings=tuple(found),
    )


def _saved(
    image: Any, header: _Header, variant: Variant, options: CodecOptions
) -> tuple[bytes, int, Any]:
    """The picture encoded as the variant asks, and the quality and picture it took: under a
    byte cap, the highest quality that fits, and where none does, a smaller picture."""
    quality = variant.quality or options.quality
    encoder = formats.encoder(variant.format, variant.effort or options.effort)
    grey = header.bands < 3
    if variant.max_bytes is None:
        return encoder.save(image, quality, grey=grey), quality, image
    fitted = bytecap.encode_within(
        lambda picture, q: encoder.save(picture, q, grey=grey), image, quality, variant.max_bytes
    )
    return fitted.data, fitted.quality, fitted.image


def _decode(data: bytes, image: Any, header: _Header, plans: list[_Planned]) -> Any:
    """The picture at the smallest scale that still serves the largest variant: JPEG and WebP
    scale while they decode, which skips most of the work for a thumbnail."""
    width, height = header.width, header.height
    largest = max(plans, key=lambda plan: plan.width * plan.height)
    target = (largest.width, largest.height)
    if header.swaps_axes:
        target = target[::-1]
    if header.loader == "jpegload_buffer":
        shrink = sizing.jpeg_shrink(width, height, target)
        if shrink > 1:
            return _open(data, access="sequential", shrink=shrink)
    elif header.loader == "webpload_buffer" and target != (width, height):
        scale = max(target[0] / width, target[1] / height)
        return _open(data, access="sequential", scale=scale)
    return image


def _encode(
    data: bytes, image: Any, header: _Header, plan: _Planned, options: CodecOptions
) -> Compressed:
    """A picture already at the variant's size (as stored), turned, padded and encoded."""
    variant = plan.variant
    if header.orientation != 1:
        # Turned after the resize, on the small picture: reading columns needs it in memory.
        image = image.copy_memory().autorot()
    if variant.fit is Fit.PAD:
        assert variant.width is not None
        assert variant.height is not None
        image = image.gravity(
            "centre",
            variant.width,
            variant.height,
            extend="background",
            background=list(options.background),
        )
    encoded, quality, picture = _saved(image, header, variant, options)
    width, height = picture.width, picture.height
    if picture is image and _may_keep(header, variant, (width, height)):
        original = jpegfile.without_metadata(data, at_most=len(encoded))
        if original is not None:
            return Compressed(original, width, height, kept_original=True)
    return Compressed(encoded, width, height, extension=variant.extension, quality=quality)


def _resized(image: Any, size: tuple[int, int], *, gap: float = _GAP) -> Any:
    if (image.width, image.height) == size:
        return image
    return image.resize(size[0] / image.width, vscale=size[1] / image.height, gap=gap)


def _may_keep(header: _Header, variant: Variant, size: tuple[int, int]) -> bool:
    """The input's own bytes may stand for a JPEG variant it already is: same size (nothing
    resized or padded), and what the policy makes."""
    same_size = size == (header.width, header.height)
    return variant.format is Format.JPEG and same_size and _meets_policy(header)


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
