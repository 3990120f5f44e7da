"""Quality benchmark: bytes against perceptual quality for every encoder setting imgcrunch offers.

`quality` means the look of standard libjpeg at that quality in every format (issue 23). Each
setting compresses each photo at several qualities; SSIMULACRA2 (tests/ssimulacra2.py, a port
of libjxl's) scores the result against the photo it came from. The photos are the catalog's
(../shared/corpus/catalog): product shots for the curves and targets, one half of them and of
its textures to fit the calibration tables, the other half to check them. Beside imgcrunch's
JPEG, WebP and AVIF efforts, in the same run: the usual approach (Pillow), the bare library
(libvips with standard tables), imgcrunch before effort levels (standard tables, Huffman
optimisation) and jpegli.

    .venv/bin/python bench/quality.py              # the curves, the targets, the check, the plot
    .venv/bin/python bench/quality.py --formats    # choose WebP's and AVIF's settings per effort
    .venv/bin/python bench/quality.py --calibrate  # fit every format's quality-to-Q tables
    .venv/bin/python bench/quality.py --search     # every JPEG table and option libvips offers

bench/README.md explains the output.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import numpy as np
import pyvips
from PIL import Image

from imgcrunch import codec
from imgcrunch.imaging import avif, jpeg, webp
from imgcrunch.imaging.formats import Format
from imgcrunch.imaging.variants import Variant

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the metric lives beside the tests that hold it to libjxl's
from tests import ssimulacra2  # noqa: E402

SHARED_PHOTOS = "../shared/corpus/photos"  # the fixed corpus: figures compare across time
REPO_PHOTOS = "tests/data/photos"
# The corpus's photos at their own size, not enlarged to 1600x1200: the detail of real photos,
# on which the calibration is fitted. The enlarged ones are smoother than most photos are.
SHARED_ORIGINALS = "../shared/corpus/originals"
HOLDOUT = "tests/data/holdout"  # never used to fit the calibration
# Real photos at their own size (issue 23): 14 product shots first in the README's table, then
# 14 hard textures. Every other one of each kind fits the tables; the rest check them.
CATALOG = "../shared/corpus/catalog"
CATALOG_README = "../shared/corpus/README.md"
CATALOG_PRODUCTS = 14
# The metric costs ~1.5 s of CPU a megapixel: at their own size (up to 2400 px) the catalog's
# photos cost some 5 times as much as reduced to 1024 px, as the tables were fitted.
MAX_SIDE = 1024
SCORE_CACHE = "scores-cache.json"  # in RESULTS: score by photo and output, both by SHA-256
RESULTS = ROOT / "bench" / "results"

QUALITIES = (30, 40, 50, 60, 70, 80, 90)  # the curves
CHECKED = (30, 50, 70, 90)  # the calibration, on the held-out photos and the corpus
ANCHORS = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95)  # calibration points (1 and 100 are fixed)
REFERENCE_QUALITY = 50
# Targets (issue 14), against Pillow at quality 50 in the same run:
# Targets (issue 23), on the catalog's product shots, in the same run:
BYTES_TARGET = {codec.Effort.BALANCED: 0.88, codec.Effort.MAX: 0.78}  # x Pillow q50's, its look
BALANCED_CPU_TARGET = 1.0  # of imgcrunch before effort levels (standard tables, Huffman)
# AVIF: x balanced JPEG's bytes at its quality 50 look, and its most CPU x balanced JPEG's.
AVIF_TARGET: dict[codec.Effort, tuple[float, float | None]] = {
    codec.Effort.BALANCED: (0.72, 8.0),
    codec.Effort.MAX: (0.58, None),
}
# How far an effort's look at quality N may be from standard libjpeg's at N, in steps of
# quality: the standard's own gain in mean SSIMULACRA2 per step there (~1 point at 30, ~0.5 at
# 50). Balanced must be within it either way on the held-out photos; no effort may be further
# below on any set.
CALIBRATION_BAND = 2.0
TIMING_ROUNDS = 5


class BenchError(Exception):
    """The bench itself could not measure."""


# --- photos ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoSet:
    label: str
    names: list[str]
    data: list[bytes]

    def only(self, *, grey: bool) -> PhotoSet:
        chosen = [(n, d) for n, d in zip(self.names, self.data, strict=True) if is_grey(d) == grey]
        label = f"{self.label} ({'grey' if grey else 'colour'})"
        return PhotoSet(label, [n for n, _ in chosen], [d for _, d in chosen])


def load_set(*labels: str) -> PhotoSet:
    for label in labels:
        paths = sorted((ROOT / label).glob("*.jpg"))
        if paths:
            return PhotoSet(label, [p.name for p in paths], [p.read_bytes() for p in paths])
    raise BenchError(f"no photos in {' nor '.join(labels)}")


def is_grey(data: bytes) -> bool:
    return bool(pyvips.Image.new_from_buffer(data, "").bands < 3)


def fitting_sets() -> tuple[PhotoSet, PhotoSet]:
    """The corpus's originals at their own size as JPEG quality 92 (as the corpus photos were
    made), in colour and in grey."""
    folder = ROOT / SHARED_ORIGINALS
    paths = [p for p in sorted(folder.glob("*")) if p.stem != "logo"]  # a logo, not a photo
    if not paths:
        raise BenchError(f"--calibrate fits on the corpus's originals, and {folder} has none")
    colour, grey = [], []
    for path in paths:
        image = pyvips.Image.new_from_file(str(path))
        image = (image.flatten() if image.hasalpha() else image).colourspace("srgb")
        colour.append(bytes(image.jpegsave_buffer(Q=92)))
        grey.append(bytes(image.colourspace("b-w").jpegsave_buffer(Q=92)))
    names = [p.name for p in paths]
    return (
        PhotoSet(SHARED_ORIGINALS, names, colour),
        PhotoSet(f"{SHARED_ORIGINALS} in grey", names, grey),
    )


@dataclass(frozen=True)
class Catalog:
    """../shared/corpus/catalog in its README's order, each photo at most `max_side` pixels on
    its longest side (0: at its own size), split into the half that fits and the half held out."""

    products: PhotoSet
    fit: PhotoSet
    held_out: PhotoSet


def _catalog_names() -> list[str]:
    """The catalog's files in the order of the README's table: product shots first."""
    readme = (ROOT / CATALOG_README).read_text()
    section = readme[readme.index("## `catalog/`") :]
    names = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].endswith(".jpg"):
            names.append(cells[0])
    return names


def _subset(photos: PhotoSet, indices: Iterable[int], label: str) -> PhotoSet:
    chosen = list(indices)
    return PhotoSet(label, [photos.names[i] for i in chosen], [photos.data[i] for i in chosen])


def load_catalog(max_side: int) -> Catalog:
    folder = ROOT / CATALOG
    names = _catalog_names()
    if not names or not folder.is_dir():
        raise BenchError(f"no catalog photos in {folder} (or no table in {CATALOG_README})")
    data = []
    for name in names:
        raw = (folder / name).read_bytes()
        image = pyvips.Image.new_from_buffer(raw, "")
        if max_side and max(image.width, image.height) > max_side:
            # As tests/data/catalog's copies are made: the metric costs ~1.5 s of CPU a
            # megapixel, so the whole catalog at its own size is hours of fitting.
            small = pyvips.Image.thumbnail_buffer(raw, max_side, size="down")
            raw = bytes(small.jpegsave_buffer(Q=92, keep="none"))
        data.append(raw)
    size = f", at most {max_side} px" if max_side else ""
    every = PhotoSet(f"{CATALOG}{size}", names, data)
    products = range(CATALOG_PRODUCTS)
    textures = range(CATALOG_PRODUCTS, len(names))
    fit = [i for kind in (products, textures) for i in kind if (i - kind.start) % 2 == 0]
    held = [i for i in range(len(names)) if i not in fit]
    return Catalog(
        products=_subset(every, products, f"{every.label}, product shots"),
        fit=_subset(every, fit, f"{every.label}, fitting half"),
        held_out=_subset(every, held, f"{every.label}, held-out half"),
    )


def grey_set(photos: PhotoSet) -> PhotoSet:
    """The same photos in grey, as JPEG quality 92: what `grey_calibration` is fitted on."""
    data = [
        bytes(pyvips.Image.new_from_buffer(d, "").colourspace("b-w").jpegsave_buffer(Q=92))
        for d in photos.data
    ]
    return PhotoSet(f"{photos.label} in grey", photos.names, data)


def pixels(data: bytes) -> ssimulacra2.Pixels:
    """Decoded to 8-bit RGB, as a viewer shows it (a grey JPEG as three equal bands)."""
    image = pyvips.Image.new_from_buffer(data, "")
    if image.bands < 3:
        image = image.colourspace("srgb")
    array: ssimulacra2.Pixels = np.asarray(image.numpy(), dtype=np.uint8)
    return array


# --- settings ------------------------------------------------------------------------------------


def _libvips(data: bytes, **options: Any) -> bytes:
    image = pyvips.Image.new_from_buffer(data, "", access="sequential")
    if image.bands < 3:
        image = image.colourspace("srgb")
    encoded: bytes = image.jpegsave_buffer(**({"subsample_mode": "on", "keep": "none"} | options))
    return encoded


def _pillow(data: bytes, quality: int) -> bytes:
    """The usual approach: Pillow's `save(quality=N)`, as the seeds' implementations do."""
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _imgcrunch_before(data: bytes, quality: int) -> bytes:
    """The codec as it was before effort levels (git 93f9cf7), step by step: it turned and
    converted every image (no-ops for these photos, but each a libvips operation), then saved
    with the standard tables and Huffman optimisation."""
    image = pyvips.Image.new_from_buffer(data, "", fail_on="truncated", access="sequential")
    image = image.autorot().colourspace("srgb")
    encoded: bytes = image.jpegsave_buffer(
        Q=quality, optimize_coding=True, subsample_mode="on", keep="none", interlace=False
    )
    return encoded


def _jpegli(data: bytes, quality: int) -> bytes:
    import pyjpegli  # a young binding: measured here, not a dependency of the service

    image = pyvips.Image.new_from_buffer(data, "", access="sequential")
    if image.bands < 3:
        image = image.colourspace("srgb")
    return bytes(pyjpegli.encode(image.write_to_memory(), image.width, image.height, quality))


def jpegli_available() -> bool:
    try:
        import pyjpegli  # noqa: F401
    except ImportError:
        return False
    return True


def _decoded(data: bytes) -> Any:
    image = pyvips.Image.new_from_buffer(data, "", access="sequential")
    return image.colourspace("srgb") if image.bands < 3 else image


def format_setting(encoder: Any, **extra: Any) -> Callable[[bytes, int], bytes]:
    """A WebP or AVIF encoder at its own Q (not through its calibration), options overridden."""
    save = "webpsave_buffer" if isinstance(encoder, webp.WebpEncoder) else "heifsave_buffer"

    def encode(data: bytes, q: int) -> bytes:
        options = encoder.save_options(50) | {"Q": q} | extra
        return bytes(getattr(_decoded(data), save)(**options))

    return encode


def calibrated_format_setting(encoder: Any) -> Callable[[bytes, int], bytes]:
    """A WebP or AVIF effort through its calibration, as the codec calls it."""

    def encode(data: bytes, quality: int) -> bytes:
        return bytes(encoder.save(_decoded(data), quality))

    return encode


def offered_settings() -> dict[str, Callable[[bytes, int], bytes]]:
    """What a user can choose, and the references to hold it against. The efforts' encoders
    as the codec calls them, but without its keeping of originals that would not shrink: at
    quality 90 some inputs would be kept, and the curve would show the input, not the effort."""
    settings: dict[str, Callable[[bytes, int], bytes]] = {
        "pillow": _pillow,
        "libvips standard": lambda data, q: _libvips(data, Q=q),
        "imgcrunch before": _imgcrunch_before,
        **{f"jpeg {e}": calibrated_setting(jpeg.ENCODERS[e]) for e in codec.Effort},
        **{f"webp {e}": calibrated_format_setting(webp.ENCODERS[e]) for e in codec.Effort},
        **{f"avif {e}": calibrated_format_setting(avif.ENCODERS[e]) for e in codec.Effort},
    }
    if jpegli_available():
        settings["jpegli"] = _jpegli
    return settings


def _through_codec(fmt: Format, effort: codec.Effort) -> Callable[[bytes, int], bytes]:
    variants = (Variant(name="output", format=fmt),)

    def encode(data: bytes, quality: int) -> bytes:
        options = codec.CodecOptions(quality=quality, effort=effort, variants=variants)
        return codec.compress(data, options).data

    return encode


def timed_settings() -> dict[str, Callable[[bytes, int], bytes]]:
    """The same, with imgcrunch's efforts through its codec itself: policy, checks and all."""
    return offered_settings() | {
        f"{fmt} {e}": _through_codec(fmt, e) for fmt in Format for e in codec.Effort
    }


