"""What the one work loop's claim costs, on SQLite (embedded mode) and PostgreSQL (scale-out).

Both modes claim "the next batch of the request that has waited longest" (fair share,
`repository.claim_next_batch`). This times it, in turns on the two databases, on requests of
the same size in fresh databases; each claimed batch is then marked done, as a worker would,
so later claims meet the same table a real run leaves. Set against the codec's milliseconds
per image, it says whether claiming can lower throughput. Run by `make bench`, or
`.venv/bin/python bench/claims.py`. (Before one work loop, embedded mode claimed batches of ids
named by paging through the request, and scale-out before fair share did the same; those
figures are in bench/README.md.)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import update

from harness import BenchError
from imgcrunch import repository
from imgcrunch.csvio import InputRow
from imgcrunch.db import SessionFactory, create_engine, session_factory, upgrade
from imgcrunch.models import Image, ImageStatus, utcnow
from imgcrunch.repository import ClaimedImage, NewRequest
from scale_out import check_servers, fresh_database

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
            await repository.ingest_chunk(
                session,
                request_id,
                rows,
                start=0,
                last=True,
                stored_images=0,
                firsts=repository.FirstImages(),
                now=utcnow(),
            )
        request_ids.append(request_id)
    return request_ids


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


async def _time_claims(database_url: str, claims: int, images: int) -> float:
    """Median seconds per claim."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        sessions = session_factory(engine)
        await _store_requests(sessions, images)
        timings = []
        for _ in range(claims):
            started = time.perf_counter()
            claimed = await _claim_next(sessions)
            timings.append(time.perf_counter() - started)
            if len(claimed) != BATCH:
                raise BenchError(f"a claim took {len(claimed)} images, not {BATCH}")
            await _mark_done(sessions, claimed)
        return statistics.median(timings)
    finally:
        await engine.dispose()


@contextmanager
def fresh_sqlite() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="imgcrunch-claims-") as folder:
        yield f"sqlite+aiosqlite:///{folder}/imgcrunch.db"


DATABASES = {"SQLite": fresh_sqlite, "PostgreSQL": fresh_database}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="turns of each (default 3)")
    parser.add_argument("--claims", type=int, default=200, help="claims timed per turn")
    parser.add_argument("--images", type=int, default=4000, help="images per request")
    args = parser.parse_args(argv)
    if args.claims * BATCH > REQUESTS * args.images:
        parser.error("more claims than the requests have batches")
    medians: dict[str, list[float]] = {name: [] for name in DATABASES}
    try:
        check_servers()
        for _ in range(args.rounds):
            for name, fresh in DATABASES.items():
                with fresh() as url:
                    medians[name].append(asyncio.run(_time_claims(url, args.claims, args.images)))
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 2
    print(f"claiming the next batch of {BATCH}, {REQUESTS} requests active (median):")
    for name, timings in medians.items():
        per_batch = statistics.median(timings) * 1000
        print(f"  {name:<10}: {per_batch:.2f} ms a batch, {per_batch / BATCH:.3f} ms an image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
