"""A million images in one request (issue 24): one catalog of `--rows` rows of five URLs each
(1,000,000 images by default, a 59 MB CSV), uploaded with default settings, then cancelled and
deleted while it works.

Measured, in embedded mode (SQLite, in-process workers) and in scale-out mode (PostgreSQL,
Redis, one Celery worker with a pool process per core, as by default):
- how long POST /upload takes to answer 202;
- how long after the 202 the first image is done;
- how long after the 202 every row is stored (the database's `ingested_at`);
- the server's RSS growth through the ingest (its main process: the upload and, embedded,
  the ingest; scale-out's ingest runs in the worker, measured too);
- GET /status latency while it works (p50, p99, max), polled ten times a second;
- pages of the images listing at the first, middle and last rows (median of five each);
- cancel, then delete, each to its answer.

References in the same run: the bare `csv` module reading the same file, and one `executemany`
of its rows into a bare SQLite table (the parse's and the database's floor for the ingest).

Targets: the 202 within 30 s; the first image within 5 s of it; RSS growth at most 250 MB;
status p99 at most 100 ms; any listing page at most 50 ms; cancel and delete within 10 s each.

    .venv/bin/python bench/million.py                  # both modes, 200,000 rows x 5 URLs
    .venv/bin/python bench/million.py --modes embedded --rows 20000
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from harness import (
    RESULTS,
    RSS_SAMPLE_SECONDS,
    BenchError,
    Origin,
    load_photos,
    running_service,
    status_kib,
    tree_status_kib,
    write_json,
)
from scale_out import Deployment, check_servers, scale_out

URLS_PER_ROW = 5
STATUS_POLL_SECONDS = 0.1
FIRST_IMAGE_POLL_SECONDS = 0.02
PAGE_TRIES = 5
INGEST_TIMEOUT = 600.0
TARGET_ACCEPTED_S = 30.0
TARGET_FIRST_IMAGE_S = 5.0
TARGET_RSS_GROWTH_MB = 250.0
TARGET_STATUS_P99_MS = 100.0
TARGET_PAGE_MS = 50.0
TARGET_CANCEL_S = 10.0
TARGET_DELETE_S = 10.0


def build_csv(origin: Origin, rows: int) -> bytes:
    lines = ["S. No,Product Name,Input Image Urls"]
    for row in range(rows):
        first = row * URLS_PER_ROW
        urls = ",".join(origin.url(n) for n in range(first, first + URLS_PER_ROW))
        lines.append(f'{row + 1},Product {row + 1},"{urls}"')
    return ("\r\n".join(lines) + "\r\n").encode()


# --- references --------------------------------------------------------------------------------


def bare_csv_seconds(body: bytes) -> float:
    started = time.perf_counter()
    for _ in csv.reader(io.TextIOWrapper(io.BytesIO(body), encoding="utf-8", newline="")):
        pass
    return time.perf_counter() - started


def bare_insert_seconds(body: bytes) -> float:
    """One executemany of the rows' images into a bare SQLite table on disk: the floor."""
    reader = csv.reader(io.TextIOWrapper(io.BytesIO(body), encoding="utf-8", newline=""))
    next(reader)
    images = [(n, position, url) for n, (_, _, urls) in enumerate(reader)
              for position, url in enumerate(urls.split(","))]  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        connection = sqlite3.connect(Path(folder) / "bare.db")
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE images (row INTEGER, position INTEGER, url TEXT)")
        started = time.perf_counter()
        with connection:
            connection.executemany("INSERT INTO images VALUES (?, ?, ?)", images)
        elapsed = time.perf_counter() - started
        connection.close()
    return elapsed


# --- one mode ------------------------------------------------------------------------------------


@dataclass
class ModeReport:
    mode: str
    images: int
    csv_mb: float
    accepted_s: float = 0.0
    first_image_s: float = 0.0
    ingested_s: float = 0.0
    server_rss_growth_mb: float = 0.0
    worker_rss_growth_mb: float | None = None
    status_ms: dict[str, float] = field(default_factory=dict)
    status_polls: int = 0
    page_ms: dict[str, float] = field(default_factory=dict)
    done_at_cancel: int = 0
    cancel_s: float = 0.0
    delete_s: float = 0.0
    rows_left_after_delete: int = 0


class PeakRss(threading.Thread):
    """The largest VmRSS of one process (with its children, if `tree`) until `finish`."""

    def __init__(self, pid: int, *, tree: bool = False) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self._read = tree_status_kib if tree else status_kib
        self.baseline_kib = self._rss()
        self.peak_kib = self.baseline_kib
        self._done = threading.Event()

    def _rss(self) -> int:
        return self._read(self.pid, "VmRSS") or 0

    def run(self) -> None:
        while not self._done.wait(RSS_SAMPLE_SECONDS):
            self.peak_kib = max(self.peak_kib, self._rss())

    def finish(self) -> float:
        """The growth over the baseline, in MB."""
        self._done.set()
        self.join()
        return (self.peak_kib - self.baseline_kib) / 1024


