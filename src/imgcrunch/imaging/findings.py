"""What a marketplace profile found it could not fix in an image: stable codes for machines,
plain messages for people. Warnings: the image is still made, and sent where the user says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imgcrunch.imaging.profiles import Profile

CODES = (
    "too_small",
    "too_small_for_zoom",
    "product_fill_low",
    "background_not_white",
)
# Not here: `upscaled_source` (Google's "no upscaled images"). No cheap test found tells an
# enlarged picture from a soft native one: a spectral score at no false alarm on the corpus
# caught 4 of its 7 enlarged photos and 9 of 84 pictures enlarged 1.5x, for about the CPU of
# the decode and encode themselves (README, Marketplace profiles).


@dataclass(frozen=True, slots=True)
class Finding:
    code: str  # one of CODES
    message: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_json(cls, stored: dict[str, Any]) -> Finding:
        return cls(str(stored["code"]), str(stored["message"]))


def size_findings(profile: Profile, width: int, height: int) -> list[Finding]:
    """The image as made is too small to be shown, or to be zoomed into: the stronger only."""
    longest, shortest = max(width, height), min(width, height)
    size = f"{width}x{height}: {profile.title}"
    refused = None
    if profile.min_longest is not None and longest < profile.min_longest:
        refused = f"{profile.min_longest} px on the longest side"
    elif profile.min_shortest is not None and shortest < profile.min_shortest:
        refused = f"{profile.min_shortest}x{profile.min_shortest}"
    if refused is not None:
        return [Finding("too_small", f"{size} refuses images under {refused}")]
    if profile.zoom_side is not None and longest < profile.zoom_side:
        message = (
            f"{size} asks {profile.zoom_side} px on the longest side for zoom; the source is "
            "smaller, and is never enlarged"
        )
        return [Finding("too_small_for_zoom", message)]
    return []


def fill_low(profile: Profile, measured: float) -> Finding:
    assert profile.min_fill is not None
    return Finding(
        "product_fill_low",
        f"the product fills {measured:.0%} of the frame; {profile.title} asks "
        f"{profile.min_fill:.0%}, and cropping closer would leave the image under "
        f"{profile.min_longest} px",
    )


def background_not_white(profile: Profile, colour: tuple[int, int, int]) -> Finding:
    red, green, blue = colour
    return Finding(
        "background_not_white",
        f"the border is rgb({red}, {green}, {blue}), not near white: {profile.title} asks "
        "pure white (255, 255, 255), and a background this far off is not whitened",
    )
