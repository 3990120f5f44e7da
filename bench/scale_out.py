"""Scale-out benchmark: PostgreSQL, Redis and Celery workers, against the codec limit.

The same workload as bench/throughput.py, in one run: embedded mode on every core, then the API
in scale-out mode with one and with two `imgcrunch worker` processes (concurrency 1, one codec
thread each), each run next to the codec limit on as many threads as it has workers. Run it with
`make bench` (after the embedded bench) or `.venv/bin/python bench/scale_out.py --help`; the
machine's PostgreSQL and Redis must be up. bench/README.md explains the output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import redis

from harness import (
    RESULTS,
    ROOT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    WARMUP_FIRST_URL,
    WARMUP_IMAGES,
    BenchError,
    CodecLimit,
    Origin,
    Service,
    build_csv,
    codec_line,
    completion_seconds,
    cpu_seconds,
    load_photos,
    machine_busy_seconds,
    measure_codec_limit,
    new_service,
    photo_sizes,
    run_end_to_end,
    start,
    summarise,
    tree_cpu_seconds,
    upload,
    wait_until_completed,
    write_json,
)
from imgcrunch import codec

POSTGRES_ADMIN_URL = os.environ.get(
    "IMGCRUNCH_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("IMGCRUNCH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TARGET_SHARE = 0.85  # two workers' images/s over the two-thread codec limit
# Passed through to `celery worker` (with `--concurrency`, one pool process each unless told
# otherwise): mingle and gossip only slow a start.
WORKER_OPTIONS = ("--without-mingle", "--without-gossip")
EMBEDDED = 0  # "workers" of the embedded run: it has none, it uses every core itself


# --- PostgreSQL and Redis -----------------------------------------------------------------------


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def check_servers() -> None:
    try:
        asyncio.run(_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise BenchError(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable: {exc}") from exc
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        raise BenchError(f"Redis at {REDIS_URL} is not reachable: {exc}") from exc


@contextmanager
def fresh_database() -> Iterator[str]:
    name = f"imgcrunch_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
        yield f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def fresh_key_prefix() -> Iterator[str]:
    prefix = f"imgcrunch-bench-{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


# --- the deployment -----------------------------------------------------------------------------


@dataclass
class Deployment:
    api: Service
    workers: list[subprocess.Popen[bytes]]

    def worker_cpu_seconds(self) -> float:
        return sum(tree_cpu_seconds(worker.pid) for worker in self.workers)


def _start_workers(
    count: int, api: Service, *, processes: int = 1
) -> list[subprocess.Popen[bytes]]:
    workers = []
    env = api.env | {"IMGCRUNCH_CPU_WORKERS": "1"}  # one codec thread each: one core each
    for n in range(count):
        log = (api.data_dir / f"worker-{n}.log").open("ab")
        command = [sys.executable, "-m", "imgcrunch", "worker", "-n", f"bench-{n}@%h"]
        workers.append(
            subprocess.Popen(
                [*command, "--concurrency", str(processes), *WORKER_OPTIONS],
                env=env,
                cwd=api.data_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + START_TIMEOUT
    for n, worker in enumerate(workers):
        log_path = api.data_dir / f"worker-{n}.log"
        while " ready." not in log_path.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"worker {n} did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.1)
    return workers


def _stop_workers(workers: Sequence[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


@contextmanager
def scale_out(workers: int, *, processes: int = 1) -> Iterator[Deployment]:
    """The API in scale-out mode and `workers` workers of `processes` pool processes each, on
    a fresh database and key prefix, all stopped and removed afterwards."""
    with (
        tempfile.TemporaryDirectory(prefix="imgcrunch-bench-") as folder,
        fresh_database() as database_url,
        fresh_key_prefix() as prefix,
    ):
        api = new_service(
            Path(folder),
            {
                "IMGCRUNCH_DATABASE_URL": database_url,
                "IMGCRUNCH_QUEUE": "celery",
                "IMGCRUNCH_BROKER_URL": REDIS_URL,
                "IMGCRUNCH_BROKER_KEY_PREFIX": prefix,
            },
        )
        started: list[subprocess.Popen[bytes]] = []
        try:
            start(api)
            started = _start_workers(workers, api, processes=processes)
            yield Deployment(api, started)
        except BaseException:
            print(f"--- API log ({api.log_path}), last lines:", file=sys.stderr)
            print(api.log_tail(), file=sys.stderr)
            raise
        finally:
            _stop_workers(started)
            api.stop()


# --- runs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleOutRun:
    workers: int  # 0: embedded mode
    images: int
    seconds: float
    images_per_s: float
    limit_threads: int
    limit_images_per_s: float  # mean of the codec limits just before and just after the run
    share_of_limit: float
    worker_cpu_ms_per_image: float  # embedded: the service process, codec included
    api_cpu_ms_per_image: float
    cores_used: float  # (workers + API + origin) CPU over the time to completion
    other_cores: float  # everything else: PostgreSQL, Redis, the bench itself


def run_scale_out(origin: Origin, workers: int, images: int) -> tuple[float, float, float, float]:
    """One timed request; returns its seconds, worker CPU, API CPU and other processes' CPU."""
    with (
        scale_out(workers) as deployment,
        httpx.Client(base_url=deployment.api.base_url, timeout=60) as client,
    ):
        warmup = upload(client, build_csv(origin, WARMUP_IMAGES, first_url=WARMUP_FIRST_URL))
        wait_until_completed(client, warmup.request_id)
        body = build_csv(origin, images)
        api_pid = deployment.api.pid
        worker_before, api_before = deployment.worker_cpu_seconds(), cpu_seconds(api_pid)
        origin_before, machine_before = origin.cpu_seconds(), machine_busy_seconds()
        sent = upload(client, body)
        status = wait_until_completed(client, sent.request_id)
        observed_at = time.time()
        worker_cpu = deployment.worker_cpu_seconds() - worker_before
        api_cpu = cpu_seconds(api_pid) - api_before
        origin_cpu = origin.cpu_seconds() - origin_before
        machine = machine_busy_seconds() - machine_before
    seconds = completion_seconds(sent, status, observed_at)
    others = machine - worker_cpu - api_cpu - origin_cpu
    return (
        seconds,
        worker_cpu,
        api_cpu + origin_cpu,
        max(others, 0.0) / (observed_at - sent.sent_at),
    )


