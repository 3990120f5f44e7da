"""Quality benchmark: bytes against perceptual quality for every encoder setting imgcrunch offers.

Each setting compresses each photo at several qualities; SSIMULACRA2 (tests/ssimulacra2.py, a
port of libjxl's) scores the result against the photo it came from. Beside imgcrunch's effort
levels, in the same run: the usual approach (Pillow), the bare library (libvips with standard
tables), imgcrunch before effort levels (standard tables, Huffman optimisation) and jpegli.

    .venv/bin/python bench/quality.py              # the table, the targets, the plot
    .venv/bin/python bench/quality.py --calibrate  # fit each effort's quality-to-Q table
    .venv/bin/python bench/quality.py --search     # every table and option libvips offers

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
from imgcrunch.imaging import jpeg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the metric lives beside the tests that hold it to libjxl's
from tests import ssimulacra2  # noqa: E402

SHARED_PHOTOS = "../shared/corpus/photos"  # the fixed corpus: figures compare across time
REPO_PHOTOS = "tests/data/photos"
# The corpus's photos at their own size, not enlarged to 1600x1200: the detail of real photos,
# on which the calibration is fitted. The enlarged ones are smoother than most photos are.
SHARED_ORIGINALS = "../shared/corpus/originals"
HOLDOUT = "tests/data/holdout"  # never used to fit the calibration
RESULTS = ROOT / "bench" / "results"

QUALITIES = (30, 40, 50, 60, 70, 80, 90)  # the curves
CHECKED = (30, 50, 70, 90)  # the calibration, on the held-out photos and the corpus
ANCHORS = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95)  # calibration points (1 and 100 are fixed)
REFERENCE_QUALITY = 50
# Targets (issue 14), against Pillow at quality 50 in the same run:
QUALITY_SLACK = 0.5  # mean SSIMULACRA2 may be this much below the reference's
BYTES_TARGET = {codec.Effort.BALANCED: 0.85, codec.Effort.MAX: 0.75}
BALANCED_CPU_TARGET = 0.70  # of imgcrunch before effort levels
# How far an effort's look at quality N may be from standard libjpeg's at N, in steps of
# quality: the standard's own gain in mean SSIMULACRA2 per step there (~1 point at 30, ~0.5 at
# 50). Balanced must be within it either way on the held-out photos; no effort may be further
# below on any set.
CALIBRATION_BAND = 2.0
TIMING_ROUNDS = 9


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


def _imgcrunch(effort: codec.Effort) -> Callable[[bytes, int], bytes]:
    def encode(data: bytes, quality: int) -> bytes:
        options = codec.CodecOptions(quality=quality, effort=effort)
        return codec.compress(data, options).data

    return encode


def jpegli_available() -> bool:
    try:
        import pyjpegli  # noqa: F401
    except ImportError:
        return False
    return True


def offered_settings() -> dict[str, Callable[[bytes, int], bytes]]:
    """What a user can choose, and the references to hold it against. The efforts' encoders
    as the codec calls them, but without its keeping of originals that would not shrink: at
    quality 90 some inputs would be kept, and the curve would show the input, not the effort."""
    settings: dict[str, Callable[[bytes, int], bytes]] = {
        "pillow": _pillow,
        "libvips standard": lambda data, q: _libvips(data, Q=q),
        "imgcrunch before": _imgcrunch_before,
        **{f"imgcrunch {e}": calibrated_setting(jpeg.ENCODERS[e]) for e in codec.Effort},
    }
    if jpegli_available():
        settings["jpegli"] = _jpegli
    return settings


def timed_settings() -> dict[str, Callable[[bytes, int], bytes]]:
    """The same, with imgcrunch's efforts through its codec itself: policy, checks and all."""
    return offered_settings() | {f"imgcrunch {e}": _imgcrunch(e) for e in codec.Effort}


