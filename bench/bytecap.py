"""Byte caps benchmark: imgcrunch's `encode_within` against imgproxy's and thumbor's loops.

A variant may ask for at most N bytes (`max_bytes`). Four ways to meet a cap, on the same photos
and caps in the same run, each starting from quality 50 (imgcrunch's default) through the same
encoder (`imgcrunch.imaging.formats.encoder(format, Effort.BALANCED).save`):

1. imgcrunch: `imgcrunch.imaging.bytecap.encode_within`, an interpolated bisection for the
   highest quality that fits; a smaller picture at the floor quality (30) where even that does
   not fit.
2. imgproxy: `saveImageToFitBytes` (imgproxy/imgproxy, processing/save_fit_bytes.go): encode,
   and while the file is too large scale the quality by 0.25 (file over 3x the cap), 0.5 (over
   1.5x) or 0.75, rounded and at least one lower; it gives up at quality 10 or below and sends
   that file, fitting or not.
3. thumbor: `BaseHandler.reload_to_fit_in_kb` (thumbor/thumbor, thumbor/handlers/__init__.py,
   thumbor 7): `quality = int(quality * 0.75)` while too large, giving up (and sending the
   first, too-large file) once it would go under 10; then one "upsize" step that, as written
   (`max(initial_quality, int(quality * 1.1))`), re-encodes at the initial quality, which is
   known not to fit, and keeps the file found before.
4. exhaustive: every quality from 30 to 50 encoded; the highest that fits (the most a
   quality-only search could find). Where none fits the cap needs a smaller picture, and the
   row says so.

Caps: 0.9, 0.7, 0.5 and 0.3 of each photo's own size at quality 50, in each format. Photos: the
14 product shots of ../shared/corpus/catalog (the first rows of its README's table), reduced to
at most 1024 px a side as bench/quality.py does; tests/data/catalog's when ../shared is missing.
For each method and format: encodes per image (median, max), bytes / cap (median: how close to
the cap it lands; the most, as over the cap is a failure), how often its quality is the
exhaustive best, the quality it ends at, and SSIMULACRA2 (tests/ssimulacra2.py) of the result
against the photo (median). A smaller picture is scored as a browser shows it in the same box:
enlarged back to the photo's size (Pillow, bicubic).

    .venv/bin/python bench/bytecap.py               # about 5 minutes on 2 cores
    .venv/bin/python bench/bytecap.py --workers 1   # on a busy machine

It prints the tables and writes them to bench/results/bytecap-latest.txt.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyvips
from PIL import Image

from imgcrunch import codec
from imgcrunch.imaging import bytecap
from imgcrunch.imaging.effort import Effort
from imgcrunch.imaging.formats import Format, encoder
from quality import (
    MAX_SIDE,
    ROOT,
    BenchError,
    PhotoSet,
    is_grey,
    load_catalog,
    load_set,
    pixels,
    worker_pool,
)

sys.path.insert(0, str(ROOT))  # the metric lives beside the tests that hold it to libjxl's
from tests import ssimulacra2

RESULTS = ROOT / "bench" / "results"
OUTPUT = RESULTS / "bytecap-latest.txt"
REPO_CATALOG = "tests/data/catalog"
FORMATS = (Format.JPEG, Format.WEBP)
CAP_FRACTIONS = (0.9, 0.7, 0.5, 0.3)  # of the photo's own bytes at START
START = 50  # the quality asked for: imgcrunch's default, and where every method starts
METHODS = ("imgcrunch", "imgproxy", "thumbor", "exhaustive")

Save = Callable[[Any, int], bytes]


# --- the methods ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    data: bytes
    quality: int
    encodes: int
    image: Any  # the picture encoded (smaller than the photo where it was downscaled)


class Counted:
    """A save that counts its calls, each method its own."""

    def __init__(self, save: Save) -> None:
        self.save = save
        self.calls = 0

    def __call__(self, image: Any, quality: int) -> bytes:
        self.calls += 1
        return self.save(image, quality)


def imgcrunch_way(save: Save, image: Any, cap: int) -> Outcome:
    fitted = bytecap.encode_within(save, image, START, cap)
    return Outcome(fitted.data, fitted.quality, fitted.encodes, fitted.image)


def imgproxy_way(save: Save, image: Any, cap: int) -> Outcome:
    """saveImageToFitBytes, step for step (imath.Scale rounds half away from zero)."""
    quality, encodes = START, 0
    while True:
        data = save(image, quality)
        encodes += 1
        if len(data) <= cap or quality <= 10:
            return Outcome(data, quality, encodes, image)
        delta = len(data) / cap
        factor = 0.25 if delta > 3 else 0.5 if delta > 1.5 else 0.75
        scaled = int(quality * factor + 0.5)
        quality = max(1, min(quality - 1, scaled))


def thumbor_way(save: Save, image: Any, cap: int) -> Outcome:
    """reload_to_fit_in_kb, step for step, after the engine's first read at START."""
    initial = save(image, START)
    results, quality, encodes = initial, START, 1
    if len(results) <= cap:
        return Outcome(results, quality, encodes, image)
    while len(results) > cap:
        quality = int(quality * 0.75)
        if quality < 10:
            return Outcome(initial, START, encodes, image)  # gives up: the too-large file
        results = save(image, quality)
        encodes += 1
    kept, kept_quality = results, quality
    while len(results) <= cap and quality < START:
        kept, kept_quality = results, quality
        quality = max(START, int(quality * 1.1))
        results = save(image, quality)
        encodes += 1
    return Outcome(kept, kept_quality, encodes, image)


