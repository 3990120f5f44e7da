"""Variants: the named outputs made of each image (a box, a fit, a format); parsing and
checking their spec, in text or JSON; no I/O.

    zoom=2000:jpeg, listing=800:avif, thumb=200x200:pad:webp:q60:max

A name, `=`, then colon-separated parts in any order: a box (`N` bounds both sides, `Wx`
the width, `xH` the height, `WxH` both), a fit (`inside`, the default, or `pad`), a format
(`jpeg`, the default, `webp` or `avif`), a quality `qN`, an effort (`balanced` or `max`) and
a byte cap (`150kb`, `2mb`, `80000b`: decimal units); the request's quality and effort where
none is given. The JSON form is a list of objects with the keys `name`, `width`, `height`,
`fit`, `format`, `quality`, `effort` and `max_bytes` (or one such object alone).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from imgcrunch.imaging import bytecap, formats
from imgcrunch.imaging.effort import Effort
from imgcrunch.imaging.formats import Format

MAX_VARIANTS = 8
MAX_SPEC_LENGTH = 1000
_PART = (
    r"(?:[1-9][0-9]{0,4}(?:x(?:[1-9][0-9]{0,4})?)?|x[1-9][0-9]{0,4}|inside|pad|jpeg|webp|avif"
    r"|q(?:100|[1-9][0-9]?)|balanced|max|[1-9][0-9]{0,9}(?:b|kb|mb))"
)
_VARIANT = rf"[a-z][a-z0-9_-]{{0,31}}={_PART}(?::{_PART}){{0,6}}"
# The text form's syntax, for the OpenAPI document: what the parser reads (in lower case; it
# also takes upper case and more spaces), or a JSON form. The rules a pattern cannot state
# (names given twice, a box over the pixel limit, `pad` without both sides) are the parser's.
PATTERN = rf"^(?:{_VARIANT}(?:, ?{_VARIANT}){{0,{MAX_VARIANTS - 1}}}|[\[{{].*)$"
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_BOX = re.compile(r"(?P<width>\d+)?(?P<x>x)?(?P<height>\d+)?")
_QUALITY = re.compile(r"q(?P<quality>\d+)")
_BYTES = re.compile(r"(?P<count>\d+)(?P<unit>b|kb|mb)")
_UNITS = {"b": 1, "kb": 1000, "mb": 1_000_000}
# Their columns (Input Image Urls, Output Image Urls) are the output CSV's own.
_TAKEN_NAMES = frozenset({"input", "output"})


class Fit(enum.StrEnum):
    INSIDE = "inside"  # the whole picture inside the box, never enlarged
    PAD = "pad"  # inside, then centred on the background to exactly the box (square tiles)


class VariantsError(ValueError):
    """A spec that cannot be made: `part` is the text at fault, `reason` why."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(f"{part}: {reason}" if part else reason)
        self.part = part
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    name: str
    width: int | None = None  # the box; None: that side is not bounded
    height: int | None = None
    fit: Fit = Fit.INSIDE
    format: Format = Format.JPEG
    quality: int | None = None  # None: the request's
    effort: Effort | None = None
    max_bytes: int | None = None  # its file at most this: quality lowered, then size, to fit

    @property
    def column(self) -> str:
        """Its column in the output CSV, when it is not the first variant."""
        return f"{self.name.capitalize()} Image Urls"

    @property
    def extension(self) -> str:
        return formats.extension(self.format)

    def spec(self) -> str:
        """The text form, which parses back to this variant."""
        parts = [_box_text(self.width, self.height)] if self.bounded else []
        parts += [self.fit.value, self.format.value]
        if self.quality is not None:
            parts.append(f"q{self.quality}")
        if self.effort is not None:
            parts.append(self.effort.value)
        if self.max_bytes is not None:
            parts.append(_bytes_text(self.max_bytes))
        return f"{self.name}={':'.join(parts)}"

    @property
    def bounded(self) -> bool:
        return self.width is not None or self.height is not None

    def to_json(self) -> dict[str, Any]:
        stored = {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "fit": self.fit.value,
            "format": self.format.value,
            "quality": self.quality,
            "effort": self.effort.value if self.effort else None,
        }
        # Only where given: the variants stored before byte caps stay what they were.
        if self.max_bytes is not None:
            stored["max_bytes"] = self.max_bytes
        return stored


