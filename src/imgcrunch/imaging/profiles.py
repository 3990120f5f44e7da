"""Marketplace profiles: each marketplace's image rules as data, one small table each; no I/O.

A profile makes a request's first variant (`Output Image Urls`), the image sent to that
marketplace: `imgcrunch.codec` fixes what the rules allow it to (`framing` says how), and
reports the rest as findings. A new marketplace is one more entry in `PROFILES`.

Each rule cites the page it comes from, read on 2026-12-03 from stored copies of the pages
(no live access): where a figure is on no current official page, the comment says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgcrunch.imaging.formats import Format
from imgcrunch.imaging.variants import Variant

WHITE = (255, 255, 255)


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    name: str  # as the upload's `profile` field takes it
    title: str  # as people write it
    sources: tuple[str, ...]  # the help pages the rules come from
    format: Format  # what is made: one the marketplace accepts, and the one it prefers
    accepted: tuple[str, ...]  # every format it takes, for people
    # Sizes, in pixels. `min_*`: refused under it; `zoom_side`: the longest side from which
    # the marketplace zooms (or, where it has no zoom, the size it recommends).
    min_longest: int | None = None
    min_shortest: int | None = None
    zoom_side: int | None = None
    max_longest: int | None = None
    max_pixels: int | None = None
    max_side_sum: int | None = None  # width plus height
    max_bytes: int | None = None  # "MB" read as 1,000,000 bytes, the stricter reading
    square: bool = False
    white_background: bool = False
    min_fill: float | None = None  # of the frame, by the product's longest extent
    no_query_string: bool = False  # in the image's URL

    def variant(self) -> Variant:
        """The variant it makes: `Output Image Urls`, in its format, under its byte cap."""
        return Variant(name="output", format=self.format, max_bytes=self.max_bytes)

    def cap_scale(self, width: int, height: int) -> float:
        """The scale (at most 1) that brings a picture within the profile's maximums."""
        scale = 1.0
        if self.max_longest is not None:
            scale = min(scale, self.max_longest / max(width, height))
        if self.max_pixels is not None:
            scale = min(scale, (self.max_pixels / (width * height)) ** 0.5)
        if self.max_side_sum is not None:
            scale = min(scale, self.max_side_sum / (width + height))
        return scale


AMAZON = Profile(
    name="amazon",
    title="Amazon",
    sources=(
        # Technical image file requirements: formats (JPEG recommended), 1,000 px on the
        # longest side for zoom, 10,000 px at most.
        "https://sellercentral.amazon.com/gp/help/external/G9FUUH87RBNXGKB7",
        # Main image suppressions: "non-pure white background (RGB 255 255 255)".
        "https://sellercentral.amazon.com.au/gp/help/external/help.html?itemID=T8RSE9S9NK4LP6Z",
        # Product image requirements: the product fills 85% of the image; 500 px on the
        # longest side at least. (Not in the stored pages: the figures are from Amazon's
        # earlier text of it.) No file size limit is on an official page.
        "https://sellercentral.amazon.com/help/hub/reference/external/G1881",
    ),
    format=Format.JPEG,
    accepted=("JPEG", "PNG", "GIF (not animated)", "TIFF"),
    min_longest=500,
    zoom_side=1000,
    max_longest=10_000,
    white_background=True,
    min_fill=0.85,
)

WALMART = Profile(
    name="walmart",
    title="Walmart",
    sources=(
        # Product detail page: image guidelines & requirements (updated 2025-07-15): JPEG,
        # PNG or BMP; RGB; 5 MB or less; 2200 x 2200; 1500 x 1500 for zoom; 1:1; seamless
        # white (255/255/255); no URLs containing a query. It states no smaller minimum.
        "https://marketplacelearn.walmart.com/guides/Item%20setup/Item%20content%2C%20imagery"
        "%2C%20and%20media/Product-detail-page:-Image-guidelines-&-requirements",
    ),
    format=Format.JPEG,
    accepted=("JPEG", "PNG", "BMP"),
    zoom_side=1500,
    max_longest=2200,  # the page's pixel dimensions: more is never shown
    max_bytes=5_000_000,
    square=True,
    white_background=True,
    no_query_string=True,
)

GOOGLE = Profile(
    name="google",
    title="Google Merchant Center",
    sources=(
        # image_link: JPEG, WebP, PNG, GIF, BMP, TIFF; the extension matches the format;
        # 64 megapixels and 16 MB at most; 100 x 100 at least (250 x 250 for apparel); no
        # upscaled images. From 2027-01-31, 500 x 500 for every product, 1500 x 1500
        # recommended (the page's update, in its translated copies).
        "https://support.google.com/merchants/answer/6324350",
    ),
    format=Format.JPEG,
    accepted=("JPEG", "WebP", "PNG", "GIF", "BMP", "TIFF"),
    min_shortest=100,
    max_pixels=64_000_000,
    max_bytes=16_000_000,
    # "No upscaled images" is not checked: see imaging.findings.
)

EBAY = Profile(
    name="ebay",
    title="eBay",
    sources=(
        # Picture policy: 500 px on the longest side at least.
        "https://www.ebay.com/help/policies/listing-policies/picture-policy?id=4370",
        # Media API: JPG, GIF, PNG, BMP, TIFF, AVIF, HEIC, WEBP.
        "https://developer.ebay.com/api-docs/commerce/media/resources/image/methods"
        "/createImageFromFile",
        # Picture hosting: "the largest size picture that is stored is 1600 x 1600 pixels";
        # non-JPG files are converted to JPG. 12 MB and width + height <= 12,000 are from
        # the earlier Features Guide; the current reference names a width + height limit
        # without its figure.
        "https://developer.ebay.com/api-docs/user-guides/static/trading-user-guide"
        "/picture-hosting.html",
    ),
    format=Format.JPEG,
    accepted=("JPEG", "PNG", "TIFF", "BMP", "GIF", "AVIF", "HEIC", "WebP"),
    min_longest=500,
    zoom_side=1600,  # recommended; eBay keeps nothing larger
    max_longest=1600,
    max_side_sum=12_000,
    max_bytes=12_000_000,
)

PROFILES: dict[str, Profile] = {
    profile.name: profile for profile in (AMAZON, WALMART, GOOGLE, EBAY)
}


class UnknownProfile(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")


def get(name: str) -> Profile:
    """The profile of that name (any case). Raises UnknownProfile."""
    try:
        return PROFILES[name.strip().lower()]
    except KeyError:
        raise UnknownProfile(name) from None
