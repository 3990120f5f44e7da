"""The one work loop, in-process: real SQLite, a real local HTTP origin, real files."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imgcrunch import csvio, repository
from imgcrunch.codec import Effort
from imgcrunch.config import Settings
from imgcrunch.db import create_engine, upgrade
from imgcrunch.models import Request
from imgcrunch.pipeline import accept
from imgcrunch.runtime import Runtime, open_runtime, open_sessions
from imgcrunch.storage import input_csv_key
from tests.conftest import ImageServer

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
                data,
                csvio.parse(data, csvio.Limits.from_settings(self.settings)),
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


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    settings = Settings(data_dir=tmp_path, allow_private_networks=True)
    engine = create_engine(settings.database_url)
    await upgrade(engine)
    await engine.dispose()
    told = Told()
    async with (
        open_sessions(settings) as sessions,
        open_runtime(
            settings, sessions, codec_workers=2, codec_processes=False, on_finished=told
        ) as runtime,
    ):
        yield Running(settings, runtime, told)


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