SETTING_NOTES = {
    "pillow": "Pillow save(quality=N): the usual approach",
    "libvips standard": "libvips, standard tables, no Huffman optimisation: the bare library",
    "imgcrunch before": "imgcrunch's codec before effort levels: standard tables, Huffman "
    "optimisation",
    "jpeg balanced": "the default effort",
    "jpeg max": "effort=max",
    "jpegli": "pyjpegli on pixels decoded by libvips (a reference, not offered)",
}


def encoder_setting(encoder: jpeg.JpegEncoder, **extra: Any) -> Callable[[bytes, int], bytes]:
    """An effort's encoder at its own Q (not through the calibration table)."""

    def encode(data: bytes, q: int) -> bytes:
        options = encoder.save_options(50) | {"Q": q} | extra
        return _libvips(data, **options)

    return encode


def calibrated_setting(encoder: jpeg.JpegEncoder) -> Callable[[bytes, int], bytes]:
    """An effort's encoder through its calibration, as the codec calls it, but without the
    codec's keeping of originals that would not shrink (their look is the input's)."""

    def encode(data: bytes, quality: int) -> bytes:
        return _libvips(data, **encoder.save_options(quality, grey=is_grey(data)))

    return encode


# --- scoring, in worker processes ---------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """Every (setting, quality) for one photo, so that its reference is prepared once."""

    photo: int
    data: bytes
    cases: list[tuple[str, int]]  # setting name, quality (or Q)
    settings: str  # which family of settings: "offered", "search", "calibrate" or "formats"
    known: dict[str, float] = field(default_factory=dict)  # output's SHA-256 -> score


