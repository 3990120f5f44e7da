"""A picture made to a marketplace profile's rules, where they can be met: background lifted to
pure white, the product cropped to fill the frame, padded square, brought within the maximums;
and findings for the rules it cannot meet. Pixels only (libvips), no I/O, no encoding: the
codec encodes what comes out, under the profile's byte cap.

Takes the upright picture, 8-bit sRGB, three bands, flattened onto white, in memory (it is
read more than once).
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import pyvips

from imgcrunch.imaging import findings, framing
from imgcrunch.imaging.findings import Finding
from imgcrunch.imaging.framing import Box
from imgcrunch.imaging.profiles import WHITE, Profile

# The border: the outer 1% of the picture's shorter side, at least 2 px.
_BORDER_SHARE = 0.01
# White, through JPEG's noise: the border's median colour is 253 or over in each channel.
# (The median: a product may touch the frame's edge.) Only its noise is lifted (see _FAR).
_WHITE_FLOOR = 253
# Near white, and so lifted to white: a median colour of 210 or over in each channel, with
# three quarters of the border within 24 of it (a plain light sweep, not a scene).
_NEAR_WHITE_FLOOR = 210
_NEAR = 24
_NEAR_SHARE = 0.75
# Lifting: background pixels within _NEAR of the background's colour become white; from there
# to _FAR they blend into their own colour; the product, further off, is untouched. Only the
# background joined to the frame's edge is lifted, not light parts inside the product. A white
# background's JPEG noise (a few levels under 255) is lifted the same way: within 10 of white,
# without a blend (a third of the cost).
_FAR = 64
_WHITE_NEAR = _WHITE_FAR = 10
# The product: what differs from white by more than this (find_trim's threshold), after a
# median filter that ignores JPEG's speckle.
_PRODUCT_THRESHOLD = 24
# JPEG's ringing round an edge reaches across its block: 16 px with 4:2:0 chroma. A product
# nearer the frame's edge than the border and this would leave the border not quite white.
_RINGING = 16


@dataclass(slots=True)
class Conformed:
    image: Any
    findings: list[Finding] = field(default_factory=list)
    changed: bool = False  # the pixels or the size are not the input's


@dataclass(frozen=True, slots=True)
class Border:
    colour: tuple[int, int, int]  # the median of each channel
    white: bool
    near_white: bool


def conform(image: Any, profile: Profile) -> Conformed:
    """`image` made to `profile`'s rules, as far as they can be met without enlarging."""
    made = Conformed(image)
    background = WHITE
    if profile.white_background:
        background = _white_background(made, profile)
    if profile.square and made.image.width != made.image.height:
        side, _ = framing.square(made.image.width, made.image.height)
        made.image = made.image.gravity(
            "centre", side, side, extend="background", background=list(background)
        )
        made.changed = True
    scale = profile.cap_scale(made.image.width, made.image.height)
    if scale < 1.0:
        made.image = made.image.resize(scale)
        made.changed = True
    return made


def border(image: Any) -> Border:
    """The colour of the picture's outer ring, and whether it is white or nearly."""
    ring = _ring_strip(image)
    colour = _median_colour(ring)
    if min(colour) >= _WHITE_FLOOR:
        return Border(colour, white=True, near_white=True)
    near = ((ring - list(colour)).abs() <= _NEAR).bandand().avg() / 255
    return Border(
        colour, white=False, near_white=min(colour) >= _NEAR_WHITE_FLOOR and near >= _NEAR_SHARE
    )


