"""Throughput benchmark: imgcrunch end to end, against the limits of this machine.

Held, in the same run, against its own codec's limit, the bare library's (libvips decode and
encode at standard settings, one thread per core), and the usual approach (one sequential loop
that downloads, decodes with Pillow and saves at quality 50); and the same for small images.

Run `make bench` (or `.venv/bin/python bench/throughput.py --help`). bench/README.md explains
how to read the output.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyvips
import requests
from PIL import Image

from harness import (
    QUALITY,
    RESULTS,
    ROOT,
    URLS_PER_ROW,
    BenchError,
    CodecLimit,
    Origin,
    PhotoSet,
    RunResult,
    build_csv,
    codec_line,
    load_photos,
    measure_codec_limit,
    passed_through_settings,
    photo_sizes,
    run_end_to_end,
    running_service,
    summarise,
    upload,
    write_json,
)
from imgcrunch import codec
from imgcrunch.imaging import profiles
from imgcrunch.imaging import variants as variant_specs

SEED_FIRST_URL = 20_000_000
TARGET_SHARE = 0.85  # end-to-end images/s as a share of the codec limit, and of the bare one
SEED_RATIO_TARGET = 2.5  # end-to-end images/s over the usual approach's sequential loop
SEED_LOOP_IMAGES = 200
SMALL_SIZE = (160, 120)  # a thumbnail-sized product photo: the service's overhead, not the codec
SMALL_TARGET = 3 * 136  # images/s: three times what the service did before issue 14
# Codec limits before and after a run this far apart: the machine's speed moved meanwhile.
DRIFT_WARNING = 0.15
RSS_GROWTH_LIMIT = 0.10  # peak RSS of the largest run over that of the smallest
OTHER_LOAD_WARNING = 0.25  # cores used by other processes that make a figure suspect


def small_photos(photos: PhotoSet) -> PhotoSet:
    """The same photos at 160x120, JPEG quality 92 like the originals (some 8 KB each)."""
    width, height = SMALL_SIZE
    data = []
    for original in photos.data:
        image = pyvips.Image.thumbnail_buffer(original, width, height=height, crop="centre")
        data.append(bytes(image.jpegsave_buffer(Q=92, keep="none")))
    return PhotoSet(f"{photos.label} at {width}x{height}", photos.names, data)


# --- variants: CPU per photo ------------------------------------------------------------------

# What a catalog serves (issue 23); each alone, then together.
SINGLE_VARIANTS = (
    "thumb=200:jpeg",
    "thumb=200x200:pad:jpeg",
    "listing=800:jpeg",
    "zoom=2000:jpeg",
    "listing=800:webp",
    "listing=800:webp:max",
    "listing=800:avif",
    "listing=800:avif:max",
)
CATALOG_SET = "zoom=2000:jpeg, listing=800:jpeg, thumb=200x200:pad:jpeg"
# Marketplace profiles (issue 25): the first variant made to each one's rules, checked and fixed.
PROFILE_NAMES = ("amazon", "walmart", "google", "ebay")
THUMB_TARGET = 0.40  # a 200 px JPEG variant, of the full-size default's CPU
SET_TARGET = 1.6  # the catalog set, of the default alone
VARIANT_ROUNDS = 15


@dataclass(frozen=True)
class VariantCpu:
    label: str
    cpu_ms: float  # per photo, one thread: the median of the rounds
    of_default: float  # over the default's, measured in the same rounds


def _variant_settings() -> dict[str, Callable[[bytes], object]]:
    """Each setting as a call on one photo's bytes: references first, then imgcrunch's."""
    settings: dict[str, Callable[[bytes], object]] = {
        "bare libvips (decode, jpegsave Q50)": _bare_libvips,
        "usual approach (Pillow, quality 50)": _pillow_q50,
        "imgcrunch default (one JPEG, full size)": _made(""),
    }
    for spec in SINGLE_VARIANTS:
        settings[spec] = _made(spec)
    settings[f"{CATALOG_SET} (one decode)"] = _made(CATALOG_SET)
    alone = [_made(part.strip()) for part in CATALOG_SET.split(",")]
    settings["the same set, one decode per variant"] = lambda data: [make(data) for make in alone]
    return settings


def _profile_settings() -> dict[str, Callable[[bytes], object]]:
    """The references, the default, and each marketplace profile's first variant."""
    settings = {label: make for label, make in _variant_settings().items() if label in _REFERENCES}
    for name in PROFILE_NAMES:
        settings[f"profile {name}"] = _profiled(name)
    return settings