def measure(
    origin: Origin, photos: list[bytes], workers: int, args: argparse.Namespace
) -> tuple[ScaleOutRun, CodecLimit, CodecLimit]:
    threads = workers or len(os.sched_getaffinity(0))
    before = measure_codec_limit(photos, args.codec_images, threads)
    if workers == EMBEDDED:
        observed = run_end_to_end(origin, args.images)
        after = measure_codec_limit(photos, args.codec_images, threads)
        embedded = summarise(observed, before, after)
        run = ScaleOutRun(
            workers=EMBEDDED,
            images=args.images,
            seconds=embedded.seconds,
            images_per_s=embedded.images_per_s,
            limit_threads=threads,
            limit_images_per_s=embedded.limit_images_per_s,
            share_of_limit=embedded.share_of_limit,
            worker_cpu_ms_per_image=embedded.service_cpu_ms_per_image,
            api_cpu_ms_per_image=0.0,
            cores_used=embedded.cores_used,
            other_cores=embedded.other_cores,
        )
        return run, before, after
    seconds, worker_cpu, api_and_origin_cpu, others = run_scale_out(origin, workers, args.images)
    after = measure_codec_limit(photos, args.codec_images, threads)
    limit = (before.images_per_s + after.images_per_s) / 2
    run = ScaleOutRun(
        workers=workers,
        images=args.images,
        seconds=seconds,
        images_per_s=args.images / seconds,
        limit_threads=threads,
        limit_images_per_s=limit,
        share_of_limit=args.images / seconds / limit,
        worker_cpu_ms_per_image=worker_cpu * 1000 / args.images,
        api_cpu_ms_per_image=api_and_origin_cpu * 1000 / args.images,
        cores_used=(worker_cpu + api_and_origin_cpu) / seconds,
        other_cores=others,
    )
    return run, before, after


# --- report -------------------------------------------------------------------------------------


