"""Re-runs benchmark (issue 24): one catalog uploaded three times to one service.

1. first: every image fetched, encoded and stored;
2. again, unchanged at the origin;
3. again, with `--changed` of the images changed at the origin (new bytes at the same URL).

Each run's wall time (upload to completed), the service's CPU (its process tree, codec workers
included) and the bytes the origin sent in bodies, side by side, on the local folder and on S3
(a SeaweedFS `weed server -s3` of its own on loopback). The origin is a process of its own that
serves `--images` URLs of the corpus photos (the flipped picture once an image is changed),
with `ETag` and `Last-Modified` and 304s to conditional requests (`--validators` for an origin
with `Last-Modified` only, or with neither).

Targets: the unchanged re-run at least 8x faster than the first, with the origin sending at
most 1% of the first run's bytes; the changed re-run at least 6x faster; exactly the changed
images get new URLs.

    .venv/bin/python bench/catalog.py                      # 10,000 images, local and S3
    .venv/bin/python bench/catalog.py --images 2000 --storage local
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import ctypes
import io
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import pyvips

from harness import (
    RESULTS,
    START_TIMEOUT,
    STOP_TIMEOUT,
    BenchError,
    OriginProtocol,
    completion_seconds,
    load_photos,
    running_service,
    tree_cpu_seconds,
    upload,
    wait_until_completed,
    write_json,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.servers import SeaweedS3

BUCKET = "imgcrunch-catalog"
URLS_PER_ROW = 5  # as a product feed has them
TARGET_UNCHANGED_SPEEDUP = 8.0
TARGET_UNCHANGED_BYTES = 0.01
TARGET_CHANGED_SPEEDUP = 6.0


# --- the origin -------------------------------------------------------------------------------


@dataclass
class _OriginState:
    """GET /c/<n>.jpg: photo n % photos, flipped once image n is changed; conditional GETs."""

    photos: list[bytes]  # the originals, then the same flipped
    validators: str  # both | last_modified | none
    changed: Any  # RawArray of bytes: 1 where image n is changed
    body_bytes: Any  # RawValue: sent in bodies
    not_modified: Any  # RawValue: 304s sent

    def answer(self, head: bytes) -> bytes:
        request_line, _, fields = head.partition(b"\r\n")
        path = request_line.split(b" ")[1] if request_line.count(b" ") == 2 else b""
        if not (path.startswith(b"/c/") and path.endswith(b".jpg")):
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        n = int(path[3:-4])
        version = int(self.changed[n])
        etag = f'"{n}-{version}"'.encode()
        modified = formatdate(1_700_000_000 + 86_400 * version, usegmt=True).encode()
        headers = b""
        if self.validators == "both":
            headers += b"ETag: " + etag + b"\r\n"
        if self.validators in ("both", "last_modified"):
            headers += b"Last-Modified: " + modified + b"\r\n"
        asked = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(b":") for line in fields.split(b"\r\n"))
        }
        if self._fresh(asked, etag, modified):
            self.not_modified.value += 1
            return b"HTTP/1.1 304 Not Modified\r\n" + headers + b"\r\n"
        photos = len(self.photos) // 2
        body = self.photos[n % photos + photos * version]
        self.body_bytes.value += len(body)
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
            + headers
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def _fresh(self, asked: dict[bytes, bytes], etag: bytes, modified: bytes) -> bool:
        if self.validators == "none":
            return False
        if b"if-none-match" in asked and self.validators == "both":
            return asked[b"if-none-match"] == etag
        return asked.get(b"if-modified-since") == modified


def _origin_main(state: _OriginState, ready: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: OriginProtocol(state.answer), "127.0.0.1", 0, backlog=1024
        )
        ready.send(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


class CatalogOrigin:
    def __init__(self, photos: Sequence[bytes], images: int, validators: str) -> None:
        context = multiprocessing.get_context("spawn")
        flipped = [
            bytes(pyvips.Image.new_from_buffer(p, "").fliphor().jpegsave_buffer(Q=90))
            for p in photos
        ]
        self.images = images
        self.changed = context.RawArray(ctypes.c_uint8, images)
        self._body_bytes = context.RawValue(ctypes.c_uint64, 0)
        self._not_modified = context.RawValue(ctypes.c_uint64, 0)
        state = _OriginState(
            [*photos, *flipped], validators, self.changed, self._body_bytes, self._not_modified
        )
        receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(target=_origin_main, args=(state, sender), daemon=True)
        self._process.start()
        sender.close()
        if not receiver.poll(START_TIMEOUT):
            self.stop()
            raise BenchError("the catalog origin did not start")
        self.base_url = f"http://127.0.0.1:{receiver.recv()}"

    @property
    def body_bytes(self) -> int:
        return int(self._body_bytes.value)

    @property
    def not_modified(self) -> int:
        return int(self._not_modified.value)

    def change(self, share: float) -> set[int]:
        """Change every (1/share)-th image, spread over the catalog; which ones."""
        step = max(1, round(1 / share))
        chosen = set(range(step // 2, self.images, step))
        for n in chosen:
            self.changed[n] = 1
        return chosen

    def csv(self) -> bytes:
        lines = ["S. No,Product Name,Input Image Urls"]
        for row, first in enumerate(range(0, self.images, URLS_PER_ROW), start=1):
            last = min(first + URLS_PER_ROW, self.images)
            urls = ",".join(f"{self.base_url}/c/{n}.jpg" for n in range(first, last))
            lines.append(f'{row},Product {row},"{urls}"')
        return ("\r\n".join(lines) + "\r\n").encode()

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(STOP_TIMEOUT)


# --- the runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    storage: str  # local | s3
    run: str  # first | unchanged | changed
    images: int
    seconds: float  # upload to completed
    service_cpu_seconds: float
    origin_bytes: int
    not_modified: int  # 304s the origin sent
    reused: int


@dataclass(frozen=True)
class Report:
    images: int
    changed_share: float
    validators: str
    storages: list[StorageReport]
    lines: list[str]


@dataclass(frozen=True)
class StorageReport:
    storage: str
    runs: list[Run]
    unchanged_speedup: float
    unchanged_bytes_share: float
    changed_speedup: float
    changed_images: int
    new_urls_exactly_the_changed: bool


def output_urls(client: httpx.Client, request_id: str) -> list[str]:
    text = client.get(f"/download/{request_id}").text
    return [
        url
        for row in csv.DictReader(io.StringIO(text))
        for url in row["Output Image Urls"].split(",")
    ]


def one_run(
    client: httpx.Client, origin: CatalogOrigin, pid: int, storage: str, run: str
) -> tuple[Run, list[str]]:
    body = origin.csv()
    cpu, sent_bytes, not_modified = tree_cpu_seconds(pid), origin.body_bytes, origin.not_modified
    sent = upload(client, body)
    status = wait_until_completed(client, sent.request_id)
    observed_at = time.time()
    figures = Run(
        storage=storage,
        run=run,
        images=origin.images,
        seconds=completion_seconds(sent, status, observed_at),
        service_cpu_seconds=tree_cpu_seconds(pid) - cpu,
        origin_bytes=origin.body_bytes - sent_bytes,
        not_modified=origin.not_modified - not_modified,
        reused=status["progress"]["reused"],
    )
    print(
        f"  {storage:5} {run:9} {figures.seconds:8.1f} s  CPU {figures.service_cpu_seconds:7.1f} s"
        f"  origin sent {figures.origin_bytes / 1e6:9.1f} MB  304s {figures.not_modified:6}"
        f"  reused {figures.reused:6}",
        flush=True,
    )
    return figures, output_urls(client, sent.request_id)


def measure(storage: str, settings: dict[str, str], args: argparse.Namespace) -> StorageReport:
    origin = CatalogOrigin(load_photos().data, args.images, args.validators)
    try:
        with running_service(settings) as service, service.client() as client:
            client.timeout = httpx.Timeout(120)
            first, before = one_run(client, origin, service.pid, storage, "first")
            unchanged, same = one_run(client, origin, service.pid, storage, "unchanged")
            changed_images = origin.change(args.changed)
            changed, after = one_run(client, origin, service.pid, storage, "changed")
    finally:
        origin.stop()
    new_urls = {n for n, (a, b) in enumerate(zip(before, after, strict=True)) if a != b}
    return StorageReport(
        storage=storage,
        runs=[first, unchanged, changed],
        unchanged_speedup=first.seconds / unchanged.seconds,
        unchanged_bytes_share=unchanged.origin_bytes / first.origin_bytes,
        changed_speedup=first.seconds / changed.seconds,
        changed_images=len(changed_images),
        new_urls_exactly_the_changed=new_urls == changed_images and same == before,
    )


def report_lines(reports: Sequence[StorageReport]) -> list[str]:
    lines = []
    for report in reports:
        first = report.runs[0]
        lines.append(f"{report.storage}:")
        for run in report.runs:
            lines.append(
                f"  {run.run:9} {run.seconds:8.1f} s ({first.seconds / run.seconds:5.1f}x faster)"
                f"  service CPU {run.service_cpu_seconds:7.1f} s"
                f" ({run.service_cpu_seconds / first.service_cpu_seconds:6.1%})"
                f"  origin sent {run.origin_bytes / 1e6:8.1f} MB"
                f" ({run.origin_bytes / first.origin_bytes:6.2%})"
            )
        checks = [
            (
                f"unchanged re-run >= {TARGET_UNCHANGED_SPEEDUP:g}x faster",
                report.unchanged_speedup >= TARGET_UNCHANGED_SPEEDUP,
                f"{report.unchanged_speedup:.1f}x",
            ),
            (
                f"unchanged re-run: origin sends <= {TARGET_UNCHANGED_BYTES:.0%} of the bytes",
                report.unchanged_bytes_share <= TARGET_UNCHANGED_BYTES,
                f"{report.unchanged_bytes_share:.2%}",
            ),
            (
                f"{report.changed_images} changed: re-run >= {TARGET_CHANGED_SPEEDUP:g}x faster",
                report.changed_speedup >= TARGET_CHANGED_SPEEDUP,
                f"{report.changed_speedup:.1f}x",
            ),
            (
                "exactly the changed images get new URLs",
                report.new_urls_exactly_the_changed,
                "yes" if report.new_urls_exactly_the_changed else "no",
            ),
        ]
        lines += [
            f"  target: {what}: {'met' if ok else 'NOT met'} ({got})" for what, ok, got in checks
        ]
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share changed (0.01: 1%%)")
    parser.add_argument("--storage", default="local,s3", help="local, s3, or both (default)")
    parser.add_argument("--validators", choices=("both", "last_modified", "none"), default="both")
    parser.add_argument("--json", type=Path, default=RESULTS / "catalog-latest.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    storages = [part.strip() for part in args.storage.split(",") if part.strip()]
    print(
        f"imgcrunch re-runs bench ({os.cpu_count()} cores): {args.images:,} images, "
        f"{args.changed:.0%} changed, origin validators: {args.validators}",
        flush=True,
    )
    reports: list[StorageReport] = []
    server = None
    try:
        for storage in storages:
            settings: dict[str, str] = {}
            if storage == "s3":
                server = SeaweedS3.start_in(Path(tempfile.gettempdir()))
                server.create_bucket(BUCKET)
                os.environ |= server.credentials
                settings = {
                    "IMGCRUNCH_STORAGE_URL": f"s3://{BUCKET}/catalog",
                    "IMGCRUNCH_S3_ENDPOINT_URL": server.endpoint,
                }
            reports.append(measure(storage, settings, args))
    except (BenchError, RuntimeError) as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.remove()
    lines = report_lines(reports)
    print("\n".join(lines))
    write_json(Report(args.images, args.changed, args.validators, reports, lines), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
