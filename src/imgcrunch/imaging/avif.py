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


# Chosen by `bench/quality.py --formats` (2026-12-03) on the catalog's fitting half (7 product
# shots, 7 textures, at most 1024 px), each setting's bytes interpolated at standard libjpeg
# quality 50's look, CPU per photo on one thread (decode and encode), against balanced JPEG:
#   effort 0: 0.757x its bytes (4:2:0) or 0.742x (4:4:4), for 4.4x / 4.7x its CPU
#   effort 1: 0.714x for 16x; effort 2: 0.695x for 23x; effort 3: 0.652x (4:2:0), 0.638x
#   (4:4:4) for 37x / 41x; effort 4 and up: over 100x (217x), not scored.
# Catalog images are encoded once and served many times, so bytes weigh more than CPU, within a
# budget per effort: balanced is the fewest bytes within 8x balanced JPEG's CPU (effort 0),
# max the fewest within 100x (effort 3; effort 4 costs 4x as much again). 4:2:0 for both:
# 4:4:4 saves 2% more, but needs AV1's High profile, outside AVIF's Baseline profile (Main),
# and hardware AV1 decoders (Android hands AVIF to them where a device has one) read Main
# only; a catalog's image must open everywhere it is sent. aom is tuned by libvips' default,
# `tune=iq` in 8.18 (libaom 3.12's tuning for still images): on the catalog's product shots
# effort 0 needs 0.79x balanced JPEG's bytes at its look, against 0.99x with `tune=ssim`, the
# default before. It is left implicit, as a libvips without the option would refuse it.
# Calibrated by `bench/quality.py --calibrate --max-side 1024` on the same photos: each point
# is the Q whose mean SSIMULACRA2 is standard libjpeg's at that quality, interpolated between
# grid Qs.
ENCODERS: dict[Effort, AvifEncoder] = {
    Effort.BALANCED: AvifEncoder(
        effort=0,
        subsample_mode="on",
        calibration=Calibration(
            (
                *((1, 1), (10, 6), (20, 28), (30, 39), (40, 45), (50, 50)),
                *((60, 53), (70, 59), (80, 67), (90, 88), (95, 95), (100, 100)),
            )
        ),
    ),
    Effort.MAX: AvifEncoder(
        effort=3,
        subsample_mode="on",
        calibration=Calibration(
            (
                *((1, 1), (10, 4), (20, 26), (30, 37), (40, 44), (50, 48)),
                *((60, 52), (70, 58), (80, 66), (90, 87), (95, 93), (100, 100)),
            )
        ),
    ),
}


def encoder(effort: Effort) -> AvifEncoder:
    return ENCODERS[effort]
