"""A picture made to a marketplace profile's rules, where they can be met: background lifted to
pure white, the product cropped to fill the frame, padded square, brought within the maximums;
and findings for the rules it cannot meet. Pixels only (libvips), no I/O, no encoding: the
codec encodes what comes out, under the profile's byte cap.

Takes the upright picture, 8-bit sRGB, three bands, flattened onto white, in memory (it is
read more than once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from imgcrunch.imaging import findings, framing
from imgcrunch.imaging.findings import Finding
from imgcrunch.imaging.framing import Box
from imgcrunch.imaging.profiles import WHITE, Profile

# The border: the outer 1% of the picture's shorter side, at least 2 px.
_BORDER_SHARE = 0.01
# White, through JPEG's noise: the border's median colour is 253 or over in each channel.
# (The median: a product may touch the frame's edge.) Such a border is left as it is.
_WHITE_FLOOR = 253
# Near white, and so lifted to white: a median colour of 210 or over in each channel, with
# three quarters of the border within 24 of it (a plain light sweep, not a scene).
_NEAR_WHITE_FLOOR = 210
_NEAR = 24
_NEAR_SHARE = 0.75
# Lifting: background pixels within _NEAR of the background's colour become white; from there
# to _FAR they blend into their own colour; the product, further off, is untouched. Only the
# background joined to the frame's edge is lifted, not light parts inside the product. A white
# background's JPEG noise (a few levels under 255) is lifted the same way, within 10 and 24.
_FAR = 64
_WHITE_NEAR, _WHITE_FAR = 10, 24
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
        background = _whiten(made, profile)
    if profile.min_fill is not None and background == WHITE:
        _fill_frame(made, profile)
    if profile.white_background and background == WHITE:
        _keep_clear(made, profile)
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
    strips = _border_strips(image)
    pixels = sum(strip.width * strip.height for strip in strips)
    colour = _median_colour(strips, pixels)
    if min(colour) >= _WHITE_FLOOR:
        return Border(colour, white=True, near_white=True)
    near = _share(strips, lambda s: ((s - list(colour)).abs() <= _NEAR).bandand(), pixels)
    return Border(
        colour, white=False, near_white=min(colour) >= _NEAR_WHITE_FLOOR and near >= _NEAR_SHARE
    )


def product_box(image: Any) -> Box | None:
    """The bounding box of what is not white; None for a blank picture."""
    left, top, width, height = image.find_trim(threshold=_PRODUCT_THRESHOLD, background=list(WHITE))
    return Box(left, top, width, height) if width and height else None


def _whiten(made: Conformed, profile: Profile) -> tuple[int, int, int]:
    """Lift a near-white background to pure white; the background the picture has after."""
    found = border(made.image)
    if not found.near_white:
        made.findings.append(findings.background_not_white(profile, found.colour))
        return found.colour
    near, far = (_WHITE_NEAR, _WHITE_FAR) if found.white else (_NEAR, _FAR)
    made.image = _lifted(made.image, found.colour, near, far)
    made.changed = True
    return WHITE


def _lifted(image: Any, colour: tuple[int, int, int], near: int, far: int) -> Any:
    distance = (image - list(colour)).abs()
    farthest = distance[0].bandrank([distance[1], distance[2]], index=2)
    # 1 within `near` of the background, 0 beyond `far`, a straight line between.
    weight = (far - farthest) / (far - near)
    weight = (weight > 1).ifthenelse(1.0, (weight < 0).ifthenelse(0.0, weight))
    weight = _joined_to_edge(farthest <= far).ifthenelse(weight, 0.0)
    return (image + (255 - image) * weight).cast("uchar").copy_memory()


def _joined_to_edge(mask: Any) -> Any:
    """Of `mask` (255 or 0), the parts joined to the frame's edge at its corners or the middle
    of its sides: the background round a product, not the product's own light parts."""
    mask = mask.copy_memory()
    right, bottom = mask.width - 1, mask.height - 1
    seeds = [(0, 0), (right, 0), (0, bottom), (right, bottom)]
    seeds += [(right // 2, 0), (right // 2, bottom), (0, bottom // 2), (right, bottom // 2)]
    for x, y in seeds:
        if mask(x, y)[0] == 255:
            mask = mask.draw_flood(_JOINED, x, y, equal=True)
    return mask == _JOINED


_JOINED = 128


def _fill_frame(made: Conformed, profile: Profile) -> None:
    """Crop round the product until it fills the frame as the profile asks, stopping at the
    profile's smallest size: a finding where that is not enough."""
    assert profile.min_fill is not None
    image = made.image
    product = product_box(image)
    if product is None:
        return
    if framing.fill(product, image.width, image.height) >= profile.min_fill:
        return
    window = framing.crop_to_fill(
        product, image.width, image.height, min_longest=profile.min_longest or 1
    )
    if (window.width, window.height) != (image.width, image.height):
        made.image = image.crop(window.left, window.top, window.width, window.height)
        made.changed = True
    measured = framing.fill(product, window.width, window.height)
    if measured < profile.min_fill:
        made.findings.append(findings.fill_low(profile, measured))


def _keep_clear(made: Conformed, profile: Profile) -> None:
    """Widen the white round a product that comes nearer the frame's edge than the border and
    JPEG's ringing: the encoded border stays white."""
    image = made.image
    product = product_box(image)
    if product is None:
        return
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


def _border_strips(image: Any) -> list[Any]:
    width, height = image.width, image.height
    ring = _ring(width, height)
    if 2 * ring >= min(width, height):
        return [image]  # a picture this small is all border
    inner = height - 2 * ring
    return [
        image.crop(0, 0, width, ring),
        image.crop(0, height - ring, width, ring),
        image.crop(0, ring, ring, inner),
        image.crop(width - ring, ring, ring, inner),
    ]


def _median_colour(strips: list[Any], pixels: int) -> tuple[int, int, int]:
    medians = []
    for band in range(3):
        counts = [0] * 256
        for strip in strips:
            histogram = strip[band].hist_find()
            for value, count in enumerate(histogram.tolist()[0]):
                counts[value] += int(count)
        running = 0
        for value, count in enumerate(counts):
            running += count
            if 2 * running >= pixels:
                medians.append(value)
                break
    return medians[0], medians[1], medians[2]


def _share(strips: list[Any], test: Any, pixels: int) -> float:
    """The share of the border's pixels for which `test` (255 or 0 per pixel) holds."""
    return float(sum(test(s).avg() / 255 * s.width * s.height for s in strips)) / pixels
