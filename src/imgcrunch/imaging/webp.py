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


# Chosen by `bench/quality.py --formats` (2026-12-03) on the catalog's fitting half (7 product
# shots, 7 textures, at most 1024 px), each setting's bytes interpolated at standard libjpeg
# quality 50's look, CPU per photo on one thread (decode and encode), against balanced JPEG:
#   effort 0-2: 1.12x-1.01x its bytes for 2-3.4x its CPU; 3-4: 1.00x-0.99x for 6.5x;
#   effort 5: 0.962x for 7.0x; effort 6: 0.934x for 14.5x; presets photo / picture at 6:
#   0.927x / 0.925x for 13.6x; smart_subsample: 0.5-1% fewer bytes for 1.5-3x the CPU.
# WebP barely beats balanced JPEG on these photos. Bytes weigh more than CPU (catalog images
# are encoded once and served many times), within a budget per effort: balanced is the fewest
# bytes within 8x balanced JPEG's CPU (effort 5), max the fewest within 100x (effort 6,
# preset picture; photo is within 0.3% of it). On the 14 product shots (the default run):
# balanced 0.859x balanced JPEG's bytes at its quality 50 look for 9.1x its CPU, max 0.823x
# for 19x. Calibrated by
# `bench/quality.py --calibrate --max-side 1024` on the same photos: each point is the Q whose
# mean SSIMULACRA2 is standard libjpeg's at that quality, interpolated between grid Qs.
ENCODERS: dict[Effort, WebpEncoder] = {
    Effort.BALANCED: WebpEncoder(
        effort=5,
        smart_subsample=False,
        preset="default",
        calibration=Calibration(
            (
                *((1, 1), (10, 1), (20, 15), (30, 31), (40, 46), (50, 60)),
                *((60, 70), (70, 77), (80, 84), (90, 96), (95, 100), (100, 100)),
            )
        ),
    ),
    Effort.MAX: WebpEncoder(
        effort=6,
        smart_subsample=False,
        preset="picture",
        calibration=Calibration(
            (
                *((1, 1), (10, 1), (20, 16), (30, 33), (40, 47), (50, 60)),
                *((60, 70), (70, 78), (80, 84), (90, 96), (95, 100), (100, 100)),
            )
        ),
    ),
}


def encoder(effort: Effort) -> WebpEncoder:
    return ENCODERS[effort]
