"""Geometry, pure: the size each variant is made at, and how small an image may be decoded.

Sizes are of the upright picture (after its EXIF orientation), as a box is meant.
"""

from __future__ import annotations

import math


def fit_inside(width: int, height: int, box: tuple[int | None, int | None]) -> tuple[int, int]:
    """The picture's size inside the box, keeping its aspect, never enlarged."""
    box_width, box_height = box
    scale = 1.0
    if box_width is not None:
        scale = min(scale, box_width / width)
    if box_height is not None:
        scale = min(scale, box_height / height)
    if scale >= 1.0:
        return width, height
    fitted_width = max(1, round(width * scale))
    fitted_height = max(1, round(height * scale))
    # Rounding must not take a side over its bound (999.6 -> 1000 > a box of 999).
    if box_width is not None:
        fitted_width = min(fitted_width, box_width)
    if box_height is not None:
        fitted_height = min(fitted_height, box_height)
    return fitted_width, fitted_height


def jpeg_shrink(width: int, height: int, target: tuple[int, int]) -> int:
    """The largest shrink-on-load factor (8, 4, 2 or 1) whose decoded picture is at least the
    target on both sides: the fewest pixels decoded, the rest left to a resize.

    libjpeg scales in the DCT, so the picture it gives is as sharp as a full decode reduced;
    its sides are rounded up (ceil(side / factor)).
    """
    for factor in (8, 4, 2):
        if math.ceil(width / factor) >= target[0] and math.ceil(height / factor) >= target[1]:
            return factor
    return 1