_REFERENCES = (
    "bare libvips (decode, jpegsave Q50)",
    "usual approach (Pillow, quality 50)",
    "imgcrunch default (one JPEG, full size)",
)


def _profiled(name: str) -> Callable[[bytes], object]:
    profile = profiles.get(name)
    options = codec.CodecOptions(quality=QUALITY, variants=(profile.variant(),), profile=profile)
    return lambda data: codec.make_variants(data, options)


def _made(spec: str) -> Callable[[bytes], object]:
    options = codec.CodecOptions(
        quality=QUALITY, variants=variant_specs.parse(spec, max_pixels=10**9)
    )
    return lambda data: codec.make_variants(data, options)


def _bare_libvips(data: bytes) -> object:
    return pyvips.Image.new_from_buffer(data, "", access="sequential").jpegsave_buffer(Q=QUALITY)


def _pillow_q50(data: bytes) -> object:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, "JPEG", quality=QUALITY)
    return out.getvalue()


def measure_variant_cpu(
    photos: PhotoSet,
    rounds: int = VARIANT_ROUNDS,
    settings: dict[str, Callable[[bytes], object]] | None = None,
) -> list[VariantCpu]:
    """CPU time per photo of each setting (the variants' by default), in one thread (libvips'
    concurrency 1), the settings taking turns each round so that the machine's drift falls on
    all alike."""
    settings = settings or _variant_settings()
    samples: dict[str, list[float]] = {label: [] for label in settings}
    ratios: dict[str, list[float]] = {label: [] for label in settings}
    default = "imgcrunch default (one JPEG, full size)"
    for make in settings.values():  # warm: libraries loaded, buffers allocated
        make(photos.data[0])
    for _ in range(rounds):
        this_round = {}
        for label, make in settings.items():
            started = time.process_time()
            for data in photos.data:
                make(data)
            this_round[label] = (time.process_time() - started) * 1000 / len(photos.data)
            samples[label].append(this_round[label])
        for label, cpu in this_round.items():
            ratios[label].append(cpu / this_round[default])
    return [
        VariantCpu(label, statistics.median(samples[label]), statistics.median(ratios[label]))
        for label in settings
    ]


def variant_lines(report: Report) -> list[str]:
    lines = ["variants, CPU per photo (one thread, median of rounds) and x the default:"]
    lines += [
        f"  {v.label:58} {v.cpu_ms:7.1f} ms  {v.of_default:5.2f}x" for v in report.variant_cpu
    ]
    by_label = {v.label: v for v in report.variant_cpu}
    thumb = by_label["thumb=200:jpeg"].of_default
    together = by_label[f"{CATALOG_SET} (one decode)"].of_default
    apart = by_label["the same set, one decode per variant"].of_default
    report.targets["thumbnail_cpu"] = thumb <= THUMB_TARGET
    report.targets["catalog_set_cpu"] = together <= SET_TARGET
    lines.append(
        f"target: a 200 px JPEG variant <= {THUMB_TARGET:.0%} of the default's CPU : "
        f"{_met(thumb <= THUMB_TARGET)} ({thumb:.0%})"
    )
    lines.append(
        f"target: the catalog set <= {SET_TARGET}x the default's CPU : "
        f"{_met(together <= SET_TARGET)} ({together:.2f}x; one decode per variant: {apart:.2f}x)"
    )
    return lines


def _product_shots() -> PhotoSet:
    """tests/data/marketplace: product shots made from the catalog's, each breaking a rule."""
    paths = sorted((ROOT / MARKETPLACE_SHOTS).glob("*.jpg"))
    return PhotoSet(MARKETPLACE_SHOTS, [p.name for p in paths], [p.read_bytes() for p in paths])


MARKETPLACE_SHOTS = "tests/data/marketplace"


def profile_lines(report: Report) -> list[str]:
    lines = [
        f"marketplace profiles on {MARKETPLACE_SHOTS} ({len(_product_shots().names)} product "
        "shots), CPU per photo (one thread, median of rounds) and x the default:"
    ]
    return lines + [
        f"  {v.label:58} {v.cpu_ms:7.1f} ms  {v.of_default:5.2f}x" for v in report.profile_cpu
    ]


# --- the usual approach ---------------------------------------------------------------------


@dataclass(frozen=True)
class SeedLoop:
    images: int
    images_per_s: float


