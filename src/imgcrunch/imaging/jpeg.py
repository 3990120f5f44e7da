"""JPEG through libvips' jpegsave, whose libjpeg is mozjpeg in pyvips-binary.

Each effort encodes with its own quantisation tables and options, at the Q that gives the
look of standard libjpeg at the requested quality (its calibration, fitted and checked with
SSIMULACRA2 by bench/quality.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pyvips

from imgcrunch.imaging.calibration import IDENTITY, Calibration
from imgcrunch.imaging.effort import Effort

log = logging.getLogger(__name__)

EXTENSION = "jpg"
MAX_SIDE = 65_535


@dataclass(frozen=True, slots=True, kw_only=True)
class JpegEncoder:
    quant_table: int  # mozjpeg's table index: 0 is the standard's (Annex K)
    optimize_coding: bool  # Huffman tables fitted to the image: a second pass over it
    trellis: bool  # mozjpeg's rate-distortion search per block (implies optimize_coding)
    # For colour photos, and for grey ones, whose bytes are all in the luminance table, so the
    # chroma tables' savings do not come to them.
    calibration: Calibration = IDENTITY
    grey_calibration: Calibration = IDENTITY

    def q_for(self, quality: int, *, grey: bool = False) -> int:
        return (self.grey_calibration if grey else self.calibration).q_for(quality)

    def save_options(self, quality: int, *, grey: bool = False) -> dict[str, Any]:
        """jpegsave's arguments, those at libvips' defaults left out: each one passed costs
        pyvips some 20 us, which a small image notices."""
        options: dict[str, Any] = {"Q": self.q_for(quality, grey=grey), **_POLICY}
        if self.quant_table:
            options["quant_table"] = self.quant_table
        if self.optimize_coding or self.trellis:
            options["optimize_coding"] = True
        if self.trellis:
            options["trellis_quant"] = True
        return options

    def save(self, image: Any, quality: int, *, grey: bool = False) -> bytes:
        return bytes(image.jpegsave_buffer(**self.save_options(quality, grey=grey)))


# Whatever the effort: 4:2:0 at every quality, baseline (libvips' default), and no EXIF, ICC,
# XMP or IPTC, the pixels being upright sRGB already.
_POLICY = {"subsample_mode": "on", "keep": "none"}


# Chosen by `bench/quality.py --search` over every table and option libvips offers: table 5
# (Klein, Silverstein and Carney 2005) gives the fewest bytes at the same look, with or without
# trellis; progressive scans would save max 1.5% for 50% more CPU. Balanced fits Huffman tables
# to each image (optimize_coding), for issue 23's targets on the catalog's product shots at
# Pillow quality 50's look (2026-12-03): at most 0.88x Pillow's bytes, for no more CPU than the
# codec before effort levels (standard tables with Huffman optimisation). Without it balanced
# gave 0.888x at 72% of that CPU; with it 0.815x (lossless: the same look and calibration) at
# 99% (16.4 against 16.7 ms a photo, median of 7 rounds; bench/results/huffman-balanced.txt).
# Catalog images are encoded once and served many times: the 8% of bytes is worth the CPU.
# Max adds trellis quantisation: 0.759x (target 0.78x).
# Calibrated by `bench/quality.py --calibrate --max-side 1024` (2026-12-03) on the catalog's
# fitting half (7 product shots, 7 textures, reduced to at most 1024 px), in colour and in
# grey: each point is the Q whose mean SSIMULACRA2 is standard libjpeg's at that quality,
# interpolated between Qs 10 apart. The tables fitted on the corpus's seven originals
# (2026-12-01, and again with the grid on 2026-12-03: `--calibrate --on originals`) ask 0-2 Q
# more for balanced and 0-4 more for max between qualities 20 and 95 in colour (q50: Q45, Q53).
# The default run checks these on the catalog's other half and on tests/data/holdout.
ENCODERS: dict[Effort, JpegEncoder] = {
    Effort.BALANCED: JpegEncoder(
        quant_table=5,
        optimize_coding=True,
        trellis=False,
        calibration=Calibration(
            (
                *((1, 1), (10, 9), (20, 16), (30, 25), (40, 34), (50, 44)),
                *((60, 53), (70, 66), (80, 77), (90, 92), (95, 95), (100, 100)),
            )
        ),
        grey_calibration=Calibration(
            (
                *((1, 1), (10, 9), (20, 18), (30, 28), (40, 38), (50, 50)),
                *((60, 60), (70, 71), (80, 80), (90, 95), (95, 96), (100, 100)),
            )
        ),
    ),
    Effort.MAX: JpegEncoder(
        quant_table=5,
        optimize_coding=True,
        trellis=True,
        calibration=Calibration(
            (
                *((1, 1), (10, 9), (20, 18), (30, 28), (40, 39), (50, 49)),
                *((60, 59), (70, 71), (80, 81), (90, 93), (95, 96), (100, 100)),
            )
        ),
        grey_calibration=Calibration(
            (
                *((1, 1), (10, 10), (20, 20), (30, 31), (40, 43), (50, 55)),
                *((60, 65), (70, 75), (80, 83), (90, 96), (95, 97), (100, 100)),
            )
        ),
    ),
}
# Standard libjpeg: what `quality` is measured against, and what runs where libjpeg is not
# mozjpeg (a libvips of one's own, without pyvips-binary) and cannot take other tables.
STANDARD = JpegEncoder(quant_table=0, optimize_coding=True, trellis=False)

_encoders = ENCODERS  # until `configure` finds a libjpeg without mozjpeg's tables


def encoder(effort: Effort) -> JpegEncoder:
    return _encoders[effort]


def configure() -> None:
    """Without mozjpeg, libvips ignores `quant_table` and `trellis_quant`: the efforts' Q
    would then give a worse look than promised, so every effort falls back to the standard."""
    global _encoders
    noise = pyvips.Image.gaussnoise(64, 64, mean=128, sigma=40).cast("uchar")
    probe = noise.bandjoin([noise, noise]).copy(interpretation="srgb")
    standard = probe.jpegsave_buffer(Q=50, quant_table=0, keep="none")
    other = probe.jpegsave_buffer(Q=50, quant_table=5, keep="none")
    if standard == other:
        log.warning(
            "this libvips' libjpeg is not mozjpeg: every effort uses the standard tables "
            "(install pyvips-binary for smaller files)"
        )
        _encoders = dict.fromkeys(Effort, STANDARD)
    else:
        _encoders = ENCODERS