def name_of(workers: int) -> str:
    return "embedded" if workers == EMBEDDED else f"{workers} worker{'s' * (workers > 1)}"


def run_line(run: ScaleOutRun) -> str:
    line = (
        f"{name_of(run.workers):<10}: {run.images_per_s:5.1f} images/s = {run.share_of_limit:5.1%} "
        f"of the {run.limit_threads}-thread codec limit ({run.limit_images_per_s:.1f}); "
        f"{run.seconds:.1f} s; CPU/image: "
    )
    if run.workers == EMBEDDED:
        line += f"service {run.worker_cpu_ms_per_image:.1f} ms"
    else:
        line += (
            f"workers {run.worker_cpu_ms_per_image:.1f} ms, "
            f"API + origin {run.api_cpu_ms_per_image:.1f} ms"
        )
    return line + f"; cores busy {run.cores_used:.2f}, others {run.other_cores:.2f}"


@dataclass
class Report:
    cores: int
    photos: str
    photo_set: str
    images: int
    codec: list[CodecLimit] = field(default_factory=list)
    runs: list[ScaleOutRun] = field(default_factory=list)
    targets: dict[str, bool] = field(default_factory=dict)


def summary_lines(report: Report) -> list[str]:
    by_workers: dict[int, list[ScaleOutRun]] = {}
    for run in report.runs:
        by_workers.setdefault(run.workers, []).append(run)
    rate = {w: statistics.median(r.images_per_s for r in runs) for w, runs in by_workers.items()}
    share = {w: statistics.median(r.share_of_limit for r in runs) for w, runs in by_workers.items()}
    lines = ["medians:"]
    for workers, runs in by_workers.items():
        spread = " ".join(f"{run.share_of_limit:.1%}" for run in runs)
        lines.append(
            f"  {name_of(workers):<10}: {rate[workers]:5.1f} images/s = {share[workers]:5.1%} of "
            f"the {runs[0].limit_threads}-thread codec limit  [{spread}]"
        )
    if 1 in rate and 2 in rate:
        limit = {w: statistics.median(r.limit_images_per_s for r in by_workers[w]) for w in (1, 2)}
        # On virtual cores that share a physical one, two threads are not twice one thread.
        lines.append(
            f"  two workers / one worker: {rate[2] / rate[1]:.2f}x "
            f"(the codec alone, two threads / one thread: {limit[2] / limit[1]:.2f}x)"
        )
    if 2 in share:
        met = share[2] >= TARGET_SHARE
        report.targets["two_workers"] = met
        lines.append(
            f"target: two workers >= {TARGET_SHARE:.0%} of the two-thread codec limit : "
            f"{'met' if met else 'NOT met'} ({share[2]:.1%})"
        )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=600, help="images per run (default 600)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds of embedded, one worker, two workers; medians are reported (default 3)",
    )
    parser.add_argument(
        "--codec-images", type=int, default=200, help="images for each codec limit (default 200)"
    )
    parser.add_argument("--json", type=Path, help="where to write the figures as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_servers()
        photo_set = load_photos()
        codec.configure(concurrency=1)
        report = Report(
            cores=len(os.sched_getaffinity(0)),
            photos=photo_set.label,
            photo_set=photo_set.describe(photo_sizes(photo_set.data)),
            images=args.images,
        )
        print(
            f"imgcrunch scale-out bench  ({report.cores} cores, photos: {report.photos}, "
            f"{report.photo_set}; PostgreSQL and Redis on this machine)",
            flush=True,
        )
        origin = Origin(photo_set)
        try:
            for round_ in range(1, args.repeats + 1):
                print(f"round {round_}/{args.repeats}, {args.images} images each", flush=True)
                for workers in (EMBEDDED, 1, 2):
                    run, before, after = measure(origin, photo_set.data, workers, args)
                    report.runs.append(run)
                    report.codec += [before, after]
                    print(f"  {codec_line(before)}", flush=True)
                    print(f"  {run_line(run)}", flush=True)
        finally:
            origin.stop()
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 2
    for line in summary_lines(report):
        print(line)
    path = args.json or RESULTS / "scale-out-latest.json"
    write_json(report, path)
    print(f"figures written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