SETTING_NOTES = {
    "pillow": "Pillow save(quality=N): the usual approach",
    "libvips standard": "libvips, standard tables, no Huffman optimisation: the bare library",
    "imgcrunch before": "imgcrunch's codec before effort levels: standard tables, Huffman "
    "optimisation",
    "imgcrunch balanced": "the default effort",
    "imgcrunch max": "effort=max",
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
    settings: str  # which family of settings: "offered", "search" or "calibrate"


def _family(name: str) -> dict[str, Callable[[bytes, int], bytes]]:
    families = {
        "offered": offered_settings,
        "search": search_settings,
        "calibrate": calibration_settings,
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


def score_job(job: Job) -> tuple[int, list[tuple[str, int, int, float]]]:
    codec.configure(concurrency=1)
    settings = _family(job.settings)
    reference = _reference(job.data)
    results = []
    for name, quality in job.cases:
        encoded = settings[name](job.data, quality)
        results.append((name, quality, len(encoded), reference.score(pixels(encoded))))
    return job.photo, results


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
    jobs = [Job(n, data, list(cases), family) for n, data in enumerate(photos.data)]
    scores = Scores()
    for _, results in pool.imap_unordered(score_job, jobs):
        for name, quality, size, score in results:
            scores.add(name, quality, size, score)
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
    holdout: str
    cores: int
    rows: list[dict[str, Any]] = field(default_factory=list)  # setting, quality, bytes, score
    calibration: list[dict[str, Any]] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)
    # Per effort: the lowest quality whose mean score reaches Pillow quality 50's (less the
    # slack), with its bytes: the effort's bytes at the reference's look.
    at_reference_look: dict[str, dict[str, float]] = field(default_factory=dict)
    targets: dict[str, bool] = field(default_factory=dict)
    timestamp: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def run_offered(args: argparse.Namespace) -> tuple[Report, Path]:
    photos = load_set(SHARED_PHOTOS, REPO_PHOTOS)
    holdout = load_set(HOLDOUT)
    settings = offered_settings()
    report = Report(photos.label, holdout.label, args.workers)
    _say(f"imgcrunch quality bench  (photos: {photos.label}, {len(photos.names)} JPEGs)")
    cases = [(name, q) for name in settings for q in QUALITIES]
    efforts = [f"imgcrunch {effort}" for effort in codec.Effort]
    # The standard either side of each checked quality too: its slope there is the step.
    around = sorted({min(100, q + d) for q in CHECKED for d in (-10, 0, 10)})
    check_cases = [("libvips standard", q) for q in around]
    check_cases += [(name, q) for name in efforts for q in CHECKED]
    with worker_pool(args.workers) as pool:
        scores = score_all(pool, photos, cases, "offered")
        reference_bytes = scores.bytes("pillow", REFERENCE_QUALITY)
        reference_score = scores.mean("pillow", REFERENCE_QUALITY)
        floor = reference_score - QUALITY_SLACK
        for effort in efforts:
            quality, found = _lowest_quality_reaching(pool, photos, effort, floor, scores)
            report.at_reference_look[effort] = {
                "quality": quality,
                "bytes": found.bytes(effort, quality),
                "ssimulacra2": found.mean(effort, quality),
            }
        checked = {
            kind.label: score_all(pool, kind, check_cases, "offered")
            for kind in (holdout.only(grey=False), holdout.only(grey=True), photos)
        }
    for name, q in cases:
        report.rows.append(
            {
                "setting": name,
                "quality": q,
                "bytes": scores.bytes(name, q),
                "ssimulacra2": scores.mean(name, q),
            }
        )
    report.cpu_ms = cpu_ms_per_image(photos, timed_settings(), REFERENCE_QUALITY)
    for line in table_lines(report, reference_bytes):
        _say(line)

    for label, photo_scores in checked.items():
        for effort in efforts:
            for q in CHECKED:
                standard = photo_scores.mean("libvips standard", q)
                difference = photo_scores.mean(effort, q) - standard
                report.calibration.append(
                    {
                        "set": label,
                        "held_out": label != photos.label,
                        "effort": effort,
                        "quality": q,
                        "difference": difference,
                        "steps": difference / _step(photo_scores, q),
                    }
                )
    for line in calibration_lines(report):
        _say(line)
    for line in target_lines(report, reference_bytes, reference_score):
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
        f"and encode, median of {TIMING_ROUNDS} interleaved rounds)"
    )
    return lines


