"""Creating a request, storing its rows from the kept CSV, and failing one that cannot be read."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from imgcrunch.csvio import InputRow
from imgcrunch.models import (
    ACTIVE_STATUSES,
    Base,
    Image,
    Product,
    Request,
    RequestStatus,
    VariantTotal,
)
from imgcrunch.repository._common import rowcount
from imgcrunch.repository.cache import owner_scope
from imgcrunch.repository.outbox import NewEvent, finished_with_event

# --- creating a request ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRequest:
    id: uuid.UUID
    total_images: int
    extra_columns: Sequence[str]
    quality: int
    effort: str
    input_key: str
    webhook_url: str | None = None
    owner: str | None = None  # the API key's owner that created it; None when keys are off
    variants: list[dict[str, Any]] | None = None  # imgcrunch.imaging.variants.to_json's
    refresh: bool = False  # made without the owner's source cache
    profile: str | None = None  # imgcrunch.imaging.profiles' name


async def create_request(session: AsyncSession, new: NewRequest) -> None:
    """The request alone; its rows are stored by `ingest_chunk` from the kept input CSV."""
    scope = await owner_scope(session, new.owner)
    session.add(
        Request(
            id=new.id,
            status=RequestStatus.QUEUED,
            webhook_url=new.webhook_url,
            quality=new.quality,
            effort=new.effort,
            extra_columns=list(new.extra_columns),
            total_images=new.total_images,
            done_images=0,
            failed_images=0,
            bytes_in=0,
            bytes_out=0,
            input_key=new.input_key,
            owner=new.owner,
            variants=new.variants,
            scope=scope,
            refresh=new.refresh,
            profile=new.profile,
            reused_images=0,
            noncompliant_images=0,
        )
    )
    await session.flush()
    if new.variants:
        session.add_all(
            VariantTotal(request_id=new.id, position=position, bytes_out=0, kept_images=0)
            for position in range(len(new.variants))
        )
        await session.flush()


async def is_ingested(session: AsyncSession, request_id: uuid.UUID) -> bool:
    result = await session.execute(
        select(Request.ingested_at.is_not(None)).where(Request.id == request_id)
    )
    return bool(result.scalar())


async def image_count(session: AsyncSession, request_id: uuid.UUID) -> int:
    """The request's images stored so far."""
    result = await session.execute(
        select(func.count()).select_from(Image).where(Image.request_id == request_id)
    )
    return int(result.scalar_one())


_CHUNK = 2000  # rows per executemany: keeps each pause of the event loop short


class FirstImages:
    """The first image of each source URL a request has stored so far, so that a later chunk
    stores a repeat of one as its duplicate (fetched and made once). Kept by the URL's hash,
    not the URL, for memory: some 100 bytes an image; a hash found is checked against the URL
    in the database before it is believed."""

    def __init__(self) -> None:
        self._by_hash: dict[int, int] = {}

    def add(self, url: str, image_id: int) -> None:
        self._by_hash.setdefault(hash(url), image_id)

    def candidate(self, url: str) -> int | None:
        return self._by_hash.get(hash(url))


async def stored_firsts(session: AsyncSession, request_id: uuid.UUID) -> FirstImages:
    """The first images a request has stored already: an ingest resumed after a crash."""
    firsts = FirstImages()
    result = await session.stream(
        select(Image.source_url, Image.id)
        .where(Image.request_id == request_id, Image.duplicate_of.is_(None))
        .execution_options(yield_per=10_000)
    )
    async for url, image_id in result:
        firsts.add(url, image_id)
    return firsts


@dataclass(frozen=True, slots=True)
class StoredChunk:
    images: int  # images stored, duplicates included
    claimable: int  # of them, those to be claimed: the firsts
    # First images of earlier chunks that this chunk's images repeat: they may be finished, and
    # their new duplicates then wait for `record_repeats`.
    repeated: list[int]