def _family(name: str) -> dict[str, Callable[[bytes, int], bytes]]:
    families = {
        "offered": offered_settings,
        "search": search_settings,
        "calibrate": calibration_settings,
        "formats": format_search_settings,
    }
    return families[name]()


_REFERENCES: dict[bytes, ssimulacra2.Reference] = {}  # in each worker: photos seen lately
_KEPT_REFERENCES = 8  # some 90 MB each for a 1600x1200 photo


def _reference(data: bytes) -> ssimulacra2.Reference:
    key = hashlib.sha256(data).digest()
    if key not in _REFERENCES:
        if len(_REFERENCES) >= _KEPT_REFERENCES:
            del _REFERENCES[next(iter(_REFERENCES))]
        _REFERENCES[key] = ssimulacra2.Reference(pixels(data))
    return _REFERENCES[key]


def score_job(job: Job) -> tuple[int, list[tuple[str, int, int, float, str]]]:
    """Each case's bytes and score; a score is taken from `known` when the same output of the
    same photo was scored before (the metric is a pure function of the two)."""
    codec.configure(concurrency=1)
    settings = _family(job.settings)
    results = []
    for name, quality in job.cases:
        encoded = settings[name](job.data, quality)
        digest = hashlib.sha256(encoded).hexdigest()
        score = job.known.get(digest)
        if score is None:
            score = _reference(job.data).score(pixels(encoded))
        results.append((name, quality, len(encoded), score, digest))
    return job.photo, results


class ScoreCache:
    """Scores kept between runs in bench/results, by photo and output (SHA-256 of each)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.scores: dict[str, dict[str, float]] = {}
        if path.exists():
            self.scores = json.loads(path.read_text())

    def known(self, photo: bytes) -> dict[str, float]:
        return self.scores.get(hashlib.sha256(photo).hexdigest(), {})

    def add(self, photo: bytes, digest: str, score: float) -> None:
        self.scores.setdefault(hashlib.sha256(photo).hexdigest(), {})[digest] = score

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.scores))


_CACHE: ScoreCache | None = None


def _cache() -> ScoreCache:
    global _CACHE
    if _CACHE is None:
        _CACHE = ScoreCache(RESULTS / SCORE_CACHE)
    return _CACHE


@dataclass
class Scores:
    """Per setting and quality: each photo's bytes and score."""

    by_case: dict[tuple[str, int], list[tuple[int, float]]] = field(default_factory=dict)

    def add(self, name: str, quality: int, size: int, score: float) -> None:
        self.by_case.setdefault((name, quality), []).append((size, score))

    def bytes(self, name: str, quality: int) -> int:
        return sum(size for size, _ in self.by_case[(name, quality)])

    def mean(self, name: str, quality: int) -> float:
        return statistics.fmean(score for _, score in self.by_case[(name, quality)])


def worker_pool(workers: int) -> Pool:
    # Spawned, not forked: a fork of a process whose libvips has started threads can hang.
    return multiprocessing.get_context("spawn").Pool(workers)


def score_all(
    pool: Pool, photos: PhotoSet, cases: Sequence[tuple[str, int]], family: str
) -> Scores:
    cache = _cache()
    jobs = [
        Job(n, data, list(cases), family, cache.known(data)) for n, data in enumerate(photos.data)
    ]
    scores = Scores()
    for n, results in pool.imap_unordered(score_job, jobs):
        for name, quality, size, score, digest in results:
            scores.add(name, quality, size, score)
            cache.add(photos.data[n], digest, score)
    cache.save()
    return scores


# --- CPU per image ---------------------------------------------------------------------------


