"""The one work loop, in-process: real SQLite, a real local HTTP origin, real files."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from imgcrunch import csvio, repository
from imgcrunch import pipeline as pipeline_module
from imgcrunch.codec import Effort
from imgcrunch.config import Settings
from imgcrunch.db import create_engine, upgrade
from imgcrunch.faults import InfrastructureFault
from imgcrunch.models import Image, Request
from imgcrunch.pipeline import MAX_ATTEMPTS, Pipeline, accept
from imgcrunch.runtime import Runtime, open_runtime, open_sessions
from imgcrunch.storage import LocalStorage, input_csv_key
from tests.plugins.disks import SmallDiskFactory
from tests.plugins.origin import ImageServer, OriginDelay

pytestmark = pytest.mark.anyio

BATCH = 2


@dataclass
class Told:
    """The finished hook of these tests: who finished, in order."""

    finished: list[uuid.UUID] = field(default_factory=list)

    async def __call__(self, request_id: uuid.UUID) -> None:
        self.finished.append(request_id)


@dataclass
class Running:
    settings: Settings
    runtime: Runtime
    told: Told

    async def accept(self, *rows: str) -> uuid.UUID:
        """What POST /upload does: keep the CSV and record the request, queued."""
        data = ("S. No,Product Name,Input Image Urls\n" + "".join(f"{r}\n" for r in rows)).encode()
        async with self.runtime.sessions() as session:
            return await accept(
                session,
                self.runtime.storage,
                io.BytesIO(data),
                csvio.check(io.BytesIO(data), csvio.Limits.from_settings(self.settings)),
                quality=50,
                effort=Effort.BALANCED,
            )

    async def submit(self, *rows: str) -> uuid.UUID:
        request_id = await self.accept(*rows)
        await self.runtime.pipeline.resume(request_id)
        return request_id

    async def work_until_idle(self) -> int:
        batches = 0
        while await self.runtime.pipeline.work_next(batch_size=BATCH):
            batches += 1
        return batches

    async def request(self, request_id: uuid.UUID) -> Request:
        async with self.runtime.sessions() as session:
            request = await repository.get_request(session, request_id)
        assert request is not None
        return request


@contextlib.asynccontextmanager
async def started(data_dir: Path, **settings: Any) -> AsyncIterator[Running]:
    """The pipeline's runtime on a fresh SQLite database, compressing in threads."""
    configured = Settings(data_dir=data_dir, allow_private_networks=True, **settings)
    engine = create_engine(configured.database_url)
    await upgrade(engine)
    await engine.dispose()
    told = Told()
    async with (
        open_sessions(configured) as sessions,
        open_runtime(
            configured, sessions, codec_workers=2, codec_processes=False, on_finished=told
        ) as runtime,
    ):
        yield Running(configured, runtime, told)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async with started(tmp_path) as running:
        yield running


def output_rows(running: Running, request: Request) -> list[dict[str, str]]:
    assert request.output_key is not None
    text = running.runtime.storage.get(request.output_key).decode()
    return list(csv.DictReader(io.StringIO(text)))


async def test_a_request_is_claimed_processed_recorded_and_finished_once(
    running: Running, image_server: ImageServer
) -> None:
    urls = image_server.photo_urls(5, tag="pipeline-")
    request_id = await running.submit(f'1,A,"{urls[0]},{urls[1]}"', f'2,B,"{",".join(urls[2:])}"')
    assert await running.work_until_idle() == 3  # 5 images in batches of 2
    request = await running.request(request_id)
    assert (request.status, request.done_images, request.failed_images) == ("completed", 5, 0)
    assert running.told.finished == [request_id]
    rows = output_rows(running, request)
    assert [len(row["Output Image Urls"].split(",")) for row in rows] == [2, 3]
    assert await running.runtime.pipeline.work_next(batch_size=BATCH) is False


async def test_an_image_failing_for_its_own_reasons_does_not_stop_its_request(
    running: Running, image_server: ImageServer
) -> None:
    good = image_server.photo_urls(1, tag="pipeline-good-")[0]
    request_id = await running.submit(f'1,A,"{good},{image_server.url("/missing.jpg")}"')
    await running.work_until_idle()
    request = await running.request(request_id)
    assert (request.status, request.done_images, request.failed_images) == (
        "completed_with_errors",
        1,
        1,
    )
    assert "http_error" in output_rows(running, request)[0]["Errors"]
    assert running.told.finished == [request_id]


