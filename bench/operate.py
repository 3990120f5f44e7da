"""Operating figures: memory over a long run (soak), and API latency under load: GET /status
and POST /upload while the CPUs compress, and how soon the small requests uploaded then finish.

Run `make bench` (it runs this after throughput.py and scale_out.py) or
`.venv/bin/python bench/operate.py [--soak-images N] [--load-images N]`. bench/README.md
explains the output.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness import (
    RESULTS,
    BenchError,
    Origin,
    build_csv,
    load_photos,
    running_service,
    tree_status_kib,
    upload,
    wait_until_completed,
    write_json,
)

SAMPLE_SECONDS = 2.0
TABLE_ROWS = 10
IDLE_CALLS = 200
LOAD_CLIENTS = 8  # concurrent pollers while the CPUs compress
LOAD_PAUSE = 0.1  # seconds each waits between calls: some 80 calls/s, a busy dashboard's worth
UPLOAD_CLIENTS = 2  # concurrent uploaders meanwhile
UPLOAD_PAUSE = 1.0  # seconds each waits between uploads
UPLOAD_ROWS = 200  # a catalog page: 600 URLs, of one photo each upload (it is fetched once)


@dataclass
class Soak:
    images: int
    seconds: float = 0.0
    # (seconds since upload, images finished, RSS MiB), every SAMPLE_SECONDS
    samples: list[tuple[float, int, float]] = field(default_factory=list)
    peak_rss_mib: float = 0.0


@dataclass
class Load:
    images: int
    clients: int
    idle_ms: dict[str, float] = field(default_factory=dict)  # p50, p99 with nothing running
    busy_ms: dict[str, float] = field(default_factory=dict)  # p50, p99 while compressing
    calls: int = 0
    images_per_s: float = 0.0
    upload_idle_ms: dict[str, float] = field(default_factory=dict)  # POST /upload, p50, p99
    upload_busy_ms: dict[str, float] = field(default_factory=dict)
    uploads: int = 0
    # Upload to completed, for the small requests uploaded while the big one ran: p50, max (s)
    small_done_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Report:
    soak: Soak | None = None
    load: Load | None = None


def run_soak(origin: Origin, images: int) -> Soak:
    soak = Soak(images)
    with running_service() as service, httpx.Client(base_url=service.base_url, timeout=60) as c:
        sent = upload(c, build_csv(origin, images))
        done = threading.Event()
        finished = [0]

        def sample() -> None:
            while not done.wait(SAMPLE_SECONDS):
                rss = tree_status_kib(service.pid, "VmRSS") or 0
                soak.samples.append((time.time() - sent.sent_at, finished[0], rss / 1024))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        while True:
            status = c.get(f"/status/{sent.request_id}").json()
            finished[0] = status["progress"]["done"] + status["progress"]["failed"]
            if status["status"] not in ("queued", "processing"):
                break
            time.sleep(0.5)
        done.set()
        sampler.join()
        soak.seconds = time.time() - sent.sent_at
        soak.peak_rss_mib = (tree_status_kib(service.pid, "VmHWM") or 0) / 1024
        if status["status"] != "completed":
            raise BenchError(f"soak request ended {status['status']}: {status['progress']}")
    return soak


def soak_lines(soak: Soak) -> list[str]:
    lines = [
        f"soak {soak.images} images: {soak.seconds:.0f} s, "
        f"{soak.images / soak.seconds:.1f} images/s, peak RSS {soak.peak_rss_mib:.0f} MiB",
        "       s   images   RSS MiB",
    ]
    step = max(1, len(soak.samples) // TABLE_ROWS)
    for at, finished, rss in soak.samples[::step]:
        lines.append(f"  {at:6.0f}  {finished:7d}  {rss:8.0f}")
    if len(soak.samples) >= 4:
        quarter = len(soak.samples) // 4
        first = statistics.mean(rss for *_, rss in soak.samples[:quarter])
        last = statistics.mean(rss for *_, rss in soak.samples[-quarter:])
        lines.append(
            f"  RSS, mean of the last quarter against the first: {last:.0f} against "
            f"{first:.0f} MiB ({last / first - 1:+.1%})"
        )
    return lines


def _percentiles(latencies: Sequence[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50": ordered[len(ordered) // 2] * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


async def _poll(client: httpx.AsyncClient, path: str, until: asyncio.Event) -> list[float]:
    latencies = []
    while not until.is_set():
        started = time.perf_counter()
        response = await client.get(path)
        latencies.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise BenchError(f"GET {path} answered {response.status_code}")
        await asyncio.sleep(LOAD_PAUSE)
    return latencies


def _small_csv(origin: Origin, n: int) -> bytes:
    url = origin.url(30_000_000 + n)
    rows = "".join(f'{row},Product {row},"{url},{url},{url}"\r\n' for row in range(UPLOAD_ROWS))
    return ("S. No,Product Name,Input Image Urls\r\n" + rows).encode()


async def _upload(client: httpx.AsyncClient, body: bytes) -> tuple[str, float, float]:
    """The request id, how long POST /upload took, and when it was sent (monotonic)."""
    sent = time.perf_counter()
    response = await client.post("/upload", files={"file": ("small.csv", body, "text/csv")})
    if response.status_code != 202:
        raise BenchError(f"POST /upload answered {response.status_code}: {response.text[:300]}")
    return str(response.json()["request_id"]), time.perf_counter() - sent, sent


async def _finished_after(client: httpx.AsyncClient, request_id: str, sent: float) -> float:
    while True:
        status = (await client.get(f"/status/{request_id}")).json()
        if status["status"] == "completed":
            return time.perf_counter() - sent
        if status["status"] not in ("queued", "processing"):
            raise BenchError(f"small request {request_id} ended {status['status']}")
        await asyncio.sleep(0.1)


async def _upload_small(
    client: httpx.AsyncClient, origin: Origin, first: int, until: asyncio.Event
) -> list[tuple[float, float]]:
    """(upload latency, seconds to completed) of each small request uploaded until `until`."""
    timings = []
    n = first
    while not until.is_set():
        request_id, latency, sent = await _upload(client, _small_csv(origin, n))
        timings.append((latency, await _finished_after(client, request_id, sent)))
        n += UPLOAD_CLIENTS
        await asyncio.sleep(UPLOAD_PAUSE)
    return timings


async def _load(base_url: str, origin: Origin, images: int, clients: int) -> Load:
    load = Load(images, clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        warm = upload_sync(base_url, build_csv(origin, 3, first_url=20_000_000), wait=True)
        idle = []
        for _ in range(IDLE_CALLS):
            started = time.perf_counter()
            await client.get(f"/status/{warm}")
            idle.append(time.perf_counter() - started)
        load.idle_ms = _percentiles(idle)
        idle_uploads = []
        for n in range(10):
            request_id, latency, sent = await _upload(client, _small_csv(origin, 100_000 + n))
            await _finished_after(client, request_id, sent)
            idle_uploads.append(latency)
        load.upload_idle_ms = _percentiles(idle_uploads)

        started = time.time()
        request_id = upload_sync(base_url, build_csv(origin, images), wait=False)
        until = asyncio.Event()
        pollers = [
            asyncio.create_task(_poll(client, f"/status/{request_id}", until))
            for _ in range(clients)
        ]
        uploaders = [
            asyncio.create_task(_upload_small(client, origin, n, until))
            for n in range(UPLOAD_CLIENTS)
        ]
        while True:
            status = (await client.get(f"/status/{request_id}")).json()
            if status["status"] not in ("queued", "processing"):
                break
            await asyncio.sleep(0.5)
        load.images_per_s = images / (time.time() - started)
        until.set()
        busy = [latency for latencies in await asyncio.gather(*pollers) for latency in latencies]
        load.busy_ms = _percentiles(busy)
        load.calls = len(busy)
        smalls = [timing for timings in await asyncio.gather(*uploaders) for timing in timings]
        load.uploads = len(smalls)
        load.upload_busy_ms = _percentiles([latency for latency, _ in smalls])
        done = sorted(seconds for _, seconds in smalls)
        load.small_done_s = {"p50": done[len(done) // 2], "max": done[-1]}
    return load


def upload_sync(base_url: str, body: bytes, *, wait: bool) -> str:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        request_id = upload(client, body).request_id
        if wait:
            wait_until_completed(client, request_id)
    return request_id


def run_load(origin: Origin, images: int) -> Load:
    with running_service() as service:
        return asyncio.run(_load(service.base_url, origin, images, LOAD_CLIENTS))


def load_lines(load: Load) -> list[str]:
    return [
        f"API under load, while {load.images} images were compressed "
        f"({load.images_per_s:.1f} images/s):",
        f"GET /status, {load.clients} clients polling every {LOAD_PAUSE:g} s ({load.calls} calls)",
        f"  idle  p50 {load.idle_ms['p50']:6.1f} ms   p99 {load.idle_ms['p99']:6.1f} ms",
        f"  busy  p50 {load.busy_ms['p50']:6.1f} ms   p99 {load.busy_ms['p99']:6.1f} ms",
        f"POST /upload of {UPLOAD_ROWS} rows ({UPLOAD_ROWS * 3} URLs of one photo), "
        f"{UPLOAD_CLIENTS} clients, each waiting for its request then {UPLOAD_PAUSE:g} s "
        f"({load.uploads} uploads)",
        f"  idle  p50 {load.upload_idle_ms['p50']:6.1f} ms   "
        f"p99 {load.upload_idle_ms['p99']:6.1f} ms",
        f"  busy  p50 {load.upload_busy_ms['p50']:6.1f} ms   "
        f"p99 {load.upload_busy_ms['p99']:6.1f} ms",
        f"  those small requests completed {load.small_done_s['p50']:.2f} s after upload "
        f"(median; slowest {load.small_done_s['max']:.2f} s); each was uploaded while the "
        "big one ran",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--soak-images", type=int, default=20_000, help="0 skips the soak")
    parser.add_argument("--load-images", type=int, default=3_000, help="0 skips the load test")
    parser.add_argument("--json", type=Path, default=RESULTS / "operate-latest.json")
    args = parser.parse_args(argv)
    report = Report()
    try:
        origin = Origin(load_photos())
        try:
            if args.load_images:
                report.load = run_load(origin, args.load_images)
                for line in load_lines(report.load):
                    print(line, flush=True)
            if args.soak_images:
                report.soak = run_soak(origin, args.soak_images)
                for line in soak_lines(report.soak):
                    print(line, flush=True)
        finally:
            origin.stop()
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 2
    write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