def exhaustive_way(sizes: dict[int, bytes], cap: int) -> Outcome | None:
    """The highest quality in [FLOOR, START] that fits; None where none does."""
    fitting = [q for q, data in sizes.items() if len(data) <= cap]
    if not fitting:
        return None
    best = max(fitting)
    return Outcome(sizes[best], best, len(sizes), None)


# --- one photo, in a worker process ---------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    photo: str
    format: str
    fraction: float
    cap: int
    method: str
    quality: int
    size: int
    encodes: int
    downscaled: bool
    score: float
    best: int | None  # the exhaustive best quality; None: the floor does not fit
    same_as_best: bool


@dataclass(frozen=True)
class PhotoResult:
    rows: list[Row]
    non_monotone: list[str]  # "format: q a (n bytes) < q b (m bytes)" where more is smaller


def _shown(data: bytes, width: int, height: int) -> ssimulacra2.Pixels:
    """A file's pixels as a browser shows them in the photo's box: a smaller picture enlarged
    (Pillow's bicubic, pixel centres aligned; libvips' `resize` upwards shifts the picture by a
    fraction of a pixel, which SSIMULACRA2 marks down by some 30-50 points on its own)."""
    decoded = pixels(data)
    if decoded.shape[:2] == (height, width):
        return decoded
    grown = Image.fromarray(decoded).resize((width, height), Image.Resampling.BICUBIC)
    array: ssimulacra2.Pixels = np.asarray(grown, dtype=np.uint8)
    return array


def measure_photo(job: tuple[str, bytes]) -> PhotoResult:
    name, photo = job
    codec.configure(concurrency=1)
    image = pyvips.Image.new_from_buffer(photo, "").copy_memory()
    grey = is_grey(photo)  # encoded as the codec does a grey picture
    reference = ssimulacra2.Reference(pixels(photo))
    scores: dict[bytes, float] = {}

    def score(outcome: Outcome) -> float:
        key = hashlib.sha256(outcome.data).digest()
        if key not in scores:
            scores[key] = reference.score(_shown(outcome.data, image.width, image.height))
        return scores[key]

    rows, non_monotone = [], []
    for fmt in FORMATS:
        enc = encoder(fmt, Effort.BALANCED)

        def save(picture: Any, quality: int, enc: Any = enc) -> bytes:
            return bytes(enc.save(picture, quality, grey=grey))

        sizes = {q: save(image, q) for q in range(bytecap.FLOOR, START + 1)}
        for low in sizes:
            for high in range(low + 1, START + 1):
                if len(sizes[low]) > len(sizes[high]):
                    non_monotone.append(
                        f"{name} {fmt}: q{low} {len(sizes[low]):,} B > q{high} "
                        f"{len(sizes[high]):,} B"
                    )
        for fraction in CAP_FRACTIONS:
            cap = int(len(sizes[START]) * fraction)
            best = exhaustive_way(sizes, cap)
            outcomes: dict[str, Outcome | None] = {"exhaustive": best}
            for method, way in (
                ("imgcrunch", imgcrunch_way),
                ("imgproxy", imgproxy_way),
                ("thumbor", thumbor_way),
            ):
                counted = Counted(save)
                outcome = way(counted, image, cap)
                if outcome.encodes != counted.calls:
                    raise BenchError(f"{method}: {outcome.encodes} encodes, {counted.calls} made")
                outcomes[method] = outcome
            for method in METHODS:
                result = outcomes[method]
                if result is None:
                    continue
                picture = result.image if result.image is not None else image
                rows.append(
                    Row(
                        photo=name,
                        format=str(fmt),
                        fraction=fraction,
                        cap=cap,
                        method=method,
                        quality=result.quality,
                        size=len(result.data),
                        encodes=result.encodes,
                        downscaled=picture.width < image.width,
                        score=score(result),
                        best=best.quality if best else None,
                        same_as_best=best is not None
                        and (result.quality == best.quality or result.data == best.data),
                    )
                )
    return PhotoResult(rows, non_monotone)


# --- the report -------------------------------------------------------------------------------