def cpu_ms_per_image(
    photos: PhotoSet, settings: dict[str, Callable[[bytes, int], bytes]], quality: int
) -> dict[str, float]:
    """Process CPU per image on one thread, rounds interleaved; the median round of each."""
    rounds: dict[str, list[float]] = {name: [] for name in settings}
    for encode in settings.values():  # warm up
        encode(photos.data[0], quality)
    for _ in range(TIMING_ROUNDS):
        for name, encode in settings.items():
            started = time.process_time()
            for data in photos.data:
                encode(data, quality)
            rounds[name].append((time.process_time() - started) * 1000 / len(photos.data))
    return {name: statistics.median(values) for name, values in rounds.items()}


# --- the default run: offered settings, targets, calibration check, plot ------------------------


@dataclass
class Report:
    photos: str
    checked_on: list[str]
    cores: int
    rows: list[dict[str, Any]] = field(default_factory=list)  # setting, quality, bytes, score
    calibration: list[dict[str, Any]] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)
    # Per setting: its bytes interpolated at Pillow quality 50's mean score (JPEG's targets),
    # and at balanced JPEG quality 50's (the other formats' targets).
    at_pillow_look: dict[str, float] = field(default_factory=dict)
    at_balanced_look: dict[str, float] = field(default_factory=dict)
    targets: dict[str, bool] = field(default_factory=dict)
    timestamp: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


FORMAT_EFFORTS = [f"{fmt} {effort}" for fmt in Format for effort in codec.Effort]


def run_offered(args: argparse.Namespace) -> tuple[Report, Path]:
    catalog = load_catalog(args.max_side)
    photos = catalog.products
    holdout = load_set(HOLDOUT)
    check_sets = [catalog.held_out, holdout.only(grey=False), holdout.only(grey=True)]
    settings = offered_settings()
    report = Report(photos.label, [s.label for s in check_sets], args.workers)
    _say(f"imgcrunch quality bench  (photos: {photos.label}, {len(photos.names)} JPEGs)")
    cases = [(name, q) for name in settings for q in QUALITIES]
    # The standard either side of each checked quality too: its slope there is the step.
    around = sorted({min(100, q + d) for q in CHECKED for d in (-10, 0, 10)})
    check_cases = [("libvips standard", q) for q in around]
    check_cases += [(name, q) for name in FORMAT_EFFORTS for q in CHECKED]
    with worker_pool(args.workers) as pool:
        scores = score_all(pool, photos, cases, "offered")
        checked = {kind.label: score_all(pool, kind, check_cases, "offered") for kind in check_sets}
    for name, q in cases:
        report.rows.append(
            {
                "setting": name,
                "quality": q,
                "bytes": scores.bytes(name, q),
                "ssimulacra2": scores.mean(name, q),
            }
        )
    reference_bytes = scores.bytes("pillow", REFERENCE_QUALITY)
    pillow_look = scores.mean("pillow", REFERENCE_QUALITY)
    balanced_look = scores.mean(f"jpeg {codec.Effort.BALANCED}", REFERENCE_QUALITY)
    for name in settings:
        report.at_pillow_look[name] = _bytes_at(report.rows, name, pillow_look)
        report.at_balanced_look[name] = _bytes_at(report.rows, name, balanced_look)
    report.cpu_ms = cpu_ms_per_image(photos, timed_settings(), REFERENCE_QUALITY)
    for line in table_lines(report, reference_bytes):
        _say(line)
    for label, photo_scores in checked.items():
        for setting in FORMAT_EFFORTS:
            for q in CHECKED:
                standard = photo_scores.mean("libvips standard", q)
                difference = photo_scores.mean(setting, q) - standard
                report.calibration.append(
                    {
                        "set": label,
                        "setting": setting,
                        "quality": q,
                        "standard": standard,
                        "difference": difference,
                        "steps": difference / _step(photo_scores, q),
                    }
                )
    for line in calibration_lines(report):
        _say(line)
    for line in target_lines(report, reference_bytes, pillow_look, balanced_look):
        _say(line)
    plot = plot_curves(report.rows, reference_bytes, RESULTS / "quality.png", "imgcrunch settings")
    _say(f"plot written to {_shown(plot)}")
    return report, RESULTS / "quality-latest.json"


def table_lines(report: Report, reference_bytes: int) -> list[str]:
    qualities = sorted({row["quality"] for row in report.rows})
    lines = [
        f"bytes against Pillow quality {REFERENCE_QUALITY}'s ({reference_bytes:,} bytes), "
        "and mean SSIMULACRA2, by quality:",
        f"{'setting':20}{'CPU ms':>8}  " + "".join(f"{'q' + str(q):>14}" for q in qualities),
    ]
    names = dict.fromkeys(row["setting"] for row in report.rows)
    for name in names:
        cells = ""
        for q in qualities:
            row = next(r for r in report.rows if r["setting"] == name and r["quality"] == q)
            cells += f"{row['bytes'] / reference_bytes:7.3f}x {row['ssimulacra2']:5.1f}"
        lines.append(f"{name:20}{report.cpu_ms.get(name, float('nan')):8.1f}  {cells}")
    lines.append(
        f"(CPU ms: process CPU per image on one thread at quality {REFERENCE_QUALITY}, decode "
        f"and encode, the efforts through the codec, median of {TIMING_ROUNDS} interleaved "
        "rounds)"
    )
    balanced = f"jpeg {codec.Effort.BALANCED}"
    lines.append(
        "at equal look (bytes interpolated on each curve): x Pillow quality "
        f"{REFERENCE_QUALITY}'s bytes at its look; x balanced JPEG's at its quality "
        f"{REFERENCE_QUALITY} look; CPU x balanced JPEG's"
    )
    for name in names:
        lines.append(
            f"  {name:20}{report.at_pillow_look[name] / reference_bytes:7.3f}x"
            f"{report.at_balanced_look[name] / report.at_balanced_look[balanced]:8.3f}x"
            f"{report.cpu_ms.get(name, float('nan')) / report.cpu_ms[balanced]:8.1f}x"
        )
    return lines