async def test_the_request_that_waited_longest_is_served_first(
    running: Running, image_server: ImageServer
) -> None:
    big = await running.submit(*(f"{n},P{n},{url}" for n, url in enumerate(
        image_server.photo_urls(8, tag="pipeline-big-"), 1)))  # fmt: skip
    small = await running.submit(f"1,S,{image_server.photo_urls(1, tag='pipeline-small-')[0]}")
    await running.work_until_idle()
    # Batches take turns: the small request, one batch, finishes long before the big one's four.
    assert running.told.finished == [small, big]


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows stored two images at a time, so that a few rows make several chunks; and the
    output CSV written two products at a time."""
    monkeypatch.setattr(pipeline_module, "_FIRST_CHUNK_IMAGES", 2)
    monkeypatch.setattr(pipeline_module, "_CHUNK_IMAGES", 2)
    monkeypatch.setattr(pipeline_module, "_OUTPUT_ROWS", 2)


@pytest.mark.usefixtures("small_chunks")
async def test_rows_are_stored_a_chunk_at_a_time_and_worked_on_as_they_land(
    running: Running, image_server: ImageServer
) -> None:
    a, b, c, d = image_server.photo_urls(4, tag="pipeline-chunks-")
    request_id = await running.accept(
        f"1,A,{a}", f"2,B,{b}", f'3,C,"{c},{a}"', f"4,D,{d}", f"5,E,{b}"
    )
    claimable: list[int] = []

    async def work_on_what_landed(count: int) -> None:
        claimable.append(count)
        await running.work_until_idle()  # each first is done before its repeats are stored

    await running.runtime.pipeline.resume(request_id, on_stored=work_on_what_landed)
    # Rows 1-2, then 3 (its second URL repeats row 1's), then 4-5 (row 5 repeats row 2).
    assert claimable == [2, 1, 1]
    request = await running.request(request_id)
    assert (request.status, request.done_images, request.total_images) == ("completed", 6, 6)
    outputs = [row["Output Image Urls"].split(",") for row in output_rows(running, request)]
    assert [row["S. No."] for row in output_rows(running, request)] == ["1", "2", "3", "4", "5"]
    assert outputs[2][1] == outputs[0][0]
    assert outputs[4] == outputs[1]
    assert running.told.finished == [request_id]


@pytest.mark.usefixtures("small_chunks")
async def test_an_ingest_stopped_midway_resumes_and_stores_each_row_once(
    running: Running, image_server: ImageServer
) -> None:
    a, b, c = image_server.photo_urls(3, tag="pipeline-resumed-")
    request_id = await running.accept(f"1,A,{a}", f"2,B,{b}", f'3,C,"{c},{a}"', f"4,D,{b}")

    class Killed(Exception):
        pass

    async def die(_count: int) -> None:
        raise Killed

    with pytest.raises(Killed):  # the worker dies right after its first chunk
        await running.runtime.pipeline.resume(request_id, on_stored=die)
    await running.runtime.pipeline.resume(request_id)  # another one takes over
    await running.work_until_idle()
    request = await running.request(request_id)
    assert (request.status, request.done_images) == ("completed", 5)
    async with running.runtime.sessions() as session:
        images = (
            await session.execute(select(Image.source_url).where(Image.request_id == request_id))
        ).scalars()
        assert sorted(images) == sorted([a, b, c, a, b])
    assert len(output_rows(running, request)) == 4


async def test_a_request_whose_kept_csv_is_gone_fails_and_is_told(
    running: Running, image_server: ImageServer
) -> None:
    request_id = await running.accept(f"1,A,{image_server.photo_urls(1, tag='pipeline-lost-')[0]}")
    (running.settings.storage_root / input_csv_key(request_id)).unlink()
    await running.runtime.pipeline.resume(request_id)
    request = await running.request(request_id)
    assert request.status == "failed"
    assert "input CSV unreadable" in (request.error or "")
    assert running.told.finished == [request_id]
    assert await running.work_until_idle() == 0


# --- faults of ours: never an image's failure --------------------------------------------------


async def image_states(running: Running, request_id: uuid.UUID) -> list[tuple[str, int]]:
    async with running.runtime.sessions() as session:
        rows = await repository.request_images(session, request_id, limit=100, after=None)
    return [(row.status, row.bytes_out or 0) for _, row in rows]


async def test_a_full_disk_fails_no_image_and_the_request_waits_then_resumes(
    tmp_path: Path, image_server: ImageServer, small_disk: SmallDiskFactory
) -> None:
    with small_disk("4m") as disk:
        async with started(tmp_path, storage_dir=disk.path, min_free_bytes=0) as running:
            urls = image_server.photo_urls(4, tag="pipeline-full-")
            request_id = await running.submit(f'1,A,"{",".join(urls)}"')
            disk.fill()
            with pytest.raises(InfrastructureFault) as raised:
                await running.runtime.pipeline.work_next(batch_size=BATCH)
            assert raised.value.reason == "storage full"
            request = await running.request(request_id)
            assert (request.status, request.done_images, request.failed_images) == (
                "processing",
                0,
                0,
            )
            assert (request.waiting or "").startswith("storage full: ")
            assert [state for state, _ in await image_states(running, request_id)] == [
                "pending"
            ] * 4
            disk.free()
            await running.work_until_idle()
            request = await running.request(request_id)
            assert (request.status, request.done_images, request.failed_images) == (
                "completed",
                4,
                0,
            )
            assert request.waiting is None
            assert running.told.finished == [request_id]


async def test_below_the_free_space_floor_nothing_is_claimed(
    tmp_path: Path, image_server: ImageServer, small_disk: SmallDiskFactory
) -> None:
    with small_disk("4m") as disk:
        floor = 1024 * 1024
        async with started(tmp_path, storage_dir=disk.path, min_free_bytes=floor) as running:
            request_id = await running.submit(f"1,A,{image_server.photo_urls(1)[0]}")
            disk.fill(leave=floor // 2)
            with pytest.raises(InfrastructureFault, match="below IMGCRUNCH_MIN_FREE_BYTES"):
                await running.runtime.pipeline.work_next(batch_size=BATCH)
            async with running.runtime.sessions() as session:
                assert await repository.unclaimed_image_count(session, request_id) == 1
            disk.free()
            await running.work_until_idle()
            assert (await running.request(request_id)).status == "completed"


async def test_a_finalisation_the_disk_refused_is_retried_when_the_loop_is_idle(
    tmp_path: Path, image_server: ImageServer, small_disk: SmallDiskFactory
) -> None:
    with small_disk("4m") as disk:
        async with started(tmp_path, storage_dir=disk.path, min_free_bytes=0) as running:
            # Its one image fails for its own reason: only the output CSV needs room.
            request_id = await running.submit(f"1,A,{image_server.url('/missing.jpg')}")
            disk.fill()
            with pytest.raises(InfrastructureFault):
                await running.runtime.pipeline.work_next(batch_size=BATCH)
            request = await running.request(request_id)
            assert (request.status, request.failed_images) == ("processing", 1)
            assert running.told.finished == []
            disk.free()
            assert await running.runtime.pipeline.work_next(batch_size=BATCH) is False
            assert (await running.request(request_id)).status == "completed_with_errors"
            assert running.told.finished == [request_id]


@pytest.mark.slow  # it waits for leases to run out, in real time
async def test_a_live_holder_keeps_its_slow_batch_and_a_dead_one_loses_it(
    tmp_path: Path, origin_delay: OriginDelay
) -> None:
    # A lease long enough that a loaded machine's pauses never let a renewal come late: the
    # holder renews every third of it.
    lease = 3.0
    async with started(tmp_path, claim_timeout=lease, broker_visibility_timeout=60) as running:
        pipeline = running.runtime.pipeline
        image_server = origin_delay(2 * lease)
        slow = await running.submit(f"1,A,{image_server.photo_urls(1, tag='pipeline-slow-')[0]}")

        async def claimed_at() -> datetime | None:
            async with running.runtime.sessions() as session:
                return await session.scalar(
                    select(Image.claimed_at).where(Image.request_id == slow)
                )

        working = asyncio.create_task(pipeline.work_next(batch_size=BATCH))
        leases: list[datetime] = []
        for _ in range(4):  # sweeps while it downloads, the last one after two leases
            await asyncio.sleep(lease / 2)
            assert (await pipeline.sweep(batch_size=BATCH)).batches == []
            if (at := await claimed_at()) is not None:
                leases.append(at)
        assert await working is True
        assert len(set(leases)) > 1  # renewed while it ran
        origin_delay(0)
        assert (await running.request(slow)).status == "completed"
        async with running.runtime.sessions() as session:
            attempts = await session.scalar(select(Image.attempts).where(Image.request_id == slow))
        assert attempts == 1  # never taken away, so never claimed again

        # A holder that dies stops renewing: once the lease has run out, the sweep frees it.
        dead = await running.submit(f"1,B,{image_server.photo_urls(1, tag='pipeline-dead-')[0]}")
        assert await pipeline.claim_next(batch_size=BATCH) is not None  # and never processed
        await asyncio.sleep(lease * 1.2)
        swept = await pipeline.sweep(batch_size=BATCH)
        assert [batch.request_id for batch in swept.batches] == [dead]
        assert swept.claimable == 1
        await running.work_until_idle()
        assert (await running.request(dead)).status == "completed"


class BrokenStorage(LocalStorage):
    """Storage whose image writes hit a bug of ours: not a fault of the infrastructure."""

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        if key.startswith("images/"):
            raise RuntimeError("a bug in our own code")
        super().put(key, data, durable=durable)


async def test_a_bug_of_ours_is_retried_a_bounded_number_of_times_then_recorded(
    running: Running, image_server: ImageServer
) -> None:
    parts = running.runtime.pipeline
    pipeline = Pipeline(
        sessions=parts.sessions,
        fetcher=parts.fetcher,
        storage=BrokenStorage(running.settings.storage_root),
        codec_pool=parts.codec_pool,
        options=parts.options,
        worker_id="poisoned",
    )
    request_id = await running.submit(f"1,A,{image_server.photo_urls(1, tag='pipeline-bug-')[0]}")
    claims = 0
    while await pipeline.work_next(batch_size=BATCH):
        claims += 1
    assert claims == MAX_ATTEMPTS  # handed back twice, recorded on the third
    request = await running.request(request_id)
    assert (request.status, request.failed_images) == ("completed_with_errors", 1)
    async with running.runtime.sessions() as session:
        (image,) = await repository.failed_images(session, request_id, limit=1)
    assert image.error_code == "internal_error"
    assert image.error_message == "RuntimeError: a bug in our own code"
