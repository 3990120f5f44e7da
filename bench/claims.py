"""What fair share costs a scale-out worker: the time to claim a batch, on PostgreSQL.

A worker claims "the next batch of the request that has waited longest" (fair share,
`repository.claim_next_batch`). Before fair share, it was handed a named batch of image ids and
only claimed it (`repository.claim_images`), after the ingest had paged through the request to
name the batches. This times both, in turns, on requests of the same size in fresh databases;
each claimed batch is then marked done, as the worker would, so later claims meet the same
table a real run leaves. Run by `make bench`, or `.venv/bin/python bench/claims.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import update

from imgcrunch import repository
from imgcrunch.csvio import InputRow
from imgcrunch.db import SessionFactory, create_engine, session_factory, upgrade
from imgcrunch.models import Image, ImageStatus, utcnow
from imgcrunch.repository import Batch, ClaimedImage, NewRequest
from scale_out import check_servers, fresh_database
from throughput import BenchError

REQUESTS = 3  # active at once, so the fair claim has a choice to make
BATCH = 32  # IMGCRUNCH_BATCH_SIZE's default


async def _store_requests(sessions: SessionFactory, images: int) -> list[uuid.UUID]:
    request_ids = []
    for n in range(REQUESTS):
        request_id = uuid.uuid4()
        rows = [
            InputRow(row + 2, str(row), "P", (f"http://o/{n}/{row}",), ()) for row in range(images)
        ]
        async with sessions.begin() as session:
            await repository.create_request(
                session,
                NewRequest(
                    id=request_id,
                    total_images=images,
                    extra_columns=(),
                    quality=50,
                    effort="balanced",
                    input_key="k",
                ),
            )
        async with sessions.begin() as session:
            await repository.ingest_rows(session, request_id, rows, now=utcnow())
        request_ids.append(request_id)
    return request_ids


async def _named_batches(sessions: SessionFactory, request_ids: list[uuid.UUID]) -> list[Batch]:
    """The batches an ingest used to name, a request after the other (the queue's order)."""
    batches = []
    for request_id in request_ids:
        after_id = 0
        while True:
            async with sessions() as session:
                batch = await repository.next_batch(
                    session, request_id, after_id=after_id, size=BATCH
                )
            if batch is None:
                break
            batches.append(batch)
            after_id = batch.last_id
    return batches


async def _claim_named(sessions: SessionFactory, batch: Batch) -> list[ClaimedImage]:
    now = utcnow()
    async with sessions.begin() as session:
        return await repository.claim_images(
            session, batch, worker="bench", now=now, stale_before=now - timedelta(seconds=60)
        )


async def _claim_next(sessions: SessionFactory) -> list[ClaimedImage]:
    now = utcnow()
    async with sessions.begin() as session:
        claim = await repository.claim_next_batch(
            session, size=BATCH, worker="bench", now=now, stale_before=now - timedelta(seconds=60)
        )
    return claim.images if claim else []


async def _mark_done(sessions: SessionFactory, images: list[ClaimedImage]) -> None:
    async with sessions.begin() as session:
        await session.execute(
            update(Image)
            .where(Image.id.in_([image.id for image in images]))
            .values(status=ImageStatus.DONE, claimed_at=None)
        )


async def _time_claims(database_url: str, mode: str, claims: int, images: int) -> float:
    """Median seconds per claim of `mode` ("named" or "next")."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        sessions = session_factory(engine)
        request_ids = await _store_requests(sessions, images)
        named = iter(await _named_batches(sessions, request_ids))
        timings = []
        for _ in range(claims):
            started = time.perf_counter()
            if mode == "named":
                claimed = await _claim_named(sessions, next(named))
            else:
                claimed = await _claim_next(sessions)
            timings.append(time.perf_counter() - started)
            if len(claimed) != BATCH:
                raise BenchError(f"a {mode} claim took {len(claimed)} images, not {BATCH}")
            await _mark_done(sessions, claimed)
        return statistics.median(timings)
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="turns of each (default 3)")
    parser.add_argument("--claims", type=int, default=200, help="claims timed per turn")
    parser.add_argument("--images", type=int, default=4000, help="images per request")
    args = parser.parse_args(argv)
    if args.claims * BATCH > REQUESTS * args.images:
        parser.error("more claims than the requests have batches")
    medians: dict[str, list[float]] = {"named": [], "next": []}
    try:
        check_servers()
        for _ in range(args.rounds):
            for mode, timings in medians.items():
                with fresh_database() as url:
                    timings.append(asyncio.run(_time_claims(url, mode, args.claims, args.images)))
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 2
    named, fair = (statistics.median(medians[mode]) * 1000 for mode in ("named", "next"))
    print(f"claiming a batch of {BATCH} on PostgreSQL, {REQUESTS} requests active (median):")
    print(f"  named batch (before fair share): {named:.2f} ms")
    print(f"  next batch of the longest-waiting request: {fair:.2f} ms")
    print(f"  fair share costs {(fair - named) / BATCH:+.3f} ms per image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