def product_box(farthest: Any) -> Box | None:
    """The bounding box of what is not the background, from each pixel's distance from it
    (`_farthest`); None for a blank picture. A row or column counts only with two such pixels:
    JPEG's speckle is not a product. (libvips' find_trim, with its median filter, took 250 ms
    on a 2100 px product shot, six times its decode and encode.)"""
    step = _step(farthest)  # every nth pixel of a large picture: a box to n pixels will do
    sampled = farthest.subsample(step, step) if step > 1 else farthest
    columns, rows = (sampled > _PRODUCT_THRESHOLD).project()
    across = _spans(columns.tolist()[0])
    down = _spans([row[0] for row in rows.tolist()])
    if across is None or down is None:
        return None
    left, top = across[0] * step, down[0] * step
    right = min(farthest.width, (across[1] + 1) * step)
    bottom = min(farthest.height, (down[1] + 1) * step)
    return Box(left, top, right - left, bottom - top)


def _spans(counts: list[float]) -> tuple[int, int] | None:
    """The first and last places where at least two pixels are product (255 each)."""
    marked = [index for index, count in enumerate(counts) if count >= 2 * 255]
    return (marked[0], marked[-1]) if marked else None


def _white_background(made: Conformed, profile: Profile) -> tuple[int, int, int]:
    """Crop to the product where it fills too little, lift a near-white background to pure
    white, and keep the product clear of the edge; the background the picture has after.
    (Cropped first: the lifting, the dearest part, then works on fewer pixels.)"""
    found = border(made.image)
    if not found.near_white:
        made.findings.append(findings.background_not_white(profile, found.colour))
        return found.colour
    farthest = _farthest(made.image, found.colour).copy_memory()
    product = product_box(farthest)
    if product is not None and profile.min_fill is not None:
        window = _fill_frame(made, profile, product)
        farthest = farthest.crop(window.left, window.top, window.width, window.height)
        left, top = product.left - window.left, product.top - window.top
        product = Box(left, top, product.width, product.height)
    near, far = (_WHITE_NEAR, _WHITE_FAR) if found.white else (_NEAR, _FAR)
    made.image = _lifted(made.image, farthest, near, far)
    made.changed = True
    if product is not None:
        _keep_clear(made, profile, product)
    return WHITE


def _lifted(image: Any, farthest: Any, near: int, far: int) -> Any:
    """Each pixel blended towards white by its distance from the background (`farthest`):
    wholly within `near`, not at all beyond `far`, a straight line between; where joined to
    the edge. In 8 bits throughout, by tables: a float pipeline cost three times as much."""
    if near == far:  # white where the mask is 255: a bitwise or, half an ifthenelse's cost
        return (image | _joined_to_edge(farthest <= near)).copy_memory()
    weight = farthest.maplut(_ramp(near, far)).copy_memory()
    weight = _joined_to_edge(weight > 0).ifthenelse(weight, 0)
    return weight.ifthenelse(list(WHITE), image, blend=True).copy_memory()


def _farthest(image: Any, colour: tuple[int, int, int]) -> Any:
    """Each pixel's distance from `colour`, in its farthest channel (8 bits)."""
    distance = image.maplut(_distances(colour))
    return distance[0].maxpair(distance[1]).maxpair(distance[2])


# Lookup tables of 8-bit values, kept: making one costs more than using it.
@functools.lru_cache(maxsize=64)
def _distances(colour: tuple[int, int, int]) -> Any:
    tables = [_table([abs(v - c) for v in range(256)]) for c in colour]
    return tables[0].bandjoin(tables[1:]).copy_memory()


@functools.cache
def _ramp(near: int, far: int) -> Any:
    return _table([round(255 * min(1.0, max(0.0, (far - v) / (far - near)))) for v in range(256)])


def _table(values: list[int]) -> Any:
    return pyvips.Image.new_from_list([values]).cast("uchar").copy_memory()


def _joined_to_edge(mask: Any) -> Any:
    """Of `mask` (255 or 0), the parts joined to the frame's edge at its corners or the middle
    of its sides: the background round a product, not the product's own light parts.

    Found on every 2nd (or nth) pixel where the picture is large: a flood costs a third of the
    lifting at full size, and a product's light part is walled off by more than a pixel."""
    width, height = mask.width, mask.height
    step = _step(mask)
    if step > 1:
        joined = _flooded(mask.subsample(step, step))
        return joined.zoom(step, step).embed(0, 0, width, height, extend="copy")
    return _flooded(mask)