def measure_seed_loop(origin: Origin, images: int) -> SeedLoop:
    """What the seeds' implementations do: one loop that downloads each image with requests,
    decodes it with Pillow and saves it at quality 50, one after the other."""
    with tempfile.TemporaryDirectory(prefix="imgcrunch-seed-") as folder:
        started = time.perf_counter()
        for n in range(images):
            response = requests.get(origin.url(SEED_FIRST_URL + n), timeout=30)
            response.raise_for_status()
            picture = Image.open(io.BytesIO(response.content)).convert("RGB")
            picture.save(Path(folder) / f"{n}.jpg", "JPEG", quality=QUALITY)
        elapsed = time.perf_counter() - started
    return SeedLoop(images, images / elapsed)


@dataclass(frozen=True)
class UploadResult:
    rows: int
    images: int
    csv_bytes: int
    answered_s: float


def run_upload_only(origin: Origin, rows: int) -> UploadResult:
    """How long POST /upload takes to answer; the images are left unprocessed."""
    with running_service() as service, httpx.Client(base_url=service.base_url, timeout=300) as c:
        sent = upload(c, build_csv(origin, rows * URLS_PER_ROW))
    return UploadResult(rows, rows * URLS_PER_ROW, sent.csv_bytes, sent.answered_s)


# --- report -------------------------------------------------------------------------------------


@dataclass
class Report:
    cores: int
    photos: str
    photo_set: str
    settings: dict[str, str]
    # One codec limit before the first run, then one after each run; the bare library's beside.
    codec: list[CodecLimit] = field(default_factory=list)
    bare: list[CodecLimit] = field(default_factory=list)
    runs: list[RunResult] = field(default_factory=list)
    seed_loops: list[SeedLoop] = field(default_factory=list)  # before the runs and after them
    small_runs: list[RunResult] = field(default_factory=list)  # against the small photos' limits
    upload: UploadResult | None = None
    variant_cpu: list[VariantCpu] = field(default_factory=list)
    profile_cpu: list[VariantCpu] = field(default_factory=list)  # on product shots
    targets: dict[str, bool] = field(default_factory=dict)
    timestamp: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def header_lines(report: Report) -> list[str]:
    lines = [
        f"imgcrunch bench  ({report.cores} cores, photos: {report.photos}, {report.photo_set})"
    ]
    if report.settings:
        lines.append(
            "service settings : " + " ".join(f"{k}={v}" for k, v in report.settings.items())
        )
    return lines


def run_lines(run: RunResult) -> list[str]:
    bare = []
    if run.share_of_bare_limit is not None:
        bare.append(
            f"{'':19}= {run.share_of_bare_limit:5.1%} of the bare libvips limit "
            f"({run.bare_limit_images_per_s:.1f})"
        )
    return [
        f"end-to-end {run.images:>5} : {run.images_per_s:5.1f} images/s  "
        f"= {run.share_of_limit:5.1%} of limit ({run.limit_images_per_s:.1f}, the mean of the "
        f"limits either side)",
        *bare,
        f"{'':19}peak RSS {run.peak_rss_mib:.0f} MiB; upload answered in "
        f"{run.upload_answered_s:.2f} s",
        f"{'':19}{run.seconds:.1f} s; CPU per image: service {run.service_cpu_ms_per_image:.1f} ms "
        f"(event loop {run.event_loop_cpu_ms_per_image:.1f}), "
        f"origin {run.origin_cpu_ms_per_request:.2f} ms",
        f"{'':19}cores busy: service + origin {run.cores_used:.2f}, others {run.other_cores:.2f}; "
        f"page faults per image {run.page_faults_per_image:.0f}",
    ]


def upload_line(result: UploadResult) -> str:
    return (
        f"upload {result.rows:>6} rows: answered in {result.answered_s:.2f} s  "
        f"({result.images} images, CSV {result.csv_bytes / 1e6:.1f} MB)"
    )


def seed_line(loop: SeedLoop) -> str:
    return (
        f"usual approach   : {loop.images_per_s:5.1f} images/s  (one loop: requests, Pillow "
        f"decode, save at quality {QUALITY}; {loop.images} images)"
    )