def _step(scores: Scores, quality: int) -> float:
    """Standard libjpeg's gain in mean score per step of quality around `quality`."""
    low, high = max(1, quality - 10), min(100, quality + 10)
    gain = scores.mean("libvips standard", high) - scores.mean("libvips standard", low)
    return gain / (high - low)


def calibration_lines(report: Report) -> list[str]:
    lines = [
        "calibration: mean SSIMULACRA2 of each format and effort minus standard libjpeg's at "
        "the same quality [in steps of quality], on photos not fitted to"
    ]
    for label in dict.fromkeys(row["set"] for row in report.calibration):
        lines.append(
            f"  {label}: standard libjpeg "
            + "  ".join(
                f"q{row['quality']} {row['standard']:5.2f}"
                for row in report.calibration
                if row["set"] == label and row["setting"] == FORMAT_EFFORTS[0]
            )
        )
        for setting in FORMAT_EFFORTS:
            cells = "  ".join(
                f"q{row['quality']} {row['difference']:+5.2f} [{row['steps']:+4.1f}]"
                for row in report.calibration
                if row["set"] == label and row["setting"] == setting
            )
            lines.append(f"    {setting:14} {cells}")
    return lines


def target_lines(
    report: Report, reference_bytes: int, pillow_look: float, balanced_look: float
) -> list[str]:
    # Bytes are compared at the same look, never at the same quality number: what a number
    # gives depends on the tables (the guide's rule, and issue 14's).
    lines = []
    cpu = report.cpu_ms
    balanced = f"jpeg {codec.Effort.BALANCED}"
    for effort, bytes_target in BYTES_TARGET.items():
        name = f"jpeg {effort}"
        share = report.at_pillow_look[name] / reference_bytes
        met = share <= bytes_target
        report.targets[f"jpeg_{effort}_bytes"] = met
        lines.append(
            f"target: JPEG {effort}, bytes <= {bytes_target:.2f}x Pillow's at Pillow quality "
            f"{REFERENCE_QUALITY}'s look ({pillow_look:.2f}), product shots : {_met(met)} "
            f"({share:.3f}x)"
        )
    share = cpu[balanced] / cpu["imgcrunch before"]
    met = share <= BALANCED_CPU_TARGET
    report.targets["jpeg_balanced_cpu"] = met
    lines.append(
        f"target: JPEG balanced codec CPU <= {BALANCED_CPU_TARGET:.0%} of imgcrunch before "
        f"(standard tables, Huffman optimisation) : {_met(met)} ({share:.0%}: "
        f"{cpu[balanced]:.1f} against {cpu['imgcrunch before']:.1f} ms)"
    )
    for effort, (bytes_target, cpu_target) in AVIF_TARGET.items():
        name = f"avif {effort}"
        share = report.at_balanced_look[name] / report.at_balanced_look[balanced]
        cost = cpu[name] / cpu[balanced]
        met = share <= bytes_target and (cpu_target is None or cost <= cpu_target)
        report.targets[f"avif_{effort}"] = met
        limit = f", CPU <= {cpu_target:g}x" if cpu_target else ""
        lines.append(
            f"target: AVIF {effort}, bytes <= {bytes_target:.2f}x balanced JPEG's at its "
            f"quality {REFERENCE_QUALITY} look ({balanced_look:.2f}){limit} : {_met(met)} "
            f"({share:.3f}x, CPU {cost:.1f}x)"
        )
    for effort in codec.Effort:
        name = f"webp {effort}"
        share = report.at_balanced_look[name] / report.at_balanced_look[balanced]
        lines.append(
            f"WebP {effort} (no target): {share:.3f}x balanced JPEG's bytes at its quality "
            f"{REFERENCE_QUALITY} look, CPU {cpu[name] / cpu[balanced]:.1f}x"
        )
    # Balanced, the default, must look like the standard either way; max may look better (its
    # tables are fitted to look no worse on average), never worse. Every set is held out.
    for label in dict.fromkeys(row["set"] for row in report.calibration):
        rows = [r for r in report.calibration if r["set"] == label]
        held = [r for r in rows if r["setting"].endswith(str(codec.Effort.BALANCED))]
        furthest = max(held, key=lambda row: abs(row["steps"]))
        lowest = min(rows, key=lambda row: row["steps"])
        met = abs(furthest["steps"]) <= CALIBRATION_BAND and lowest["steps"] >= -CALIBRATION_BAND
        report.targets[f"calibration {label}"] = met
        lines.append(
            f"target: on {label}, each balanced looks like standard libjpeg at the same quality "
            f"+-{CALIBRATION_BAND:g} steps, and no effort worse by more : {_met(met)} (balanced "
            f"furthest: {furthest['setting']} q{furthest['quality']} "
            f"{furthest['difference']:+.2f} [{furthest['steps']:+.1f}]; lowest: "
            f"{lowest['setting']} q{lowest['quality']} {lowest['difference']:+.2f} "
            f"[{lowest['steps']:+.1f}])"
        )
    return lines


def plot_curves(
    rows: Sequence[dict[str, Any]], reference_bytes: int, path: Path, title: str
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 6))
    for name in dict.fromkeys(row["setting"] for row in rows):
        points = sorted(
            (r["ssimulacra2"], r["bytes"] / reference_bytes) for r in rows if r["setting"] == name
        )
        axes.plot([s for s, _ in points], [b for _, b in points], marker="o", ms=3, label=name)
    axes.set_xlabel("mean SSIMULACRA2 against the input (higher is better)")
    axes.set_ylabel(f"bytes, x Pillow quality {REFERENCE_QUALITY}'s")
    axes.set_title(f"{title}: bytes against perceptual quality")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


# --- --calibrate: fit each effort's table of quality to Q --------------------------------------

# The Qs each setting is scored at; each anchor's Q is interpolated between the two around it
# (a search of every Q at every anchor would cost several times as much, AVIF most). Each grid
# holds --formats' Qs, whose scores are then in the cache already.
GRID_QS = {
    "jpeg": (5, 15, 25, 35, 45, 55, 65, 75, 85, 95),
    "webp": (10, 20, 30, 40, 50, 60, 72, 84, 92, 98),
    "avif": (6, 16, 26, 36, 46, 56, 66, 76, 86, 96),
}


