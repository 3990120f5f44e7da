"""WebP through libvips' webpsave (libwebp), lossy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imgcrunch.imaging.calibration import Calibration
from imgcrunch.imaging.effort import Effort

EXTENSION = "webp"
MAX_SIDE = 16_383  # the format's own limit


@dataclass(frozen=True, slots=True, kw_only=True)
class WebpEncoder:
    effort: int  # libwebp's method, 0 (fastest) to 6
    smart_subsample: bool  # sharper chroma edges, for a little more CPU
    preset: str  # libwebp's tuning: "default", "photo", "picture", ...
    calibration: Calibration

    def save_options(self, quality: int, *, grey: bool = False) -> dict[str, Any]:
        return {
            "Q": self.calibration.q_for(quality),
            "effort": self.effort,
            "smart_subsample": self.smart_subsample,
            "preset": self.preset,
            "keep": "none",
        }

    def save(self, image: Any, quality: int, *, grey: bool = False) -> bytes:
        return bytes(image.webpsave_buffer(**self.save_options(quality, grey=grey)))


# Settings and calibration: see bench/quality.py (--formats, --calibrate) and the README.
ENCODERS: dict[Effort, WebpEncoder] = {
    Effort.BALANCED: WebpEncoder(
        effort=2,
        smart_subsample=False,
        preset="default",
        calibration=Calibration(((1, 1), (50, 72), (100, 100))),
    ),
    Effort.MAX: WebpEncoder(
        effort=4,
        smart_subsample=False,
        preset="default",
        calibration=Calibration(((1, 1), (50, 72), (100, 100))),
    ),
}


def encoder(effort: Effort) -> WebpEncoder:
    return ENCODERS[effort]