def target_lines(report: Report) -> list[str]:
    lines: list[str] = []
    by_size: dict[int, list[RunResult]] = {}
    for run in report.runs:
        by_size.setdefault(run.images, []).append(run)
    if by_size:
        lines.append(_share_target(report, by_size, "throughput", "codec limit"))
        if all(run.share_of_bare_limit is not None for run in report.runs):
            lines.append(_share_target(report, by_size, "bare_throughput", "bare libvips limit"))
    if by_size and report.seed_loops:
        seed = statistics.fmean(loop.images_per_s for loop in report.seed_loops)
        ratios = {
            size: statistics.median(run.images_per_s for run in runs) / seed
            for size, runs in by_size.items()
        }
        met = all(ratio >= SEED_RATIO_TARGET for ratio in ratios.values())
        report.targets["over_usual_approach"] = met
        shown = ", ".join(f"{size}: {ratio:.2f}x" for size, ratio in ratios.items())
        # The physical limit of that ratio here: the bare library on every core, no I/O at all.
        ceiling = statistics.median(limit.images_per_s for limit in report.bare) / seed
        lines.append(
            f"target: end-to-end >= {SEED_RATIO_TARGET}x the usual approach ({seed:.1f} images/s), "
            f"median of runs : {_met(met)} ({shown}; the bare libvips limit is {ceiling:.2f}x it)"
        )
    if report.small_runs:
        rate = statistics.median(run.images_per_s for run in report.small_runs)
        met = rate >= SMALL_TARGET
        report.targets["small_images"] = met
        spread = " ".join(f"{run.images_per_s:.0f}" for run in report.small_runs)
        lines.append(
            f"target: small images ({SMALL_SIZE[0]}x{SMALL_SIZE[1]}) >= {SMALL_TARGET} images/s "
            f"(3x before), median of runs [all runs] : {_met(met)} ({rate:.0f} [{spread}])"
        )
    if len(by_size) > 1:
        small, large = min(by_size), max(by_size)
        small_peak = max(run.peak_rss_mib for run in by_size[small])
        large_peak = max(run.peak_rss_mib for run in by_size[large])
        growth = large_peak / small_peak - 1
        met = growth <= RSS_GROWTH_LIMIT
        report.targets["flat_memory"] = met
        lines.append(
            f"target: peak RSS flat across sizes (<= +{RSS_GROWTH_LIMIT:.0%}) : {_met(met)} "
            f"({small_peak:.0f} -> {large_peak:.0f} MiB, {growth:+.1%})"
        )
    return lines


def _share_target(
    report: Report, by_size: dict[int, list[RunResult]], name: str, limit: str
) -> str:
    def share(run: RunResult) -> float:
        value = run.share_of_limit if name == "throughput" else run.share_of_bare_limit
        assert value is not None
        return value

    medians = {size: statistics.median(map(share, runs)) for size, runs in by_size.items()}
    met = all(value >= TARGET_SHARE for value in medians.values())
    report.targets[name] = met
    shares = ", ".join(
        f"{size}: {medians[size]:.1%} [{' '.join(f'{share(run):.1%}' for run in runs)}]"
        for size, runs in by_size.items()
    )
    return (
        f"target: end-to-end >= {TARGET_SHARE:.0%} of the {limit}, median of runs [all runs] : "
        f"{_met(met)} ({shares})"
    )


def load_warnings(report: Report) -> list[str]:
    phases = [(f"codec limit {n + 1}", limit.other_cores) for n, limit in enumerate(report.codec)]
    phases += [(f"end-to-end {run.images}", run.other_cores) for run in report.runs]
    busy = [f"{name}: {cores:.2f}" for name, cores in phases if cores > OTHER_LOAD_WARNING]
    drifted = [
        f"{run.images}: {run.limit_drift:.0%}"
        for run in report.runs
        if run.limit_drift > DRIFT_WARNING
    ]
    warnings = []
    if busy:
        warnings.append(
            "warning: other processes used CPU meanwhile (cores; " + ", ".join(busy) + "): "
            "these figures are not comparable, run again on a quiet machine"
        )
    if drifted:
        warnings.append(
            "warning: the codec limit moved during a run (" + ", ".join(drifted) + "): the "
            "machine's speed is not steady, so that share is rough; run again"
        )
    return warnings


def _met(met: bool) -> str:
    return "met" if met else "NOT met"


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=[300, 3000],
        help="images per end-to-end run, comma-separated (default 300,3000)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="end-to-end runs per size, interleaved; targets use the median (default 3)",
    )
    parser.add_argument(
        "--codec-images", type=int, default=300, help="images for the codec limit (default 300)"
    )
    parser.add_argument(
        "--upload-rows",
        type=int,
        help="only time POST /upload of a CSV of this many rows (3 URLs each), then stop",
    )
    parser.add_argument(
        "--final-upload-rows",
        type=int,
        default=10_000,
        help="rows of the upload timed at the end of the default run; 0 skips it",
    )
    parser.add_argument(
        "--small-images",
        type=int,
        default=3000,
        help=f"images per end-to-end run of {SMALL_SIZE[0]}x{SMALL_SIZE[1]} photos, --repeats "
        "times; 0 skips them (default 3000)",
    )
    parser.add_argument(
        "--seed-images",
        type=int,
        default=SEED_LOOP_IMAGES,
        help=f"images for the usual approach's loop, before and after (default {SEED_LOOP_IMAGES};"
        " 0 skips it)",
    )
    parser.add_argument(
        "--variants-only",
        action="store_true",
        help="only measure CPU per photo for each variant and the catalog set, then stop",
    )
    parser.add_argument("--json", type=Path, help="where to write the figures as JSON")
    return parser.parse_args(argv)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def _say(line: str) -> None:
    print(line, flush=True)