def calibration_settings() -> dict[str, Callable[[bytes, int], bytes]]:
    settings = {"standard": lambda data, q: _libvips(data, Q=q)}
    for effort, encoder in jpeg.ENCODERS.items():
        settings[f"jpeg {effort}"] = encoder_setting(encoder)
        settings[f"jpeg {effort} grey"] = encoder_setting(encoder)  # the same, on grey photos
    for module in (webp, avif):
        for effort, other in module.ENCODERS.items():
            settings[f"{module.EXTENSION} {effort}"] = format_setting(other)
    return settings


def run_calibrate(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """At each anchor quality, the Q whose mean score is standard libjpeg's there, interpolated
    between the grid's Qs: every format and effort on the catalog's fitting half (JPEG in grey
    too), or JPEG alone on the corpus's originals (`--on originals`, the tables of 2026-12-01)."""
    if args.on == "originals":
        colour, grey = fitting_sets()
        colour_names = [f"jpeg {e}" for e in codec.Effort]
    else:
        colour = load_catalog(args.max_side).fit
        grey = grey_set(colour)
        colour_names = [f"{fmt} {e}" for fmt in ("jpeg", "webp", "avif") for e in codec.Effort]
    grey_names = [f"jpeg {e} grey" for e in codec.Effort]
    fitted: dict[str, Any] = {"photos": colour.label, "names": colour.names, "tables": {}}
    with worker_pool(args.workers) as pool:
        for kind, photos, names in (
            ("calibration", colour, colour_names),
            ("grey_calibration", grey, grey_names),
        ):
            _say(f"calibrating on {photos.label} ({len(photos.names)} JPEGs)")
            cases = [("standard", q) for q in ANCHORS]
            cases += [(n, q) for n in names for q in GRID_QS[n.split(" ")[0]]]
            scores = score_all(pool, photos, cases, "calibrate")
            targets = {q: scores.mean("standard", q) for q in ANCHORS}
            for name in names:
                curve = {q: scores.mean(name, q) for q in GRID_QS[name.split(" ")[0]]}
                points = _fit(curve, targets)
                setting = name.removesuffix(" grey")
                fitted["tables"].setdefault(setting, {})[kind] = points
                fitted["tables"][setting][f"{kind}_scores"] = {
                    "standard": targets,
                    "grid": curve,
                }
                _say(f"{setting}: {kind}={tuple(points)}")
                _say(
                    "  standard: "
                    + " ".join(f"q{q} {s:5.1f}" for q, s in targets.items())
                    + f"\n  {setting} by Q: "
                    + " ".join(f"Q{q} {s:5.1f}" for q, s in curve.items())
                )
    return fitted, RESULTS / f"calibration-{args.on}-latest.json"


def _fit(curve: dict[int, float], targets: dict[int, float]) -> list[tuple[int, int]]:
    """Each anchor's Q: where the setting's mean score (by Q, rising) meets the standard's, by
    linear interpolation between grid points (extrapolated at the ends), in 1..100, and never
    lower than the anchor before it."""
    grid = sorted(curve.items())
    points: list[tuple[int, int]] = [(1, 1)]
    for quality, target in targets.items():
        pairs = list(itertools.pairwise(grid))
        chosen = next(((a, b) for a, b in pairs if a[1] <= target <= b[1]), None)
        if chosen is None:
            chosen = pairs[0] if target < grid[0][1] else pairs[-1]
        (q0, s0), (q1, s1) = chosen
        q = q0 + (q1 - q0) * (target - s0) / (s1 - s0) if s1 != s0 else q0
        points.append((quality, max(points[-1][1], 1, min(100, round(q)))))
    points.append((100, 100))
    return points


# --- --search: the whole space libvips offers -------------------------------------------------

SEARCH_TABLES = range(9)
SEARCH_MODES = {
    "plain": {},
    "huffman": {"optimize_coding": True},
    "progressive": {"optimize_coding": True, "interlace": True, "optimize_scans": True},
    "trellis": {"optimize_coding": True, "trellis_quant": True},
    "trellis progressive": {
        "optimize_coding": True,
        "trellis_quant": True,
        "interlace": True,
        "optimize_scans": True,
    },
}
SEARCH_QS = (25, 35, 45, 55, 65, 75)


def search_settings() -> dict[str, Callable[[bytes, int], bytes]]:
    settings: dict[str, Callable[[bytes, int], bytes]] = {"pillow": _pillow}
    for table in SEARCH_TABLES:
        for mode, options in SEARCH_MODES.items():
            settings[f"table {table} {mode}"] = _search_encoder(table, options)
    if jpegli_available():
        settings["jpegli"] = _jpegli
    return settings


def _search_encoder(table: int, options: dict[str, Any]) -> Callable[[bytes, int], bytes]:
    return lambda data, q: _libvips(data, Q=q, quant_table=table, **options)


def run_search(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    photos = load_set(SHARED_PHOTOS, REPO_PHOTOS)
    settings = search_settings()
    _say(f"searching {len(settings)} settings on {photos.label}; this takes a while")
    cases = [(name, q) for name in settings for q in SEARCH_QS]
    cases += [("pillow", REFERENCE_QUALITY)]
    with worker_pool(args.workers) as pool:
        scores = score_all(pool, photos, cases, "search")
    reference_bytes = scores.bytes("pillow", REFERENCE_QUALITY)
    target = scores.mean("pillow", REFERENCE_QUALITY)
    cpu = cpu_ms_per_image(photos, settings, REFERENCE_QUALITY)
    rows = [
        {"setting": name, "quality": q, "bytes": scores.bytes(name, q), "ssimulacra2": s}
        for name, q in cases
        if name != "pillow" or q != REFERENCE_QUALITY
        for s in [scores.mean(name, q)]
    ]
    _say(f"at Pillow quality {REFERENCE_QUALITY}'s look ({target:.2f}), interpolated:")
    _say(f"{'setting':28}{'bytes':>10}{'CPU ms':>9}{'CPU x plain':>13}")
    summary = []
    for name in settings:
        share = _bytes_at(rows, name, target) / reference_bytes
        table = name.split(" ")[1] if name.startswith("table ") else None
        plain = cpu.get(f"table {table} plain") if table else None
        relative = f"{cpu[name] / plain:13.2f}" if plain else f"{'':13}"
        summary.append({"setting": name, "bytes_share": share, "cpu_ms": cpu[name]})
        _say(f"{name:28}{share:9.3f}x{cpu[name]:9.1f}{relative}")
    plot = plot_curves(rows, reference_bytes, RESULTS / "quality-search.png", "every setting")
    _say(f"plot written to {_shown(plot)}")
    return {"rows": rows, "summary": summary, "reference_bytes": reference_bytes}, RESULTS / (
        "quality-search-latest.json"
    )


def _bytes_at(rows: Iterable[dict[str, Any]], name: str, target: float) -> float:
    """Bytes at a score, interpolated between the two qualities around it (ends extrapolated)."""
    points: list[tuple[float, float]] = sorted(
        (float(r["ssimulacra2"]), float(r["bytes"])) for r in rows if r["setting"] == name
    )
    for (s0, b0), (s1, b1) in itertools.pairwise(points):
        if s0 <= target <= s1 and s1 > s0:
            return b0 + (b1 - b0) * (target - s0) / (s1 - s0)
    (s0, b0), (s1, b1) = points[:2] if target < points[0][0] else points[-2:]
    return b0 + (b1 - b0) * (target - s0) / (s1 - s0) if s1 != s0 else b0


# --- --formats: each format's settings per effort, by measurement ------------------------------

AVIF_EFFORTS = range(10)  # libvips' effort: aom's speed is 9 minus it
WEBP_EFFORTS = range(7)  # libwebp's method
# aom's tuning (libvips' `tune`): libvips 8.18's default is "iq" (libaom 3.12's tuning for
# still images' perceived quality); "ssim" was the default before.
AVIF_TUNES = ("iq", "ssim")
WEBP_PRESETS = ("default", "photo", "picture")
# The Qs each family is scored at, around standard libjpeg quality 50's look.
FORMAT_QS = {"avif": (36, 46, 56), "webp": (60, 72, 84), "jpeg": (35, 45, 55)}
# Settings slower than this, on the first photos, in multiples of balanced JPEG's CPU, are
# timed but not scored: bytes weigh more than CPU, but not at any price (AVIF effort 4 spends
# some 250x JPEG's CPU).
FORMAT_CPU_CAP = 100.0
FORMAT_TIMING_ROUNDS = 3
# The CPU each effort may spend, in multiples of balanced JPEG's (issue 23: AVIF balanced at
# most 8x; max as few bytes as the cap allows).
EFFORT_CPU_LIMIT = {codec.Effort.BALANCED: 8.0, codec.Effort.MAX: FORMAT_CPU_CAP}


def _avif_name(effort: int, subsample: str, tune: str = AVIF_TUNES[0]) -> str:
    name = f"avif e{effort} {'420' if subsample == 'on' else '444'}"
    return name if tune == AVIF_TUNES[0] else f"{name} {tune}"


def _webp_name(effort: int, smart: bool, preset: str) -> str:
    return f"webp e{effort} {'smart' if smart else 'plain'} {preset}"


def format_search_settings() -> dict[str, Callable[[bytes, int], bytes]]:
    settings: dict[str, Callable[[bytes, int], bytes]] = {
        "standard": lambda data, q: _libvips(data, Q=q),
        **{f"jpeg {e}": encoder_setting(jpeg.ENCODERS[e]) for e in codec.Effort},
    }
    base_avif = avif.ENCODERS[codec.Effort.BALANCED]
    for effort in AVIF_EFFORTS:
        for subsample in ("on", "off"):
            for tune in AVIF_TUNES:
                settings[_avif_name(effort, subsample, tune)] = format_setting(
                    base_avif,
                    effort=effort,
                    subsample_mode=subsample,
                    **({"tune": tune} if tune != AVIF_TUNES[0] else {}),
                )
    base_webp = webp.ENCODERS[codec.Effort.BALANCED]
    for effort in WEBP_EFFORTS:
        for smart in (False, True):
            for preset in WEBP_PRESETS:
                settings[_webp_name(effort, smart, preset)] = format_setting(
                    base_webp, effort=effort, smart_subsample=smart, preset=preset
                )
    return settings


def _family_qs(name: str) -> tuple[int, ...]:
    return FORMAT_QS[name.split(" ")[0] if name != "standard" else "jpeg"]


def _time_once(encode: Callable[[bytes, int], bytes], photos: Sequence[bytes], q: int) -> float:
    started = time.process_time()
    for data in photos:
        encode(data, q)
    return (time.process_time() - started) * 1000 / len(photos)


def run_formats(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """Score each candidate setting at three Qs on the catalog's fitting half, interpolate its
    bytes at standard libjpeg quality 50's look, time it there, and pick each effort's."""
    photos = load_catalog(args.max_side).fit
    settings = format_search_settings()
    jpeg_balanced = f"jpeg {codec.Effort.BALANCED}"
    _say(f"imgcrunch format settings  (photos: {photos.label}, {len(photos.names)} JPEGs)")
    # A first look at CPU, one round on two photos: which AVIF efforts are worth scoring.
    probe = [photos.data[0], photos.data[-1]]
    base = _time_once(settings[jpeg_balanced], probe, 45)
    avif_efforts = []
    for effort in AVIF_EFFORTS:
        cost = _time_once(settings[_avif_name(effort, "on")], probe, 46) / base
        _say(f"  probe: {_avif_name(effort, 'on')} {cost:6.1f}x balanced JPEG's CPU")
        if cost > FORMAT_CPU_CAP:
            _say(f"  AVIF effort {effort} and up: over {FORMAT_CPU_CAP:g}x, not scored")
            break
        avif_efforts.append(effort)
    candidates = ["standard", *[f"jpeg {e}" for e in codec.Effort]]
    candidates += [_avif_name(e, "on") for e in avif_efforts]
    candidates += [_avif_name(e, "off") for e in (avif_efforts[0], avif_efforts[-1])]
    candidates += [_avif_name(e, "on", t) for e in (0, 3) for t in AVIF_TUNES[1:]]
    candidates += [_webp_name(e, False, "default") for e in WEBP_EFFORTS]
    candidates += [_webp_name(e, True, "default") for e in (2, 4, 6)]
    candidates += [_webp_name(e, False, p) for e in (4, 6) for p in WEBP_PRESETS[1:]]
    candidates = list(dict.fromkeys(candidates))
    cases = [(name, q) for name in candidates for q in _family_qs(name)]
    cases.append(("standard", REFERENCE_QUALITY))
    with worker_pool(args.workers) as pool:
        scores = score_all(pool, photos, cases, "formats")
    reference_bytes = scores.bytes("standard", REFERENCE_QUALITY)
    look = scores.mean("standard", REFERENCE_QUALITY)
    rows: list[dict[str, Any]] = [
        {"setting": n, "quality": q, "bytes": scores.bytes(n, q), "ssimulacra2": scores.mean(n, q)}
        for n, q in dict.fromkeys(cases)
    ]
    at_look: dict[str, dict[str, float]] = {}
    for name in candidates:
        curve = [r for r in rows if r["setting"] == name]
        q_rows = [{**r, "bytes": r["quality"]} for r in curve]  # Q against score, the same way
        at_look[name] = {
            "bytes": _bytes_at(curve, name, look),
            "q": _bytes_at(q_rows, name, look),
            "extrapolated": not min(r["ssimulacra2"] for r in curve)
            <= look
            <= max(r["ssimulacra2"] for r in curve),
        }
    # CPU per photo at each one's Q at the look, rounds interleaved, the median of each.
    rounds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(FORMAT_TIMING_ROUNDS):
        for name in candidates:
            q = max(1, min(100, round(at_look[name]["q"])))
            rounds[name].append(_time_once(settings[name], photos.data, q))
    for name in candidates:
        at_look[name]["cpu_ms"] = statistics.median(rounds[name])
    base_cpu = at_look[jpeg_balanced]["cpu_ms"]
    base_bytes = at_look[jpeg_balanced]["bytes"]
    _say(
        f"at standard libjpeg quality {REFERENCE_QUALITY}'s look (mean SSIMULACRA2 {look:.2f}; "
        f"{reference_bytes:,} bytes), interpolated between each setting's Qs:"
    )
    _say(
        f"{'setting':26}{'Q':>6}{'bytes':>9}{'x bal.JPEG':>11}{'CPU ms':>9}{'x bal.JPEG':>11}"
        "   mean SSIMULACRA2 at its Qs"
    )
    for name in candidates:
        found = at_look[name]
        curve_text = "  ".join(f"Q{q} {scores.mean(name, q):5.1f}" for q in _family_qs(name))
        flag = " (extrapolated)" if found["extrapolated"] else ""
        _say(
            f"{name:26}{found['q']:6.1f}{found['bytes'] / reference_bytes:8.3f}x"
            f"{found['bytes'] / base_bytes:10.3f}x{found['cpu_ms']:9.1f}"
            f"{found['cpu_ms'] / base_cpu:10.1f}x   {curve_text}{flag}"
        )
    choices: dict[str, dict[str, str]] = {}
    for fmt in ("avif", "webp"):
        for level, limit in EFFORT_CPU_LIMIT.items():
            allowed = [
                n
                for n in candidates
                if n.startswith(fmt) and at_look[n]["cpu_ms"] <= limit * base_cpu
            ]
            if not allowed:
                _say(f"choice: {fmt} {level}: nothing within {limit:g}x balanced JPEG's CPU")
                continue
            best = min(allowed, key=lambda n: at_look[n]["bytes"])
            choices.setdefault(fmt, {})[str(level)] = best
            _say(
                f"choice: {fmt} {level}: {best} (fewest bytes within {limit:g}x balanced "
                f"JPEG's CPU: {at_look[best]['bytes'] / base_bytes:.3f}x its bytes, "
                f"{at_look[best]['cpu_ms'] / base_cpu:.1f}x its CPU)"
            )
    plot = plot_curves(rows, reference_bytes, RESULTS / "quality-formats.png", "format settings")
    _say(f"plot written to {_shown(plot)}")
    content = {
        "photos": photos.label,
        "names": photos.names,
        "look": look,
        "reference_bytes": reference_bytes,
        "rows": rows,
        "at_look": at_look,
        "choices": choices,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return content, RESULTS / "quality-formats-latest.json"


# --- main -------------------------------------------------------------------------------------


def _met(met: bool) -> str:
    return "met" if met else "NOT met"


def _say(line: str) -> None:
    print(line, flush=True)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def write_json(content: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ignore = path.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*.json\n")
    path.write_text(json.dumps(content, indent=2, default=str) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--calibrate", action="store_true", help="fit each effort's Q table")
    mode.add_argument("--search", action="store_true", help="every table and option")
    mode.add_argument(
        "--formats", action="store_true", help="choose WebP's and AVIF's settings per effort"
    )
    parser.add_argument(
        "--on",
        choices=("catalog", "originals"),
        default="catalog",
        help="--calibrate: on the catalog's fitting half (every format), or JPEG on the "
        "corpus's originals (the tables before the catalog)",
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=MAX_SIDE,
        help=f"catalog photos reduced to at most this many pixels a side (default {MAX_SIDE}, "
        "as the tables were fitted; 0: at their own size, some 5 times the CPU)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="processes scoring photos (default: one per core)",
    )
    parser.add_argument("--json", type=Path, help="where to write the figures as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    codec.configure(concurrency=1)
    try:
        if args.calibrate:
            content, path = run_calibrate(args)
        elif args.search:
            content, path = run_search(args)
        elif args.formats:
            content, path = run_formats(args)
        else:
            report, path = run_offered(args)
            content = asdict(report)
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 2
    write_json(content, args.json or path)
    _say(f"figures written to {_shown(args.json or path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
