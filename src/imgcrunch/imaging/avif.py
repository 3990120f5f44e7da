"""AVIF through libvips' heifsave (libheif with aom), 8 bits, lossy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imgcrunch.imaging.calibration import Calibration
from imgcrunch.imaging.effort import Effort

EXTENSION = "avif"
MAX_SIDE = 16_384  # libheif's default security limit on decode; what most readers accept


@dataclass(frozen=True, slots=True, kw_only=True)
class AvifEncoder:
    effort: int  # libvips' effort, 0 (fastest) to 9: aom's speed is 9 minus it
    subsample_mode: str  # "on": 4:2:0; "off": 4:4:4
    calibration: Calibration

    def save_options(self, quality: int, *, grey: bool = False) -> dict[str, Any]:
        return {
            "Q": self.calibration.q_for(quality),
            "compression": "av1",
            "effort": self.effort,
            "subsample_mode": self.subsample_mode,
            "bitdepth": 8,
            "keep": "none",
        }

    def save(self, image: Any, quality: int, *, grey: bool = False) -> bytes:
        return bytes(image.heifsave_buffer(**self.save_options(quality, grey=grey)))


# Settings and calibration: see bench/quality.py (--formats, --calibrate) and the README.
ENCODERS: dict[Effort, AvifEncoder] = {
    Effort.BALANCED: AvifEncoder(
        effort=0,
        subsample_mode="on",
        calibration=Calibration(((1, 1), (50, 46), (100, 100))),
    ),
    Effort.MAX: AvifEncoder(
        effort=2,
        subsample_mode="on",
        calibration=Calibration(((1, 1), (50, 46), (100, 100))),
    ),
}


def encoder(effort: Effort) -> AvifEncoder:
    return ENCODERS[effort]