def _photos(args: argparse.Namespace) -> PhotoSet:
    try:
        return load_catalog(args.max_side).products
    except (BenchError, FileNotFoundError, ValueError):
        catalog = load_set(REPO_CATALOG)
        products = [
            (n, d)
            for n, d in zip(catalog.names, catalog.data, strict=True)
            if n.startswith(("abo-", "wulpus-"))  # its README: the two product shots
        ]
        return PhotoSet(
            f"{REPO_CATALOG}, product shots", [n for n, _ in products], [d for _, d in products]
        )


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary_lines(rows: Sequence[Row], title: str) -> list[str]:
    lines = [
        title,
        f"  {'method':<11} {'encodes med/max':>15} {'bytes/cap med':>13} {'max':>6} "
        f"{'over cap':>8} {'= best':>8} {'quality med':>11} {'smaller':>7} {'SSIM2 med':>9}",
    ]
    for method in METHODS:
        mine = [r for r in rows if r.method == method]
        if not mine:
            continue
        ratios = [r.size / r.cap for r in mine]
        comparable = [r for r in mine if r.best is not None]
        fitting = [r.score for r in mine if r.size <= r.cap]
        same = sum(r.same_as_best for r in comparable)
        encodes = [r.encodes for r in mine]
        lines.append(
            f"  {method:<11} {_median(encodes):>9.1f} / {max(encodes):>2} "
            f"{_median(ratios):>13.3f} {max(ratios):>6.3f} "
            f"{sum(r.size > r.cap for r in mine):>4}/{len(mine):<3} "
            f"{same:>4}/{len(comparable):<3} {_median([r.quality for r in mine]):>11.1f} "
            f"{sum(r.downscaled for r in mine):>7} {_median(fitting):>9.2f}"
        )
    return lines


def report_lines(
    photos: PhotoSet, results: Sequence[PhotoResult], seconds: float, cpu: float, workers: int
) -> list[str]:
    rows = [row for result in results for row in result.rows]
    lines = [
        f"bench/bytecap.py, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores "
        f"({workers} workers), libvips {pyvips.version(0)}.{pyvips.version(1)}."
        f"{pyvips.version(2)}",
        f"photos: {photos.label}, {len(photos.names)} JPEGs; start quality {START}, floor "
        f"{bytecap.FLOOR}, effort balanced; caps x each photo's own q{START} bytes",
        f"wall {seconds:.0f} s, CPU {cpu:.0f} s (the SSIMULACRA2 scores most of it)",
        "columns: encodes per image; bytes / cap (median, most); results over the cap; quality "
        "= the exhaustive best (where some quality in [30, 50] fits); quality; results "
        "downscaled; SSIMULACRA2 (median of the results within the cap; a smaller picture "
        "enlarged back)",
        "",
    ]
    for fmt in FORMATS:
        mine = [r for r in rows if r.format == str(fmt)]
        cases = len({(r.photo, r.fraction) for r in mine})
        lines += summary_lines(mine, f"{fmt}, every cap ({cases} photo x cap cases)")
        for fraction in CAP_FRACTIONS:
            at = [r for r in mine if r.fraction == fraction]
            need_smaller = sorted({r.photo for r in at if r.best is None})
            title = f"{fmt}, cap {fraction} x q{START}"
            if need_smaller:
                title += f": q{bytecap.FLOOR} does not fit for {len(need_smaller)} of "
                title += f"{len({r.photo for r in at})} photos (no exhaustive row for them)"
            lines += summary_lines(at, title)
        lines.append("")
    misses = [
        f"  {r.photo} {r.format} cap {r.fraction}: imgcrunch q{r.quality} ({r.size:,} B), "
        f"best q{r.best} (cap {r.cap:,} B)"
        for r in rows
        if r.method == "imgcrunch" and r.best is not None and not r.same_as_best
    ]
    lines.append(f"imgcrunch not the exhaustive best: {len(misses)}")
    lines += misses
    bumps = [bump for result in results for bump in result.non_monotone]
    lines.append(f"bytes not monotone in quality (a higher quality smaller), q30-q50: {len(bumps)}")
    lines += [f"  {bump}" for bump in bumps[:20]]
    if len(bumps) > 20:
        lines.append(f"  ... and {len(bumps) - 20} more")
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--max-side",
        type=int,
        default=MAX_SIDE,
        help=f"catalog photos reduced to at most this many pixels a side (default {MAX_SIDE})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="processes, one photo each at a time (default: one per core)",
    )
    parser.add_argument("--limit", type=int, default=0, help="only the first N photos")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write the tables")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        photos = _photos(args)
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 2
    jobs = list(zip(photos.names, photos.data, strict=True))[: args.limit or None]
    started, cpu_start = time.monotonic(), time.process_time()
    with worker_pool(args.workers) as pool:
        results = list(pool.imap(measure_photo, jobs))
    children = os.times()  # the workers, joined as the pool closed
    seconds = time.monotonic() - started
    cpu = time.process_time() - cpu_start + children.children_user + children.children_system
    shown = PhotoSet(photos.label, [n for n, _ in jobs], [d for _, d in jobs])
    lines = report_lines(shown, results, seconds, cpu, args.workers)
    print("\n".join(lines))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
