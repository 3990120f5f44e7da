"""Framing for a marketplace, pure: where to crop a picture so that its product fills the
frame, and how to pad it square; no pixels here, only boxes.

A product's *fill* is its longest extent over the frame's matching side, max(w / W, h / H):
a tall bottle in a square frame fills it by its height.
"""

from __future__ import annotations

from dataclasses import dataclass

# The fill a crop aims at when a profile asks for more than the picture has: 5% of white
# each side, over Amazon's 85%, so that JPEG's ringing round the product never counts.
TARGET_FILL = 0.9


@dataclass(frozen=True, slots=True)
class Box:
    left: int
    top: int
    width: int
    height: int


def fill(product: Box, width: int, height: int) -> float:
    return max(product.width / width, product.height / height)


def crop_to_fill(product: Box, width: int, height: int, *, min_longest: int) -> Box:
    """A window of the picture's own aspect round `product`, as small as makes the product
    fill TARGET_FILL of it, but never under `min_longest` on its longest side (a smaller one
    would have to be enlarged): the whole picture where the product fills enough already."""
    scale = fill(product, width, height) / TARGET_FILL
    scale = max(scale, min(1.0, min_longest / max(width, height)))
    if scale >= 1.0:
        return Box(0, 0, width, height)
    window_width = max(product.width, min(width, round(width * scale)))
    window_height = max(product.height, min(height, round(height * scale)))
    left = _centred(product.left, product.width, window_width, width)
    top = _centred(product.top, product.height, window_height, height)
    return Box(left, top, window_width, window_height)


def square(width: int, height: int) -> tuple[int, int]:
    side = max(width, height)
    return side, side


def _centred(start: int, length: int, window: int, total: int) -> int:
    """The window's start that centres the product in it, kept within the picture."""
    centred = start + length // 2 - window // 2
    return max(0, min(centred, total - window))
