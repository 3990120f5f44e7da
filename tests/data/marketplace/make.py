"""Makes the marketplace-profile fixtures in this folder from the team's image corpus.

    python tests/data/marketplace/make.py [CATALOG]

CATALOG defaults to ../shared/corpus/catalog beside the repository (the team's shared folder);
a clone without it keeps the generated JPEGs, which are committed. Pillow only, deterministic
for one Pillow / libjpeg-turbo build: every step is a crop, a Lanczos downscale, a paste on a
solid colour or a per-channel multiply, then JPEG quality 90 (4:2:0, no EXIF, no ICC profile).

Nothing is ever enlarged: where a case needs a bigger frame, the product keeps its own
resolution (or is reduced) and the frame is padded. README.md beside this file lists each
file, its source, licence, and what it tests.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageChops

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DEFAULT_CATALOG = REPO.parent / "shared" / "corpus" / "catalog"

QUALITY = 90
WHITE = (255, 255, 255)
# "Product" pixels: any channel below 255 - 24, as tests/marketplace_checker.py measures fill.
PRODUCT_BELOW = 255 - 24

BAG = "abo-B0799CK52K_528c608a.jpg"  # duffel bag, 894x1024, on pure white
BAG_SIDE = "abo-B0799CK52K_d80a51d3.jpg"  # the same bag from the side, 1024x923
BULB = "abo-B074M5HPBD_dcace9b5.jpg"  # one LED bulb, 900x1024
BULB_PACK = "abo-B074M5HPBD_9ea6992d.jpg"  # sixteen LED bulbs, 898x1024
BOTTLE = "abo-B07GTFSCHB_844a1cce.jpg"  # supplement bottle, 1024x1024
PCB = "wulpus-v1_0_acquisition_pcb_bottom.jpg"  # circuit board, 1280x1920, on white


def load(catalog: Path, name: str) -> Image.Image:
    with Image.open(catalog / name) as image:
        return image.convert("RGB")


def reduce_to(image: Image.Image, longest: int) -> Image.Image:
    """Lanczos downscale so that the longest side is `longest`; refuses to enlarge."""
    scale = longest / max(image.size)
    if scale > 1:
        raise ValueError(f"{image.size} would be enlarged to {longest} px")
    if scale == 1:
        return image.copy()
    size = (round(image.width * scale), round(image.height * scale))
    return image.resize(size, Image.Resampling.LANCZOS)


def trim(image: Image.Image) -> Image.Image:
    """Crops to the bounding box of product pixels (any channel below 231)."""
    r, g, b = image.point(lambda v: 255 if v < PRODUCT_BELOW else 0).split()
    box = ImageChops.lighter(ImageChops.lighter(r, g), b).getbbox()
    if box is None:
        raise ValueError("no product pixels")
    return image.crop(box)


def centred(product: Image.Image, size: tuple[int, int]) -> Image.Image:
    frame = Image.new("RGB", size, WHITE)
    frame.paste(product, ((size[0] - product.width) // 2, (size[1] - product.height) // 2))
    return frame


def tinted(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """Multiplies each channel by colour/255: pure white becomes `colour`, as a grey sweep
    (or a white background under a coloured light) photographs."""
    bands = [
        band.point(lambda v, c=c: (v * c + 127) // 255)
        for band, c in zip(image.split(), colour, strict=True)
    ]
    return Image.merge("RGB", bands)


def small(catalog: Path) -> Image.Image:
    return reduce_to(load(catalog, BAG), 700)


def tiny(catalog: Path) -> Image.Image:
    return reduce_to(load(catalog, BAG_SIDE), 420)


def off_white(catalog: Path) -> Image.Image:
    # The bulb photo at its own 900x1024, padded with white to 1200x1100 (the bulb, 1007 px
    # high, fills 0.92 of the height, clear of the border ring), then the whole frame tinted as
    # a light grey sweep photographs.
    return tinted(centred(load(catalog, BULB), (1200, 1100)), (240, 238, 234))


def not_white(catalog: Path) -> Image.Image:
    # The bulb as off_white has it, on a blue-grey sweep (176, 186, 200): too far from white to
    # be lifted to it honestly, so it is reported, not fixed.
    return tinted(centred(load(catalog, BULB), (1200, 1100)), (176, 186, 200))


def small_in_frame(catalog: Path) -> Image.Image:
    # The product at its own resolution (889x1013 once trimmed) in a 2100x2100 white frame:
    # fill 0.48; trimming to 85% fill leaves 1013 / 0.85 = 1192 px, still over 1000.
    return centred(trim(load(catalog, BULB_PACK)), (2100, 2100))


def tiny_in_frame(catalog: Path) -> Image.Image:
    # 300 px of product in 1000x1000: trimming to 85% fill leaves about 353 px, under 500.
    return centred(reduce_to(trim(load(catalog, BOTTLE)), 300), (1000, 1000))


def four_by_three(catalog: Path) -> Image.Image:
    # The photo has a dark speck in its top-left corner (12x20 px), not part of the board: cut
    # it off before trimming. The board (944x1809 once trimmed) reduced to 1032 px high in
    # 1600x1200 white fills 0.86 of the height. No product shot on white in the corpus is over
    # 1020 px high (85% of 1200) without enlarging, except these boards, hence its bytes.
    photo = load(catalog, PCB)
    board = trim(photo.crop((24, 24, photo.width, photo.height)))
    return centred(reduce_to(board, 1032), (1600, 1200))


CASES: dict[str, Callable[[Path], Image.Image]] = {
    "small.jpg": small,
    "tiny.jpg": tiny,
    "off_white.jpg": off_white,
    "not_white.jpg": not_white,
    "small_in_frame.jpg": small_in_frame,
    "tiny_in_frame.jpg": tiny_in_frame,
    "four_by_three.jpg": four_by_three,
}


def main(argv: list[str]) -> int:
    catalog = Path(argv[1]) if len(argv) > 1 else DEFAULT_CATALOG
    if not catalog.is_dir():
        print(f"no corpus at {catalog}: pass the catalog folder as the argument", file=sys.stderr)
        return 2
    for name, make in CASES.items():
        image = make(catalog)
        path = HERE / name
        image.save(path, "JPEG", quality=QUALITY, optimize=False, progressive=False)
        print(f"{name}: {image.width}x{image.height}, {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
