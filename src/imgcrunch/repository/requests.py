"""Reading and managing requests: what the API's routes ask and change."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imgcrunch.models import (
    ACTIVE_STATUSES,
    Image,
    ImageStatus,
    Product,
    Request,
    RequestStatus,
    VariantTotal,
)
from imgcrunch.repository import cache
from imgcrunch.repository._common import rowcount

# --- reading a request ----------------------------------------------------------------------


async def get_request(session: AsyncSession, request_id: uuid.UUID) -> Request | None:
    return await session.get(Request, request_id, populate_existing=True)


@dataclass(frozen=True, slots=True)
class ImageRow:
    """One image of a request with the product it belongs to: the one row type that every
    read of a request's images returns."""

    row_number: str  # the product's S. No. as written in the input
    product_name: str
    source_url: str
    status: str
    output_key: str | None
    bytes_in: int | None
    bytes_out: int | None
    width: int | None
    height: int | None
    kept_original: bool
    error_code: str | None
    error_message: str | None
    # The outputs of the variants after the first: {"key", "bytes", "width", "height", "kept",
    # "quality"}.
    variants: list[dict[str, Any]] | None
    reuse: str | None  # a models.Reuse; None before re-runs, and for failed images
    quality: int | None  # the first variant's, as encoded
    findings: list[dict[str, str]] | None  # what the request's profile could not fix


_IMAGE_ROW = (
    Product.row_number,
    Product.product_name,
    Image.source_url,
    Image.status,
    Image.output_key,
    Image.bytes_in,
    Image.bytes_out,
    Image.width,
    Image.height,
    Image.kept_original,
    Image.error_code,
    Image.error_message,
    Image.variants,
    Image.reuse,
    Image.quality,
    Image.findings,
)


@dataclass(frozen=True, slots=True)
class VariantTotals:
    position: int  # in the request's variants
    bytes_out: int
    kept_images: int


async def variant_totals(
    session: AsyncSession, request_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[VariantTotals]]:
    """Each request's variants' bytes over its done images, in the variants' order; none for
    a request without variants. One query for a page of requests."""
    found: dict[uuid.UUID, list[VariantTotals]] = {request_id: [] for request_id in request_ids}
    if not request_ids:
        return found
    result = await session.execute(
        select(
            VariantTotal.request_id,
            VariantTotal.position,
            VariantTotal.bytes_out,
            VariantTotal.kept_images,
        )
        .where(VariantTotal.request_id.in_(request_ids))
        .order_by(VariantTotal.request_id, VariantTotal.position)
    )
    for request_id, *figures in result:
        found[request_id].append(VariantTotals(*figures))
    return found


async def failed_images(
    session: AsyncSession, request_id: uuid.UUID, *, limit: int
) -> list[ImageRow]:
    return await _image_rows(session, request_id, Image.status == ImageStatus.FAILED, limit=limit)


async def kept_images(
    session: AsyncSession, request_id: uuid.UUID, *, limit: int
) -> list[ImageRow]:
    """Images done by keeping the original: re-encoding would not have made them smaller."""
    return await _image_rows(session, request_id, Image.kept_original.is_(True), limit=limit)


# An image's place in the input file: its product's position (the row), then its own within
# the row. A page of the images listing starts after the place of the last image shown.
ImagePlace = tuple[int, int]


async def request_images(
    session: AsyncSession, request_id: uuid.UUID, *, limit: int, after: ImagePlace | None
) -> list[tuple[ImagePlace, ImageRow]]:
    """The request's images in the order of the input file (rows, then URLs within a row),
    from the one after `after`, each with its place. By key, not by offset: any page of a
    million images costs what the first does."""
    # The first page too starts after a place (before the first), so that the planner walks
    # the products' index in order there as well, rather than sorting every image. The row's
    # bound is stated alone too: the place spans two tables, and each database's planner
    # ranges over the products' index only on a condition of the products' own.
    row, position = after or (-1, -1)
    condition = (Product.position >= row) & or_(Product.position > row, Image.position > position)
    result = await session.execute(
        select(Product.position, Image.position, *_IMAGE_ROW)
        .join(Product, Product.id == Image.product_id)
        .where(Image.request_id == request_id, Product.request_id == request_id, condition)
        .order_by(Product.position, Image.position)
        .limit(limit)
    )
    return [((row_place, image_place), ImageRow(*rest)) for row_place, image_place, *rest in result]


async def _image_rows(
    session: AsyncSession,
    request_id: uuid.UUID,
    condition: ColumnElement[bool],
    *,
    limit: int,
    offset: int = 0,
) -> list[ImageRow]:
    result = await session.execute(
        select(*_IMAGE_ROW)
        .join(Product, Product.id == Image.product_id)
        .where(Image.request_id == request_id, condition)
        .order_by(Product.position, Image.position)
        .limit(limit)
        .offset(offset)
    )
    return [ImageRow(*tuple(row)) for row in result]


@dataclass(slots=True)
class ProductOutcome:
    row_number: str
    product_name: str
    extra: list[str]
    images: list[ImageRow] = field(default_factory=list)


async def product_outcomes(
    session: AsyncSession, request_id: uuid.UUID
) -> AsyncIterator[ProductOutcome]:
    """Products in file order, each with its images in row order; streamed, not loaded whole."""
    result = await session.stream(
        select(Product.id, Product.extra, *_IMAGE_ROW)
        .join(Image, Image.product_id == Product.id)
        .where(Product.request_id == request_id)
        .order_by(Product.position, Image.position)
        .execution_options(yield_per=1000)
    )
    current: ProductOutcome | None = None
    current_id = None
    async for product_id, extra, *image in result:
        row = ImageRow(*image)
        if product_id != current_id:
            if current is not None:
                yield current
            current = ProductOutcome(row.row_number, row.product_name, list(extra))
            current_id = product_id
        assert current is not None
        current.images.append(row)
    if current is not None:
        yield current