class Database:
    def __init__(self, url: str) -> None:
        self._engine = create_async_engine(url)

    async def ingested(self, request_id: uuid.UUID) -> bool:
        async with self._engine.connect() as connection:
            value = await connection.scalar(
                text("SELECT ingested_at IS NOT NULL FROM requests WHERE id = :id"),
                {"id": _stored_id(self._engine.dialect.name, request_id)},
            )
        return bool(value)

    async def rows_of(self, request_id: uuid.UUID) -> int:
        stored = _stored_id(self._engine.dialect.name, request_id)
        async with self._engine.connect() as connection:
            products = await connection.scalar(
                text("SELECT count(*) FROM products WHERE request_id = :id"), {"id": stored}
            )
            images = await connection.scalar(
                text("SELECT count(*) FROM images WHERE request_id = :id"), {"id": stored}
            )
        return int(products or 0) + int(images or 0)

    async def close(self) -> None:
        await self._engine.dispose()


def _stored_id(dialect: str, request_id: uuid.UUID) -> Any:
    return request_id.hex if dialect == "sqlite" else request_id  # SQLAlchemy's Uuid on each


class StatusPoller:
    def __init__(self, client: httpx.AsyncClient, request_id: str) -> None:
        self._client = client
        self._path = f"/status/{request_id}"
        self.latencies: list[float] = []
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            started = time.perf_counter()
            response = await self._client.get(self._path)
            self.latencies.append(time.perf_counter() - started)
            response.raise_for_status()
            await asyncio.sleep(STATUS_POLL_SECONDS)

    async def stop(self) -> dict[str, float]:
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task
        ms = sorted(latency * 1000 for latency in self.latencies)
        return {
            "p50": round(statistics.median(ms), 1),
            "p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1),
            "max": round(ms[-1], 1),
        }


async def measure_requests(
    base_url: str,
    database_url: str,
    body: bytes,
    rows: int,
    server_pid: int,
    worker_pid: int | None,
    report: ModeReport,
) -> None:
    database = Database(database_url)
    server_rss = PeakRss(server_pid)
    # The worker's pool process ingests (and encodes: its growth counts both).
    worker_rss = PeakRss(worker_pid, tree=True) if worker_pid else None
    for sampler in (server_rss, worker_rss):
        if sampler is not None:
            sampler.start()
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        started = time.perf_counter()
        response = await client.post("/upload", files={"file": ("million.csv", body, "text/csv")})
        accepted = time.perf_counter()
        if response.status_code != 202:
            raise BenchError(f"POST /upload answered {response.status_code}: {response.text[:500]}")
        report.accepted_s = accepted - started
        request_id = response.json()["request_id"]
        print(f"  202 after {report.accepted_s:.1f} s", flush=True)
        report.first_image_s = await _first_image(client, request_id) - accepted
        print(f"  first image {report.first_image_s:.2f} s after the 202", flush=True)
        poller = StatusPoller(client, request_id)
        try:
            report.ingested_s = await _ingested(database, uuid.UUID(request_id)) - accepted
            print(f"  every row stored {report.ingested_s:.1f} s after the 202", flush=True)
            report.server_rss_growth_mb = round(server_rss.finish(), 1)
            if worker_rss is not None:
                report.worker_rss_growth_mb = round(worker_rss.finish(), 1)
            report.page_ms = await _pages(client, request_id, rows)
        finally:
            report.status_ms = await poller.stop()
            report.status_polls = len(poller.latencies)
        status = (await client.get(f"/status/{request_id}")).json()
        report.done_at_cancel = status["progress"]["done"] + status["progress"]["failed"]
        report.cancel_s = await _timed(client.post(f"/requests/{request_id}/cancel"))
        report.delete_s = await _timed(client.delete(f"/requests/{request_id}"))
        report.rows_left_after_delete = await database.rows_of(uuid.UUID(request_id))
    await database.close()


async def _first_image(client: httpx.AsyncClient, request_id: str) -> float:
    deadline = time.monotonic() + INGEST_TIMEOUT
    while time.monotonic() < deadline:
        progress = (await client.get(f"/status/{request_id}")).json()["progress"]
        if progress["done"] + progress["failed"]:
            return time.perf_counter()
        await asyncio.sleep(FIRST_IMAGE_POLL_SECONDS)
    raise BenchError("no image was done in time")


async def _ingested(database: Database, request_id: uuid.UUID) -> float:
    deadline = time.monotonic() + INGEST_TIMEOUT
    while time.monotonic() < deadline:
        if await database.ingested(request_id):
            return time.perf_counter()
        await asyncio.sleep(0.2)
    raise BenchError("the rows were not all stored in time")


async def _pages(client: httpx.AsyncClient, request_id: str, rows: int) -> dict[str, float]:
    places = {
        "first": None,
        "middle": f"{rows // 2}.0",
        "last": f"{rows - 2}.{URLS_PER_ROW - 1}",
    }
    medians = {}
    for name, after in places.items():
        params = {"limit": "100"} | ({"after": after} if after else {})
        times = []
        for _ in range(PAGE_TRIES):
            started = time.perf_counter()
            response = await client.get(f"/requests/{request_id}/images", params=params)
            times.append(time.perf_counter() - started)
            response.raise_for_status()
            if not response.json()["images"]:
                raise BenchError(f"the {name} page of the images listing is empty")
        medians[name] = round(statistics.median(times) * 1000, 1)
    return medians