def _step(scores: Scores, quality: int) -> float:
    """Standard libjpeg's gain in mean score per step of quality around `quality`."""
    low, high = max(1, quality - 10), min(100, quality + 10)
    gain = scores.mean("libvips standard", high) - scores.mean("libvips standard", low)
    return gain / (high - low)


def calibration_lines(report: Report) -> list[str]:
    lines = [
        "calibration: mean SSIMULACRA2 of each effort minus standard libjpeg's at the same "
        "quality [in steps of quality]; the corpus enlarged to 1600x1200 is smoother than photos"
    ]
    for label in dict.fromkeys(row["set"] for row in report.calibration):
        for effort in dict.fromkeys(row["effort"] for row in report.calibration):
            cells = "  ".join(
                f"q{row['quality']} {row['difference']:+5.2f} [{row['steps']:+4.1f}]"
                for row in report.calibration
                if row["set"] == label and row["effort"] == effort
            )
            lines.append(f"  {label:28} {effort:19} {cells}")
    return lines


def _lowest_quality_reaching(
    pool: Pool, photos: PhotoSet, name: str, floor: float, curve: Scores
) -> tuple[int, Scores]:
    """The lowest quality at which the setting's mean score is at least `floor`, between the
    curve's two points around it (halving the gap; scores rise with quality)."""
    below = max((q for q in QUALITIES if curve.mean(name, q) < floor), default=0)
    reached = min(q for q in QUALITIES if curve.mean(name, q) >= floor)
    found = curve
    while reached - below > 1:
        middle = (below + reached) // 2
        probe = score_all(pool, photos, [(name, middle)], "offered")
        if probe.mean(name, middle) >= floor:
            reached, found = middle, probe
        else:
            below = middle
    return reached, found