# No variants given: what imgcrunch has always made, one JPEG at the original size.
DEFAULT: tuple[Variant, ...] = (Variant(name="output"),)


def parse(text: str | None, *, max_pixels: int) -> tuple[Variant, ...]:
    """The variants a spec asks for, in its order; DEFAULT for none. Raises VariantsError."""
    text = (text or "").strip()
    if not text:
        return DEFAULT
    if len(text) > MAX_SPEC_LENGTH:
        raise VariantsError("", f"the spec is over {MAX_SPEC_LENGTH} characters")
    if text.startswith(("[", "{")):
        variants = _from_json(text, max_pixels=max_pixels)
    else:
        variants = [_from_text(part.strip(), max_pixels) for part in text.split(",")]
    return _checked(variants)


def led_by(first: Variant, variants: tuple[Variant, ...]) -> tuple[Variant, ...]:
    """`first` (a marketplace profile's), then `variants` (none for the default one).
    Raises VariantsError, as `parse` does, for names given twice or too many variants."""
    rest = () if variants == DEFAULT else variants
    for variant in rest:
        if variant.name == first.name:
            raise VariantsError(
                variant.name,
                f"the profile makes the first variant, {first.name!r} ('Output Image Urls'): "
                "give this one another name",
            )
    return _checked([first, *rest])


def from_json(stored: Iterable[dict[str, Any]] | None) -> tuple[Variant, ...]:
    """Variants as `to_json` stored them (already checked when they were accepted)."""
    if not stored:
        return DEFAULT
    return tuple(_variant_from_object(item, str(item["name"]), max_pixels=None) for item in stored)


def to_json(variants: tuple[Variant, ...]) -> list[dict[str, Any]] | None:
    """What is stored: None for the default, so that a plain request stays what it was."""
    return None if variants == DEFAULT else [variant.to_json() for variant in variants]


def _checked(variants: list[Variant]) -> tuple[Variant, ...]:
    if len(variants) > MAX_VARIANTS:
        raise VariantsError("", f"{len(variants)} variants; at most {MAX_VARIANTS} are made")
    seen: set[str] = set()
    for index, variant in enumerate(variants):
        if variant.name in seen:
            raise VariantsError(variant.name, "this name is given twice")
        seen.add(variant.name)
        if index and variant.name in _TAKEN_NAMES:
            raise VariantsError(
                variant.name, f"its column, {variant.column!r}, is one of the output's own"
            )
    return tuple(variants)


def _from_text(part: str, max_pixels: int) -> Variant:
    if not part:
        raise VariantsError(part, "an empty variant (two commas, or one at the end)")
    name, equals, rest = part.partition("=")
    name = name.strip().lower()
    if not equals:
        raise VariantsError(part, "a variant is a name, '=', then its parts, as zoom=2000:jpeg")
    _check_name(name, part)
    fields: dict[str, Any] = {}
    for piece in (p.strip().lower() for p in rest.split(":")):
        key, value = _read_piece(piece, part)
        if key in fields:
            raise VariantsError(part, f"{piece!r}: gives its {key} a second time")
        fields[key] = value
    box = fields.pop("box", (None, None))
    return _variant(name, width=box[0], height=box[1], max_pixels=max_pixels, part=part, **fields)


def _read_piece(piece: str, part: str) -> tuple[str, Any]:
    if not piece:
        raise VariantsError(part, "an empty part (two colons, or one at the end)")
    if piece in Fit.__members__.values():
        return "fit", Fit(piece)
    if piece in Format.__members__.values():
        return "format", Format(piece)
    if piece in Effort.__members__.values():
        return "effort", Effort(piece)
    if quality := _QUALITY.fullmatch(piece):
        return "quality", int(quality["quality"])
    if count := _BYTES.fullmatch(piece):
        return "max_bytes", int(count["count"]) * _UNITS[count["unit"]]
    box = _BOX.fullmatch(piece)
    if box and (box["width"] or box["height"]) and (box["x"] or not box["height"]):
        width = int(box["width"]) if box["width"] else None
        height = int(box["height"]) if box["height"] else None
        if not box["x"]:  # a bare N bounds both sides: the longest one is N
            height = width
        return "box", (width, height)
    raise VariantsError(
        part,
        f"{piece!r} is none of a box (800, 800x600, 800x, x600), a fit (inside, pad), "
        f"a format (jpeg, webp, avif), a quality (q1..q100), an effort (balanced, max) "
        f"or a byte cap (150kb, 2mb)",
    )