async def _timed(call: Any) -> float:
    started = time.perf_counter()
    response = await call
    elapsed = time.perf_counter() - started
    if response.status_code >= 400:
        raise BenchError(
            f"{response.request.method} answered {response.status_code}: {response.text[:300]}"
        )
    return round(elapsed, 2)


def measure_mode(mode: str, origin: Origin, body: bytes, rows: int) -> ModeReport:
    report = ModeReport(mode, rows * URLS_PER_ROW, round(len(body) / 1e6, 1))
    print(f"{mode}:", flush=True)
    deployment: AbstractContextManager[Any]
    if mode == "embedded":
        deployment = running_service()
        with deployment as service:
            database_url = f"sqlite+aiosqlite:///{service.data_dir / 'imgcrunch.db'}"
            asyncio.run(
                measure_requests(
                    service.base_url, database_url, body, rows, service.pid, None, report
                )
            )
    else:
        # A worker as `imgcrunch worker` starts by default here: a pool process per core (2),
        # so that one stores the rows while the other works on the first images.
        with scale_out(1, processes=os.cpu_count() or 1) as running:
            assert isinstance(running, Deployment)
            database_url = running.api.env["IMGCRUNCH_DATABASE_URL"]
            asyncio.run(
                measure_requests(
                    running.api.base_url,
                    database_url,
                    body,
                    rows,
                    running.api.pid,
                    running.workers[0].pid,
                    report,
                )
            )
    return report


# --- the report ----------------------------------------------------------------------------------


def _mark(value: float, target: float) -> str:
    return "met" if value <= target else "MISSED"


def report_lines(reports: Sequence[ModeReport], csv_s: float, insert_s: float) -> list[str]:
    lines = [
        f"references, same run: the bare csv module reads the file in {csv_s:.1f} s; one "
        f"executemany of its images into a bare SQLite table takes {insert_s:.1f} s",
    ]
    for r in reports:
        worst_page = max(r.page_ms.values())
        worker = (
            f"; the worker's (which ingests) {r.worker_rss_growth_mb:.0f} MB"
            if r.worker_rss_growth_mb is not None
            else ""
        )
        lines += [
            f"{r.mode}: {r.images:,} images, a {r.csv_mb} MB CSV",
            f"  202 after {r.accepted_s:.1f} s "
            f"(target 30 s: {_mark(r.accepted_s, TARGET_ACCEPTED_S)})",
            f"  first image done {r.first_image_s:.2f} s after the 202 "
            f"(target 5 s: {_mark(r.first_image_s, TARGET_FIRST_IMAGE_S)})",
            f"  every row stored {r.ingested_s:.1f} s after the 202",
            f"  server RSS growth {r.server_rss_growth_mb:.0f} MB through the ingest"
            f" (target 250 MB: {_mark(r.server_rss_growth_mb, TARGET_RSS_GROWTH_MB)}){worker}",
            f"  GET /status while it works: p50 {r.status_ms['p50']} ms, p99 {r.status_ms['p99']} "
            f"ms, max {r.status_ms['max']} ms over {r.status_polls} polls "
            f"(target p99 100 ms: {_mark(r.status_ms['p99'], TARGET_STATUS_P99_MS)})",
            "  images listing, a page of 100 (median of 5): "
            + ", ".join(f"{name} {ms} ms" for name, ms in r.page_ms.items())
            + f" (target 50 ms: {_mark(worst_page, TARGET_PAGE_MS)})",
            f"  cancel {r.cancel_s} s with {r.done_at_cancel:,} images done "
            f"(target 10 s: {_mark(r.cancel_s, TARGET_CANCEL_S)}); delete {r.delete_s} s "
            f"(target 10 s: {_mark(r.delete_s, TARGET_DELETE_S)}), "
            f"{r.rows_left_after_delete} rows left",
        ]
    return lines


@dataclass
class Report:
    rows: int
    reports: list[ModeReport]
    lines: list[str]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of five URLs each")
    parser.add_argument("--modes", default="embedded,scale-out")
    parser.add_argument("--json", type=Path, default=RESULTS / "million-latest.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    print(
        f"imgcrunch million bench ({os.cpu_count()} cores): {args.rows:,} rows x 5 URLs", flush=True
    )
    origin = Origin(load_photos())
    reports = []
    try:
        if "scale-out" in modes:
            check_servers()
        body = build_csv(origin, args.rows)
        csv_s, insert_s = bare_csv_seconds(body), bare_insert_seconds(body)
        for mode in modes:
            reports.append(measure_mode(mode, origin, body, args.rows))
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
    finally:
        origin.stop()
    lines = report_lines(reports, csv_s, insert_s)
    print("\n".join(lines))
    write_json(Report(args.rows, reports, lines), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