def bench(args: argparse.Namespace, report: Report, photos: PhotoSet, origin: Origin) -> Path:
    if args.upload_rows is not None:
        report.upload = run_upload_only(origin, args.upload_rows)
        _say(upload_line(report.upload))
        return args.json or RESULTS / "upload-latest.json"
    report.variant_cpu = measure_variant_cpu(photos)
    for line in variant_lines(report):
        _say(line)
    report.profile_cpu = measure_variant_cpu(_product_shots(), settings=_profile_settings())
    for line in profile_lines(report):
        _say(line)
    if args.variants_only:
        return args.json or RESULTS / "variants-latest.json"
    measure_seed_loop_into(report, origin, args.seed_images)
    before = measure_limits_into(report, photos, args.codec_images)
    # Sizes interleaved, each run several times: the machine's speed drifts, and a short run
    # catches more of it; the target is judged on the median.
    for size in [size for _ in range(args.repeats) for size in args.sizes]:
        observed = run_end_to_end(origin, size)
        after = measure_limits_into(report, photos, args.codec_images, show=False)
        run = summarise(observed, before[0], after[0], (before[1], after[1]))
        report.runs.append(run)
        for line in run_lines(run):
            _say(line)
        for limit in after:
            _say(codec_line(limit))
        before = after
    measure_seed_loop_into(report, origin, args.seed_images)
    if args.small_images > 0:
        run_small_images(args, report, photos)
    if args.final_upload_rows > 0:
        report.upload = run_upload_only(origin, args.final_upload_rows)
        _say(upload_line(report.upload))
    for line in target_lines(report) + variant_lines(report)[-2:] + load_warnings(report):
        _say(line)
    return args.json or RESULTS / "latest.json"


def measure_limits_into(
    report: Report, photos: PhotoSet, images: int, *, show: bool = True
) -> tuple[CodecLimit, CodecLimit]:
    """The codec's limit and the bare library's, one after the other."""
    limits = (
        measure_codec_limit(photos.data, images, report.cores, "codec"),
        measure_codec_limit(photos.data, images, report.cores, "bare"),
    )
    report.codec.append(limits[0])
    report.bare.append(limits[1])
    if show:
        for limit in limits:
            _say(codec_line(limit))
    return limits


def measure_seed_loop_into(report: Report, origin: Origin, images: int) -> None:
    if images > 0:
        report.seed_loops.append(measure_seed_loop(origin, images))
        _say(seed_line(report.seed_loops[-1]))


def run_small_images(args: argparse.Namespace, report: Report, photos: PhotoSet) -> None:
    """Where the codec costs little, what the service's own work per image allows."""
    small = small_photos(photos)
    _say(f"small photos     : {small.label}, {statistics.fmean(map(len, small.data)):.0f} bytes")
    origin = Origin(small)
    try:
        before = measure_codec_limit(small.data, args.small_images, report.cores)
        _say(codec_line(before))
        for _ in range(args.repeats):
            observed = run_end_to_end(origin, args.small_images)
            after = measure_codec_limit(small.data, args.small_images, report.cores)
            run = summarise(observed, before, after)
            report.small_runs.append(run)
            for line in run_lines(run):
                _say(f"small {line}" if line.startswith("end") else line)
            _say(codec_line(after))
            before = after
    finally:
        origin.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        photos = load_photos()
        codec.configure(concurrency=1)
        report = Report(
            cores=len(os.sched_getaffinity(0)),
            photos=photos.label,
            photo_set=photos.describe(photo_sizes(photos.data)),
            settings=passed_through_settings(),
        )
        for line in header_lines(report):
            _say(line)
        origin = Origin(photos)
        try:
            path = bench(args, report, photos, origin)
        finally:
            origin.stop()
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 2
    write_json(report, path)
    _say(f"figures written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
