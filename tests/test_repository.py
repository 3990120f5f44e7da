"""The queries behind claims, results and finalisation, on real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, text

from imgcrunch import repository
from imgcrunch.csvio import InputRow
from imgcrunch.db import SessionFactory, create_engine, session_factory, upgrade
from imgcrunch.models import Image, Request, RequestStatus, WebhookDelivery, utcnow
from imgcrunch.repository import Claim, ImageResult, NewRequest
from tests import servers
from tests.records import finish_with_event

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[SessionFactory]:
    engine = create_engine(database_url)
    await upgrade(engine)
    yield session_factory(engine)
    await engine.dispose()


def row(line: int, *urls: str) -> InputRow:
    return InputRow(line=line, serial=str(line - 1), name=f"P{line}", urls=urls, extra=("x",))


async def create(sessions: SessionFactory, *rows: InputRow) -> uuid.UUID:
    request_id = await create_unstored(sessions, *rows)
    assert await ingest(sessions, request_id, rows)
    return request_id


async def create_unstored(sessions: SessionFactory, *rows: InputRow) -> uuid.UUID:
    """A request as the upload records it: its rows are still in its kept CSV."""
    request_id = uuid.uuid4()
    new = NewRequest(
        id=request_id,
        total_images=sum(len(row.urls) for row in rows),
        extra_columns=("Extra",),
        quality=50,
        effort="balanced",
        input_key="csv/input.csv",
    )
    async with sessions.begin() as session:
        await repository.create_request(session, new)
    return request_id


async def ingest(
    sessions: SessionFactory, request_id: uuid.UUID, rows: Sequence[InputRow], *, chunk: int = 2
) -> bool:
    """What an ingest does: the rows a chunk at a time, the last marking all stored."""
    firsts = repository.FirstImages()
    stored_images = 0
    for start in range(0, len(rows), chunk):
        async with sessions.begin() as session:
            stored = await repository.ingest_chunk(
                session,
                request_id,
                rows[start : start + chunk],
                start=start,
                last=start + chunk >= len(rows),
                stored_images=stored_images,
                firsts=firsts,
                now=utcnow(),
            )
        if stored is None:
            return False
        stored_images += stored.images
        if stored.repeated:
            async with sessions.begin() as session:
                await repository.record_repeats(session, request_id, stored.repeated, now=utcnow())
    return True


async def claim(sessions: SessionFactory, worker: str, *, age: float = 0) -> list[int]:
    """What the one work loop claims: the next batch of the request that waited longest."""
    now = utcnow() + timedelta(seconds=age)
    async with sessions.begin() as session:
        claimed = await repository.claim_next_batch(
            session, size=1000, worker=worker, now=now, stale_before=now - timedelta(seconds=60)
        )
    return [image.id for image in claimed.images] if claimed else []


async def test_a_request_is_stored_whole(sessions: SessionFactory) -> None:
    request_id = await create(sessions, row(2, "http://a/1", "http://a/2"), row(3, "http://a/3"))
    async with sessions() as session:
        request = await repository.get_request(session, request_id)
        assert request is not None
        assert (request.status, request.total_images, request.quality) == ("queued", 3, 50)
        assert request.extra_columns == ["Extra"]
        products = [product async for product in repository.product_outcomes(session, request_id)]
    assert [(p.row_number, p.product_name, p.extra) for p in products] == [
        ("1", "P2", ["x"]),
        ("2", "P3", ["x"]),
    ]
    assert [[i.source_url for i in p.images] for p in products] == [
        ["http://a/1", "http://a/2"],
        ["http://a/3"],
    ]


async def test_rows_are_stored_once_however_often_ingested(sessions: SessionFactory) -> None:
    rows = (row(2, "http://a/1"), row(3, "http://a/2"))
    request_id = await create(sessions, *rows)
    async with sessions.begin() as session:
        assert await repository.is_ingested(session, request_id)
    assert not await ingest(sessions, request_id, rows)
    async with sessions() as session:
        products = [p async for p in repository.product_outcomes(session, request_id)]
    assert len(products) == 2


async def test_a_repeated_url_is_one_unit_of_work(sessions: SessionFactory) -> None:
    request_id = await create(sessions, row(2, "http://a/1", "http://a/1"), row(3, "http://a/1"))
    claimed = await claim(sessions, "w1")
    assert len(claimed) == 1
    async with sessions.begin() as session:
        await repository.record_results(
            session,
            request_id,
            [ImageResult(image_id=claimed[0], output_key="k", bytes_in=10, bytes_out=4)],
            now=utcnow(),
        )
    async with sessions() as session:
        request = await repository.get_request(session, request_id)
        assert request is not None
        assert (request.done_images, request.bytes_in, request.bytes_out) == (3, 30, 12)
        assert await repository.is_complete(session, request_id)


async def store_chunk(
    sessions: SessionFactory,
    request_id: uuid.UUID,
    rows: Sequence[InputRow],
    *,
    start: int,
    firsts: repository.FirstImages,
    last: bool = False,
) -> repository.StoredChunk | None:
    async with sessions.begin() as session:
        return await repository.ingest_chunk(
            session,
            request_id,
            rows,
            start=start,
            last=last,
            stored_images=0,
            firsts=firsts,
            now=utcnow(),
        )


async def counts(sessions: SessionFactory, request_id: uuid.UUID) -> tuple[int, int, int]:
    """Products, images and done images stored for the request."""
    async with sessions() as session:
        products = len([p async for p in repository.product_outcomes(session, request_id)])
        images = await repository.image_count(session, request_id)
        request = await repository.get_request(session, request_id)
    assert request is not None
    return products, images, request.done_images


async def test_a_chunk_is_claimable_while_the_rest_of_its_request_is_still_stored(
    sessions: SessionFactory,
) -> None:
    rows = (row(2, "http://a/1"), row(3, "http://a/2"), row(4, "http://a/3"))
    request_id = await create_unstored(sessions, *rows)
    firsts = repository.FirstImages()
    assert await store_chunk(sessions, request_id, rows[:2], start=0, firsts=firsts)
    claimed = await claim(sessions, "w1")
    assert len(claimed) == 2
    async with sessions.begin() as session:
        results = [ImageResult(image_id=i, output_key=f"k{i}") for i in claimed]
        await repository.record_results(session, request_id, results, now=utcnow())
        # Two of three done: not complete, for the third is still in the kept CSV.
        assert not await repository.is_complete(session, request_id)
        assert not await repository.is_ingested(session, request_id)
    assert await store_chunk(sessions, request_id, rows[2:], start=2, firsts=firsts, last=True)
    async with sessions() as session:
        assert await repository.is_ingested(session, request_id)
    assert len(await claim(sessions, "w1")) == 1


async def test_a_resumed_ingest_stores_each_row_once(sessions: SessionFactory) -> None:
    rows = (row(2, "http://a/1"), row(3, "http://a/2"), row(4, "http://a/1", "http://a/3"))
    request_id = await create_unstored(sessions, *rows)
    assert await store_chunk(
        sessions, request_id, rows[:2], start=0, firsts=repository.FirstImages()
    )
    # The worker died there. Another that starts over is refused its first chunk: stored.
    assert not await store_chunk(
        sessions, request_id, rows[:2], start=0, firsts=repository.FirstImages()
    )
    async with sessions() as session:
        request = await repository.get_request(session, request_id)
        assert request is not None
        assert request.ingested_rows == 2
        firsts = await repository.stored_firsts(session, request_id)
    stored = await store_chunk(sessions, request_id, rows[2:], start=2, firsts=firsts)
    assert stored is not None
    assert (stored.images, stored.claimable) == (2, 1)  # http://a/1 repeats the first chunk's
    async with sessions.begin() as session:  # the worker died before it said all are stored
        assert await repository.finish_ingest(session, request_id, rows=3, now=utcnow())
        assert not await repository.finish_ingest(session, request_id, rows=3, now=utcnow())
    assert await counts(sessions, request_id) == (3, 4, 0)
    assert len(await claim(sessions, "w1")) == 3


async def test_a_repeat_stored_after_its_first_was_recorded_is_recorded_with_it(
    sessions: SessionFactory,
) -> None:
    rows = (row(2, "http://a/1"), row(3, "http://a/2", "http://a/1"))
    request_id = await create_unstored(sessions, *rows)
    firsts = repository.FirstImages()
    await store_chunk(sessions, request_id, rows[:1], start=0, firsts=firsts)
    [first] = await claim(sessions, "w1")
    async with sessions.begin() as session:
        result = ImageResult(image_id=first, output_key="k", bytes_in=10, bytes_out=4)
        await repository.record_results(session, request_id, [result], now=utcnow())
    stored = await store_chunk(sessions, request_id, rows[1:], start=1, firsts=firsts)
    assert stored is not None
    assert stored.repeated == [first]
    async with sessions.begin() as session:
        await repository.record_repeats(session, request_id, stored.repeated, now=utcnow())
        await repository.record_repeats(session, request_id, stored.repeated, now=utcnow())
    async with sessions() as session:
        request = await repository.get_request(session, request_id)
        repeat = (
            await session.execute(select(Image).where(Image.duplicate_of == first))
        ).scalar_one()
    assert request is not None
    assert (request.done_images, request.bytes_out) == (2, 8)  # counted once, however often
    assert (repeat.status, repeat.output_key) == ("done", "k")


async def test_a_url_is_taken_for_a_repeat_only_when_the_database_says_it_is_one(
    sessions: SessionFactory,
) -> None:
    rows = (row(2, "http://a/1"), row(3, "http://a/2"))
    request_id = await create_unstored(sessions, *rows)
    firsts = repository.FirstImages()
    await store_chunk(sessions, request_id, rows[:1], start=0, firsts=firsts)
    [first] = await claim(sessions, "w1")
    firsts.add("http://a/2", first)  # as if the two URLs' hashes collided
    stored = await store_chunk(sessions, request_id, rows[1:], start=1, firsts=firsts)
    assert stored is not None
    assert (stored.claimable, stored.repeated) == (1, [])


async def test_a_result_arriving_after_a_cancel_changes_nothing(sessions: SessionFactory) -> None:
    request_id = await create(sessions, row(2, "http://a/1"), row(3, "http://a/2"))
    claimed = await claim(sessions, "w1")
    async with sessions.begin() as session:
        assert await repository.cancel_request(session, request_id, now=utcnow())
        assert not await repository.cancel_request(session, request_id, now=utcnow())
    async with sessions.begin() as session:
        results = [ImageResult(image_id=i, output_key=f"k{i}", bytes_out=5) for i in claimed]
        await repository.record_results(session, request_id, results, now=utcnow())
    async with sessions() as session:
        request = await repository.get_request(session, request_id)
        statuses = (
            await session.execute(select(Image.status).where(Image.request_id == request_id))
        ).scalars()
        assert set(statuses) == {"pending"}  # one row changed at the cancel: the request's
    assert request is not None
    assert (request.status, request.done_images, request.bytes_out) == ("cancelled", 0, 0)
    assert await claim(sessions, "w2") == []


async def test_no_chunk_is_stored_for_a_cancelled_request(sessions: SessionFactory) -> None:
    rows = (row(2, "http://a/1"), row(3, "http://a/2"))
    request_id = await create_unstored(sessions, *rows)
    firsts = repository.FirstImages()
    await store_chunk(sessions, request_id, rows[:1], start=0, firsts=firsts)
    async with sessions.begin() as session:
        assert await repository.cancel_request(session, request_id, now=utcnow())
    assert await store_chunk(sessions, request_id, rows[1:], start=1, firsts=firsts) is None
    assert (await counts(sessions, request_id))[:2] == (1, 1)


async def test_a_live_claim_is_not_taken_twice_and_a_stale_one_comes_back_through_the_sweep(
    sessions: SessionFactory,
) -> None:
    request_id = await create(sessions, row(2, "http://a/1", "http://a/2"))
    assert len(await claim(sessions, "w1")) == 2
    assert await claim(sessions, "w2") == []
    assert await claim(sessions, "w3", age=61) == []  # stale, but only the sweep takes it back
    async with sessions.begin() as session:
        stale_before = utcnow() + timedelta(seconds=1)
        await repository.release_stale_claims(session, stale_before=stale_before, batch_size=32)
    assert len(await claim(sessions, "w3", age=61)) == 2
    async with sessions() as session:
        request = await repository.get_request(session, request_id)
        attempts = (await session.execute(select(Image.attempts))).scalars().all()
    assert request is not None
    assert request.status == RequestStatus.PROCESSING
    assert attempts == [2, 2]


async def claim_next(sessions: SessionFactory, worker: str, size: int) -> Claim | None:
    now = utcnow()
    async with sessions.begin() as session:
        return await repository.claim_next_batch(
            session, size=size, worker=worker, now=now, stale_before=now - timedelta(seconds=60)
        )


async def test_the_next_batch_is_the_request_that_waited_longest(
    sessions: SessionFactory,
) -> None:
    big = await create(sessions, *(row(n, f"http://big/{n}") for n in range(2, 12)))  # 10
    small = await create(sessions, row(2, "http://small/1", "http://small/1", "http://small/2"))
    taken = []
    while (claim := await claim_next(sessions, "w", 3)) is not None:
        taken.append((claim.batch.request_id, len(claim.images)))
    # Never claimed: the older first; then turn about, so the small one is done in one batch.
    # The repeated URL is one image to claim.
    assert taken == [(big, 3), (small, 2), (big, 3), (big, 3), (big, 1)]
    async with sessions() as session:
        request = await repository.get_request(session, small)
        assert request is not None
        assert request.status == RequestStatus.PROCESSING
        assert request.started_at is not None
        assert abs(request.started_at - utcnow()) < timedelta(seconds=30)
        assert await repository.unclaimed_image_count(session, big) == 0


async def test_workers_claiming_at_once_take_different_images(sessions: SessionFactory) -> None:
    request_id = await create(sessions, *(row(n, f"http://a/{n}") for n in range(2, 42)))  # 40
    async with sessions() as session:
        assert await repository.unclaimed_image_count(session, request_id) == 40
    claims = await asyncio.gather(*(claim_next(sessions, f"w{n}", 4) for n in range(12)))
    ids = [image.id for claim in claims if claim for image in claim.images]
    assert len(ids) == len(set(ids)) == 40  # ten batches of four, each image once
    assert sum(claim is None for claim in claims) == 2


async def test_recording_a_result_twice_counts_it_once(sessions: SessionFactory) -> None:
    request_id = await create(sessions, row(2, "http://a/1", "http://a/2"))
    ids = await claim(sessions, "w1")
    results = [
        ImageResult(image_id=ids[0], output_key="k", bytes_in=10, bytes_out=4),
        ImageResult(image_id=ids[1], error_code="http_error", error_message="HTTP 404"),
    ]
    for _ in range(2):  # a redelivered batch
        async with sessions.begin() as session:
            await repository.record_results(session, request_id, results, now=utcnow())
    async with sessions() as session:
        request = await repository.get_request(session, request_id)
        failed = await repository.failed_images(session, request_id, limit=10)
    assert request is not None
    assert (request.done_images, request.failed_images, request.bytes_in) == (1, 1, 10)
    assert [(f.row_number, f.source_url, f.error_code) for f in failed] == [
        ("1", "http://a/2", "http_error")
    ]


async def finish(sessions: SessionFactory, request_id: uuid.UUID, event_id: str) -> bool:
    return await finish_with_event(sessions, request_id, event_id=event_id)


async def test_finishing_happens_once_with_one_outbox_event(sessions: SessionFactory) -> None:
    request_id = await create(sessions, row(2, "http://a/1"))
    ids = await claim(sessions, "w1")
    assert not await finish(sessions, request_id, "msg_early")  # an image is still pending
    async with sessions.begin() as session:
        result = ImageResult(image_id=ids[0], output_key="k")
        await repository.record_results(session, request_id, [result], now=utcnow())
    assert [await finish(sessions, request_id, f"msg_{n}") for n in range(3)] == [
        True,
        False,
        False,
    ]
    async with sessions() as session:
        events = (await session.execute(select(WebhookDelivery.event_id))).scalars().all()
        request = await session.get(Request, request_id)
    assert events == ["msg_0"]
    assert request is not None
    assert request.status == "completed"


async def test_released_claims_are_claimable_at_once(sessions: SessionFactory) -> None:
    await create(sessions, row(2, "http://a/1"), row(3, "http://a/2"))
    assert len(await claim(sessions, "w1")) == 2
    async with sessions.begin() as session:
        assert await repository.release_claims(session, worker="someone-else") == 0
        assert await repository.release_claims(session, worker="w1") == 2
    assert len(await claim(sessions, "w2")) == 2


async def test_batches_walk_the_pending_images_in_order(sessions: SessionFactory) -> None:
    request_id = await create(sessions, *(row(n, f"http://a/{n}") for n in range(2, 12)))
    claims = []
    while (next_claim := await claim_next(sessions, "w", 4)) is not None:
        claims.append([image.id for image in next_claim.images])
    assert [len(ids) for ids in claims] == [4, 4, 2]
    ids = [id_ for batch in claims for id_ in batch]
    assert ids == sorted(ids)
    async with sessions() as session:
        assert await repository.unfinished_request_ids(session) == [request_id]


async def test_a_big_batch_is_recorded_whole_with_each_image_its_own_outcome(
    sessions: SessionFactory,
) -> None:
    urls = [f"http://a/{n}" for n in range(70)]  # more than one statement's worth
    request_id = await create(sessions, row(2, *urls), row(3, urls[0], urls[69]))
    ids = await claim(sessions, "w1")
    assert len(ids) == 70
    results = [
        ImageResult(image_id=id_, output_key=f"k{n}", bytes_in=100 + n, bytes_out=n)
        if n % 10
        else ImageResult(image_id=id_, error_code="timeout", error_message=f"slow {n}")
        for n, id_ in enumerate(ids)
    ]
    async with sessions.begin() as session:
        await repository.record_results(session, request_id, results, now=utcnow())
    async with sessions() as session:
        request = await repository.get_request(session, request_id)
        rows = (
            await session.execute(
                select(Image.source_url, Image.output_key, Image.error_message).order_by(Image.id)
            )
        ).all()
    assert request is not None
    # Images 0 and 69 appear twice; 0 failed (n % 10 == 0), 69 succeeded.
    assert (request.done_images, request.failed_images) == (63 + 1, 7 + 1)
    assert request.bytes_in == sum(100 + n for n in range(70) if n % 10) + 100 + 69
    assert request.bytes_out == sum(n for n in range(70) if n % 10) + 69
    by_url = {url: (key, message) for url, key, message in rows}
    assert by_url["http://a/5"] == ("k5", None)
    assert by_url["http://a/20"] == (None, "slow 20")
    assert rows[-2:] == [("http://a/0", None, "slow 0"), ("http://a/69", "k69", None)]


async def test_only_stale_claims_are_released_as_batches_to_run_again(
    sessions: SessionFactory,
) -> None:
    request_id = await create(sessions, *(row(n, f"http://a/{n}") for n in range(2, 9)))
    dead = await claim(sessions, "dead-worker", age=-120)  # claimed two minutes ago
    await create(sessions, row(2, "http://b/1"))
    live = await claim(sessions, "live-worker")  # the other request's: the first one's are held
    stale_before = utcnow() - timedelta(seconds=60)
    async with sessions.begin() as session:
        batches = await repository.release_stale_claims(
            session, stale_before=stale_before, batch_size=3
        )
    assert [(b.request_id, b.first_id, b.last_id, b.quality) for b in batches] == [
        (request_id, dead[0], dead[2], 50),
        (request_id, dead[3], dead[5], 50),
        (request_id, dead[6], dead[6], 50),
    ]
    # Released: the next sweep finds nothing to send again, and any worker may claim them.
    async with sessions.begin() as session:
        again = await repository.release_stale_claims(
            session, stale_before=stale_before, batch_size=3
        )
    assert again == []
    assert await claim(sessions, "new-worker") == dead
    assert await claim(sessions, "new-worker") == []
    # The live claim was left to its holder, as it was.
    async with sessions() as session:
        holders = (
            await session.execute(
                select(Image.id, Image.claimed_by, Image.attempts).where(Image.id.in_(live))
            )
        ).all()
    assert [tuple(row) for row in holders] == [(live[0], "live-worker", 1)]


async def test_requests_left_behind_by_a_crash_are_found(sessions: SessionFactory) -> None:
    never_ingested = uuid.uuid4()
    async with sessions.begin() as session:
        await repository.create_request(
            session,
            NewRequest(
                id=never_ingested,
                total_images=1,
                extra_columns=(),
                quality=50,
                effort="balanced",
                input_key="csv/x.csv",
            ),
        )
    recorded_not_finished = await create(sessions, row(2, "http://a/1"))
    ids = await claim(sessions, "w1")
    async with sessions.begin() as session:
        result = ImageResult(image_id=ids[0], output_key="k")
        await repository.record_results(session, recorded_not_finished, [result], now=utcnow())
    still_working = await create(sessions, row(2, "http://a/2"))
    async with sessions() as session:
        assert await repository.uningested_request_ids(
            session, stalled_before=utcnow() + timedelta(seconds=1)
        ) == [never_ingested]
        assert (
            await repository.uningested_request_ids(
                session, stalled_before=utcnow() - timedelta(seconds=60)
            )
            == []
        )  # a young one is more likely on its way than lost
        assert await repository.complete_unfinished_request_ids(session) == [recorded_not_finished]
        # Ingested, an image still to do: unfinished, and neither lost nor ready to finish.
        assert set(await repository.unfinished_request_ids(session)) == {
            never_ingested,
            recorded_not_finished,
            still_working,
        }


async def test_a_due_event_is_leased_to_one_caller_until_the_lease_ends(
    sessions: SessionFactory,
) -> None:
    request_id = await create(sessions, row(2, "http://a/1"))
    ids = await claim(sessions, "w1")
    async with sessions.begin() as session:
        result = ImageResult(image_id=ids[0], output_key="k")
        await repository.record_results(session, request_id, [result], now=utcnow())
    assert await finish(sessions, request_id, "msg_1")
    now = utcnow()

    async def lease(at: datetime) -> list[str]:
        async with sessions.begin() as session:
            leased = await repository.lease_due_deliveries(
                session, now=at, lease_until=at + timedelta(seconds=70)
            )
        return [delivery.event_id for delivery in leased]

    assert await lease(now) == ["msg_1"]
    assert await lease(now) == []  # a second worker asking at the same time gets nothing
    assert await lease(now + timedelta(seconds=71)) == ["msg_1"]  # its sender died: due again


# --- the source cache -------------------------------------------------------------------------

URL = "https://shop.example.com/mug.jpg"


def done(image_id: int, key: str, reuse: str) -> ImageResult:
    return ImageResult(
        image_id=image_id, output_key=key, bytes_in=10, bytes_out=5, width=1, height=1, reuse=reuse
    )


async def finished_with(sessions: SessionFactory, key: str, reuse: str) -> uuid.UUID:
    """A finished request of one image, at URL, whose output is stored at `key`."""
    request_id = await create(sessions, row(2, URL))
    [image_id] = await claim(sessions, "w")
    async with sessions.begin() as session:
        await repository.record_results(
            session, request_id, [done(image_id, key, reuse)], now=utcnow()
        )
    assert await finish_with_event(sessions, request_id, event_id=str(uuid.uuid4()))
    return request_id


async def remember(sessions: SessionFactory, key: str) -> None:
    source = repository.CachedSource(
        url_digest=repository.url_digest(URL),
        etag='"v1"',
        last_modified=None,
        source_sha256="0" * 64,
        output_key=key,
        result={"output_key": key, "bytes_in": 10, "bytes_out": 5, "width": 1, "height": 1},
    )
    async with sessions.begin() as session:
        await repository.remember_sources(
            session, owner="", spec_digest="spec", sources=[source], now=utcnow()
        )


async def delete(sessions: SessionFactory, request_id: uuid.UUID) -> list[str] | None:
    async with sessions.begin() as session:
        return await repository.delete_request(session, request_id)


async def test_a_delete_waits_for_a_reuse_of_its_outputs_and_then_keeps_them(
    sessions: SessionFactory,
) -> None:
    key = f"images/{uuid.uuid4()}/{'ab' * 32}.jpg"
    first = await finished_with(sessions, key, "not_cached")
    await remember(sessions, key)
    second = await create(sessions, row(2, URL))
    [image_id] = await claim(sessions, "w")
    digest = repository.url_digest(URL)

    # A worker reusing the entry holds it until it has recorded the reuse; a delete of the
    # only other request that refers to the outputs waits, then sees the new reference.
    async with sessions.begin() as worker:
        present = await repository.lock_entries(
            worker, owner="", spec_digest="spec", url_digests=[digest], now=utcnow()
        )
        assert present == {digest}
        deleting = asyncio.create_task(delete(sessions, first))
        await asyncio.sleep(0.5)  # time for the delete to run ahead, were it not held
        await repository.record_results(
            worker, second, [done(image_id, key, "reused")], now=utcnow()
        )
    assert await deleting == []  # the file stays: the second request refers to it

    # Now the second goes, the last to refer to the outputs: they go, and the entry with them.
    assert await finish_with_event(sessions, second, event_id=str(uuid.uuid4()))
    assert await delete(sessions, second) == [key]
    async with sessions.begin() as worker:
        gone = await repository.lock_entries(
            worker, owner="", spec_digest="spec", url_digests=[digest], now=utcnow()
        )
    assert gone == set()


async def test_images_are_paged_by_their_place_in_the_file(sessions: SessionFactory) -> None:
    rows = [row(2, "https://x/a", "https://x/b", "https://x/c"), row(3, "https://x/d")]
    rows += [row(4, "https://x/e", "https://x/f"), row(5, "https://x/a")]  # a duplicate too
    request_id = await create(sessions, *rows)
    await create(sessions, row(2, "https://x/other"))  # another request's images: not these
    pages: list[list[str]] = []
    after = None
    while True:
        async with sessions() as session:
            page = await repository.request_images(session, request_id, limit=2, after=after)
        if not page:
            break
        pages.append([image.source_url for _, image in page])
        after = page[-1][0]
    assert pages == [
        ["https://x/a", "https://x/b"],
        ["https://x/c", "https://x/d"],
        ["https://x/e", "https://x/f"],
        ["https://x/a"],
    ]


@pytest.fixture
def postgres_url(postgres: servers.Postgres) -> str:
    return postgres.new_database()


async def test_a_big_ingest_leaves_postgresql_statistics_to_plan_its_pages_by(
    postgres_url: str,
) -> None:
    engine = create_engine(postgres_url)
    await upgrade(engine)
    sessions = session_factory(engine)
    try:
        rows = [row(n + 2, *(f"https://x/{n}/{k}" for k in range(5))) for n in range(2_000)]
        await create(sessions, *rows)  # 10,000 images
        async with sessions() as session:
            counted = await session.scalar(
                text("SELECT reltuples FROM pg_class WHERE relname = 'images'")
            )
        assert counted == 10_000  # not -1: analysed at once, not a minute later by autovacuum
    finally:
        await engine.dispose()