async def ingest_chunk(
    session: AsyncSession,
    request_id: uuid.UUID,
    rows: Sequence[InputRow],
    *,
    start: int,
    last: bool,
    stored_images: int,
    firsts: FirstImages,
    now: datetime,
) -> StoredChunk | None:
    """Store the request's next chunk of rows, the `start`th onwards; None if they are not
    its next (another worker stored them) or it is no longer active (cancelled, deleted).

    All in the caller's transaction, behind a conditional update of the rows stored so far:
    a crash leaves each chunk stored whole or not at all, and a worker resuming from that
    count, or racing another, stores each row once. `last`: the request's last rows, which
    mark it stored (`ingested_at`); `stored_images`: its images stored before this chunk.
    """
    claimed = await _rows_stored(
        session,
        request_id,
        Request.ingested_rows == start,
        Request.status.in_(ACTIVE_STATUSES),
        ingested_rows=start + len(rows),
        ingested_at=now if last else None,
        updated_at=now,
    )
    if not claimed:
        return None
    # Plain executemany, then one query for the ids: RETURNING row by row is ~30x slower on SQLite.
    await _insert_chunked(
        session,
        Product,
        [
            {
                "request_id": request_id,
                "position": start + offset,
                "row_number": row.serial,
                "product_name": row.name,
                "extra": list(row.extra),
            }
            for offset, row in enumerate(rows)
        ],
    )
    product_ids = list(
        (
            await session.execute(
                select(Product.id)
                .where(Product.request_id == request_id, Product.position >= start)
                .order_by(Product.position)
            )
        ).scalars()
    )
    earlier = await _earlier_firsts(session, rows, firsts)
    new_firsts: list[dict[str, Any]] = []
    repeats: list[dict[str, Any]] = []
    seen: set[str] = set(earlier)
    for product_id, row in zip(product_ids, rows, strict=True):
        for position, url in enumerate(row.urls):
            image = {
                "request_id": request_id,
                "product_id": product_id,
                "position": position,
                "source_url": url,
            }
            (repeats if url in seen else new_firsts).append(image)
            seen.add(url)
    await _insert_chunked(session, Image, new_firsts)
    id_of_url = dict(earlier)
    if new_firsts:
        # By the range of the chunk's products alone, on their index: asked by request too,
        # SQLite read every image of the request stored so far, for every chunk. (Another
        # request's products may have ids in the range: their images are left out here.)
        ids = await session.execute(
            select(Image.source_url, Image.id, Image.request_id).where(
                Image.product_id.between(product_ids[0], product_ids[-1])
            )
        )
        for url, image_id, owner in ids:
            if owner == request_id:
                id_of_url[url] = image_id
                firsts.add(url, image_id)
    await _insert_chunked(
        session,
        Image,
        [image | {"duplicate_of": id_of_url[image["source_url"]]} for image in repeats],
    )
    images = len(new_firsts) + len(repeats)
    if _crosses_analyze_mark(stored_images, stored_images + images) and _is_postgresql(session):
        # Fresh statistics for the planner now, not when autovacuum gets to it (up to a minute
        # later): without them, PostgreSQL pages a big request's images listing by a sort of
        # every image (150-580 ms a page of 200,000 images), not by the products' index (3 ms).
        await session.execute(text("ANALYZE products, images"))
    repeated = sorted(
        {earlier[url] for image in repeats if (url := image["source_url"]) in earlier}
    )
    return StoredChunk(images=images, claimable=len(new_firsts), repeated=repeated)


async def _earlier_firsts(
    session: AsyncSession, rows: Sequence[InputRow], firsts: FirstImages
) -> dict[str, int]:
    """The chunk's URLs that an earlier chunk stored already, with that first image's id."""
    candidates = {
        url: image_id
        for row in rows
        for url in row.urls
        if (image_id := firsts.candidate(url)) is not None
    }
    if not candidates:
        return {}
    stored = await session.execute(
        select(Image.id, Image.source_url).where(Image.id.in_(set(candidates.values())))
    )
    url_of: dict[int, str] = {image_id: url for image_id, url in stored}
    return {url: image_id for url, image_id in candidates.items() if url_of.get(image_id) == url}


async def finish_ingest(
    session: AsyncSession, request_id: uuid.UUID, *, rows: int, now: datetime
) -> bool:
    """Mark every row of the request stored, once `rows` are; False if another did. (Its last
    images may be finished, and the request with them, before this.)"""
    return await _rows_stored(
        session, request_id, Request.ingested_rows == rows, ingested_at=now, updated_at=now
    )


async def _rows_stored(
    session: AsyncSession,
    request_id: uuid.UUID,
    *conditions: ColumnElement[bool],
    **values: Any,
) -> bool:
    """Move the count of a request's rows stored on, if they are not all stored and the
    `conditions` hold: the one guard by which each row is stored once."""
    result = await session.execute(
        update(Request)
        .where(Request.id == request_id, Request.ingested_at.is_(None), *conditions)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


_ANALYZE_AFTER = 10_000  # images stored; and again at each tenfold of it


def _crosses_analyze_mark(before: int, after: int) -> bool:
    mark = _ANALYZE_AFTER
    while mark <= after:
        if before < mark:
            return True
        mark *= 10
    return False


def _is_postgresql(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def _insert_chunked(
    session: AsyncSession, model: type[Product] | type[Image], rows: list[dict[str, Any]]
) -> None:
    table = Base.metadata.tables[model.__tablename__]  # Core insert: no ORM bookkeeping per row
    for start in range(0, len(rows), _CHUNK):
        await session.execute(insert(table), rows[start : start + _CHUNK])


async def fail_request(
    session: AsyncSession,
    request_id: uuid.UUID,
    *,
    error: str,
    now: datetime,
    event: NewEvent | None = None,
) -> bool:
    """A request that cannot be processed at all: `failed`, with the reason, and its webhook
    event queued in the same transaction."""
    result = await session.execute(
        update(Request)
        .where(Request.id == request_id, Request.status.in_(ACTIVE_STATUSES))
        .values(status=RequestStatus.FAILED, error=error, completed_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return finished_with_event(session, result, request_id, event, now)