def _step(image: Any) -> int:
    """The sampling step that brings a picture to at most _SAMPLED_SIDE a side."""
    return max(1, math.ceil(max(int(image.width), int(image.height)) / _SAMPLED_SIDE))


_SAMPLED_SIDE = 800


def _flooded(mask: Any) -> Any:
    mask = mask.copy_memory()
    right, bottom = mask.width - 1, mask.height - 1
    seeds = [(0, 0), (right, 0), (0, bottom), (right, bottom)]
    seeds += [(right // 2, 0), (right // 2, bottom), (0, bottom // 2), (right, bottom // 2)]
    for x, y in seeds:
        if mask(x, y)[0] == 255:
            mask = mask.draw_flood(_JOINED, x, y, equal=True)
    return mask == _JOINED


_JOINED = 128


def _fill_frame(made: Conformed, profile: Profile, product: Box) -> Box:
    """Crop round the product until it fills the frame as the profile asks, stopping at the
    profile's smallest size: a finding where that is not enough. The window kept."""
    assert profile.min_fill is not None
    image = made.image
    whole = Box(0, 0, image.width, image.height)
    if framing.fill(product, image.width, image.height) >= profile.min_fill:
        return whole
    window = framing.crop_to_fill(
        product, image.width, image.height, min_longest=profile.min_longest or 1
    )
    if (window.width, window.height) != (image.width, image.height):
        made.image = image.crop(window.left, window.top, window.width, window.height)
        made.changed = True
    measured = framing.fill(product, window.width, window.height)
    if measured < profile.min_fill:
        made.findings.append(findings.fill_low(profile, measured))
    return window


def _keep_clear(made: Conformed, profile: Profile, product: Box) -> None:
    """Widen the white round a product that comes nearer the frame's edge than the border and
    JPEG's ringing: the encoded border stays white."""
    image = made.image
    width, height = image.width, image.height
    scale = profile.cap_scale(width, height)
    clearance = _ring(width, height) + math.ceil(_RINGING / scale)
    left = max(0, clearance - product.left)
    top = max(0, clearance - product.top)
    right = max(0, clearance - (width - product.left - product.width))
    bottom = max(0, clearance - (height - product.top - product.height))
    if left or top or right or bottom:
        made.image = image.embed(
            left,
            top,
            width + left + right,
            height + top + bottom,
            extend="background",
            background=list(WHITE),
        )
        made.changed = True


def _ring(width: int, height: int) -> int:
    return max(2, math.ceil(min(width, height) * _BORDER_SHARE))


def _ring_strip(image: Any) -> Any:
    """The picture's border as one strip: its top, bottom and sides (turned) side by side, so
    that libvips reads it in one pass (each pass costs some 0.5 ms, whatever its size)."""
    width, height = image.width, image.height
    ring = _ring(width, height)
    if 2 * ring >= min(width, height):
        return image  # a picture this small is all border
    inner = height - 2 * ring
    left = image.crop(0, ring, ring, inner).rot90()
    right = image.crop(width - ring, ring, ring, inner).rot90()
    strip = image.crop(0, 0, width, ring).join(
        image.crop(0, height - ring, width, ring), "horizontal"
    )
    return strip.join(left, "horizontal").join(right, "horizontal").copy_memory()


def _median_colour(strip: Any) -> tuple[int, int, int]:
    """Each channel's median, from one histogram of all three (counts as 32-bit integers)."""
    counts = struct.unpack(f"={256 * 3}I", strip.hist_find().write_to_memory())
    half = strip.width * strip.height / 2
    medians = []
    for band in range(3):
        running = 0
        for value in range(256):
            running += counts[value * 3 + band]
            if running >= half:
                medians.append(value)
                break
    return medians[0], medians[1], medians[2]