def _from_json(text: str, *, max_pixels: int) -> list[Variant]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise VariantsError("", f"not valid JSON: {error}") from None
    if isinstance(items, dict):
        items = [items]  # one variant, written alone
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise VariantsError("", "the JSON form is a list of objects")
    if len(items) > MAX_VARIANTS:
        raise VariantsError("", f"{len(items)} variants; at most {MAX_VARIANTS} are made")
    variants = []
    for index, item in enumerate(items):
        name = item.get("name")
        label = name if isinstance(name, str) and name else f"variant {index + 1}"
        variants.append(_variant_from_object(item, label, max_pixels=max_pixels))
    return variants


_KEYS = frozenset({"name", "width", "height", "fit", "format", "quality", "effort", "max_bytes"})


def _variant_from_object(item: dict[str, Any], label: str, *, max_pixels: int | None) -> Variant:
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        raise VariantsError(label, f"unknown key {unknown[0]!r}; known: {', '.join(sorted(_KEYS))}")
    name = item.get("name")
    if not isinstance(name, str):
        raise VariantsError(label, "'name' is required, a string")
    _check_name(name, label)
    fields: dict[str, Any] = {}
    for key, kind in (("fit", Fit), ("format", Format), ("effort", Effort)):
        value = item.get(key)
        if value is None:
            continue
        if value not in kind.__members__.values():
            known = ", ".join(kind.__members__.values())
            raise VariantsError(label, f"{key} {value!r} is unknown; one of {known}")
        fields[key] = kind(value)
    for key in ("width", "height", "quality", "max_bytes"):
        value = item.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise VariantsError(label, f"{key} must be a whole number, not {value!r}")
    return _variant(
        name,
        width=item.get("width"),
        height=item.get("height"),
        quality=item.get("quality"),
        max_bytes=item.get("max_bytes"),
        max_pixels=max_pixels,
        part=label,
        **fields,
    )


def _check_name(name: str, part: str) -> None:
    if not _NAME.fullmatch(name):
        raise VariantsError(
            part,
            f"the name {name!r} must start with a letter and hold only letters, digits, "
            "'-' and '_' (32 at most)",
        )


def _variant(
    name: str,
    *,
    width: int | None,
    height: int | None,
    max_pixels: int | None,
    part: str,
    fit: Fit = Fit.INSIDE,
    format: Format = Format.JPEG,
    quality: int | None = None,
    effort: Effort | None = None,
    max_bytes: int | None = None,
) -> Variant:
    for side in (width, height):
        if side is not None and side < 1:
            raise VariantsError(part, f"box {_box_text(width, height)}: a side of 0 makes no image")
        if side is not None and side > formats.max_side(format):
            raise VariantsError(
                part,
                f"box {_box_text(width, height)}: {format.value} images are at most "
                f"{formats.max_side(format)} pixels a side",
            )
    if max_pixels is not None and width and height and width * height > max_pixels:
        raise VariantsError(
            part,
            f"box {_box_text(width, height)} is {width * height / 1e6:.1f} megapixels; "
            f"the limit is {max_pixels / 1e6:.1f}",
        )
    if fit is Fit.PAD and (width is None or height is None):
        raise VariantsError(part, "pad makes exactly the box, so it needs both sides (WxH, or N)")
    if quality is not None and not 1 <= quality <= 100:
        raise VariantsError(part, f"quality {quality} is not within 1..100")
    if max_bytes is not None and max_bytes < bytecap.MIN_BYTES:
        raise VariantsError(
            part,
            f"a cap of {max_bytes} bytes is under the least any image takes, {bytecap.MIN_BYTES}",
        )
    return Variant(
        name=name,
        width=width,
        height=height,
        fit=fit,
        format=format,
        quality=quality,
        effort=effort,
        max_bytes=max_bytes,
    )


def _bytes_text(count: int) -> str:
    for unit in ("mb", "kb"):
        if count % _UNITS[unit] == 0:
            return f"{count // _UNITS[unit]}{unit}"
    return f"{count}b"


def _box_text(width: int | None, height: int | None) -> str:
    return f"{'' if width is None else width}x{'' if height is None else height}"