async def unfinished_request_ids(session: AsyncSession) -> list[uuid.UUID]:
    result = await session.execute(
        select(Request.id).where(Request.status.in_(ACTIVE_STATUSES)).order_by(Request.created_at)
    )
    return list(result.scalars())


async def count_active_requests(session: AsyncSession, *, owner: str | None = None) -> int:
    """Requests queued or processing: all of them, or `owner`'s."""
    statement = select(func.count()).where(Request.status.in_(ACTIVE_STATUSES))
    if owner is not None:
        statement = statement.where(Request.owner == owner)
    return int((await session.execute(statement)).scalar_one())


async def requests_by_status(session: AsyncSession) -> dict[str, int]:
    result = await session.execute(select(Request.status, func.count()).group_by(Request.status))
    return {status: count for status, count in result.tuples()}


async def unfinished_image_count(session: AsyncSession) -> int:
    """Images of active requests not yet done or failed: the work queue's depth."""
    result = await session.execute(
        select(
            func.coalesce(
                func.sum(Request.total_images - Request.done_images - Request.failed_images), 0
            )
        ).where(Request.status.in_(ACTIVE_STATUSES))
    )
    return int(result.scalar_one())


async def list_requests(
    session: AsyncSession,
    *,
    owner: str | None,
    status: str | None,
    limit: int,
    offset: int,
) -> list[Request]:
    """Newest first; only `owner`'s when keys are on (owner not None)."""
    query = select(Request).order_by(Request.created_at.desc(), Request.id.desc())
    if owner is not None:
        query = query.where(Request.owner == owner)
    if status is not None:
        query = query.where(Request.status == status)
    result = await session.execute(query.limit(limit).offset(offset))
    return list(result.scalars())


async def delete_request(session: AsyncSession, request_id: uuid.UUID) -> list[str] | None:
    """The request and, by cascade, its products, images and webhook outbox; None if it was
    gone already, or is still active (it is deleted only once it has finished).

    Returns the keys of its stored images that no other request refers to any more, for the
    caller to remove once this commits; the source cache forgets them in this transaction.
    (Images stored under the request's own id, from before re-runs, are not listed.)
    """
    finished = (Request.id == request_id) & Request.status.not_in(ACTIVE_STATUSES)
    scope = await session.scalar(select(Request.scope).where(finished))
    outputs: dict[str, list[str]] = {}  # the first variant's key: every variant's
    if scope is not None:
        rows = await session.execute(
            select(Image.output_key, Image.variants).where(
                Image.request_id == request_id, Image.output_key.is_not(None)
            )
        )
        for first, variants in rows:
            outputs[first] = [first, *(output["key"] for output in variants or ())]
        # A worker reusing one of these outputs now records it before, or not at all after.
        await cache.lock_entries_of_outputs(session, list(outputs))
    result = await session.execute(
        delete(Request).where(finished).execution_options(synchronize_session=False)
    )
    if rowcount(result) != 1:
        return None
    still_used = await _referenced_outputs(session, list(outputs))
    orphans = [first for first in outputs if first not in still_used]
    await cache.forget_outputs(session, orphans)
    return [key for first in orphans for key in outputs[first]]


async def _referenced_outputs(session: AsyncSession, keys: Sequence[str]) -> set[str]:
    """Which of these first-variant keys an image still refers to. An image's other variants
    are made with its first, so they go or stay with it."""
    found: set[str] = set()
    for start in range(0, len(keys), _IN_CHUNK):
        chunk = keys[start : start + _IN_CHUNK]
        rows = await session.execute(
            select(Image.output_key).where(Image.output_key.in_(chunk)).distinct()
        )
        found.update(key for key in rows.scalars() if key is not None)
    return found


_IN_CHUNK = 500


async def cancel_request(session: AsyncSession, request_id: uuid.UUID, *, now: datetime) -> bool:
    """Stop an active request: its images not yet recorded will never be. False if it was not
    active. One row changes, however many images the request has (a million images took 15 s to
    mark one by one on PostgreSQL): its pending images stay pending, and are shown as cancelled;
    claims and records take only images of active requests, so a result that arrives afterwards
    changes nothing.
    """
    result = await session.execute(
        update(Request)
        .where(Request.id == request_id, Request.status.in_(ACTIVE_STATUSES))
        .values(status=RequestStatus.CANCELLED, completed_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


async def retry_failed_images(
    session: AsyncSession, request_id: uuid.UUID, *, now: datetime
) -> int:
    """Make a finished request's failed images pending again, and the request `processing`;
    returns how many. Only from `completed_with_errors`: nothing else has images to retry."""
    reopened = await session.execute(
        update(Request)
        .where(
            Request.id == request_id,
            Request.status == RequestStatus.COMPLETED_WITH_ERRORS,
        )
        .values(status=RequestStatus.PROCESSING, completed_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if rowcount(reopened) != 1:
        return 0
    result = await session.execute(
        update(Image)
        .where(Image.request_id == request_id, Image.status == ImageStatus.FAILED)
        .values(
            status=ImageStatus.PENDING,
            error_code=None,
            error_message=None,
            completed_at=None,
            claimed_by=None,
            claimed_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    retried = rowcount(result)
    await session.execute(
        update(Request)
        .where(Request.id == request_id)
        .values(failed_images=Request.failed_images - retried)
        .execution_options(synchronize_session=False)
    )
    return retried


async def ping(session: AsyncSession) -> None:
    await session.execute(select(1))
