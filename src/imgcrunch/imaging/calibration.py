"""What `quality` means in every format: the look of standard libjpeg at that quality.

Each encoder setting has its own table of (quality, Q) points: the Q at which it looks, by
SSIMULACRA2, like standard libjpeg at that quality. bench/quality.py fits and checks them.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Calibration:
    # (quality, Q) points, quality ascending, from 1 to 100; between points, Q is interpolated.
    points: tuple[tuple[int, int], ...] = ((1, 1), (100, 100))

    def q_for(self, quality: int) -> int:
        qualities = [point[0] for point in self.points]
        upper = min(max(bisect.bisect_left(qualities, quality), 1), len(qualities) - 1)
        (q0, v0), (q1, v1) = self.points[upper - 1], self.points[upper]
        return max(1, min(100, round(v0 + (v1 - v0) * (quality - q0) / (q1 - q0))))


IDENTITY = Calibration()
