"""Creating a request, storing its rows from the kept CSV, and failing one that cannot be read."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
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


async def create_request(session: AsyncSession, new: NewRequest) -> None:
    """The request alone; its rows are stored by `ingest_rows` from the kept input CSV."""
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
            reused_images=0,
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


_CHUNK = 2000  # rows per executemany: keeps each pause of the event loop short


async def ingest_rows(
    session: AsyncSession, request_id: uuid.UUID, rows: Sequence[InputRow], *, now: datetime
) -> bool:
    """Store a request's products and images, once: False if they were stored already.

    All in the caller's transaction, behind a conditional update, so a crash leaves either
    nothing or everything, and two workers racing here store the rows once.
    """
    claimed = await session.execute(
        update(Request)
        .where(Request.id == request_id, Request.ingested_at.is_(None))
        .values(ingested_at=now)
        .execution_options(synchronize_session=False)
    )
    if rowcount(claimed) != 1:
        return False
    # Plain executemany, then one query for the ids: RETURNING row by row is ~30x slower on SQLite.
    await _insert_chunked(
        session,
        Product,
        [
            {
                "request_id": request_id,
                "position": position,
                "row_number": row.serial,
                "product_name": row.name,
                "extra": list(row.extra),
            }
            for position, row in enumerate(rows)
        ],
    )
    product_ids = await session.execute(
        select(Product.id).where(Product.request_id == request_id).order_by(Product.position)
    )
    firsts: list[dict[str, Any]] = []
    repeats: list[dict[str, Any]] = []
    seen: set[str] = set()
    for product_id, row in zip(product_ids.scalars(), rows, strict=True):
        for position, url in enumerate(row.urls):
            image = {
                "request_id": request_id,
                "product_id": product_id,
                "position": position,
                "source_url": url,
            }
            (repeats if url in seen else firsts).append(image)
            seen.add(url)
    await _insert_chunked(session, Image, firsts)
    if repeats:
        first_ids = await session.execute(
            select(Image.source_url, Image.id).where(Image.request_id == request_id)
        )
        id_of_url = {url: id_ for url, id_ in first_ids}
        await _insert_chunked(
            session,
            Image,
            [image | {"duplicate_of": id_of_url[image["source_url"]]} for image in repeats],
        )
    if len(firsts) + len(repeats) >= _ANALYZE_AFTER and _is_postgresql(session):
        # Fresh statistics for the planner now, not when autovacuum gets to it (up to a minute
        # later): without them, PostgreSQL pages a big request's images listing by a sort of
        # every image (150-580 ms a page of 200,000 images), not by the products' index (3 ms).
        await session.execute(text("ANALYZE products, images"))
    return True


_ANALYZE_AFTER = 10_000  # images stored at once


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
