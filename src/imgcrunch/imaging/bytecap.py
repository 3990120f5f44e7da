"""A byte cap that keeps the most quality: the highest quality whose file fits, found in a few
encodes; smaller only where even the floor quality does not fit. No I/O.

Imgproxy lowers quality by fixed steps while the file is too large, thumbor by 0.75 each time:
both stop at the first quality that fits, not the highest. Here the bytes of the encodes made
so far say where the answer lies: a file's log size falls about linearly with quality (some
0.02 a point between 20 and 80, in JPEG and WebP, on the catalog's photos), so each guess is
interpolated between the highest quality known to fit and the lowest known not to, and the
search ends when they are one apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Below libjpeg quality 30 product photos show their blocks; a smaller picture at 30 keeps
# more of the look than a full-size one at 20 (and the user's own lower quality stands).
FLOOR = 30
_SLOPE = 0.02  # d(log bytes) / d(quality): where the first guess starts
_MARGIN = 0.97  # aim a little under the cap, so that one guess more often fits

Save = Callable[[Any, int], bytes]


@dataclass(frozen=True, slots=True)
class Fitted:
    data: bytes
    quality: int  # the quality it was encoded at
    image: Any  # the picture encoded: the one given, or a smaller one where the floor did not fit
    encodes: int  # how many encodes it took, this one included


def encode_within(save: Save, image: Any, quality: int, max_bytes: int) -> Fitted:
    """`image` encoded by `save` at the highest quality up to `quality` whose file is at most
    `max_bytes`; where even the floor quality is too large, downscaled until it fits."""
    data = save(image, quality)
    if len(data) <= max_bytes:
        return Fitted(data, quality, image, 1)
    floor = min(FLOOR, quality)
    search = _Search(save, image, max_bytes, high=quality, high_size=len(data))
    while search.open(floor):
        search.step(floor)
    if search.fits is not None:
        return Fitted(search.fits[1], search.fits[0], image, 1 + search.encodes)
    return _shrunk(save, image, floor, max_bytes, search.high_size, encodes=1 + search.encodes)


@dataclass(slots=True)
class _Search:
    save: Save
    image: Any
    max_bytes: int
    high: int  # the lowest quality known not to fit
    high_size: int  # and its bytes
    fits: tuple[int, bytes] | None = None  # the highest quality known to fit, and its file
    encodes: int = 0

    def open(self, floor: int) -> bool:
        """Some quality between the bounds is still untried."""
        low = self.fits[0] if self.fits else floor - 1
        return low < self.high - 1

    def step(self, floor: int) -> None:
        guess = self._guess(floor)
        data = self.save(self.image, guess)
        self.encodes += 1
        if len(data) <= self.max_bytes:
            self.fits = (guess, data)
        else:
            self.high, self.high_size = guess, len(data)

    def _guess(self, floor: int) -> int:
        target = math.log(self.max_bytes * _MARGIN)
        high_log = math.log(self.high_size)
        if self.fits is None:  # nothing fits yet: step down the usual slope, to the floor
            return max(floor, min(self.high - 1, round(self.high - (high_log - target) / _SLOPE)))
        low, low_data = self.fits
        low_log = math.log(len(low_data))
        share = (target - low_log) / (high_log - low_log) if high_log > low_log else 0.5
        return max(low + 1, min(self.high - 1, round(low + share * (self.high - low))))


def _shrunk(
    save: Save, image: Any, quality: int, max_bytes: int, size: int, *, encodes: int
) -> Fitted:
    """At `quality`, made smaller until it fits (`size`: its bytes at full size): bytes go
    about with the pixels. A cap is at least MIN_BYTES, which a few pixels always fit."""
    data = b""
    while not data or len(data) > max_bytes:
        shortest = min(image.width, image.height)
        if shortest <= _MIN_SIDE and data:
            break  # the least we make: the cap is under what any picture takes
        scale = min(0.9, max(math.sqrt(max_bytes * _MARGIN / size), _MIN_SIDE / shortest))
        image = image.resize(scale) if scale < 1 else image
        data = save(image, quality)
        encodes += 1
        size = len(data)
    return Fitted(data, quality, image, encodes)


MIN_BYTES = 2000  # the smallest cap a variant may ask: a header and a few blocks
_MIN_SIDE = 16