def target_lines(report: Report, reference_bytes: int, reference_score: float) -> list[str]:
    # Bytes are compared at the same look, never at the same quality number: what a number
    # gives depends on the tables (the guide's rule, and issue 14's).
    floor = reference_score - QUALITY_SLACK
    lines = []
    for effort, bytes_target in BYTES_TARGET.items():
        name = f"imgcrunch {effort}"
        found = report.at_reference_look[name]
        share = found["bytes"] / reference_bytes
        met = share <= bytes_target
        report.targets[f"{effort}_bytes_at_reference_look"] = met
        at_50 = next(
            r for r in report.rows if r["setting"] == name and r["quality"] == REFERENCE_QUALITY
        )
        lines.append(
            f"target: {effort}, bytes <= {bytes_target:.2f}x Pillow's at its look (SSIMULACRA2 "
            f">= {floor:.2f}: Pillow quality {REFERENCE_QUALITY}'s {reference_score:.2f} - "
            f"{QUALITY_SLACK}) : {_met(met)} (quality {found['quality']:.0f}: "
            f"{found['ssimulacra2']:.2f}, {share:.3f}x; at quality {REFERENCE_QUALITY} itself "
            f"{at_50['ssimulacra2']:.2f}, {at_50['bytes'] / reference_bytes:.3f}x)"
        )
    cpu = report.cpu_ms["imgcrunch balanced"] / report.cpu_ms["imgcrunch before"]
    met = cpu <= BALANCED_CPU_TARGET
    report.targets["balanced_cpu"] = met
    lines.append(
        f"target: balanced codec CPU per image <= {BALANCED_CPU_TARGET:.0%} of imgcrunch "
        f"before : {_met(met)} ({cpu:.0%})"
    )
    held = [
        row
        for row in report.calibration
        if row["held_out"] and row["effort"] == f"imgcrunch {codec.Effort.BALANCED}"
    ]
    furthest = max(held, key=lambda row: abs(row["steps"]))
    met = abs(furthest["steps"]) <= CALIBRATION_BAND
    report.targets["calibration_held_out"] = met
    lines.append(
        f"target: balanced looks like standard libjpeg at the same quality +-{CALIBRATION_BAND:g}"
        f" steps, on photos it was not fitted to : {_met(met)} (furthest: q"
        f"{furthest['quality']} on {furthest['set']}, {furthest['steps']:+.1f})"
    )
    lowest = min(report.calibration, key=lambda row: row["steps"])
    met = lowest["steps"] >= -CALIBRATION_BAND
    report.targets["calibration_never_worse"] = met
    lines.append(
        f"target: no effort looks worse than standard libjpeg at the same quality by more than "
        f"{CALIBRATION_BAND:g} steps, on any set : {_met(met)} (lowest: {lowest['effort']} at q"
        f"{lowest['quality']} on {lowest['set']}, {lowest['steps']:+.1f})"
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


def calibration_settings() -> dict[str, Callable[[bytes, int], bytes]]:
    settings = {"standard": lambda data, q: _libvips(data, Q=q)}
    for effort, encoder in jpeg.ENCODERS.items():
        settings[str(effort)] = encoder_setting(encoder)
    return settings


def run_calibrate(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """At each anchor quality, the Q whose mean score is nearest standard libjpeg's there: on
    colour photos for `calibration`, on the same in grey for `grey_calibration`."""
    fitted: dict[str, Any] = {str(effort): {} for effort in jpeg.ENCODERS}
    with worker_pool(args.workers) as pool:
        for kind, photos in zip(("calibration", "grey_calibration"), fitting_sets(), strict=True):
            _say(f"calibrating on {photos.label} ({len(photos.names)} JPEGs)")
            standard = score_all(pool, photos, [("standard", q) for q in ANCHORS], "calibrate")
            for effort in jpeg.ENCODERS:
                points = _fit(pool, photos, str(effort), standard)
                fitted[str(effort)][kind] = points
                _say(f"{effort}: {kind}={tuple(points)}")
    return fitted, RESULTS / "calibration-latest.json"


def _fit(pool: Pool, photos: PhotoSet, effort: str, standard: Scores) -> list[tuple[int, int]]:
    points: list[tuple[int, int]] = [(1, 1)]
    for quality in ANCHORS:
        target = standard.mean("standard", quality)
        # Start where the last point's ratio of Q to quality says; it moves slowly.
        guess = round(quality * points[-1][1] / points[-1][0])
        q, score = _nearest_q(pool, photos, effort, target, guess)
        points.append((quality, q))
        _say(f"  {effort:9} quality {quality:3}: standard {target:6.2f} -> Q {q} ({score:6.2f})")
    points.append((100, 100))
    return points


def _nearest_q(
    pool: Pool, photos: PhotoSet, effort: str, target: float, guess: int
) -> tuple[int, float]:
    """The Q (and its mean score) nearest the target, of the two either side of it."""
    seen: dict[int, float] = {}

    def mean_at(q: int) -> float:
        if q not in seen:
            seen[q] = score_all(pool, photos, [(effort, q)], "calibrate").mean(effort, q)
        return seen[q]

    q = max(1, min(guess, 100))
    while q < 100 and mean_at(q) < target:
        q += 1
    while q > 1 and mean_at(q - 1) >= target:
        q -= 1
    # q is the lowest reaching the target (scores rise with Q); q - 1 may be nearer to it.
    if q > 1 and target - mean_at(q - 1) < mean_at(q) - target:
        q -= 1
    return q, mean_at(q)


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
